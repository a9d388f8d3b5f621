"""LoRAs hot-swapped into one adapter slot (what a compiled UNet needs to run on without
recompiling) make the same pictures as LoRAs loaded side by side, on the CPU without compiling."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from sdpipe.contracts.inference import Txt2ImgParams
from sdpipe_inference.acceleration import HOT_ADAPTER, Acceleration
from sdpipe_inference.engine import AddOn, AddOns, Engine, ModelSpec
from sdpipe_local.tiny_models import config_folder_for, create_tiny_lora


@pytest.fixture(scope="module")
def loras(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hotswap")
    found = []
    for seed, rank in ((1, 4), (2, 8)):  # different ranks: the slot is padded to the largest
        path = create_tiny_lora("sd1", folder / f"style-{seed}.safetensors", seed=seed, rank=rank)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        found.append(AddOn(path.stem, digest, digest[:10], path, 0.8))
    return found


def test_hot_swapped_loras_draw_what_side_by_side_loras_draw(tiny_checkpoints, loras):
    path = tiny_checkpoints["sd1"]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    model = ModelSpec(path.stem, digest, digest[:10], "sd1", path, config_folder_for(path))
    params = Txt2ImgParams(prompt="a fox", steps=3, width=64, height=64, seed=9)
    hot = Engine(device="cpu", acceleration=Acceleration("cpu", hotswap_loras=True, lora_max_rank=16))
    plain = Engine(device="cpu", acceleration=Acceleration("cpu"))
    first, second = loras
    sequence = [(first,), (second,), (), (first,)]
    for chosen in sequence:
        swapped = np.asarray(hot.generate(params, model, AddOns(loras=chosen)).images[0], dtype=int)
        reference = np.asarray(plain.generate(params, model, AddOns(loras=chosen)).images[0], dtype=int)
        assert np.abs(swapped - reference).max() <= 1, [lora.name for lora in chosen]
    pipeline, _ = hot.cache.get(model)
    assert set(pipeline.get_list_adapters()["unet"]) == {HOT_ADAPTER}  # one slot, never a second adapter
    assert (hot.cache.lora_loads, plain.cache.lora_loads) == (3, 2)  # the slot reloads; side by side loads once
