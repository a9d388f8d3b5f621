"""Tiny random-weight SD1.x and SDXL checkpoints in the real single-file layout.

The files carry the key names and block structure of a real ``v1-5-pruned-emaonly.safetensors``
or ``sd_xl_base_1.0.safetensors`` (LDM UNet names, ``first_stage_model.*`` VAE with 1x1-conv
attention, CLIP under ``cond_stage_model``/``conditioner.embedders``) with widths cut down so a
64x64 image takes milliseconds on a CPU. Next to each file goes the diffusers config folder that
``from_single_file(path, config=folder)`` needs to load it offline. Nothing is downloaded: the
CLIP tokenizer is a byte-level vocabulary generated here; the renaming to LDM keys is ``ldm_keys``.

Needs the ``tiny`` extra (torch, diffusers, transformers); the control plane never imports this.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Literal

from sdpipe_inference.family_configs import bytes_to_unicode
from sdpipe_local.ldm_keys import controlnet_to_ldm, single_file_state_dict

Family = Literal["sd1", "sdxl"]  # what the LoRA, ControlNet and embedding writers are made for
# The checkpoints: the two main families, and one of each config the project ships besides.
CheckpointFamily = Literal["sd1", "sd1_inpainting", "sd2", "sdxl", "sdxl_refiner"]
_ARCHITECTURES = {
    "sd1": "stable-diffusion-v1",
    "sd1_inpainting": "stable-diffusion-v1-inpainting",
    "sd2": "stable-diffusion-v2-768-v",
    "sdxl": "stable-diffusion-xl-v1-base",
    "sdxl_refiner": "stable-diffusion-xl-v1-refiner",
}
TEXT_HIDDEN = 32
# SDXL's second (OpenCLIP) encoder must be wider than the first, as in the real model (1280 vs
# 768): diffusers tells the two apart by that width when loading a single file.
TEXT_HIDDEN_2 = 64
TEXT_LAYERS = 2


def write_tiny_tokenizer(folder: Path) -> int:
    """A byte-level CLIP BPE vocabulary with no merges; returns the vocabulary size."""
    folder.mkdir(parents=True, exist_ok=True)
    symbols = sorted(bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for symbol in symbols:
        vocab[symbol] = len(vocab)
    for symbol in symbols:
        vocab[symbol + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "special_tokens_map.json").write_text(
        json.dumps(
            {
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>",
            }
        )
    )
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "CLIPTokenizer",
                "model_max_length": 77,
                "do_lower_case": True,
                "pad_token": "<|endoftext|>",
            }
        )
    )
    return len(vocab)


def _text_config(vocab_size: int, projection: bool, gelu: bool = False) -> Any:
    from transformers import CLIPTextConfig

    hidden = TEXT_HIDDEN_2 if projection else TEXT_HIDDEN
    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=TEXT_LAYERS,
        max_position_embeddings=77,
        projection_dim=hidden,
        hidden_act="gelu" if projection or gelu else "quick_gelu",
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )


def build_pipeline(family: CheckpointFamily, tokenizer_folder: Path, seed: int) -> Any:
    """A diffusers pipeline with tiny components laid out like the real family."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionInpaintPipeline,
        StableDiffusionPipeline,
        StableDiffusionXLImg2ImgPipeline,
        StableDiffusionXLPipeline,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(seed)
    vocab_size = write_tiny_tokenizer(tokenizer_folder)
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_folder)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )
    # SD 2.x 768 predicts v: its scheduler says so, as the shipped sd2_v config does.
    prediction = "v_prediction" if family == "sd2" else "epsilon"
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000, steps_offset=1,
        prediction_type=prediction,
    )  # fmt: skip
    if family in ("sd1", "sd1_inpainting", "sd2"):
        sd_cls = StableDiffusionInpaintPipeline if family == "sd1_inpainting" else StableDiffusionPipeline
        return sd_cls(
            vae=vae,
            # SD 2.x's OpenCLIP encoder is loaded as a CLIP text model with GELU (SD1's uses quick GELU).
            text_encoder=CLIPTextModel(_text_config(vocab_size, projection=False, gelu=family == "sd2")),
            tokenizer=tokenizer,
            # An inpainting UNet also reads the mask and the masked image's latents: 4 + 1 + 4 channels.
            unet=_sd_unet(in_channels=9 if family == "sd1_inpainting" else 4),
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(vocab_size, projection=True))
    if family == "sdxl_refiner":  # the second (OpenCLIP) encoder only, and an aesthetic score among the time ids
        return StableDiffusionXLImg2ImgPipeline(
            vae=vae,
            text_encoder=None,
            text_encoder_2=text_encoder_2,
            tokenizer=None,
            tokenizer_2=CLIPTokenizer.from_pretrained(tokenizer_folder),
            unet=_sdxl_unet(context=TEXT_HIDDEN_2, time_ids=5),
            scheduler=scheduler,
            requires_aesthetics_score=True,
            force_zeros_for_empty_prompt=False,
        )
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=CLIPTextModel(_text_config(vocab_size, projection=False)),
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=CLIPTokenizer.from_pretrained(tokenizer_folder),
        unet=_sdxl_unet(context=TEXT_HIDDEN + TEXT_HIDDEN_2, time_ids=6),
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
    )


