"""``sdpipe datasets …`` and ``sdpipe train``: training data and Kohya LoRA training jobs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from sdpipe.errors import SdpipeError
from sdpipe_client.client import Sdpipe
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


COMMANDS: list[Any] = [datasets]
