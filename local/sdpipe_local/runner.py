"""``sdpipe local up``: the stack in the foreground until Ctrl-C or SIGTERM."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from sdpipe_local.chaos import ChaosConfig, chaos_parameters
from sdpipe_local.stack import LocalStack, StackStartError


def run_foreground(
    *,
    template: Path,
    port: int,
    state_dir: Path,
    stack_name: str,
    fetch_allowed_networks: tuple[str, ...] = (),
    chaos_seed: int | None = None,
) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    print(f"starting the sdpipe local stack from {template} ...", flush=True)
    try:
        overrides = {"FetchAllowedNetworks": ",".join(fetch_allowed_networks)} if fetch_allowed_networks else {}
        if chaos_seed is not None:  # faults are recovered within the lease + sweep: keep both short
            overrides |= chaos_parameters()
        stack = LocalStack(
            template,
            port=port,
            state_dir=state_dir,
            stack_name=stack_name,
            parameter_overrides=overrides,
            chaos=ChaosConfig(seed=chaos_seed) if chaos_seed is not None else None,
        ).start()
    except OSError as exc:
        sys.exit(f"cannot start the local stack: {exc} (is port {port} in use? try --port 0)")
    except StackStartError as exc:
        sys.exit(f"cannot start the local stack: {exc}")
    try:
        print(f"endpoint: {stack.endpoint_url}")
        print("# in another shell, point the AWS CLI and SDKs at it:")
        for name, value in stack.environment().items():
            print(f"export {name}={value}")
        print("# outputs (also: sdpipe local outputs --json, aws cloudformation describe-stacks):")
        for key, value in sorted(stack.outputs.items()):
            print(f"#   {key:34} {value}")
        if fetch_allowed_networks:
            print(f"# fetch_model may connect to {', '.join(fetch_allowed_networks)} (explicitly allowed)")
        print(f"# handler logs: {stack.state_dir / 'logs'}/<Function>.log")
        print("# IAM is enforced: the credentials above are the local administrator's; functions, workflows and")
        print(f"# containers run as their own roles (refusals: {stack.state_dir / 'logs' / 'iam-denied.log'})")
        if stack.chaos is not None:
            print(f"# CHAOS (seed {chaos_seed}): workers and containers are killed and calls throttled at random;")
            print("# the tally of faults injected is printed when the stack stops")
        print("ready - press Ctrl-C to stop", flush=True)
        # A signal delivered to another of the process's threads does not wake a main thread
        # blocked on a lock, and Python runs its handlers only on the main thread: waiting with
        # no timeout could miss a Ctrl-C for good (seen under load in CI). Look again twice a second.
        while not stop.wait(0.5):
            pass
    finally:
        print("stopping ...", flush=True)
        if stack.chaos is not None:
            print(f"faults injected: {stack.chaos.report()['injected']}", flush=True)
        stack.stop()
        print("stopped", flush=True)