def _sd_unet(in_channels: int) -> Any:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=2,
        cross_attention_dim=TEXT_HIDDEN,
        attention_head_dim=8,
        norm_num_groups=8,
    )


def _sdxl_unet(context: int, time_ids: int) -> Any:
    """SDXL's UNet; ``time_ids`` is 6 for the base (sizes and crop), 5 for the refiner (aesthetic score)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64, 64),
        layers_per_block=2,
        transformer_layers_per_block=(1, 1, 2),
        cross_attention_dim=context,
        attention_head_dim=(2, 4, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=TEXT_HIDDEN_2 + time_ids * 8,
        norm_num_groups=8,
    )


def config_folder_for(path: Path) -> Path:
    return path.with_name(path.stem + ".config")


def create_tiny_checkpoint(family: CheckpointFamily, out: Path, seed: int = 0) -> Path:
    """Write ``out`` (safetensors) and ``<stem>.config/`` beside it; return the config folder."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    config = config_folder_for(out)
    if config.exists():
        shutil.rmtree(config)
    pipeline = build_pipeline(family, config / "tokenizer", seed)
    pipeline.save_pretrained(config, safe_serialization=True)
    for weights in config.rglob("*.safetensors"):
        weights.unlink()  # the folder holds configs only; the weights live in the single file
    metadata = {
        "format": "pt",
        "modelspec.architecture": _ARCHITECTURES[family],
        # What registration reads first to tell SD 2.x v-prediction from epsilon.
        "modelspec.prediction_type": "v" if family == "sd2" else "epsilon",
        "modelspec.title": f"sdpipe tiny {family} (random weights, seed {seed})",
    }
    out.write_bytes(_deterministic_safetensors(single_file_state_dict(pipeline, family), metadata))
    return config


def _deterministic_safetensors(tensors: dict[str, Any], metadata: dict[str, str]) -> bytes:
    """safetensors bytes whose header is canonical JSON (sorted keys).

    The library writes ``__metadata__`` in a per-process random order (a Rust HashMap), so the
    same weights would hash differently run to run; the same seed must give the same file and
    the same A1111 hash.
    """
    from safetensors.torch import save

    data = save(tensors, metadata=metadata)
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    canonical = json.dumps(header, sort_keys=True, separators=(",", ":")).encode().ljust(length)
    if len(canonical) != length:  # pragma: no cover - the library writes compact JSON
        raise ValueError("cannot canonicalise the safetensors header")
    return data[:8] + canonical + data[8 + length :]


