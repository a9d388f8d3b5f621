"""LoRA weights in Kohya's file format, with the ``ss_*`` metadata and ``sshs_*`` hashes it writes.

Names follow sd-scripts' ``networks.lora``: ``lora_unet_*`` (diffusers block names for SD1.x, the
original ``input_blocks``/``middle_block``/``output_blocks`` names for SDXL), ``lora_te_*`` for
SD1.x's text encoder and ``lora_te1_*``/``lora_te2_*`` for SDXL's two; each module has
``.lora_down.weight``, ``.lora_up.weight`` and ``.alpha``. AUTOMATIC1111, ComfyUI and diffusers'
``load_lora_weights`` read these files.
"""

from __future__ import annotations

import hashlib
import io
import re
from typing import Any

_DOWN_BLOCK = re.compile(r"^lora_unet_down_blocks_(\d+)_attentions_(\d+)_")
_MID_BLOCK = re.compile(r"^lora_unet_mid_block_attentions_0_")
_UP_BLOCK = re.compile(r"^lora_unet_up_blocks_(\d+)_attentions_(\d+)_")
# transformers 5 dropped ``text_model.`` from CLIPTextModel's own names; Kohya's files have it.
_TEXT_ENCODER = re.compile(r"^(lora_te[12]?_)(?!text_model_)")


def kohya_state_dict(
    peft_states: dict[str, dict[str, Any]], *, family: str, alpha: float, layers_per_block: int
) -> dict[str, Any]:
    """``{"unet": …, "text_encoder": …, "text_encoder_2": …}`` peft LoRA state dicts in Kohya names."""
    import torch
    from diffusers.utils import convert_state_dict_to_kohya  # type: ignore[attr-defined]

    prefixed = {f"{part}.{name}": tensor for part, state in peft_states.items() for name, tensor in state.items()}
    converted: dict[str, Any] = {}
    for diffusers_name, tensor in convert_state_dict_to_kohya(prefixed).items():
        renamed = (
            diffusers_name.replace("lora_te1_", "lora_te_", 1)
            if family == "sd1"
            else _sgm_unet_name(diffusers_name, layers_per_block)
        )
        name = _TEXT_ENCODER.sub(r"\1text_model_", renamed)
        # diffusers writes alpha = rank; the trained network's alpha is what scales it.
        converted[name] = torch.tensor(float(alpha)) if name.endswith(".alpha") else tensor
    return converted


def _sgm_unet_name(name: str, layers_per_block: int) -> str:
    """SDXL U-Net modules under the original model's block names, as sd-scripts writes them."""
    per_block = layers_per_block + 1
    if match := _DOWN_BLOCK.match(name):
        block, attention = int(match[1]), int(match[2])
        return f"lora_unet_input_blocks_{block * per_block + attention + 1}_1_" + name[match.end() :]
    if match := _MID_BLOCK.match(name):
        return "lora_unet_middle_block_1_" + name[match.end() :]
    if match := _UP_BLOCK.match(name):
        block, attention = int(match[1]), int(match[2])
        return f"lora_unet_output_blocks_{block * per_block + attention}_1_" + name[match.end() :]
    return name


def kohya_hashes(tensors: dict[str, Any], metadata: dict[str, str]) -> tuple[str, str]:
    """``(sshs_model_hash, sshs_legacy_hash)`` exactly as sd-scripts computes them: over the file
    saved with the ``ss_*`` metadata only, the model hash skipping the header."""
    from safetensors.torch import save

    data = save(tensors, {k: v for k, v in metadata.items() if k.startswith("ss_")})
    header_length = int.from_bytes(data[:8], "little")
    model_hash = hashlib.sha256(data[8 + header_length :]).hexdigest()
    legacy = io.BytesIO(data)
    legacy.seek(0x100000)
    legacy_hash = hashlib.sha256(legacy.read(0x10000)).hexdigest()[:8]
    return model_hash, legacy_hash


def save_lora(path: Any, tensors: dict[str, Any], metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    model_hash, legacy_hash = kohya_hashes(tensors, metadata)
    save_file(tensors, str(path), metadata | {"sshs_model_hash": model_hash, "sshs_legacy_hash": legacy_hash})


def stamp_base_model(path: Any, *, name: str, sha256: str, legacy_hash: str) -> None:
    """Record in a LoRA sd-scripts wrote the checkpoint it was trained from, as registered (sd-scripts
    names the file in the model channel and hashes what it loaded), keeping its ``sshs_*`` hashes
    true to the rewritten file."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as opened:
        metadata = dict(opened.metadata() or {})
    given = {"ss_sd_model_name": name, "ss_new_sd_model_hash": sha256, "ss_sd_model_hash": legacy_hash}
    save_lora(path, load_file(str(path)), metadata | {key: value for key, value in given.items() if value})
