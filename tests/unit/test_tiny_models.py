import json

import numpy as np
import pytest
import torch

from sdpipe.inspect.detect import detect
from sdpipe.inspect.safetensors_header import parse_header
from sdpipe_local.tiny_models import build_pipeline, create_tiny_checkpoint, load_tiny_checkpoint


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_tiny_checkpoint_has_the_real_layout_loads_offline_and_generates(tmp_path, family, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = tmp_path / f"tiny-{family}.safetensors"
    config = create_tiny_checkpoint(family, path, seed=7)
    assert json.loads((config / "model_index.json").read_text())["_class_name"].startswith("StableDiffusion")

    data = path.read_bytes()
    header = parse_header(lambda s, n: data[s : s + n], len(data), 1 << 24)
    names = set(header.tensors)
    # The names of a real single-file checkpoint, block structure included.
    assert "model.diffusion_model.input_blocks.0.0.weight" in names
    assert "model.diffusion_model.output_blocks.8.0.skip_connection.weight" in names
    assert "first_stage_model.encoder.mid.attn_1.q.weight" in names
    assert len(header.tensors["first_stage_model.encoder.mid.attn_1.q.weight"].shape) == 4
    if family == "sd1":
        assert "model.diffusion_model.input_blocks.11.0.out_layers.3.weight" in names
        assert "cond_stage_model.transformer.text_model.final_layer_norm.weight" in names
    else:
        assert "model.diffusion_model.label_emb.0.0.weight" in names
        assert "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight" in names
    found = detect(names, header.shapes(), header.metadata)
    assert found is not None and found.family.value == family

    pipeline = load_tiny_checkpoint(path)
    original = build_pipeline(family, tmp_path / "tok", seed=7)
    for component in ("unet", "vae", "text_encoder"):
        loaded_state = getattr(pipeline, component).state_dict()
        for key, tensor in getattr(original, component).state_dict().items():
            assert torch.equal(loaded_state[key], tensor), f"{component}.{key} did not round-trip"

    def generate():
        return pipeline("a red fox", num_inference_steps=2, width=64, height=64, output_type="np",
                        generator=torch.Generator().manual_seed(42)).images[0]  # fmt: skip

    image = generate()
    assert image.shape == (64, 64, 3)
    assert np.array_equal(image, generate())


def test_the_same_seed_gives_the_same_file(tmp_path):
    first, second = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    create_tiny_checkpoint("sd1", first, seed=3)
    create_tiny_checkpoint("sd1", second, seed=3)
    assert first.read_bytes() == second.read_bytes()
