"""``--wait`` draws its bar from the endpoint's progress.json and ``--preview`` keeps the preview
file fresh: downloaded when the endpoint draws a new one, opened once."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from sdpipe_client import follow
from sdpipe_client.follow import PreviewFile, follow_generation


class FakeClient:
    """Plays a job that is queued, runs three polls (two previews drawn) and succeeds."""

    def __init__(self) -> None:
        self.snapshots = [
            None,  # RUNNING before the endpoint wrote anything
            {"step": 10, "total_steps": 40, "steps_per_second": 12.5, "eta_seconds": 2.4,
             "preview": "s3://assets/jobs/j-1/preview.png", "preview_at": "t1"},
            {"step": 20, "total_steps": 40, "steps_per_second": 12.0, "eta_seconds": 1.7,
             "preview": "s3://assets/jobs/j-1/preview.png", "preview_at": "t1"},
            {"step": 30, "total_steps": 40, "steps_per_second": 12.1, "eta_seconds": 0.8,
             "preview": "s3://assets/jobs/j-1/preview.png", "preview_at": "t2"},
        ]  # fmt: skip
        self.downloads: list[tuple[str, Path]] = []

    def progress(self, job_id: str):
        return self.snapshots.pop(0)

    def download(self, uri: str, path: Path) -> Path:
        self.downloads.append((uri, path))
        path.write_bytes(b"png")
        return path

    def wait(self, job_id, *, timeout_s, on_change, on_poll):
        statuses = ["QUEUED", "RUNNING", "RUNNING", "RUNNING", "RUNNING", "SUCCEEDED"]
        last = None
        for status in statuses:
            job = {"job_id": job_id, "status": status}
            if status != last:
                on_change(job)
            on_poll(job)
            last = status
        return job


def console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=120, force_terminal=False), out


def test_the_bar_shows_the_endpoints_steps_and_the_preview_is_refreshed_when_redrawn(monkeypatch, tmp_path):
    monkeypatch.setattr(follow, "PROGRESS_POLL_S", 0.0)
    client, (screen, out) = FakeClient(), console()
    opened: list[Path] = []
    preview = PreviewFile(tmp_path / "j-1-preview.png", opened.append)
    job = follow_generation(client, "j-1", timeout_s=60, console=screen, preview=preview)  # type: ignore[arg-type]
    assert job["status"] == "SUCCEEDED"
    text = out.getvalue()
    assert "j-1  QUEUED" in text and "j-1  RUNNING" in text and "j-1  SUCCEEDED" in text
    assert "40/40 steps" in text  # the bar is full at the end
    # Downloaded when first drawn and when redrawn (t1, t2), not for the poll that saw t1 again.
    assert [uri for uri, _ in client.downloads] == ["s3://assets/jobs/j-1/preview.png"] * 2
    assert opened == [tmp_path / "j-1-preview.png"] and opened[0].read_bytes() == b"png"


def test_a_progress_that_cannot_be_read_is_one_warning_and_the_wait_goes_on(monkeypatch):
    from botocore.exceptions import ClientError

    monkeypatch.setattr(follow, "PROGRESS_POLL_S", 0.0)
    client, (screen, out) = FakeClient(), console()

    def denied(job_id: str):
        raise ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "GetObject")

    monkeypatch.setattr(client, "progress", denied)
    assert follow_generation(client, "j-1", timeout_s=60, console=screen)["status"] == "SUCCEEDED"  # type: ignore[arg-type]
    assert out.getvalue().count("progress not shown") == 1


@pytest.mark.parametrize(("snapshot", "rate", "eta"), [
    ({"steps_per_second": 7.25, "eta_seconds": 125.4}, "7.2 it/s", "ETA 2:05"),
    ({"steps_per_second": None, "eta_seconds": None}, "", ""),
])  # fmt: skip
def test_rate_and_eta_are_short(snapshot, rate, eta):
    assert (follow._rate(snapshot), follow._eta(snapshot)) == (rate, eta)
