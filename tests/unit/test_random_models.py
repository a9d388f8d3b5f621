"""`sdpipe models create-random`: real single-file key names and shapes for each family, checked
against diffusers' own single-file detection and converters on meta tensors (no weights are
allocated; the integration tier writes a real-size file and generates with it)."""

from __future__ import annotations

import pytest

from sdpipe.inspect.detect import detect

# (family, variant) -> (what diffusers infers from the keys, what registration detects, UNet input channels)
EXPECTED = {
    ("sd1", None): ("v1", "sd1", "4"),
    ("sd1", "inpainting"): ("inpainting", "sd1", "9"),
    ("sd2", None): ("v2", "sd2", "4"),
    ("sdxl", None): ("xl_base", "sdxl", "4"),
    ("sdxl_refiner", None): ("xl_refiner", "sdxl_refiner", "4"),
}


def _meta_state(family: str, variant: str | None) -> tuple[dict, object]:
    import torch

    from sdpipe_inference.family_configs import built_configs_dir, config_folder, config_name
    from sdpipe_local.random_models import _single_file_shapes

    prediction = "v_prediction" if family == "sd2" else None
    config = config_folder(config_name(family, variant, prediction), built_configs_dir())
    state = {name: torch.empty(shape, device="meta") for name, shape in _single_file_shapes(family, config)}  # type: ignore[arg-type]
    return state, config


@pytest.mark.parametrize(("family", "variant"), list(EXPECTED))
def test_a_random_checkpoint_has_the_reference_files_keys_and_shapes(family, variant):
    import diffusers
    import torch
    from diffusers.loaders.single_file_utils import (
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        infer_diffusers_model_type,
    )

    state, config = _meta_state(family, variant)
    diffusers_type, registered, in_channels = EXPECTED[family, variant]
    assert infer_diffusers_model_type(state) == diffusers_type
    shapes = {name: tuple(t.shape) for name, t in state.items()}
    found = detect(shapes, shapes)
    assert found is not None and found.family.value == registered and found.details["in_channels"] == in_channels
    assert found.details.get("variant") == variant
    with torch.device("meta"):
        unet = diffusers.UNet2DConditionModel.from_config(diffusers.UNet2DConditionModel.load_config(config / "unet"))
        vae = diffusers.AutoencoderKL.from_config(diffusers.AutoencoderKL.load_config(config / "vae"))
    for converted, module in (
        (convert_ldm_unet_checkpoint(state, unet.config), unet),
        (convert_ldm_vae_checkpoint(state, vae.config), vae),
    ):
        expected = {name: tuple(t.shape) for name, t in module.state_dict().items()}
        assert {name: tuple(t.shape) for name, t in converted.items()} == expected
