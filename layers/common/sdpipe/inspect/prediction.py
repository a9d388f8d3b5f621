"""Tell an SD 2.x v-prediction checkpoint (768-v, 2.1) from an epsilon one (512-base), the way
the ecosystem does, from a few hundred bytes of the file.

The file's own word first: ``modelspec.prediction_type`` in its metadata (the Stability AI model
spec). Otherwise ComfyUI's test (``model_detection.py``): the spread of one layer-norm bias near
the UNet's output, which v-prediction training pushes well above 0.09 and epsilon training
leaves below it. Only that tensor's bytes are read (a ranged GET at registration).
"""

from __future__ import annotations

import math
import struct

PREDICTION_TENSOR = "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias"
V_PREDICTION_STD = 0.09
_METADATA_WORDS = {"v": "v_prediction", "v_prediction": "v_prediction", "epsilon": "epsilon", "eps": "epsilon"}
# safetensors dtype -> (struct code, bytes per value); bf16 is widened to float32 by hand.
_FORMATS = {"F16": ("e", 2), "F32": ("f", 4), "F64": ("d", 8), "BF16": ("", 2)}


def prediction_from_metadata(metadata: dict[str, str]) -> str | None:
    return _METADATA_WORDS.get(metadata.get("modelspec.prediction_type", "").strip().lower())


def decode_floats(raw: bytes, dtype: str) -> list[float]:
    """Little-endian floats of a safetensors dtype; ValueError for another dtype."""
    if dtype not in _FORMATS:
        raise ValueError(f"{PREDICTION_TENSOR} is {dtype}, not a float tensor")
    code, width = _FORMATS[dtype]
    count = len(raw) // width
    if dtype == "BF16":
        halves = struct.unpack(f"<{count}H", raw[: count * width])
        return [struct.unpack("<f", struct.pack("<I", half << 16))[0] for half in halves]
    return list(struct.unpack(f"<{count}{code}", raw[: count * width]))


def prediction_from_bias(values: list[float]) -> str:
    """``v_prediction`` when the bias spreads past ComfyUI's threshold, else ``epsilon``."""
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) < 2:
        return "epsilon"
    mean = sum(finite) / len(finite)
    std = math.sqrt(sum((v - mean) ** 2 for v in finite) / len(finite))
    return "v_prediction" if std > V_PREDICTION_STD else "epsilon"
