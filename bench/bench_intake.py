"""Model intake benchmarks on the local stack: fetch from a URL, and the chunked upload.

For each size (1 GiB and 4 GiB by default), on one fresh local stack per size:

(a) fetch: ``fetch_model`` from the local HTTP file server (ranges supported) through the
    FetchModel workflow until the multipart upload is complete (the job's phase is
    ``registering``), against the baseline of boto3's TransferManager (``upload_file``) putting
    the same bytes from the local file into the same local S3: the median of three alternated
    runs each (the first run on a fresh stack is slower for both). Also: the peak RSS
    of the FetchSteps workers (their REPORT lines), which should not grow with the file.
(b) upload: ``sdpipe upload`` (hashing included) against ``aws s3 cp`` of the same file, as
    processes, until each has returned.

    python bench/bench_intake.py [--sizes-gib 1 4]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MIB = 1024 * 1024
_REPORT = re.compile(r"Max Memory Used: (\d+) MB")
ROUNDS = 3  # each measure against its baseline: the median of three, alternated


def make_file(path: Path, size: int) -> None:
    block = os.urandom(MIB)
    with path.open("wb") as handle:
        for index in range(size // MIB):
            handle.write(block[index % 256 :] + block[: index % 256])  # no two blocks alike


def wait_uploaded(client: Any, job_id: str, timeout_s: float = 3600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.find_job(job_id) or {}
        if job.get("phase") == "registering" or job.get("status") in ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"):
            return job
        time.sleep(0.2)
    raise TimeoutError(job_id)


def measure(size_gib: int, workdir: Path) -> dict[str, Any]:
    from sdpipe.adapters.clients import clients
    from sdpipe_client.client import JobFailed, Sdpipe
    from sdpipe_client.stack import StackOutputs
    from sdpipe_local.file_server import FileServer
    from sdpipe_local.stack import LocalStack

    size = size_gib * 1024 * MIB
    source = workdir / f"bench-{size_gib}g.safetensors"
    make_file(source, size)
    state = workdir / f"state-{size_gib}"
    overrides = {"FetchAllowedNetworks": "127.0.0.1/32", "FetchMaxBytes": str(size * 2)}
    with (
        LocalStack(ROOT / "template.yaml", state_dir=state, parameter_overrides=overrides) as stack,
        FileServer(workdir) as server,
    ):
        os.environ.update(stack.environment())
        clients.reset()
        client = Sdpipe(StackOutputs(stack.outputs))
        s3, bucket = stack.client("s3"), stack.outputs["AssetsBucketName"]

        tm_runs, fetch_runs = [], []
        for run in range(ROUNDS):  # alternated, each on an idle stack (the last registration done)
            stack.wait_idle(timeout_s=600)
            started = time.perf_counter()
            s3.upload_file(str(source), bucket, f"bench/transfer-manager-{size_gib}g.bin")
            tm_runs.append(time.perf_counter() - started)
            s3.delete_object(Bucket=bucket, Key=f"bench/transfer-manager-{size_gib}g.bin")
            stack.wait_idle(timeout_s=600)
            started = time.perf_counter()
            url = server.url(f"/files/{source.name}")
            job_id = client.submit("fetch_model", {"url": url, "type": "checkpoint", "name": f"fetched-{run}"})
            job = wait_uploaded(client, job_id)
            fetch_runs.append(time.perf_counter() - started)
            assert job.get("phase") == "registering", job
            # Random bytes are rejected by registration (and the file deleted), as they should be.
            with contextlib.suppress(JobFailed):
                client.wait(job_id, timeout_s=3600, poll_s=1)
        baseline_s, fetch_s = statistics.median(tm_runs), statistics.median(fetch_runs)
        peaks = [int(m) for m in _REPORT.findall((state / "logs" / "FetchStepsFunction.log").read_text())]

        env = {**os.environ, **stack.environment(), "SDPIPE_STACK_NAME": stack.stack_name}
        cli_runs, upload_runs = [], []
        for run in range(ROUNDS):
            stack.wait_idle(timeout_s=600)
            started = time.perf_counter()
            subprocess.run(
                [str(BIN / "aws"), "s3", "cp", "--quiet", str(source), f"s3://{bucket}/bench/cli-{size_gib}g.bin"],
                env=env,
                check=True,
            )
            cli_runs.append(time.perf_counter() - started)
            s3.delete_object(Bucket=bucket, Key=f"bench/cli-{size_gib}g.bin")
            stack.wait_idle(timeout_s=600)
            started = time.perf_counter()
            subprocess.run(
                [str(BIN / "sdpipe"), "upload", str(source), "--type", "checkpoint",
                 "--name", f"up-{size_gib}g-{run}", "--no-wait"],
                env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            upload_runs.append(time.perf_counter() - started)
        cli_s, upload_s = statistics.median(cli_runs), statistics.median(upload_runs)
    source.unlink()
    return {
        "size_gib": size_gib,
        "transfer_manager_mib_s": round(size / MIB / baseline_s),
        "fetch_mib_s": round(size / MIB / fetch_s),
        "fetch_ratio": round(baseline_s / fetch_s, 2),
        "fetch_parts": -(-size // (64 * MIB)),
        "fetch_worker_peak_rss_mb": max(peaks) if peaks else None,
        "aws_s3_cp_mib_s": round(size / MIB / cli_s),
        "sdpipe_upload_mib_s": round(size / MIB / upload_s),
        "upload_ratio": round(cli_s / upload_s, 2),
        "transfer_manager_runs_s": [round(x, 2) for x in tm_runs],
        "fetch_runs_s": [round(x, 2) for x in fetch_runs],
        "upload_runs_s": [round(x, 2) for x in upload_runs],
        "aws_s3_cp_runs_s": [round(x, 2) for x in cli_runs],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-gib", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="sdpipe-bench-intake-") as workdir:
        for size in args.sizes_gib:
            results.append(measure(size, Path(workdir)))
            print(json.dumps(results[-1]), flush=True)
    machine = platform.processor() or platform.machine()
    print(json.dumps({"machine": machine, "cpus": os.cpu_count(), "results": results}))
    print("  size  TransferMgr      fetch  ratio  peak RSS      s3 cp     upload  ratio")
    for r in results:
        print(
            f"{r['size_gib']:>4}Gi {r['transfer_manager_mib_s']:>6} MiB/s {r['fetch_mib_s']:>4} MiB/s"
            f" {r['fetch_ratio']:>6} {r['fetch_worker_peak_rss_mb']:>6} MB {r['aws_s3_cp_mib_s']:>4} MiB/s"
            f" {r['sdpipe_upload_mib_s']:>4} MiB/s {r['upload_ratio']:>6}"
        )


if __name__ == "__main__":
    main()
