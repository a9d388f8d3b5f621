"""`make bench-gpu SMOKE=1`: the GPU benchmark's own code, on the CPU with tiny checkpoints, so
the script the next GPU machine runs cannot rot (its figures here mean nothing)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_gpu_benchmark_runs_every_case_and_writes_its_json_and_table(tmp_path):
    out = tmp_path / "gpu.json"
    finished = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_gpu.py"), "--smoke", "--out", str(out)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert finished.returncode == 0, finished.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["machine"]["smoke"] is True
    for case in ("sd15", "sdxl"):
        for variant in ("plain_diffusers", "engine"):
            assert results[case][variant]["its"] > 0 and results[case][variant]["s_per_image"] > 0
    assert results["lora"]["engine_switch_s"] < results["lora"]["diffusers_load_fuse_s"]
    assert results["lora"]["engine_hotswap_s"] > 0
    assert results["cold"]["first_image_s"] > results["cold"]["download_s"] > 0
    assert results["train"]["s_per_step"] > 0
    assert "| LoRA switch (both loaded) |" in finished.stdout and "cold start, S3 -> first image" in finished.stdout
