"""A short, seeded run of each fuzz target (``make fuzz`` runs them for longer)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris")
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("target", "runs"), [("pickle", 20_000), ("safetensors", 50_000), ("url", 50_000)])
def test_fuzz_target_finds_no_crash_in_a_seeded_run(target, runs, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "tests.fuzz.fuzz_inspectors", target, f"-runs={runs}", "-seed=1", "-timeout=10",
         "-rss_limit_mb=2048", f"-artifact_prefix={tmp_path}/"],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
        env=os.environ | {"PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"Done {runs} runs" in result.stderr
