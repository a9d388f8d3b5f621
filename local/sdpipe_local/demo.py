"""``make demo``: the main job end to end on the local stack, from nothing.

Starts the stack; makes tiny SD1.x and SDXL checkpoints and drops them under
models/Stable-diffusion/; prints the registered models and their events; uploads a LoRA with
``sdpipe upload`` (chunked, resumable) and fetches another from a local HTTP server with
``sdpipe fetch`` (the FetchModel workflow, with 127.0.0.1 explicitly allowed); starts a local
asynchronous endpoint; runs ``sdpipe txt2img ... --wait --out out/`` exactly as a user would;
shows the PNG Info of the images, checks that the same seed gives the same pixels, and lists
the jobs and generation records; then makes a small captioned dataset, uploads it with ``sdpipe
datasets upload``, trains a tiny LoRA on it with ``sdpipe train --wait`` (the builtin engine, run by
the local SageMaker training stand-in) and generates with ``<lora:mystyle-demo:1>`` to show the
picture change against the same seed without it. Returns a process exit status.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from sdpipe_local.assets import drop_checkpoint
from sdpipe_local.events_listener import EventsListener
from sdpipe_local.file_server import FileServer
from sdpipe_local.stack import LocalStack
from sdpipe_local.tiny_models import create_tiny_checkpoint, create_tiny_lora

_TIMEOUT_S = 60
OUT_DIR = Path("out")
TXT2IMG = [
    "txt2img", "a red fox in snow", "--model", "tiny-sd1", "--steps", "4", "--width", "64", "--height", "64",
    "--seed", "42", "--batch-size", "2", "--wait", "--out",
]  # fmt: skip


def wait_for_models(stack: LocalStack, keys: list[str], timeout_s: float = _TIMEOUT_S) -> list[dict[str, Any]]:
    """Poll the Models table until every key has left PENDING (or the timeout passes)."""
    table = stack.resource("dynamodb").Table(stack.outputs["ModelsTableName"])
    deadline = time.monotonic() + timeout_s
    while True:
        items = [i for i in table.scan(ConsistentRead=True)["Items"] if i.get("s3_key") in keys]
        settled = [i for i in items if i.get("status", "PENDING") != "PENDING" and not i.get("pending_events")]
        if len(settled) == len(keys) or time.monotonic() > deadline:
            return settled
        time.sleep(0.2)


def _register_models(stack: LocalStack, workdir: Path, console: Console) -> bool:
    from sdpipe_client.formatting import print_models

    bucket = stack.outputs["AssetsBucketName"]
    listener = EventsListener(stack, stack.outputs["EventsTopicArn"])
    s3 = stack.client("s3")
    keys = []
    for family in ("sd1", "sdxl"):
        path = workdir / f"tiny-{family}.safetensors"
        started = time.monotonic()
        create_tiny_checkpoint(family, path, seed=42)
        key = f"models/Stable-diffusion/{path.name}"
        drop_checkpoint(s3, bucket, path, key)
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
    return len(models) == len(keys) and all(m["status"] == "ACTIVE" for m in models)


def _intake(stack: LocalStack, workdir: Path, console: Console) -> bool:
    """A chunked upload and a fetch from a URL, with the CLI, as a user runs them."""
    env = dict(os.environ) | stack.environment() | {"SDPIPE_STACK_NAME": stack.stack_name}
    site = workdir / "site"
    site.mkdir()
    uploaded = create_tiny_lora("sd1", workdir / "demo-ink-sd1.safetensors", seed=1)
    create_tiny_lora("sd1", site / "demo-pencil-sd1.safetensors", seed=2)
    commands = [["sdpipe", "upload", str(uploaded), "--type", "lora", "--name", "demo/ink-sd1.safetensors"]]
    with FileServer(site) as server:
        url = server.url("/download/demo-pencil-sd1.safetensors")  # a redirect, then ranges
        commands.append(["sdpipe", "fetch", url, "--type", "lora", "--name", "demo/pencil-sd1.safetensors"])
        for command in commands:
            console.print(f"\n[bold]$ {' '.join(command)}[/]")
            result = subprocess.run(
                [sys.executable, "-m", "sdpipe_client.cli", *command[1:]],
                env=env,
                check=False,
                capture_output=True,
                text=True,
            )
            sys.stderr.write(result.stderr[-2000:])
            if result.returncode != 0:
                return False
            answer = json.loads(result.stdout.strip().splitlines()[-1])
            model = answer.get("model") or {}
            console.print(
                json.dumps(
                    {"job_id": answer["job_id"], "status": answer["status"]}
                    | {k: model.get(k) for k in ("name", "source", "family", "short_hash", "size")}
                )
            )
            if answer["status"] != "SUCCEEDED":
                return False
    return True


def _generate(stack: LocalStack, console: Console) -> bool:
    from sdpipe.adapters.clients import clients
    from sdpipe.adapters.dynamo import from_dynamo
    from sdpipe_client.client import Sdpipe
    from sdpipe_client.formatting import print_jobs
    from sdpipe_client.stack import StackOutputs
    from sdpipe_inference.infotext import read_parameters

    # This process plays the user: its AWS clients talk to the local stack.
    os.environ.update(stack.environment())
    clients.reset()
    client = Sdpipe(StackOutputs(stack.outputs))
    env = dict(os.environ) | {"SDPIPE_STACK_NAME": stack.stack_name}
    deploy = ["sdpipe", "endpoints", "deploy", "tiny", "--instance-type", "ml.g5.xlarge", "--min", "0", "--max", "2"]
    console.print(f"\n[bold]$ {' '.join(deploy)} --wait[/]  (the deploy workflow; the endpoint is a local process)")
    command = [sys.executable, "-m", "sdpipe_client.cli", *deploy[1:], "--wait"]
    if subprocess.run(command, env=env, check=False).returncode != 0:
        return False
    runs = []
    for attempt in (1, 2):
        out = OUT_DIR if attempt == 1 else OUT_DIR / "again"
        command = ["sdpipe", *TXT2IMG, str(out)]
        console.print(f"\n[bold]$ {' '.join(_quoted(c) for c in command)}[/]")
        earlier = set(out.glob("*.png"))  # images of previous demo runs stay; compare this run's
        result = subprocess.run([sys.executable, "-m", "sdpipe_client.cli", *command[1:]], env=env, check=False)
        if result.returncode != 0:
            return False
        runs.append(sorted(set(out.glob("*.png")) - earlier))
    for path in runs[0]:
        console.print(f"\n[bold]PNG Info of {path}[/]\n{read_parameters(path.read_bytes())}")
    identical = [_pixels(a) == _pixels(b) for a, b in zip(runs[0], runs[1], strict=True)]
    console.print(
        f"\nsame request, same seed, run twice: {'pixel-identical' if all(identical) else 'DIFFERENT'} images"
    )
    console.print("\n[bold]$ sdpipe jobs list[/]")
    print_jobs(client.list_jobs(), console)
    table = stack.resource("dynamodb").Table(stack.outputs["GenerationsTableName"])
    rows = table.scan()["Items"]
    console.print(f"\n[bold]generations[/] (DynamoDB {stack.outputs['GenerationsTableName']}): {len(rows)} rows")
    for row in sorted(rows, key=lambda r: (r["created_at"], int(r["image_index"])))[:2]:
        fields = ("job_id", "image_index", "seed", "sampler", "steps", "model_name", "model_hash", "image_s3_uri")
        console.print(json.dumps({k: from_dynamo(row.get(k)) for k in fields}))
    return len(runs[0]) == 2 and all(identical) and len(rows) == 4


LORA_TOML = """\
# Kohya train_network options (sd-scripts' --config_file form); a tiny run for the tiny model.
[network]
network_dim = 4
network_alpha = 4

