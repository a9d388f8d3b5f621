"""``sdpipe datasets …`` and ``sdpipe train``: training data and Kohya LoRA training jobs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from sdpipe.errors import SdpipeError
from sdpipe_client.client import JobFailed, Sdpipe
from sdpipe_client.datasets import Datasets, plan_dataset
from sdpipe_client.formatting import print_dataset, print_datasets


class _Settings(Protocol):
    stack: str


def _datasets(settings: _Settings) -> Datasets:
    return Datasets(Sdpipe.for_stack(settings.stack))


@click.group()
def datasets() -> None:
    """Training datasets in Kohya's layout under datasets/<name>/ (<repeats>_<concept>/ folders)."""


@datasets.command("upload")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--name", help="Dataset name (default: the folder's, or the concept of a <repeats>_<concept> folder).")
@click.option("--replace", is_flag=True, help="Delete what is under datasets/<name>/ first.")
@click.option("--concurrency", default=8, show_default=True, help="Files uploaded at once.")
@click.option("--json", "as_json", is_flag=True, help="Print the registered record as JSON.")
@click.pass_obj
def datasets_upload(settings: _Settings, /, folder: Path, **options: Any) -> None:
    """Upload a dataset folder (or one 10_concept folder), drop the _READY marker, show the result.

    Exits non-zero when the stack rejects the dataset; its problems say why.
    """
    try:
        local = plan_dataset(folder, options["name"])
        client = _datasets(settings)
        total = sum(path.stat().st_size for path, _ in local.files)
        columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
        with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
            task = progress.add_task(f"datasets/{local.name}/ ({len(local.files)} files)", total=total)
            record = client.upload(
                local,
                replace=options["replace"],
                concurrency=options["concurrency"],
                on_file=lambda n: progress.advance(task, n),
            )
    except SdpipeError as exc:
        raise click.ClickException(exc.message) from exc
    if options["as_json"]:
        click.echo(record.model_dump_json(indent=2))
    else:
        print_dataset(record)
    if not record.is_usable:
        raise SystemExit(1)


@datasets.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def datasets_list(settings: _Settings, as_json: bool) -> None:
    """Every dataset: concepts with repeats, image and caption counts, resolutions, problems."""
    try:
        records = _datasets(settings).all()
    except SdpipeError as exc:
        raise click.ClickException(exc.message) from exc
    if as_json:
        click.echo(json.dumps([r.model_dump(mode="json") for r in records], indent=2))
    else:
        print_datasets(records)


@datasets.command("describe")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def datasets_describe(settings: _Settings, name: str, as_json: bool) -> None:
    """One dataset in full, with every problem found."""
    try:
        record = _datasets(settings).describe(name)
    except SdpipeError as exc:
        raise click.ClickException(exc.message) from exc
    if as_json:
        click.echo(record.model_dump_json(indent=2))
    else:
        print_dataset(record)


@datasets.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask.")
@click.pass_obj
def datasets_delete(settings: _Settings, name: str, yes: bool) -> None:
    """Delete a dataset's files and its record."""
    if not yes:
        click.confirm(f"delete datasets/{name}/ and its record?", abort=True)
    try:
        deleted = _datasets(settings).delete(name)
    except SdpipeError as exc:
        raise click.ClickException(exc.message) from exc
    click.echo(f"deleted dataset {name} ({deleted} files)")


def _config(path: Path | None, overrides: tuple[str, ...]) -> dict[str, Any]:
    """Kohya options from a TOML file (its tables are flattened, as sd-scripts does) and --set."""
    import tomllib

    config: dict[str, Any] = {}
    if path is not None:
        try:
            document = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise click.BadParameter(f"{path}: {exc}", param_hint="--config") from None
        for key, value in document.items():
            config |= value if isinstance(value, dict) else {key: value}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r} is not key=value", param_hint="--set")
        try:
            config[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            config[key.strip()] = raw  # a bare word: a string
    return config


@click.command("train")
@click.option("--base-model", required=True, help="Registered checkpoint (name, 'name [hash]' or sha256 prefix).")
@click.option("--dataset", required=True, help="Registered dataset name.")
@click.option("--family", type=click.Choice(["sd1", "sd2", "sdxl"]), required=True)
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Kohya train_network options as TOML (sd-scripts' --config_file form).")  # fmt: skip
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="One Kohya option (repeatable).")
@click.option("--engine", type=click.Choice(["kohya", "builtin"]), help="Default: the stack's DefaultTrainingEngine.")
@click.option("--instance-type", help="SageMaker instance type (default: the stack's TrainingInstanceType).")
@click.option("--max-runtime", "max_runtime_seconds", type=int, help="Seconds before SageMaker stops the job.")
@click.option("--request-id", help="Idempotency key (default: random); the same id never trains twice.")
@click.option("--wait/--no-wait", default=False, show_default=True, help="Follow the job: status, step and loss.")
@click.option("--timeout", default=24 * 3600, show_default=True, help="Seconds --wait waits.")
@click.pass_obj
def train(settings: _Settings, /, **options: Any) -> None:
    """Train a LoRA (Kohya train_network) on a SageMaker training job; every saved LoRA is registered."""
    params: dict[str, Any] = {
        "base_model": options["base_model"],
        "dataset": options["dataset"],
        "family": options["family"],
        "config": _config(options["config_file"], options["overrides"]),
    }
    params |= {k: options[k] for k in ("engine", "instance_type", "max_runtime_seconds") if options[k]}
    client = Sdpipe.for_stack(settings.stack)
    try:
        job_id = client.submit("train_lora", params, request_id=options["request_id"])
    except SdpipeError as exc:
        raise click.ClickException(exc.message) from exc
    if not options["wait"]:
        click.echo(job_id)
        return
    console = Console(stderr=True)
    console.print(f"job {job_id} (cancel with: sdpipe jobs cancel {job_id})")
    last: dict[str, Any] = {}

    def show(job: dict[str, Any] | None) -> None:
        if job is None:
            return
        progress = job.get("progress") or {}
        seen = {"status": job.get("status"), **progress}
        if seen == last:
            return
        last.clear()
        last.update(seen)
        line = str(job.get("status"))
        if progress.get("step"):
            line += f"  step {progress['step']}/{progress.get('total_steps', '?')}"
            if progress.get("epoch"):
                line += f"  epoch {progress['epoch']}/{progress.get('epochs', '?')}"
            line += f"  loss {progress.get('loss', float('nan')):.4f}"
        console.print(line)

    try:
        job = client.wait(job_id, timeout_s=options["timeout"], poll_s=1.0, on_poll=show)
    except JobFailed as exc:
        raise click.ClickException(exc.message) from exc
    except SdpipeError as exc:
        raise click.ClickException(exc.message) from exc
    for model in (job.get("outputs") or {}).get("models", []):
        console.print(f"registered {model.get('title')}  {model.get('s3_key')}")
    click.echo(json.dumps({"job_id": job_id, "status": job["status"], "outputs": job.get("outputs")}, default=str))


COMMANDS: list[Any] = [datasets, train]
