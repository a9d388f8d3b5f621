"""Write the diffusers config folders of each checkpoint family into
``images/inference/sdpipe_inference/configs/<config>/`` (JSON only: no weights, and no tokenizer
files, which ``sdpipe_inference.family_configs`` builds offline from open_clip's BPE file).

The architectures below are those of the reference single-file checkpoints (SD 1.5, its
inpainting model, SD 2.1 base and 768-v, SDXL base and refiner); the installed diffusers and
transformers fill in their defaults, so the files match the pinned versions. Run after bumping
either, commit the result; a unit test fails when a file and this tool disagree.

    python -m tools.family_configs          # rewrite the folders
    python -m tools.family_configs --check  # exit 1 naming the files that are out of step
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "images" / "inference" / "sdpipe_inference" / "configs"

_SCALED_LINEAR = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                  "num_train_timesteps": 1000, "steps_offset": 1, "clip_sample": False, "set_alpha_to_one": False,
                  "skip_prk_steps": True}  # fmt: skip
_SD_VAE = {"block_out_channels": [128, 256, 512, 512], "latent_channels": 4, "layers_per_block": 2,
           "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4}  # fmt: skip
_SD1_UNET = {
    "block_out_channels": [320, 640, 1280, 1280], "attention_head_dim": 8, "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "layers_per_block": 2, "sample_size": 64,
}  # fmt: skip
_SD2_UNET = _SD1_UNET | {"attention_head_dim": [5, 10, 20, 20], "cross_attention_dim": 1024,
                         "use_linear_projection": True}  # fmt: skip
_SDXL_UNET_COMMON = {"addition_embed_type": "text_time", "addition_time_embed_dim": 256, "use_linear_projection": True,
                     "layers_per_block": 2, "sample_size": 128}  # fmt: skip
_SDXL_UNET = _SDXL_UNET_COMMON | {
    "block_out_channels": [320, 640, 1280], "attention_head_dim": [5, 10, 20], "cross_attention_dim": 2048,
    "transformer_layers_per_block": [1, 2, 10], "projection_class_embeddings_input_dim": 2816,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
}  # fmt: skip
_SDXL_REFINER_UNET = _SDXL_UNET_COMMON | {
    "block_out_channels": [384, 768, 1536, 1536], "attention_head_dim": [6, 12, 12, 12], "cross_attention_dim": 1280,
    "transformer_layers_per_block": 4, "projection_class_embeddings_input_dim": 2560,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
}  # fmt: skip
# OpenAI's CLIP ViT-L/14 text tower (SD1, SDXL's first encoder); OpenCLIP ViT-H (SD2) and
# ViT-bigG (SDXL's second) run GELU. The token ids are those of the reference configs.
_CLIP_L = {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12,
           "projection_dim": 768, "hidden_act": "quick_gelu"}  # fmt: skip
_OPENCLIP_H = {"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16, "num_hidden_layers": 23,
               "projection_dim": 512, "hidden_act": "gelu"}  # fmt: skip
_OPENCLIP_BIGG = {"hidden_size": 1280, "intermediate_size": 5120, "num_attention_heads": 20, "num_hidden_layers": 32,
                  "projection_dim": 1280, "hidden_act": "gelu"}  # fmt: skip

_SD_INDEX = {"_class_name": "StableDiffusionPipeline", "feature_extractor": [None, None],
             "requires_safety_checker": False, "safety_checker": [None, None]}  # fmt: skip
_XL_INDEX = {"_class_name": "StableDiffusionXLPipeline", "force_zeros_for_empty_prompt": True}

# config name -> (model_index, unet, vae, scheduler class and options, text encoders)
# A text encoder: (folder, transformers class, architecture, tokenizer's pad token).
FAMILIES: dict[str, dict[str, Any]] = {
    "sd1": {"index": _SD_INDEX, "unet": _SD1_UNET, "vae": _SD_VAE | {"sample_size": 512},
            "scheduler": ("PNDMScheduler", {"prediction_type": "epsilon"}),
            "text": [("text_encoder", "CLIPTextModel", _CLIP_L, "<|endoftext|>")]},
    "sd1_inpainting": {"index": _SD_INDEX | {"_class_name": "StableDiffusionInpaintPipeline"},
                       "unet": _SD1_UNET | {"in_channels": 9}, "vae": _SD_VAE | {"sample_size": 512},
                       "scheduler": ("PNDMScheduler", {"prediction_type": "epsilon"}),
                       "text": [("text_encoder", "CLIPTextModel", _CLIP_L, "<|endoftext|>")]},
    "sd2": {"index": _SD_INDEX, "unet": _SD2_UNET, "vae": _SD_VAE | {"sample_size": 512},
            "scheduler": ("DDIMScheduler", {"prediction_type": "epsilon"}),
            "text": [("text_encoder", "CLIPTextModel", _OPENCLIP_H, "!")]},
    "sd2_v": {"index": _SD_INDEX, "unet": _SD2_UNET | {"sample_size": 96, "upcast_attention": True},
              "vae": _SD_VAE | {"sample_size": 768},
              "scheduler": ("DDIMScheduler", {"prediction_type": "v_prediction"}),
              "text": [("text_encoder", "CLIPTextModel", _OPENCLIP_H, "!")]},
    "sdxl": {"index": _XL_INDEX, "unet": _SDXL_UNET,
             "vae": _SD_VAE | {"sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True},
             "scheduler": ("EulerDiscreteScheduler", {"prediction_type": "epsilon", "timestep_spacing": "leading"}),
             "text": [("text_encoder", "CLIPTextModel", _CLIP_L, "<|endoftext|>"),
                      ("text_encoder_2", "CLIPTextModelWithProjection", _OPENCLIP_BIGG, "!")]},
    "sdxl_refiner": {"index": _XL_INDEX | {"_class_name": "StableDiffusionXLImg2ImgPipeline",
                                           "force_zeros_for_empty_prompt": False, "requires_aesthetics_score": True},
                     "unet": _SDXL_REFINER_UNET,
                     "vae": _SD_VAE | {"sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True},
                     "scheduler": ("EulerDiscreteScheduler",
                                   {"prediction_type": "epsilon", "timestep_spacing": "leading"}),
                     "text": [("text_encoder_2", "CLIPTextModelWithProjection", _OPENCLIP_BIGG, "!")]},
}  # fmt: skip


def render(name: str) -> dict[str, str]:
    """The folder's files (relative path -> JSON text) for config ``name``."""
    import diffusers
    import torch
    import transformers

    family = FAMILIES[name]
    files: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        with torch.device("meta"):  # the configs, not the weights: nothing is allocated
            diffusers.UNet2DConditionModel(**family["unet"]).save_config(folder / "unet")
            diffusers.AutoencoderKL(**family["vae"]).save_config(folder / "vae")
        scheduler_class, options = family["scheduler"]
        getattr(diffusers, scheduler_class).from_config(_SCALED_LINEAR | options).save_config(folder / "scheduler")
        for subfolder, model_class, architecture, _pad in family["text"]:
            text = architecture | {"vocab_size": 49408, "max_position_embeddings": 77, "bos_token_id": 0,
                                   "eos_token_id": 2, "pad_token_id": 1, "architectures": [model_class]}  # fmt: skip
            transformers.CLIPTextConfig(**text).save_pretrained(folder / subfolder)
        for path in sorted(folder.rglob("*.json")):
            document = json.loads(path.read_text())
            for volatile in ("_diffusers_version", "transformers_version"):
                document.pop(volatile, None)
            files[str(path.relative_to(folder))] = json.dumps(document, indent=2, sort_keys=True) + "\n"
    index = dict(family["index"])
    index |= {"unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
              "scheduler": ["diffusers", family["scheduler"][0]]}  # fmt: skip
    for slot in ("text_encoder", "text_encoder_2"):
        encoder = next((entry for entry in family["text"] if entry[0] == slot), None)
        if encoder is not None:
            index[slot] = ["transformers", encoder[1]]
            index[slot.replace("text_encoder", "tokenizer")] = ["transformers", "CLIPTokenizer"]
        elif index["_class_name"].startswith("StableDiffusionXL"):
            index[slot] = index[slot.replace("text_encoder", "tokenizer")] = [None, None]
    files["model_index.json"] = json.dumps(index, indent=2, sort_keys=True) + "\n"
    files["tokenizers.json"] = json.dumps(
        {entry[0].replace("text_encoder", "tokenizer"): {"pad_token": entry[3]} for entry in family["text"]},
        indent=2, sort_keys=True,
    ) + "\n"  # fmt: skip
    return files


def out_of_step() -> list[str]:
    stale = []
    for name in FAMILIES:
        for relative, text in render(name).items():
            path = CONFIGS / name / relative
            if not path.is_file() or path.read_text() != text:
                stale.append(str(path.relative_to(ROOT)))
    return stale


def main(argv: list[str]) -> int:
    if "--check" in argv:
        stale = out_of_step()
        for path in stale:
            print(f"{path} is out of step with tools/family_configs.py (run python -m tools.family_configs)")
        return 1 if stale else 0
    for name in FAMILIES:
        for relative, text in render(name).items():
            path = CONFIGS / name / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
