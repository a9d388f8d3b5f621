"""Registration benchmark: a 1 GiB and a 4 GiB safetensors checkpoint dropped into the local stack.

For each size, on a fresh stack (so the worker's peak RSS is that file's alone):
- baseline: this process GETs the same object from the same endpoint and sha256-streams it;
- registration: the RegisterModel handler's own duration (its REPORT line), which covers the
  header checks, detection, the one-pass sha256 + legacy + tensor-data hashes and the writes.
Prints JSON and a table; throughput is reported as a ratio to the baseline measured in the same
run, because this machine is shared and absolute numbers wander.

    python bench/bench_registration.py [--sizes-gib 1 4]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import struct
import tempfile
import time
from pathlib import Path

import boto3
from botocore.config import Config

from sdpipe_local.stack import LocalStack

ROOT = Path(__file__).resolve().parents[1]
GIB = 1024**3
PART = 64 * 1024 * 1024
_REPORT = re.compile(r"Duration: ([\d.]+) ms.*Max Memory Used: (\d+) MB")


def checkpoint_header(size: int, header_length: int = 512) -> bytes:
    """A header for tensors filling the file exactly, named like an SD1.x checkpoint."""
    data = size - 8 - header_length
    small = "cond_stage_model.transformer.text_model.final_layer_norm.weight"
    header = {
        small: {"dtype": "U8", "shape": [8], "data_offsets": [0, 8]},
        "model.diffusion_model.input_blocks.0.0.weight": {
            "dtype": "U8",
            "shape": [data - 8],
            "data_offsets": [8, data],
        },
    }
    raw = json.dumps(header).encode()
    return struct.pack("<Q", header_length) + raw + b" " * (header_length - len(raw))


def upload(stack: LocalStack, key: str, size: int) -> None:
    """Multipart-upload ``size`` bytes (header + pseudo-random data) without holding them in memory."""
    # moto assembles the parts in memory; 4 GiB takes longer than botocore's default 60 s read timeout.
    s3 = boto3.client(
        "s3",
        endpoint_url=stack.endpoint_url,
        config=Config(read_timeout=1800, retries={"max_attempts": 1}),
        **stack.client_credentials(),
    )
    bucket = stack.outputs["AssetsBucketName"]
    block = os.urandom(PART)
    header = checkpoint_header(size)
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    parts, sent, number = [], 0, 1
    while sent < size:
        length = min(PART, size - sent)
        body = (header + block[len(header) : length]) if sent == 0 else block[:length]
        etag = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body)["ETag"]
        parts.append({"ETag": etag, "PartNumber": number})
        sent, number = sent + length, number + 1
    s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts})


def bare_sha256_seconds(stack: LocalStack, key: str) -> float:
    s3 = stack.client("s3")
    started = time.perf_counter()
    body = s3.get_object(Bucket=stack.outputs["AssetsBucketName"], Key=key)["Body"]
    digest = hashlib.sha256()
    for chunk in body.iter_chunks(8 * 1024 * 1024):
        digest.update(chunk)
    return time.perf_counter() - started


def ranged_read_seconds(stack: LocalStack, key: str) -> float:
    """One 1 MiB ranged GET: cheap on S3, a whole-object read on moto (it slices a full copy)."""
    started = time.perf_counter()
    stack.client("s3").get_object(Bucket=stack.outputs["AssetsBucketName"], Key=key, Range="bytes=0-1048575")[
        "Body"
    ].read()
    return time.perf_counter() - started


def wait_registered(table: object, key: str) -> None:
    deadline = time.monotonic() + 1800
    while True:
        items = [i for i in table.scan()["Items"] if i.get("s3_key") == key]  # type: ignore[attr-defined]
        if items and items[0].get("status") not in (None, "PENDING") and not items[0].get("pending_events"):
            assert items[0]["status"] == "ACTIVE", items[0]
            time.sleep(1)  # the handler returns (and logs its REPORT line) just after
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{key} was not registered")
        time.sleep(0.2)


def reports(log: Path) -> list[tuple[float, int]]:
    return [(float(d), int(m)) for d, m in _REPORT.findall(log.read_text())]


def measure(size_gib: int) -> dict[str, float]:
    """Register once (as a drop does), then, with the machine settled, time a bare stream and a
    second registration of the same object, triggered by re-delivering its S3 event."""
    size = size_gib * GIB
    key = f"models/Stable-diffusion/bench-{size_gib}gib.safetensors"
    with (
        tempfile.TemporaryDirectory(prefix="sdpipe-bench-") as state,
        LocalStack(ROOT / "template.yaml", state_dir=state) as stack,
    ):
        log = Path(state) / "logs" / "RegisterModelFunction.log"
        table = stack.resource("dynamodb").Table(stack.outputs["ModelsTableName"])
        upload(stack, key, size)
        wait_registered(table, key)
        first_s = max(d for d, _ in reports(log)) / 1000
        # moto spools gigabytes of parts to disk: let the write-back finish before timing anything.
        os.sync()
        time.sleep(3)
        baseline_s = bare_sha256_seconds(stack, key)
        header_read_s = ranged_read_seconds(stack, key)
        item = next(i for i in table.scan()["Items"] if i.get("s3_key") == key)
        table.delete_item(Key={"model_id": item["model_id"]})  # so the re-delivered event registers again
        seen = len(reports(log))
        record = {
            "eventName": "ObjectCreated:Put",
            "s3": {"bucket": {"name": stack.outputs["AssetsBucketName"]}, "object": {"key": key, "size": size}},
        }
        stack.client("sqs").send_message(
            QueueUrl=stack.outputs["RegisterModelQueueUrl"], MessageBody=json.dumps({"Records": [record]})
        )
        wait_registered(table, key)
        handler_s = max(d for d, _ in reports(log)[seen:]) / 1000
        peak_mb = max(m for _, m in reports(log))
    return {
        "size_gib": size_gib,
        "baseline_mib_s": size / baseline_s / 2**20,
        "registration_mib_s": size / handler_s / 2**20,
        "ratio": baseline_s / handler_s,
        # The same, with the baseline also paying the handler's one header ranged read.
        "ratio_vs_stream_plus_header_read": (baseline_s + header_read_s) / handler_s,
        # The registration right after the upload, while the machine still writes moto's parts back.
        "first_registration_mib_s": size / first_s / 2**20,
        "worker_peak_rss_mb": peak_mb,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-gib", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()
    results = [measure(size) for size in args.sizes_gib]
    print(json.dumps({"machine": f"{platform.machine()} {os.cpu_count()} cores", "results": results}, indent=2))
    columns = ["size", "bare sha256", "registration", "ratio", "ratio*", "right after upload", "worker peak RSS"]
    widths = [6, 13, 13, 6, 7, 19, 16]
    print("\n" + " ".join(f"{c:>{w}}" for c, w in zip(columns, widths, strict=True)))
    for r in results:
        print(
            f"{r['size_gib']:>4} GiB {r['baseline_mib_s']:>8.0f} MiB/s {r['registration_mib_s']:>8.0f} MiB/s "
            f"{r['ratio']:>6.2f} {r['ratio_vs_stream_plus_header_read']:>7.2f} "
            f"{r['first_registration_mib_s']:>13.0f} MiB/s {r['worker_peak_rss_mb']:>13} MB"
        )
    print("ratio*: against a baseline that also pays the header's ranged read (see bench/RESULTS.md)")


if __name__ == "__main__":
    main()
