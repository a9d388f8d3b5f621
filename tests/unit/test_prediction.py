"""SD 2.x v-prediction told from epsilon at registration: the file's metadata, else the spread of
one layer-norm bias (ComfyUI's test), read with a ranged GET of that tensor alone."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import save

from sdpipe.adapters.object_store import ObjectStore
from sdpipe.inspect.prediction import PREDICTION_TENSOR, decode_floats, prediction_from_bias
from sdpipe.layout import parse_model_key
from sdpipe.logic.inspection import InspectionLimits, inspect_model

LIMITS = InspectionLimits(header_cap=1 << 20, pickle_cap=1 << 20, chunk_size=64 * 1024)
KEY = "models/Stable-diffusion/sd21.safetensors"


def sd2_file(bias_std: float, dtype: str = "float16", metadata: dict[str, str] | None = None) -> bytes:
    """The tensors registration looks at in an SD 2.x single file (OpenCLIP-H text encoder)."""
    rng = np.random.default_rng(0)
    tensors = {
        "model.diffusion_model.input_blocks.0.0.weight": np.zeros((320, 4, 3, 3), dtype=dtype),
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": np.zeros(
            (320, 1024), dtype=dtype
        ),
        "cond_stage_model.model.ln_final.weight": np.ones(1024, dtype=dtype),
        PREDICTION_TENSOR: (rng.standard_normal(320) * bias_std).astype(dtype),
    }
    return save(tensors, metadata=metadata)


@pytest.fixture
def store(moto_clients):
    moto_clients.get("s3").create_bucket(Bucket="assets")
    return ObjectStore("assets", moto_clients)


def inspect(store: ObjectStore, body: bytes):
    store.put_bytes(KEY, body, "application/octet-stream")
    key, info = parse_model_key(KEY), store.head(KEY)
    assert key is not None and info is not None
    return inspect_model(store, info, key, LIMITS)


@pytest.mark.parametrize(("std", "expected"), [(0.2, "v_prediction"), (0.02, "epsilon")])
def test_the_bias_spread_tells_v_prediction_from_epsilon(store, std, expected):
    found = inspect(store, sd2_file(std))
    assert found.family.value == "sd2" and found.details["prediction"] == expected


def test_the_files_own_word_wins(store):
    declared = sd2_file(0.2, metadata={"modelspec.prediction_type": "epsilon"})
    assert inspect(store, declared).details["prediction"] == "epsilon"


@pytest.mark.parametrize("dtype", ["F16", "BF16", "F32"])
def test_float_tensors_of_each_width_are_read(dtype):
    values = [0.5, -1.25, 3.0]
    raw = {
        "F16": np.array(values, dtype="<f2").tobytes(),
        "F32": np.array(values, dtype="<f4").tobytes(),
        "BF16": b"".join(np.array([v], dtype="<f4").tobytes()[2:] for v in values),
    }[dtype]
    assert decode_floats(raw, dtype) == values
    with pytest.raises(ValueError, match="not a float tensor"):
        decode_floats(raw, "I64")
    assert prediction_from_bias([float("nan")]) == "epsilon"
