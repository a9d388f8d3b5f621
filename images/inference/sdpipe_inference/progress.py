"""``job.progress`` while the endpoint generates: step, ETA and a cheap preview, published by the
container itself on the events topic (SageMaker's asynchronous endpoints report nothing between
accept and finish).

- At most one event a second per job (the first step's always goes), each with ``step`` and
  ``total_steps`` of the whole job (all batches), ``image`` (the first image of the batch being
  denoised) of ``images``, ``eta_seconds`` and, at most every 2 s, ``preview``: the S3 URI of
  ``jobs/<id>/preview.png``, the current latents decoded with the WebUI's "Approx cheap" linear
  latent -> RGB map (no VAE call), overwritten each time.
- Each update also overwrites ``jobs/<id>/progress.json`` (the same numbers, the last preview
  and when it was drawn): what ``sdpipe txt2img --wait`` draws its progress bar from, since a
  client that polls should not need a queue subscribed to the events topic.
- Publishing and encoding happen on a thread of their own, one at a time: an update that finds
  the previous one still on its way is dropped (the next carries newer numbers), so a slow SNS
  never slows the generation. A failed publish or preview is a warning in the log, nothing more.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sdpipe.contracts.events import Event, EventType, utc_now
from sdpipe_inference.engine import StepProgress

logger = logging.getLogger("sdpipe.inference")
EVENT_INTERVAL_S = 1.0
PREVIEW_INTERVAL_S = 2.0
PREVIEW_SIDE = 256  # the preview's longer side, in pixels

# The WebUI's "Approx cheap" preview (modules/sd_vae_approx.py): each latent channel's
# contribution to R, G and B, fitted to each family's VAE.
_CHEAP_RGB = {
    "sd": ((0.298, 0.207, 0.208), (0.187, 0.286, 0.173), (-0.158, 0.189, 0.264), (-0.184, -0.271, -0.473)),
    "sdxl": ((0.3448, 0.4168, 0.4395), (-0.1953, -0.0290, 0.0250), (0.1074, 0.0886, -0.0163),
             (-0.3730, -0.2499, -0.2088)),
}  # fmt: skip


def cheap_preview(latents: Any, family: str) -> bytes:
    """A small PNG of the first image of ``latents`` (batch x 4 x h x w), without the VAE."""
    import numpy as np
    import torch
    from PIL import Image

    coefficients = torch.tensor(_CHEAP_RGB["sdxl" if family.startswith("sdxl") else "sd"], dtype=torch.float32)
    latent = latents[0, :4].detach().to("cpu", torch.float32)
    rgb = torch.einsum("lhw,lr->hwr", latent, coefficients)
    pixels = ((rgb + 1.0) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
    image = Image.fromarray(np.ascontiguousarray(pixels), "RGB")
    scale = PREVIEW_SIDE / max(image.size)
    if scale > 1:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass(frozen=True)
class JobRef:
    """Which job the events are about, as its envelope names it."""

    job_id: str
    action: str
    request_id: str | None
    context: dict[str, Any]
    family: str
    batch_size: int
    iterations: int  # batches: the job's steps are a batch's steps times these


class ProgressReporter:
    """The engine's ``on_step`` for one job."""

    def __init__(
        self,
        job: JobRef,
        publish: Callable[[Event], None],
        put: Callable[[str, bytes, str], str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``put(key, data, content_type)`` writes an object of the assets bucket, its URI back."""
        self.job = job
        self._publish, self._put, self._clock = publish, put, clock
        # The rate counts from the first step seen: before it the pipeline may have been loading.
        self._first: tuple[float, int] | None = None
        self._last_event: float | None = None
        self._last_preview: float | None = None
        self._preview: dict[str, str] = {}  # the last preview written: its URI and when
        self._busy = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.published = 0

    def __call__(self, progress: StepProgress) -> None:
        now = self._clock()
        if self._last_event is not None and now - self._last_event < EVENT_INTERVAL_S:
            return
        if not self._busy.acquire(blocking=False):
            return  # the previous update is still being sent: this one is dropped
        self._last_event = now
        batch = (progress.image - 1) // self.job.batch_size
        total = progress.total * self.job.iterations
        done = batch * progress.total + progress.step
        if self._first is None:
            self._first = (now, done)
        rate = (done - self._first[1]) / (now - self._first[0]) if now > self._first[0] else None
        outputs: dict[str, Any] = {
            "step": done,
            "total_steps": total,
            "image": progress.image,
            "images": progress.images,
            "eta_seconds": round((total - done) / rate, 2) if rate else None,
            "steps_per_second": round(rate, 2) if rate is not None else None,
        }
        latents = None
        preview_due = self._last_preview is None or now - self._last_preview >= PREVIEW_INTERVAL_S
        if self._put is not None and progress.latents is not None and preview_due:
            self._last_preview = now
            latents = progress.latents.detach().clone()
        thread = threading.Thread(target=self._send, args=(outputs, latents), name="progress", daemon=True)
        self._threads.append(thread)
        thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Wait for the update on its way (so none arrives after the job's end)."""
        for thread in self._threads:
            thread.join(timeout)

    def _send(self, outputs: dict[str, Any], latents: Any) -> None:
        try:
            if self._put is not None:
                if latents is not None:
                    self._write_preview(outputs, latents)
                self._write_snapshot(outputs)
            event = Event(
                type=EventType.JOB_PROGRESS,
                status="RUNNING",
                job_id=self.job.job_id,
                action=self.job.action,
                request_id=self.job.request_id,
                context=self.job.context,
                outputs=outputs,
            )
            self._publish(event)
            self.published += 1
        except Exception as exc:  # the generation goes on
            logger.warning("job.progress for %s not published: %s", self.job.job_id, exc)
        finally:
            self._busy.release()

    def _write_preview(self, outputs: dict[str, Any], latents: Any) -> None:
        assert self._put is not None
        try:
            uri = self._put(f"jobs/{self.job.job_id}/preview.png", cheap_preview(latents, self.job.family), "image/png")
        except Exception as exc:  # a preview is a nicety: the event goes without it
            logger.warning("preview of %s not written: %s", self.job.job_id, exc)
            return
        outputs["preview"] = uri
        self._preview = {"preview": uri, "preview_at": utc_now().isoformat()}

    def _write_snapshot(self, outputs: dict[str, Any]) -> None:
        """``progress.json``: this update, with the last preview even when this one drew none."""
        assert self._put is not None
        snapshot = outputs | self._preview | {"job_id": self.job.job_id, "updated_at": utc_now().isoformat()}
        try:
            self._put(f"jobs/{self.job.job_id}/progress.json", json.dumps(snapshot).encode(), "application/json")
        except Exception as exc:  # the event still goes
            logger.warning("progress.json of %s not written: %s", self.job.job_id, exc)