[training]
resolution = 64
train_batch_size = 4
max_train_epochs = 2
save_every_n_epochs = 1
learning_rate = 1e-3
output_name = "mystyle-demo"
"""


def _train(stack: LocalStack, workdir: Path, console: Console) -> bool:
    """A captioned dataset, a LoRA trained on it with the builtin engine, and the LoRA at work."""
    from sdpipe_local.assets import create_tiny_dataset

    env = dict(os.environ) | stack.environment() | {"SDPIPE_STACK_NAME": stack.stack_name}
    folder = create_tiny_dataset(workdir / "dataset", concept="mystyle", repeats=10, count=4, size=64)
    config = workdir / "lora.toml"
    config.write_text(LORA_TOML)
    console.print(f"\n[bold]{config}[/]\n{LORA_TOML}")
    commands = [
        ["sdpipe", "datasets", "upload", str(folder), "--name", "mystyle", "--replace"],
        ["sdpipe", "train", "--base-model", "tiny-sd1", "--dataset", "mystyle", "--family", "sd1",
         "--config", str(config), "--wait"],
    ]  # fmt: skip
    for command in commands:
        console.print(f"\n[bold]$ {' '.join(command)}[/]")
        result = subprocess.run([sys.executable, "-m", "sdpipe_client.cli", *command[1:]], env=env, check=False)
        if result.returncode != 0:
            return False
    images = []
    for prompt in ("a red fox in snow", "a red fox in snow <lora:mystyle-demo:1>"):
        out = OUT_DIR / ("lora" if "<lora" in prompt else "no-lora")
        command = ["sdpipe", "txt2img", prompt, "--model", "tiny-sd1", "--steps", "4", "--width", "64",
                   "--height", "64", "--seed", "42", "--wait", "--out", str(out)]  # fmt: skip
        console.print(f"\n[bold]$ {' '.join(_quoted(c) for c in command)}[/]")
        earlier = set(out.glob("*.png"))
        result = subprocess.run([sys.executable, "-m", "sdpipe_client.cli", *command[1:]], env=env, check=False)
        made = sorted(set(out.glob("*.png")) - earlier)
        if result.returncode != 0 or len(made) != 1:
            return False
        images.append(made[0])
    differs = _pixels(images[0]) != _pixels(images[1])
    console.print(
        f"\nsame seed with and without <lora:mystyle-demo:1>: {'different' if differs else 'IDENTICAL'} images "
        f"({images[0]} vs {images[1]})"
    )
    return differs


def _pixels(path: Path) -> bytes:
    from PIL import Image

    with Image.open(path) as image:
        return image.tobytes()


def _quoted(arg: str) -> str:
    return f'"{arg}"' if " " in arg else arg


def run() -> int:
    console = Console(width=None if sys.stdout.isatty() else 140)
    with (
        tempfile.TemporaryDirectory(prefix="sdpipe-demo-") as workdir,
        # Fetching from 127.0.0.1 (the demo's file server) is allowed explicitly; by default the
        # local stack refuses private and loopback addresses, as the stack in AWS does.
        LocalStack(
            "template.yaml",
            state_dir=Path(workdir) / "state",
            parameter_overrides={"FetchAllowedNetworks": "127.0.0.1/32"},
        ) as stack,
    ):
        console.print(f"[bold]local stack[/] up on {stack.endpoint_url}")
        ok = _register_models(stack, Path(workdir), console)
        ok = ok and _intake(stack, Path(workdir), console)
        ok = ok and _generate(stack, console)
        ok = ok and _train(stack, Path(workdir), console)
        console.print("\n[bold green]demo finished[/]" if ok else "\n[bold red]demo failed[/]")
        console.print("stopping the local stack")
        return 0 if ok else 1
