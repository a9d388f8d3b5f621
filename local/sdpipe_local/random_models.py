"""Real-architecture checkpoints with random weights (``sdpipe models create-random``).

The architecture is the shipped config of the family (``sdpipe_inference.family_configs``), the
key names and shapes those of the reference single files (``model.diffusion_model.*``,
``first_stage_model.*``, CLIP under ``cond_stage_model`` or ``conditioner.embedders``), and no
config folder goes beside the file: it loads the way a downloaded checkpoint does. For
benchmarks, the GPU checks and the tests that need real sizes (sd-scripts cannot load the tiny
checkpoints). Fast to build: the modules are laid out on the meta device (no initialiser runs)
and each tensor is drawn once, in the target dtype.

Weights are N(0, 0.02), norm scales 1 and biases 0, so activations stay finite and a generation
runs end to end; the pictures are noise. An SD2 v-prediction file carries the spread of the bias
registration reads to tell it from epsilon (``sdpipe.inspect.prediction``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from sdpipe.inspect.prediction import PREDICTION_TENSOR
from sdpipe_local.ldm_keys import clip_state_with_prefix, open_clip_from_clip_state, unet_to_ldm, vae_to_ldm

RandomFamily = Literal["sd1", "sd2", "sdxl", "sdxl_refiner"]
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
_ARCHITECTURE = {
    "sd1": "stable-diffusion-v1",
    "sd2": "stable-diffusion-v2-768-v",
    "sdxl": "stable-diffusion-xl-v1-base",
    "sdxl_refiner": "stable-diffusion-xl-v1-refiner",
}


def create_random_checkpoint(
    family: RandomFamily,
    out: Path,
    *,
    dtype: str = "fp16",
    seed: int = 0,
    prediction: str | None = None,
    variant: str | None = None,
) -> Path:
    """Write ``out`` (safetensors, single-file layout, no config folder); return it. ``variant``
    ``inpainting`` is an inpainting model of the family (a 9-channel UNet; SD1 ships one)."""
    import torch
    from safetensors.torch import save_file

    from sdpipe_inference.family_configs import built_configs_dir, config_folder, config_name

    if prediction is None and family == "sd2":
        prediction = "v_prediction"  # SD 2.x 768, the model most SD2 checkpoints derive from
    config = config_folder(config_name(family, variant, prediction), built_configs_dir())
    generator = torch.Generator().manual_seed(seed)
    torch_dtype = getattr(torch, DTYPES[dtype])
    state = {name: _random(name, shape, torch_dtype, generator) for name, shape in _single_file_shapes(family, config)}
    if prediction == "v_prediction":  # the marker registration reads, spread as v-prediction training leaves it
        marker = state[PREDICTION_TENSOR]
        state[PREDICTION_TENSOR] = torch.empty(marker.shape).normal_(0.0, 0.2, generator=generator).to(torch_dtype)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    architecture = _ARCHITECTURE[family] + (f"-{variant}" if variant else "")
    metadata = {"format": "pt", "modelspec.architecture": architecture,
                "modelspec.title": f"sdpipe random {family} ({dtype}, seed {seed})"}  # fmt: skip
    save_file(state, str(out), metadata=metadata)
    return out


def _random(name: str, shape: tuple[int, ...], dtype: Any, generator: Any) -> Any:
    import torch

    if not shape:  # OpenCLIP's logit scale
        return torch.tensor(4.6052, dtype=dtype)
    if len(shape) == 1 and ("norm" in name or ".ln_" in name):
        return (torch.ones if name.endswith("weight") else torch.zeros)(shape, dtype=dtype)
    if len(shape) == 1 and name.endswith(".bias"):
        return torch.zeros(shape, dtype=dtype)
    # Drawn in float32 (half-precision sampling is slow on CPUs), a block at a time.
    return torch.empty(shape, dtype=torch.float32).normal_(0.0, 0.02, generator=generator).to(dtype)


def _single_file_shapes(family: RandomFamily, config: Path) -> Iterator[tuple[str, tuple[int, ...]]]:
    """Every tensor of the family's reference single file: its LDM name and shape."""
    import diffusers
    import torch
    import transformers

    def shapes(module: Any) -> dict[str, Any]:
        return {name: torch.empty(tuple(t.shape), device="meta") for name, t in module.state_dict().items()}

    with torch.device("meta"):
        unet = diffusers.UNet2DConditionModel.from_config(_read(config / "unet" / "config.json"))  # type: ignore[no-untyped-call]
        vae = diffusers.AutoencoderKL.from_config(_read(config / "vae" / "config.json"))  # type: ignore[no-untyped-call]
        encoder = text = None
        if family != "sdxl_refiner":  # the refiner has SDXL's second (OpenCLIP) encoder only
            text = transformers.CLIPTextConfig.from_pretrained(config / "text_encoder")
            text_model = transformers.CLIPTextModelWithProjection if family == "sd2" else transformers.CLIPTextModel
            encoder = text_model(text)
        second = None
        if family.startswith("sdxl"):
            text_2 = transformers.CLIPTextConfig.from_pretrained(config / "text_encoder_2")
            second = transformers.CLIPTextModelWithProjection(text_2)
    state = unet_to_ldm(shapes(unet), unet.config) | vae_to_ldm(shapes(vae), len(vae.config.block_out_channels))
    clip = clip_state_with_prefix(shapes(encoder)) if encoder is not None else {}
    if family == "sd1":
        state |= {"cond_stage_model.transformer." + k: v for k, v in clip.items()}
    elif family == "sd2":
        assert text is not None
        state |= open_clip_from_clip_state(clip, text.num_hidden_layers, "cond_stage_model.model.")
    else:
        state |= {"conditioner.embedders.0.transformer." + k: v for k, v in clip.items()}
        assert second is not None
        # The base's OpenCLIP is its second embedder; the refiner's, its only one.
        open_clip_prefix = f"conditioner.embedders.{0 if family == 'sdxl_refiner' else 1}.model."
        state |= open_clip_from_clip_state(
            clip_state_with_prefix(shapes(second)), second.config.num_hidden_layers, open_clip_prefix
        )
    for name, tensor in sorted(state.items()):
        yield name, tuple(tensor.shape)


def _read(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.read_text())
    return document
