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
