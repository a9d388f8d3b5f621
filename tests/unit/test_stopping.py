"""Stopping a generation between steps: the container looks for the job's stop request before it
starts and then on a thread of its own, and the next step boundary ends the generation."""

from __future__ import annotations

import threading
import time

import pytest

from sdpipe.contracts.inference import StopRequest
from sdpipe_inference.engine import StepProgress
from sdpipe_inference.stopping import GenerationStopped, StopWatch


def step(n: int, total: int = 30) -> StepProgress:
    return StepProgress(n, total, 1, 2, None)


def test_a_job_ended_before_the_container_took_it_never_starts():
    stopped = StopRequest(status="TIMED_OUT", reason="the job did not finish by its deadline")
    with pytest.raises(GenerationStopped) as stop, StopWatch("j-1", lambda _id: stopped, interval=0.01):
        pytest.fail("the generation started")
    assert stop.value.code == "TIMED_OUT"
    assert stop.value.message == (
        "job j-1 was timed out: the job did not finish by its deadline; the endpoint stopped generating it "
        "before it started"
    )


def test_a_cancel_mid_generation_stops_it_at_the_next_step_and_the_watcher_ends():
    cancelled = threading.Event()
    looked_for: list[str] = []

    def read_stop(job_id: str) -> StopRequest | None:
        looked_for.append(job_id)
        return StopRequest(status="CANCELLED", reason="enough") if cancelled.is_set() else None

    watch = StopWatch("j-2", read_stop, interval=0.01)
    with pytest.raises(GenerationStopped) as stop, watch:
        watch(step(1))
        watch(step(2))  # nothing asked yet: the steps go on
        cancelled.set()
        deadline = time.monotonic() + 5
        for n in range(3, 31):
            watch(step(n))
            time.sleep(0.02)
            assert time.monotonic() < deadline
    assert stop.value.code == "CANCELLED" and "enough" in stop.value.message
    assert "after step" in stop.value.message and "of 30 (image 1 of 2)" in stop.value.message
    assert set(looked_for) == {"j-2"}
    count = len(looked_for)
    time.sleep(0.05)
    assert len(looked_for) == count  # the watcher stopped looking with the generation


def test_a_failing_look_is_one_warning_and_the_generation_goes_on(caplog):
    def read_stop(_job_id: str) -> StopRequest | None:
        raise ConnectionError("S3 is unreachable")

    watch = StopWatch("j-3", read_stop, interval=0.01)
    with watch:
        for n in range(1, 6):
            watch(step(n))
            time.sleep(0.02)
    warnings = [r for r in caplog.records if "stop request of j-3" in r.getMessage()]
    assert len(warnings) == 1 and "S3 is unreachable" in warnings[0].getMessage()
