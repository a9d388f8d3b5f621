"""Human-readable renderings of items."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.table import Table


def human_size(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def models_table(models: Iterable[dict[str, Any]]) -> Table:
    table = Table(show_lines=False)
    for column in ("NAME", "TYPE", "FAMILY", "SIZE", "HASH", "STATUS", "FORMAT", "NOTE"):
        table.add_column(column, overflow="fold")
    for model in sorted(models, key=lambda m: (m.get("type", ""), m.get("name", ""))):
        error = model.get("error") or {}
        table.add_row(
            model.get("name", "?"),
            model.get("type", "?"),
            model.get("family") or "-",
            human_size(model.get("size")),
            model.get("short_hash") or "-",
            model.get("status", "?"),
            model.get("format") or "-",
            f"{error.get('code')}: {error.get('message')}" if error else "",
        )
    return table


def print_models(models: Iterable[dict[str, Any]], console: Console | None = None) -> None:
    (console or Console()).print(models_table(models))


def print_jobs(jobs: Iterable[dict[str, Any]], console: Console | None = None) -> None:
    table = Table(show_lines=False)
    for column in ("JOB", "ACTION", "STATUS", "CREATED", "MODEL", "NOTE"):
        table.add_column(column, overflow="fold")
    for job in jobs:
        error = job.get("error") or {}
        outputs = job.get("outputs") or {}
        note = f"{error.get('code')}: {error.get('message')}" if error else ""
        if not note and outputs.get("images"):
            note = f"{len(outputs['images'])} images, seeds {outputs.get('all_seeds')}"
        progress = job.get("progress") or {}
        if not note and progress.get("bytes_total"):
            note = f"{progress.get('bytes_done', 0):,} of {progress['bytes_total']:,} bytes"
        if not note and outputs.get("models"):  # a finished training: what it registered
            note = ", ".join(str(m.get("title") or m.get("name")) for m in outputs["models"])
        if not note and progress.get("step"):
            note = f"step {progress['step']}/{progress.get('total_steps', '?')}, loss {progress.get('loss', 0):.4f}"
        model = (job.get("model") or outputs.get("model") or {}).get("name")
        table.add_row(
            job.get("job_id", "?"),
            job.get("action", "?"),
            job.get("status", "?"),
            str(job.get("created_at", ""))[:19],
            model or "-",
            note,
        )
    (console or Console()).print(table)


def print_endpoints(endpoints: Iterable[dict[str, Any]], console: Console | None = None) -> None:
    table = Table(show_lines=False)
    for column in ("ENDPOINT", "STATUS", "INSTANCE TYPE", "SCALING", "IN FLIGHT", "UPDATED", "NOTE"):
        table.add_column(column, overflow="fold")
    for endpoint in endpoints:
        note = endpoint.get("failure_reason") or (
            f"job {endpoint['pending_job']}" if endpoint.get("pending_job") else ""
        )
        table.add_row(
            str(endpoint.get("name")),
            str(endpoint.get("status")),
            str(endpoint.get("instance_type") or "-"),
            f"{endpoint.get('min_instances', '?')}..{endpoint.get('max_instances', '?')}",
            str(endpoint.get("in_flight", 0)),
            str(endpoint.get("updated_at", ""))[:19],
            str(note),
        )
    (console or Console()).print(table)


def print_datasets(datasets: Iterable[Any], console: Console | None = None) -> None:
    """``DatasetRecord``s as a table: one row each."""
    table = Table(show_lines=False)
    for column in ("DATASET", "STATUS", "CONCEPTS", "IMAGES", "CAPTIONS", "STEPS/EPOCH", "RESOLUTIONS", "PROBLEMS"):
        table.add_column(column, overflow="fold")
    for record in datasets:
        concepts = ", ".join(f"{c.concept} x{c.repeats}" for c in record.concepts) or "-"
        resolutions = ", ".join(f"{r} ({n})" for r, n in list(record.resolutions.items())[:4]) or "-"
        if len(record.resolutions) > 4:
            resolutions += f", +{len(record.resolutions) - 4} more"
        problems = str(len(record.problems)) if record.problems else "-"
        if record.error:
            problems = f"{record.error['code']}: {record.error['message']}"
        table.add_row(
            record.name,
            record.status.value,
            concepts,
            str(record.images),
            str(record.captions),
            str(record.steps_per_epoch_at_batch_1),
            resolutions,
            problems,
        )
    (console or Console()).print(table)


def print_dataset(record: Any, console: Console | None = None) -> None:
    """One ``DatasetRecord`` in full: its concepts, then every problem found."""
    console = console or Console()
    console.print(f"[bold]{record.name}[/bold]  {record.status.value}  s3 prefix {record.prefix}")
    if record.error:
        console.print(f"[red]{record.error['code']}: {record.error['message']}[/red]")
    console.print(
        f"{record.images} images, {record.captions} captions, {human_size(record.bytes)}; "
        f"{record.steps_per_epoch_at_batch_1} steps per epoch at batch size 1"
    )
    concepts = Table(show_lines=False)
    for column in ("FOLDER", "CONCEPT", "REPEATS", "IMAGES", "CAPTIONS", "RESOLUTIONS"):
        concepts.add_column(column, overflow="fold")
    for concept in record.concepts:
        concepts.add_row(
            concept.folder,
            concept.concept,
            str(concept.repeats),
            str(concept.images),
            str(concept.captions),
            ", ".join(f"{r} ({n})" for r, n in concept.resolutions.items()) or "-",
        )
    console.print(concepts)
    if record.problems:
        problems = Table(show_lines=False, title="problems")
        for column in ("SEVERITY", "PATH", "CODE", "MESSAGE"):
            problems.add_column(column, overflow="fold")
        for problem in record.problems:
            problems.add_row(problem.severity.value, problem.path, problem.code, problem.message)
        console.print(problems)
