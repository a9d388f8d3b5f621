"""``make demo``: the main job end to end on the local stack, from nothing.

Starts the stack, makes tiny SD1.x and SDXL checkpoints, drops them under
models/Stable-diffusion/, and prints the registered models read back from DynamoDB and the
events received on the events topic. Returns a process exit status.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from sdpipe_local.events_listener import EventsListener
from sdpipe_local.stack import LocalStack
from sdpipe_local.tiny_models import create_tiny_checkpoint

_TIMEOUT_S = 60


def wait_for_models(stack: LocalStack, keys: list[str], timeout_s: float = _TIMEOUT_S) -> list[dict[str, Any]]:
    """Poll the Models table until every key has left PENDING (or the timeout passes)."""
    table = stack.resource("dynamodb").Table(stack.outputs["ModelsTableName"])
    deadline = time.monotonic() + timeout_s
    while True:
        items = [i for i in table.scan(ConsistentRead=True)["Items"] if i.get("s3_key") in keys]
        settled = [i for i in items if i.get("status", "PENDING") != "PENDING" and "pending_event" not in i]
        if len(settled) == len(keys) or time.monotonic() > deadline:
            return settled
        time.sleep(0.2)


def run() -> int:
    from sdpipe_client.formatting import print_models

    console = Console(width=None if sys.stdout.isatty() else 140)
    with (
        tempfile.TemporaryDirectory(prefix="sdpipe-demo-") as workdir,
        LocalStack("template.yaml", state_dir=Path(workdir) / "state") as stack,
    ):
        console.print(f"[bold]local stack[/] up on {stack.endpoint_url}")
        bucket = stack.outputs["AssetsBucketName"]
        listener = EventsListener(stack, stack.outputs["EventsTopicArn"])
        s3 = stack.client("s3")
        keys = []
        for family in ("sd1", "sdxl"):
            path = Path(workdir) / f"tiny-{family}.safetensors"
            started = time.monotonic()
            create_tiny_checkpoint(family, path, seed=42)
            key = f"models/Stable-diffusion/{path.name}"
            s3.upload_file(str(path), bucket, key)  # multipart above 8 MiB, as large files are
            keys.append(key)
            took = time.monotonic() - started
            console.print(
                f"created {path.name} ({path.stat().st_size:,} bytes) in {took:.1f}s, dropped at s3://{bucket}/{key}"
            )
        started = time.monotonic()
        models = wait_for_models(stack, keys)
        took = time.monotonic() - started
        table_name = stack.outputs["ModelsTableName"]
        console.print(f"\n[bold]registered models[/] (DynamoDB {table_name}, {took:.1f}s after the last drop):")
        print_models(models, console)
        events = listener.wait_for(
            lambda got: sum(e.get("type") == "model.registered" for e in got) >= len(keys), timeout_s=10
        )
        console.print(f"\n[bold]events[/] on {stack.outputs['EventsTopicArn']}:")
        for event in events:
            model = event.get("model") or {}
            console.print(
                json.dumps(
                    {k: event.get(k) for k in ("type", "status", "occurred_at")}
                    | {"model": {k: model.get(k) for k in ("name", "type", "family", "short_hash", "size")}}
                )
            )
        ok = len(models) == len(keys) and all(m["status"] == "ACTIVE" for m in models)
        console.print(
            "\n[bold green]demo finished[/]" if ok else "\n[bold red]demo failed: not every model was registered[/]"
        )
        console.print("stopping the local stack")
        return 0 if ok else 1
