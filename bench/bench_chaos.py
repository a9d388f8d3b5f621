"""The chaos batch (``sdpipe_local.chaos_scenario``) with several seeds, beside a clean run.

    .venv/bin/python bench/bench_chaos.py [SEED ...]      (default: 1913 7 42)

Each run starts a fresh local stack (event lease and sweep period 5 s, as ``sdpipe local up
--chaos`` sets them), prepares a checkpoint, a dataset and an endpoint, then runs the batch:
6 txt2img requests (a third delivered twice), an upload, a fetch and a 2-step training. The
baseline is the same batch on a stack without faults, in the same run. Printed: faults injected,
jobs by outcome, terminal events per job (after de-duplication by event id), duplicate
publications, event lateness (arrival minus the job's ``finished_at``: p50 and max), what was
left behind, and the wall time; the Markdown table goes to bench/RESULTS.md by hand.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.chdir(REPO)

from sdpipe.adapters.clients import clients  # noqa: E402
from sdpipe_local.chaos import ChaosConfig  # noqa: E402
from sdpipe_local.chaos_scenario import BatchReport, client_for, prepare, run_batch  # noqa: E402
from sdpipe_local.pytest_plugin import CHAOS_STACK_PARAMETERS  # noqa: E402
from sdpipe_local.stack import LocalStack  # noqa: E402


def run(seed: int | None) -> BatchReport:
    with (
        tempfile.TemporaryDirectory() as work,
        LocalStack(
            "template.yaml",
            stack_name=f"bench-chaos-{seed if seed is not None else 'clean'}",
            state_dir=Path(work) / "stack",
            parameter_overrides=CHAOS_STACK_PARAMETERS,
            chaos=ChaosConfig(seed=seed) if seed is not None else None,
        ) as stack,
    ):
        for name, value in stack.environment().items():
            os.environ[name] = value
        clients.reset()
        client = client_for(stack)
        prepare(stack, client, Path(work))
        return run_batch(stack, client, Path(work))


def row(label: str, report: BatchReport) -> str:
    outcomes = Counter(str(job.get("status", "NEVER CREATED")) for job in report.jobs.values())
    crashed = sum(1 for j in report.jobs.values() if (j.get("error") or {}).get("code") == "ENDPOINT_CRASHED")
    late = sorted(report.lateness_s.values()) or [0.0]
    kills = report.injected.get("lambda_worker_killed", 0) + report.injected.get("endpoint_container_killed", 0)
    throttles = sum(v for k, v in report.injected.items() if k.endswith("_throttled"))
    events = set(report.terminal_events.values())
    left = len(report.open_multipart_uploads) + report.stored_events_left + sum(report.dead_letters.values())
    return (
        f"| {label} | {kills} ({report.injected.get('endpoint_container_killed', 0)} containers) | {throttles} | "
        f"{dict(outcomes)} ({crashed} ENDPOINT_CRASHED) | {'exactly 1' if events == {1} else events} | "
        f"{report.duplicate_publications} | {statistics.median(late):.1f} s / {max(late):.1f} s | {left} | "
        f"{report.seconds:.0f} s |"
    )


def main() -> None:
    seeds = [int(s) for s in sys.argv[1:]] or [1913, 7, 42]
    rows = [row("no faults (baseline)", run(None))]
    for seed in seeds:
        report = run(seed)
        rows.append(row(f"seed {seed}", report))
        print(report.injected, flush=True)
    print(
        "| Run | Kills (of which endpoint containers) | Throttled calls | Jobs | Terminal events per job "
        "| Duplicate publications | Event lateness p50 / max | Left behind | Wall time |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