def load_tiny_checkpoint(path: Path, config: Path | None = None) -> Any:
    """Load a single-file checkpoint offline with its config folder."""
    import diffusers

    config = config or config_folder_for(Path(path))
    cls = getattr(diffusers, json.loads((config / "model_index.json").read_text())["_class_name"])
    pipeline = cls.from_single_file(str(path), config=str(config), local_files_only=True)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def create_tiny_lora(family: Family, out: Path, seed: int = 0, rank: int = 4) -> Path:
    """A Kohya-format LoRA for the tiny ``family`` checkpoints (random, visibly non-zero weights)."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        pipeline = build_pipeline(family, Path(folder) / "tokenizer", seed)
    base = "sd_v1" if family == "sd1" else "sdxl_base_v1-0"
    return write_random_lora(pipeline.unet, out, base_model_version=base, seed=seed, rank=rank)


def write_random_lora(unet: Any, out: Path, *, base_model_version: str, seed: int = 0, rank: int = 4) -> Path:
    """A Kohya-format LoRA of ``unet``'s attention projections (random, visibly non-zero weights).

    Written the way Kohya's ``train_network`` writes one: ``lora_unet_*`` names,
    ``.lora_down``/``.lora_up``/``.alpha``, and the ``ss_*`` metadata that says which base it is
    for. The adapter is taken off ``unet`` again.
    """
    import torch
    from diffusers.utils import convert_state_dict_to_kohya  # type: ignore[attr-defined]
    from peft import LoraConfig, get_peft_model_state_dict

    torch.manual_seed(seed + 1)
    alpha = rank
    adapter = f"random_{seed}"
    unet.add_adapter(
        LoraConfig(
            r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=["to_k", "to_q", "to_v", "to_out.0"]
        ),
        adapter_name=adapter,
    )
    state = {f"unet.{k}": v for k, v in get_peft_model_state_dict(unet, adapter_name=adapter).items()}
    with torch.no_grad():
        for name, tensor in state.items():
            if "lora_B" in name:  # peft starts B at zero (a no-op LoRA); make this one change the picture
                tensor.copy_(torch.randn_like(tensor) * 0.5)
    kohya = convert_state_dict_to_kohya(state)
    unet.delete_adapters(adapter)
    for name in list(kohya):
        if name.endswith(".alpha"):
            kohya[name] = torch.tensor(float(alpha))
    tensors = {name: tensor.detach().contiguous().to(torch.float16).cpu() for name, tensor in kohya.items()}
    metadata = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(alpha),
        "ss_base_model_version": base_model_version,
        "ss_output_name": Path(out).stem,
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(_deterministic_safetensors(tensors, metadata))
    return out


def create_tiny_controlnet(
    family: Family, out: Path, seed: int = 0, layout: Literal["ldm", "diffusers"] = "ldm"
) -> Path:
    """A ControlNet for the tiny ``family`` checkpoints whose control visibly changes the picture.

    ``ldm`` is the layout the WebUI's ControlNet files use (``control_v11p_sd15_canny``); the
    diffusers layout is what ``ControlNetModel.save_pretrained`` writes. Both carry the
    ``modelspec.architecture`` metadata that says which base it is for.
    """
    import tempfile

    import torch
    from diffusers import ControlNetModel

    with tempfile.TemporaryDirectory() as folder:
        pipeline = build_pipeline(family, Path(folder) / "tokenizer", seed)
    torch.manual_seed(seed + 2)
    controlnet = ControlNetModel.from_unet(pipeline.unet)
    with torch.no_grad():  # the zero convolutions start at zero (a no-op); make them matter
        for name, tensor in controlnet.state_dict().items():
            zero_initialised = ("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding.conv_out")
            if name.startswith(zero_initialised):
                tensor.copy_(torch.randn_like(tensor) * 0.5)
    state = {k: v.detach().contiguous() for k, v in controlnet.state_dict().items()}
    if layout == "ldm":
        state = controlnet_to_ldm(state, pipeline.unet.config)
    architecture = "stable-diffusion-v1/controlnet" if family == "sd1" else "stable-diffusion-xl-v1-base/controlnet"
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(_deterministic_safetensors(state, {"format": "pt", "modelspec.architecture": architecture}))
    return out


def create_tiny_embedding(family: Family, out: Path, seed: int = 0, vectors: int = 2) -> Path:
    """A textual-inversion embedding for the tiny ``family`` checkpoints, in the WebUI's safetensors form.

    SD1.x: ``emb_params`` (vectors x text width); SDXL: ``clip_l`` and ``clip_g``, one set per encoder.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    if family == "sd1":
        tensors = {"emb_params": torch.randn(vectors, TEXT_HIDDEN, generator=generator)}
    else:
        tensors = {
            "clip_l": torch.randn(vectors, TEXT_HIDDEN, generator=generator),
            "clip_g": torch.randn(vectors, TEXT_HIDDEN_2, generator=generator),
        }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(_deterministic_safetensors(tensors, {"format": "pt"}))
    return out
