"""Cold import of every built Lambda function under python3.12, against the runtime-only baseline.

What a cold start pays before the first event: the runtime imports the handler's module. Each
sample is a fresh ``python3.12 -S`` with only the function's built folder, the built layer and
the runtime's kind of SDK on the path (``make build`` makes all three), with the environment Lambda
sets; the baseline is ``import boto3`` alone in the same conditions. Samples of all functions and
of the baseline are interleaved, so machine noise falls on all of them alike; both wall time and
the process's CPU time are reported (on a shared machine the CPU time is the steadier of the two). Also reported: where
the time goes, from ``-X importtime`` of the slowest function, summed by top-level package.

    python bench/bench_cold_import.py [--runs 9] [--against REF] [--json out.json]

``--against REF`` also measures the functions and layer of a git revision, built the way that
revision's template built them (``BuildMethod: python3.12``: its requirements with their
dependencies, no bytecode), so an improvement is measured in the same run as what it improves.
Every sample runs with ``-B``: Lambda's /opt and /var/task are read-only, so nothing compiled at
import time is kept for the next cold start.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from tests.lambda_build.test_lambda_build import (  # noqa: E402
    BUILD,
    LAYER,
    PYTHON312,
    RUNTIME_SDK,
    _Loader,
    built_functions,
    lambda_environment,
)

TIMED = """
import sys, time
sys.path[:0] = {paths!r}
started, cpu = time.perf_counter(), time.process_time()
import {module}
print(time.perf_counter() - started, time.process_time() - cpu)
"""


@dataclass(frozen=True)
class Build:
    """Where a build's function folders and layer are."""

    functions: Path
    layer: Path

    def folder(self, function: str) -> Path:
        return self.functions / function


def sample(build: Build | None, function: str | None) -> tuple[float, float]:
    """Wall and CPU milliseconds of one cold import (``function`` None: the boto3 baseline)."""
    if build is None or function is None:
        code, env, cwd = TIMED.format(paths=[str(RUNTIME_SDK)], module="boto3"), lambda_environment("baseline"), ROOT
    else:
        paths = [str(build.folder(function)), str(build.layer), str(RUNTIME_SDK)]
        code, env, cwd = TIMED.format(paths=paths, module="app"), lambda_environment(function), build.folder(function)
    assert PYTHON312 is not None
    result = subprocess.run(
        [PYTHON312, "-S", "-B", "-c", code], env=env, cwd=cwd, capture_output=True, text=True, check=True
    )
    wall, cpu = (float(v) * 1000 for v in result.stdout.strip().splitlines()[-1].split())
    return wall, cpu


def build_revision(revision: str, target: Path) -> Build:
    """The functions and layer of ``revision`` as its template built them (python3.12 builder:
    requirements installed with their dependencies, no bytecode)."""
    assert PYTHON312 is not None
    source = target / "source"
    source.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", revision, "layers/common", "functions"], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive.stdout, check=True)
    layer = target / "layer" / "python"
    subprocess.run(
        [PYTHON312, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--root-user-action=ignore",
         "--no-compile", "--target", str(layer), "--requirement", str(source / "layers/common/requirements.txt")],
        check=True,
    )  # fmt: skip
    shutil.copytree(source / "layers/common/sdpipe", layer / "sdpipe")
    functions = target / "functions"
    template = yaml.load((ROOT / "template.yaml").read_text(), Loader=_Loader)
    for name in built_functions():
        shutil.copytree(source / template["Resources"][name]["Properties"]["CodeUri"], functions / name)
    return Build(functions, layer)


def importtime(function: str) -> list[tuple[str, float]]:
    """Self time of each top-level package while the function's module is imported (ms)."""
    assert PYTHON312 is not None
    paths = [str(BUILD / function), str(LAYER), str(RUNTIME_SDK)]
    code = f"import sys; sys.path[:0] = {paths!r}; import app"
    result = subprocess.run(
        [PYTHON312, "-S", "-B", "-X", "importtime", "-c", code], env=lambda_environment(function),
        cwd=BUILD / function, capture_output=True, text=True, check=True,
    )  # fmt: skip
    totals: dict[str, float] = defaultdict(float)
    for line in result.stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)", line)
        if match:
            totals[match.group(2).split(".")[0]] += int(match.group(1)) / 1000
    return sorted(totals.items(), key=lambda item: -item[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--against", metavar="REF", help="also measure this git revision's build")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    functions = sorted(built_functions())
    current = Build(BUILD, LAYER)
    with tempfile.TemporaryDirectory(prefix="sdpipe-cold-") as scratch:
        before = build_revision(args.against, Path(scratch)) if args.against else None
        builds: dict[str, Build | None] = {"baseline": None, "current": current}
        if before is not None:
            builds["against"] = before
        samples: dict[tuple[str, str | None], list[tuple[float, float]]] = {("baseline", None): []}
        for kind, build in builds.items():
            if build is not None:
                samples |= {(kind, name): [] for name in functions}
        for _ in range(args.runs):
            for (kind, name), values in samples.items():
                values.append(sample(builds[kind], name))

    def median(values: list[tuple[float, float]], index: int) -> float:
        return statistics.median(v[index] for v in values)

    baseline = samples[("baseline", None)]
    baseline_wall, baseline_cpu = median(baseline, 0), median(baseline, 1)
    rows: dict[str, dict[str, float]] = {}
    for (kind, name), values in samples.items():
        if name is None:
            continue
        row = rows.setdefault(name, {})
        prefix = "" if kind == "current" else f"{kind}_"
        row[f"{prefix}median_ms"] = round(median(values, 0), 1)
        row[f"{prefix}median_cpu_ms"] = round(median(values, 1), 1)
        row[f"{prefix}cpu_ratio"] = round(median(values, 1) / baseline_cpu, 2)
    if before is not None:
        for row in rows.values():
            row["cpu_vs_against"] = round(row["median_cpu_ms"] / row["against_median_cpu_ms"], 2)
    slowest = max(rows, key=lambda name: rows[name]["median_cpu_ms"])
    result = {
        "baseline_import_boto3_ms": round(baseline_wall, 1),
        "baseline_import_boto3_cpu_ms": round(baseline_cpu, 1),
        "against": args.against,
        "functions": rows,
        "worst_median_ms": max(row["median_ms"] for row in rows.values()),
        "worst_median_cpu_ms": rows[slowest]["median_cpu_ms"],
        "slowest": slowest,
        "slowest_self_time_by_package_ms": [(p, round(ms, 1)) for p, ms in importtime(slowest)[:12]],
        "runs": args.runs,
    }
    print(json.dumps(result, indent=2))
    against = f" {'before':>8} {'after/before':>12}" if before is not None else ""
    print(f"\n{'function (median ms)':32} {'wall':>8} {'cpu':>8} {'cpu/boto3':>10}{against}")
    print(f"{'(baseline: import boto3)':32} {baseline_wall:8.1f} {baseline_cpu:8.1f} {1:10.2f}")
    for name, row in rows.items():
        extra = f" {row['against_median_cpu_ms']:8.1f} {row['cpu_vs_against']:12.2f}" if before is not None else ""
        print(f"{name:32} {row['median_ms']:8.1f} {row['median_cpu_ms']:8.1f} {row['cpu_ratio']:10.2f}{extra}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
