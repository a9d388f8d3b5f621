"""What several integration modules use: large LoRA files, the bucket's open uploads, waiting for a
model to be registered. (Fixtures are in conftest.py; these are plain functions.)"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from sdpipe.adapters.clients import clients
from tests.helpers import kohya_lora, safetensors_bytes, wait_until

MIB = 1024 * 1024
# A txt2img payload small enough for the tiny models on a CPU (two 64x64 images in four steps).
FOX_PARAMS = {
    "prompt": "a red fox in snow",
    "steps": 4,
    "width": 64,
    "height": 64,
    "seed": 42,
    "batch_size": 2,
    "sampler_name": "Euler a",
}


@contextlib.contextmanager
def pointed_at(stack: Any) -> Iterator[None]:
    """boto3 (and the sdpipe client) in this process on ``stack`` for a module's fixture (the
    function-scoped ``aws_env`` does it for one test)."""
    patch = pytest.MonkeyPatch()
    for name, value in stack.environment().items():
        patch.setenv(name, value)
    clients.reset()
    try:
        yield
    finally:
        patch.undo()
        clients.reset()


@contextlib.contextmanager
def frozen(stack: Any, endpoint_name: str) -> Iterator[Any]:
    """The endpoint's container stopped (SIGSTOP) while the block runs: an instance that takes the
    work and does not answer, as a hung GPU would, for as long as the test needs and without the
    CPU a long generation would burn. The container carries on where it was afterwards."""
    endpoint = stack.sagemaker.endpoint(f"{stack.stack_name}-{endpoint_name}")
    process = endpoint.process
    os.kill(process.pid, signal.SIGSTOP)
    try:
        yield endpoint
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)


def big_lora(mib: int, seed: int = 0) -> bytes:
    """A valid SD1 Kohya LoRA of about ``mib`` MiB (one wide padding module)."""
    tensors = kohya_lora("sd1") | {"lora_unet_padding.lora_down.weight": ("F32", (4, mib * MIB // 16))}
    return safetensors_bytes(tensors, fill=bytes([seed + 1, 2, 3, 4]))


def open_uploads(stack: Any) -> list[str]:
    s3 = stack.client("s3")
    return [u["Key"] for u in s3.list_multipart_uploads(Bucket=stack.outputs["AssetsBucketName"]).get("Uploads", [])]


def wait_active(stack: Any, key: str, timeout: float = 60) -> dict[str, Any]:
    """The Models item of ``key`` once it is ACTIVE and its event is out."""
    table = stack.resource("dynamodb").Table(stack.outputs["ModelsTableName"])

    def registered() -> dict[str, Any] | None:
        for item in table.scan(ConsistentRead=True)["Items"]:
            if item.get("s3_key") == key and item.get("status") == "ACTIVE" and not item.get("pending_events"):
                return dict(item)
        return None

    return wait_until(registered, timeout, what=f"{key} registered")
