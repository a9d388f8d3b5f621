"""Following a generation with ``--wait``: a progress bar drawn from the endpoint's own
``progress.json`` (step, it/s, ETA) while the job is RUNNING, and, with ``--preview``, the
endpoint's preview image kept in a local file that is opened once and overwritten as it changes."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from sdpipe_client.client import Sdpipe

# progress.json changes at most once a second; looking twice as often keeps the bar current.
PROGRESS_POLL_S = 0.5


@dataclass
class PreviewFile:
    """The job's preview as a local file: written when the endpoint draws a new one, opened the
    first time (image viewers reload a file that changes under them)."""

    path: Path
    opener: Callable[[Path], object]
    _drawn_at: str | None = field(default=None, init=False)

    def refresh(self, client: Sdpipe, snapshot: dict[str, Any]) -> None:
        uri, drawn_at = snapshot.get("preview"), snapshot.get("preview_at")
        if not uri or drawn_at == self._drawn_at:
            return
        first = self._drawn_at is None
        client.download(uri, self.path)
        self._drawn_at = drawn_at
        if first:
            self.opener(self.path)


def _rate(snapshot: dict[str, Any]) -> str:
    rate = snapshot.get("steps_per_second")
    return f"{rate:.1f} it/s" if isinstance(rate, int | float) else ""


def _eta(snapshot: dict[str, Any]) -> str:
    eta = snapshot.get("eta_seconds")
    if not isinstance(eta, int | float):
        return ""
    minutes, seconds = divmod(round(eta), 60)
    return f"ETA {minutes}:{seconds:02d}"


def follow_generation(
    client: Sdpipe, job_id: str, *, timeout_s: float, console: Console, preview: PreviewFile | None = None
) -> dict[str, Any]:
    """Wait for the job with a live bar; the finished job (``JobFailed`` as ``wait`` raises it)."""
    started = time.monotonic()
    looked_at, warned = 0.0, False
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("steps {task.fields[rate]} {task.fields[eta]}"),
    )
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(f"{job_id} PUBLISHED", total=None, rate="", eta="")

        def on_change(job: dict[str, Any] | None) -> None:
            status = job["status"] if job else "PUBLISHED"
            bar.console.print(f"{time.monotonic() - started:6.1f}s  {job_id}  {status}")
            bar.update(task, description=f"{job_id} {status}")
            if status == "SUCCEEDED" and bar.tasks[0].total:
                bar.update(task, completed=bar.tasks[0].total, eta="")

        def on_poll(job: dict[str, Any] | None) -> None:
            nonlocal looked_at
            if not job or job["status"] != "RUNNING" or time.monotonic() - looked_at < PROGRESS_POLL_S:
                return
            looked_at = time.monotonic()
            try:
                snapshot = client.progress(job_id)
                if snapshot is None:  # the endpoint has not started on it yet
                    return
                bar.update(task, completed=snapshot["step"], total=snapshot["total_steps"], rate=_rate(snapshot),
                           eta=_eta(snapshot))  # fmt: skip
                if preview is not None:
                    preview.refresh(client, snapshot)
            except (ClientError, ValueError, KeyError) as exc:  # the bar is a nicety: the wait goes on
                nonlocal warned
                if not warned:
                    warned = True
                    bar.console.print(f"[yellow]progress not shown:[/] {exc}")

        return client.wait(job_id, timeout_s=timeout_s, on_change=on_change, on_poll=on_poll)
