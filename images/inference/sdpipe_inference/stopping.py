"""Stopping a generation between two denoising steps when its job is cancelled or timed out.

SageMaker's asynchronous endpoints cannot withdraw a request once the container has it, so the
side that ends the job (a cancel, the sweeper) writes ``jobs/<id>/stop.json`` first, and the
container looks for it while it works on that job: once before it starts and then every
``POLL_INTERVAL_S`` on a thread of its own (an S3 GET that finds nothing), so the denoising loop
only reads a flag. The next step boundary raises ``GenerationStopped``; the engine's lock is let
go, nothing is encoded, and the answer is an error with the job's own end (``CANCELLED`` or
``TIMED_OUT``), which finishes the job as it was asked to finish if the cancel never got there.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from types import TracebackType

from sdpipe.contracts.inference import StopRequest
from sdpipe.errors import SdpipeError
from sdpipe_inference.engine import StepProgress

logger = logging.getLogger("sdpipe.inference")
POLL_INTERVAL_S = 0.5


class GenerationStopped(SdpipeError):
    """The job ended while it was generating; the code is its end (CANCELLED or TIMED_OUT)."""

    code = "CANCELLED"


class StopWatch:
    """The engine's ``on_step`` guard for one job: a context manager around its generation.

    ``read_stop(job_id)`` returns the job's stop request, or None while there is none."""

    def __init__(
        self, job_id: str, read_stop: Callable[[str], StopRequest | None], interval: float | None = None
    ) -> None:
        self.job_id = job_id
        self._read_stop = read_stop
        self._interval = POLL_INTERVAL_S if interval is None else interval
        self._request: StopRequest | None = None
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned = False

    def __enter__(self) -> StopWatch:
        self._poll()  # cancelled while it waited in the endpoint's queue: do not even start
        self.check()
        self._thread = threading.Thread(target=self._watch, name=f"stop-watch-{self.job_id}", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join(self._interval + 5)

    def __call__(self, progress: StepProgress) -> None:
        """After a denoising step: stop here if the job has ended."""
        self.check(f" after step {progress.step} of {progress.total} (image {progress.image} of {progress.images})")

    def check(self, where: str = " before it started") -> None:
        request = self._request
        if request is not None:
            detail = f": {request.reason}" if request.reason else ""
            raise GenerationStopped(
                f"job {self.job_id} was {request.status.lower().replace('_', ' ')}{detail}; "
                f"the endpoint stopped generating it{where}",
                code=request.status,
            )

    def _watch(self) -> None:
        while self._request is None and not self._done.wait(self._interval):
            self._poll()

    def _poll(self) -> None:
        try:
            self._request = self._read_stop(self.job_id)
        except Exception as exc:  # S3 unreachable for a moment: the job goes on, the next look may see it
            if not self._warned:
                self._warned = True
                logger.warning("could not look for a stop request of %s: %s", self.job_id, exc)
