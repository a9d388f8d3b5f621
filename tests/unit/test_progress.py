"""job.progress from the endpoint: at most one event a second, a preview at most every 2 s, the
whole job's steps and an ETA; a failing publish or preview never stops the generation."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from sdpipe.contracts.events import EventType
from sdpipe_inference.engine import StepProgress
from sdpipe_inference.progress import JobRef, ProgressReporter, cheap_preview

JOB = JobRef("j-1", "txt2img", "req-1", {"user": "ana"}, "sd1", batch_size=2, iterations=2)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def latents():
    import torch

    return torch.zeros(2, 4, 8, 8)


def run(reporter: ProgressReporter, clock: Clock, times: list[float], total: int = 10, image: int = 1) -> None:
    for step, at in enumerate(times, start=1):
        clock.now = 100.0 + at
        reporter(StepProgress(step, total, image, 4, latents()))
        reporter.close()


def test_events_are_throttled_to_one_a_second_and_previews_to_one_every_two():
    clock, events, previews, snapshots = Clock(), [], [], []

    def put(key: str, data: bytes, content_type: str) -> str:
        (previews if content_type == "image/png" else snapshots).append((key, data))
        return f"s3://assets/{key}"

    reporter = ProgressReporter(JOB, events.append, put, clock=clock)
    run(reporter, clock, [0.1, 0.4, 0.8, 1.2, 1.6, 2.3, 2.5, 3.4])
    assert [e.outputs["step"] for e in events] == [1, 4, 6, 8]  # at 0.1, 1.2, 2.3 and 3.4 s
    assert all(e.type is EventType.JOB_PROGRESS and e.status == "RUNNING" for e in events)
    assert (events[0].job_id, events[0].request_id, events[0].context) == ("j-1", "req-1", {"user": "ana"})
    assert [("preview" in e.outputs) for e in events] == [True, False, True, False]
    assert {key for key, _ in previews} == {"jobs/j-1/preview.png"}
    first = events[0].outputs
    assert (first["total_steps"], first["image"], first["images"]) == (20, 1, 4)  # two batches of 10 steps
    # Counted from the first step (what came before it may have been the model loading).
    assert first["steps_per_second"] is None and first["eta_seconds"] is None
    assert events[-1].outputs["steps_per_second"] == pytest.approx(7 / 3.3, rel=0.01)
    assert events[-1].outputs["eta_seconds"] == pytest.approx(12 / (7 / 3.3), rel=0.01)
    # Beside each event, the numbers a polling client reads, with the last preview drawn.
    assert [key for key, _ in snapshots] == ["jobs/j-1/progress.json"] * 4
    last = json.loads(snapshots[-1][1])
    assert (last["step"], last["total_steps"], last["job_id"]) == (8, 20, "j-1")
    assert last["preview"] == "s3://assets/jobs/j-1/preview.png" and last["preview_at"] <= last["updated_at"]
    assert json.loads(snapshots[-2][1])["preview_at"] == last["preview_at"]  # drawn at 2.3 s, not since


def test_the_second_batch_counts_on_from_the_first():
    clock, events = Clock(), []
    reporter = ProgressReporter(JOB, events.append, clock=clock)
    run(reporter, clock, [0.0], image=3)  # the batch of images 3 and 4
    assert events[0].outputs["step"] == 11 and "preview" not in events[0].outputs


def test_a_failing_publish_or_preview_is_a_warning_and_the_generation_goes_on(caplog):
    clock, events = Clock(), []

    def broken_publish(_event):
        raise ConnectionError("SNS is down")

    def broken_preview(_key, _data, _content_type):
        raise PermissionError("AccessDenied")

    run(ProgressReporter(JOB, broken_publish, clock=clock), clock, [0.0, 1.5])
    run(ProgressReporter(JOB, events.append, broken_preview, clock=clock), clock, [0.0])
    assert len(events) == 1 and "preview" not in events[0].outputs
    assert "not published: SNS is down" in caplog.text and "preview of j-1 not written: AccessDenied" in caplog.text
    assert "progress.json of j-1 not written: AccessDenied" in caplog.text


def test_the_preview_is_the_webuis_cheap_latent_to_rgb_map():
    import torch

    red = torch.zeros(1, 4, 8, 16)
    red[0, 0] = 2.0  # channel 0 maps mostly to red in SD 1.x's approximation
    image = Image.open(io.BytesIO(cheap_preview(red, "sd1")))
    assert image.size == (256, 128)
    r, g, b = image.getpixel((10, 10))
    assert r > g > 127 and r > b
