"""Tell what a model file really is from its tensor names, shapes and metadata.

Names decide the type and, for checkpoints, the family (the text-encoder layout differs between
SD1.x, SD2.x and SDXL), so tiny test models with real layouts are detected like real ones. Shapes
(the cross-attention context width: 768 SD1.x, 1024 SD2.x, 2048 SDXL, 1280 SDXL refiner) and
Kohya's ``ss_base_model_version`` metadata settle the family where names alone cannot.
Pickle files give names only (their shapes live in opcodes we never execute).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from sdpipe.contracts.models import ModelFamily, ModelType

_CONTEXT_DIM_FAMILY: dict[int, ModelFamily] = {
    768: ModelFamily.SD1,
    1024: ModelFamily.SD2,
    2048: ModelFamily.SDXL,
    1280: ModelFamily.SDXL_REFINER,
}
_LYCORIS_MARKERS = (".hada_w1_a", ".lokr_w1", ".oft_blocks", ".lokr_w1_a", ".b1.weight")
_HYPERNETWORK_KEY = re.compile(r"^\d+\.\d+\.linear\.\d+\.(weight|bias)$")
_HYPERNETWORK_STRINGS = {"layer_structure", "activation_func", "is_layer_norm"}


@dataclass(frozen=True)
class Detection:
    type: ModelType
    family: ModelFamily
    details: dict[str, str] = field(default_factory=dict)


def detect(
    names: Iterable[str],
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Detection | None:
    """Return what the tensors describe, or None when they describe no known model type."""
    keys = set(names)
    shapes = shapes or {}
    metadata = metadata or {}
    for detector in (_checkpoint, _controlnet, _lora, _embedding, _vae, _hypernetwork):
        found = detector(keys, shapes, metadata)
        if found is not None:
            return found
    return None


def _any_prefix(keys: set[str], *prefixes: str) -> bool:
    return any(key.startswith(prefixes) for key in keys)


def _context_family(keys: set[str], shapes: Mapping[str, tuple[int, ...]], pattern: str) -> ModelFamily:
    """Family from the input width of cross-attention key projections matching ``pattern``."""
    regex = re.compile(pattern)
    for key in sorted(keys):
        shape = shapes.get(key)
        if shape and len(shape) >= 2 and regex.search(key):
            family = _CONTEXT_DIM_FAMILY.get(shape[1])
            if family is not None:
                return family
    return ModelFamily.UNKNOWN


def _checkpoint(keys: set[str], shapes: Mapping[str, tuple[int, ...]], _m: Mapping[str, str]) -> Detection | None:
    if not _any_prefix(keys, "model.diffusion_model."):
        return None
    if _any_prefix(keys, "conditioner.embedders.1.model."):
        family = ModelFamily.SDXL
    elif _any_prefix(keys, "conditioner.embedders.0.model."):
        family = ModelFamily.SDXL_REFINER
    elif _any_prefix(keys, "conditioner.embedders."):
        family = ModelFamily.SDXL
    elif _any_prefix(keys, "cond_stage_model.model."):
        family = ModelFamily.SD2
    elif _any_prefix(keys, "cond_stage_model.transformer."):
        family = ModelFamily.SD1
    else:
        family = _context_family(keys, shapes, r"^model\.diffusion_model\..*attn2\.to_k\.weight$")
    details: dict[str, str] = {}
    conv_in = shapes.get("model.diffusion_model.input_blocks.0.0.weight")
    if conv_in and len(conv_in) == 4:
        details["in_channels"] = str(conv_in[1])
        if conv_in[1] == 9:
            details["variant"] = "inpainting"
        elif conv_in[1] == 8:
            details["variant"] = "instruct-pix2pix"
    details["has_vae"] = str(_any_prefix(keys, "first_stage_model."))
    return Detection(ModelType.CHECKPOINT, family, details)


def _controlnet(keys: set[str], shapes: Mapping[str, tuple[int, ...]], metadata: Mapping[str, str]) -> Detection | None:
    if _any_prefix(keys, "control_model.", "input_hint_block."):
        if _any_prefix(keys, "control_model.label_emb.", "label_emb."):
            family = ModelFamily.SDXL
        else:
            family = _context_family(keys, shapes, r"attn2\.to_k\.weight$")
        layout = "ldm"
    elif _any_prefix(keys, "controlnet_cond_embedding."):
        if _any_prefix(keys, "add_embedding."):
            family = ModelFamily.SDXL
        else:
            family = _context_family(keys, shapes, r"attn2\.to_k\.weight$")
        layout = "diffusers"
    else:
        return None
    if family == ModelFamily.UNKNOWN:
        family = _family_from_metadata(metadata)
    return Detection(ModelType.CONTROLNET, family, {"layout": layout})


def _lora(keys: set[str], shapes: Mapping[str, tuple[int, ...]], metadata: Mapping[str, str]) -> Detection | None:
    kohya = _any_prefix(keys, "lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")
    peft = any(
        (".lora_A." in k or ".lora_B." in k or ".lora.down." in k or ".lora_down." in k)
        and k.startswith(("unet.", "text_encoder.", "text_encoder_2.", "transformer."))
        for k in keys
    )
    if not (kohya or peft):
        return None
    details = {"naming": "kohya" if kohya else "diffusers"}
    if any(marker in key for key in keys for marker in _LYCORIS_MARKERS):
        details["algorithm"] = "lycoris"
    ranks = {
        shape[0] for key, shape in shapes.items() if (key.endswith((".lora_down.weight", ".lora_A.weight"))) and shape
    }
    if len(ranks) == 1:
        details["rank"] = str(ranks.pop())
    family = _family_from_metadata(metadata)
    if family is ModelFamily.UNKNOWN:
        if _any_prefix(
            keys, "lora_te1_", "lora_te2_", "text_encoder_2.", "lora_unet_input_blocks_", "lora_unet_output_blocks_"
        ):
            family = ModelFamily.SDXL
        else:
            family = _context_family(keys, shapes, r"attn2[._]to_k(\.lora_down|\.lora_A|\.lora\.down)\.weight$")
    return Detection(ModelType.LORA, family, details)


def _family_from_metadata(metadata: Mapping[str, str]) -> ModelFamily:
    version = metadata.get("ss_base_model_version", "") or metadata.get("modelspec.architecture", "")
    version = version.lower()
    if "refiner" in version:
        return ModelFamily.SDXL_REFINER
    if "sdxl" in version or "stable-diffusion-xl" in version:
        return ModelFamily.SDXL
    if version.startswith(("sd_v2", "stable-diffusion-v2")):
        return ModelFamily.SD2
    if version.startswith(("sd_v1", "stable-diffusion-v1")):
        return ModelFamily.SD1
    if metadata.get("ss_v2", "").lower() == "true":
        return ModelFamily.SD2
    return ModelFamily.UNKNOWN


def _embedding(keys: set[str], shapes: Mapping[str, tuple[int, ...]], _m: Mapping[str, str]) -> Detection | None:
    if {"clip_l", "clip_g"} <= keys:
        vectors = shapes.get("clip_l", (0,))[0]
        return Detection(ModelType.EMBEDDING, ModelFamily.SDXL, {"vectors": str(vectors)})
    if "emb_params" in keys:
        shape = shapes.get("emb_params")
        family = ModelFamily.UNKNOWN
        details: dict[str, str] = {}
        if shape and len(shape) == 2:
            family = {768: ModelFamily.SD1, 1024: ModelFamily.SD2}.get(shape[1], ModelFamily.UNKNOWN)
            details["vectors"] = str(shape[0])
        return Detection(ModelType.EMBEDDING, family, details)
    if "string_to_param" in keys:  # A1111 .pt embeddings
        return Detection(ModelType.EMBEDDING, ModelFamily.UNKNOWN, {"layout": "a1111-pt"})
    return None


def _vae(keys: set[str], shapes: Mapping[str, tuple[int, ...]], _m: Mapping[str, str]) -> Detection | None:
    stripped = {k.removeprefix("first_stage_model.") for k in keys}
    if not ({"encoder.conv_in.weight", "decoder.conv_out.weight"} <= stripped):
        return None
    # SD1.x, SD2.x and SDXL VAEs share one architecture, so the weights cannot tell them apart;
    # 16 latent channels mean an SD3/Flux VAE, which none of the supported families use.
    latent = shapes.get("decoder.conv_in.weight") or shapes.get("first_stage_model.decoder.conv_in.weight")
    details = {"latent_channels": str(latent[1])} if latent and len(latent) == 4 else {}
    layout = "diffusers" if any(".down_blocks." in k for k in stripped) else "ldm"
    details["layout"] = layout
    return Detection(ModelType.VAE, ModelFamily.UNKNOWN, details)


def _hypernetwork(keys: set[str], _s: Mapping[str, tuple[int, ...]], _m: Mapping[str, str]) -> Detection | None:
    if keys & _HYPERNETWORK_STRINGS or any(_HYPERNETWORK_KEY.match(k) for k in keys):
        return Detection(ModelType.HYPERNETWORK, ModelFamily.UNKNOWN, {})
    return None
