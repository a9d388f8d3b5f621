"""The chaos batch (``sdpipe_local.chaos_scenario``) with several seeds, beside a clean run.

    .venv/bin/python bench/bench_chaos.py [SEED ...]      (default: 1913 7 42)

Each run starts a fresh local stack (event lease and sweep period 5 s, as ``sdpipe local up
--chaos`` sets them), prepares a checkpoint, a dataset and an endpoint, then runs the batch:
6 txt2img requests (a third delivered twice), an upload, a fetch and a 2-step training. The
baseline is the same batch on a stack without faults, in the same run. Printed per run
(``BatchReport.summary``): faults injected, jobs by outcome, terminal events per job (after
de-duplication by event id), duplicate publications, event lateness (first arrival minus the
event's write: p50, p95, max), what was left behind, and the wall time.
"""

from __future__ import annotations

import os
import sys
import tempfile
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


def main() -> None:
    seeds = [int(s) for s in sys.argv[1:]] or [1913, 7, 42]
    lines = [f"| no faults (baseline) | {run(None).summary()} |"]
    for seed in seeds:
        lines.append(f"| seed {seed} | {run(seed).summary()} |")
        print(lines[-1], flush=True)
    print("| Run | Figures |\n|---|---|")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
