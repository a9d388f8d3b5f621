"""``sdpipe``: the command line for the pipeline, in AWS or on the embedded local stack."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from sdpipe.adapters.models_table import ModelsTable
from sdpipe.contracts.models import ModelType
from sdpipe.errors import SdpipeError
from sdpipe_client.formatting import print_models
from sdpipe_client.stack import LOCAL_STATE_FILE, read_local_state, stack_outputs


class _Settings:
    def __init__(self, stack: str) -> None:
        self.stack = stack


def _local_module(name: str) -> Any:
    """Import part of the local stack package, which is a development install."""
    import importlib

    try:
        return importlib.import_module(f"sdpipe_local.{name}")
    except ImportError as exc:
        raise click.ClickException(
            f"this command needs the local stack package ({exc.name} is missing): run `make venv` "
            "in the sdpipe checkout, or pip install -e 'local[tiny]'"
        ) from exc


@click.group()
@click.option(
    "--stack", default="sdpipe", envvar="SDPIPE_STACK_NAME", show_default=True, help="CloudFormation stack name."
)
@click.pass_context
def main(ctx: click.Context, stack: str) -> None:
    """Stable Diffusion on AWS as an event-driven serverless pipeline."""
    ctx.obj = _Settings(stack)


# ---------------------------------------------------------------------- local
@main.group()
def local() -> None:
    """Run the whole application on this machine (the embedded local stack)."""


@local.command("up")
@click.option("--port", default=4599, show_default=True, help="Port of the local AWS endpoint (0: any free port).")
@click.option(
    "--template",
    default="template.yaml",
    show_default=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
)
@click.option(
    "--state-dir", default=".sdpipe-local", show_default=True, type=click.Path(file_okay=False, path_type=Path)
)
@click.pass_obj
def local_up(settings: _Settings, port: int, template: Path, state_dir: Path) -> None:
    """Start the stack in the foreground; Ctrl-C stops every process it started."""
    runner = _local_module("runner")
    runner.run_foreground(template=template, port=port, state_dir=state_dir, stack_name=settings.stack)


@local.command("outputs")
@click.option("--json", "as_json", is_flag=True, help="Print the outputs as a JSON object.")
@click.option(
    "--state-dir", default=".sdpipe-local", show_default=True, type=click.Path(file_okay=False, path_type=Path)
)
@click.pass_obj
def local_outputs(settings: _Settings, as_json: bool, state_dir: Path) -> None:
    """The stack's Outputs (bucket, topics, tables) of the running local stack."""
    state = read_local_state(state_dir / LOCAL_STATE_FILE.name)
    if state is not None:
        outputs = state["outputs"]
    else:
        try:
            outputs = stack_outputs(settings.stack).values
        except SdpipeError as exc:
            raise click.ClickException(
                f"no local stack is running here ({LOCAL_STATE_FILE} is missing) and {exc.message}"
            ) from exc
    if as_json:
        click.echo(json.dumps(outputs, indent=2, sort_keys=True))
    else:
        for key in sorted(outputs):
            click.echo(f"{key:34} {outputs[key]}")


@local.command("demo")
def local_demo() -> None:
    """Start the stack, register tiny SD1.x and SDXL checkpoints, print them, stop."""
    demo = _local_module("demo")
    sys.exit(demo.run())


# ---------------------------------------------------------------------- models
@main.group()
def models() -> None:
    """Registered model files (checkpoints, LoRAs, embeddings, ControlNets, VAEs, hypernetworks)."""


@models.command("list")
@click.option("--type", "model_type", type=click.Choice([t.value for t in ModelType]), help="Only this type.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (one array of items).")
@click.pass_obj
def models_list(settings: _Settings, model_type: str | None, as_json: bool) -> None:
    """List registered models, as a table by default."""
    try:
        table = ModelsTable(stack_outputs(settings.stack)["ModelsTableName"])
        items = [
            {k: v for k, v in item.items() if k not in ("pending_event", "claim_token", "claim_expires_at")}
            for item in table.list(ModelType(model_type) if model_type else None)
        ]
    except SdpipeError as exc:
        raise click.ClickException(exc.message) from exc
    if as_json:
        click.echo(json.dumps(items, indent=2, default=str))
    else:
        print_models(items)


@models.command("create-tiny")
@click.option("--family", type=click.Choice(["sd1", "sdxl"]), required=True)
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="The .safetensors file to write."
)
@click.option("--seed", default=0, show_default=True, help="Seed of the random weights.")
def models_create_tiny(family: str, out: Path, seed: int) -> None:
    """Write a tiny random-weight checkpoint in the real single-file layout, and its config folder."""
    tiny = _local_module("tiny_models")
    config = tiny.create_tiny_checkpoint(family, out, seed=seed)
    click.echo(f"wrote {out} ({out.stat().st_size} bytes) and its diffusers config folder {config}/")
