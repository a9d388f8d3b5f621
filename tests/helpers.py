"""Builders of model files for tests: safetensors bytes without torch, Kohya-style key sets."""

from __future__ import annotations

import functools
import json
import math
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parents[1]
# The pseudo parameters CloudFormation would give the template (what the local stack uses).
PSEUDO = {
    "AWS::Region": "us-east-1",
    "AWS::AccountId": "123456789012",
    "AWS::Partition": "aws",
    "AWS::StackName": "sdpipe",
}
_SIZES = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8, "U8": 1}


def safetensors_bytes(
    tensors: dict[str, tuple[str, tuple[int, ...]]],
    metadata: dict[str, str] | None = None,
    fill: bytes = b"\x01",
) -> bytes:
    """A valid safetensors file; tensor contents are ``fill`` repeated (contents do not matter)."""
    header: dict[str, object] = {}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        length = math.prod(shape) * _SIZES[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + length]}
        offset += length
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    data = (fill * (offset // len(fill) + 1))[:offset]
    return struct.pack("<Q", len(raw)) + raw + data


def raw_safetensors(header: object, data: bytes = b"", length: int | None = None) -> bytes:
    """A file with an arbitrary (possibly invalid) header, for the bad-input cases."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def kohya_lora(family: str = "sd1", rank: int = 4) -> dict[str, tuple[str, tuple[int, ...]]]:
    """The tensor names and shapes of a small Kohya LoRA for ``family``."""
    context = {"sd1": 768, "sd2": 1024, "sdxl": 2048}[family]
    if family == "sdxl":
        base = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2"
        te = "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"
    else:
        base = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2"
        te = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    te_width = 1024 if family == "sd2" else 768
    return {
        f"{base}_to_k.lora_down.weight": ("F16", (rank, context)),
        f"{base}_to_k.lora_up.weight": ("F16", (320, rank)),
        f"{base}_to_k.alpha": ("F16", ()),
        f"{te}.lora_down.weight": ("F16", (rank, te_width)),
        f"{te}.lora_up.weight": ("F16", (te_width, rank)),
        f"{te}.alpha": ("F16", ()),
    }


@functools.cache
def _template() -> dict:
    from samtranslator.yaml_helper import yaml_parse

    return yaml_parse((ROOT / "template.yaml").read_text())  # type: ignore[no-any-return]


def create_table_from_template(dynamodb_client, logical_id: str, table_name: str) -> None:
    """Create a table exactly as template.yaml declares it (keys and indexes: one source)."""
    properties = _template()["Resources"][logical_id]["Properties"]
    kwargs = {
        k: properties[k] for k in ("AttributeDefinitions", "KeySchema", "GlobalSecondaryIndexes") if k in properties
    }
    dynamodb_client.create_table(TableName=table_name, BillingMode="PAY_PER_REQUEST", **kwargs)


_T = TypeVar("_T")


def wait_until(check: Callable[[], _T], timeout: float = 30, every: float = 0.2, what: str = "the condition") -> _T:
    """Poll ``check`` until it returns something truthy (returned); fail naming ``what`` and the last
    value seen after ``timeout`` seconds. The one way the tests wait for something to happen (to
    show something does *not* happen, wait for the stack to be idle: ``LocalStack.wait_idle``)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:.0f}s (last seen: {value!r})")
        time.sleep(every)
