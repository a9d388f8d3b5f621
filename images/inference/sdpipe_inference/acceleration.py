"""The GPU fast path: what is done to a loaded pipeline, and when (measured in ``bench/bench_gpu.py``).

On by default where it is safe:

- half precision on CUDA: fp16 for SD 1.x/2.x; bf16 for the SDXL families where the GPU has it
  (SDXL's VAE overflows in fp16, so diffusers would upcast it to fp32 for every decode), else fp16
  with that upcast. ``SDPIPE_DTYPE`` (fp16, bf16, fp32) overrides it.
- SDPA attention: PyTorch's fused scaled-dot-product kernels (flash / memory-efficient), which
  diffusers uses by default with torch 2; set explicitly so a loaded checkpoint never runs the
  slow path.
- channels-last for the UNet and the VAE on CUDA (convolutions run NHWC on tensor cores).
- VAE tiling above ``SDPIPE_VAE_TILE_PIXELS`` (decode memory grows with the picture; tiles bound it).

An endpoint option (its ``environment``), off by default because the first generation at each
size compiles for a minute or more:

- ``SDPIPE_COMPILE=1``: ``torch.compile`` of the UNet. Inductor's cache lives under the model
  cache on the instance's volume (``TORCHINDUCTOR_CACHE_DIR``), and ``SDPIPE_WARMUP=sd1:512x512,
  sdxl:1024x1024`` compiles a random-weights UNet of each family and size at container start,
  before ``/ping`` answers, so a real checkpoint's compile reuses the generated kernels. The UNet
  is compiled at its first generation, after that request's LoRA is loaded; a request's single
  LoRA then goes into one adapter slot that later LoRAs are hot-swapped into (diffusers' hotswap:
  the weights are replaced in place, padded to ``SDPIPE_LORA_MAX_RANK``, nothing recompiles; a
  request without a LoRA sets the slot's weight to 0). A request with several LoRAs loads them as
  adapters of their own, which recompiles the UNet. ``SDPIPE_LORA_HOTSWAP=1`` uses the slot
  without compiling.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger("sdpipe.inference")

DTYPES = ("auto", "fp16", "bf16", "fp32")
TILE_PIXELS = 1536 * 1536
LORA_MAX_RANK = 128
HOT_ADAPTER = "hot"
# Autotuned kernels without CUDA graphs (a graph would pin the pipeline to one batch and size).
# Not fullgraph: PEFT's LoRA layers may break the graph, which must not fail the generation.
COMPILE_MODE = "max-autotune-no-cudagraphs"


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Acceleration:
    device: str
    dtype: str = "auto"
    channels_last: bool = True
    compile: bool = False
    hotswap_loras: bool = False  # on with compile: another adapter in a compiled UNet recompiles it
    lora_max_rank: int = LORA_MAX_RANK
    tile_pixels: int = TILE_PIXELS
    warmup: tuple[tuple[str, int, int], ...] = field(default=())

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"SDPIPE_DTYPE {self.dtype!r} is not one of {', '.join(DTYPES)}")

    @classmethod
    def from_environment(cls, device: str, environ: Mapping[str, str] | None = None) -> Acceleration:
        env = os.environ if environ is None else environ
        compiled = _flag(env.get("SDPIPE_COMPILE"))
        return cls(
            device=device,
            dtype=env.get("SDPIPE_DTYPE", "auto").strip().lower() or "auto",
            channels_last=not _flag(env.get("SDPIPE_NO_CHANNELS_LAST")),
            compile=compiled,
            hotswap_loras=compiled or _flag(env.get("SDPIPE_LORA_HOTSWAP")),
            lora_max_rank=int(env.get("SDPIPE_LORA_MAX_RANK", LORA_MAX_RANK)),
            tile_pixels=int(env.get("SDPIPE_VAE_TILE_PIXELS", TILE_PIXELS)),
            warmup=parse_warmup(env.get("SDPIPE_WARMUP", "")),
        )

    @property
    def on_gpu(self) -> bool:
        return self.device.startswith("cuda")

    def torch_dtype(self, family: str) -> Any:
        import torch

        chosen = self.dtype
        if chosen == "auto":
            if not self.on_gpu:
                chosen = "fp32"  # half precision is slow (and partly missing) on CPUs
            elif family.startswith("sdxl") and torch.cuda.is_bf16_supported():
                chosen = "bf16"
            else:
                chosen = "fp16"
        return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[chosen]

    def prepare(self, pipeline: Any) -> None:
        """What is done once to a freshly loaded pipeline, before its first generation."""
        import torch
        from diffusers.models.attention_processor import AttnProcessor2_0

        if hasattr(torch.nn.functional, "scaled_dot_product_attention"):
            pipeline.unet.set_attn_processor(AttnProcessor2_0())
            pipeline.vae.set_attn_processor(AttnProcessor2_0())
        if self.on_gpu and self.channels_last:
            pipeline.unet.to(memory_format=torch.channels_last)
            pipeline.vae.to(memory_format=torch.channels_last)
        if self.hotswap_loras:
            # Before any adapter is loaded and before compiling: the slot is sized for the largest rank.
            pipeline.enable_lora_hotswap(target_rank=self.lora_max_rank)

    def compile_once(self, pipeline: Any) -> None:
        """With ``compile``: the UNet compiled at the pipeline's first generation (its LoRA loaded)."""
        import torch

        if self.compile and not getattr(pipeline, "_sdpipe_compiled", False):
            pipeline.unet = torch.compile(pipeline.unet, mode=COMPILE_MODE)
            pipeline._sdpipe_compiled = True

    def for_size(self, pipeline: Any, width: int, height: int) -> None:
        """VAE tiling for large pictures only (tiles blend at their seams: small ones decode whole)."""
        vae = pipeline.vae
        if width * height > self.tile_pixels:
            vae.enable_tiling()
        else:
            vae.disable_tiling()


def parse_warmup(text: str) -> tuple[tuple[str, int, int], ...]:
    """``sd1:512x512,sdxl:1024x1024`` -> ((family, width, height), ...)."""
    found = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        family, _, size = item.partition(":")
        width, _, height = (size or "512x512").lower().partition("x")
        try:
            found.append((family.strip(), int(width), int(height or width)))
        except ValueError:
            raise ValueError(f"SDPIPE_WARMUP item {item!r} is not FAMILY:WIDTHxHEIGHT") from None
    return tuple(found)


def compile_cache_dir(model_cache: Path) -> Path:
    """Inductor's on-disk cache beside the model cache (the instance's volume, kept across restarts)."""
    folder = model_cache / "torch-compile"
    folder.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(folder))
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")
    return folder


def warm_up(acceleration: Acceleration, configs_dir: Path) -> None:
    """Compile a random-weights UNet of each ``SDPIPE_WARMUP`` family at its size (no checkpoint
    is needed: the generated kernels depend on the architecture and the shapes, not the weights)."""
    import time

    import torch
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor2_0

    from sdpipe_inference.family_configs import config_folder, config_name

    for family, width, height in acceleration.warmup:
        started = time.perf_counter()
        config = UNet2DConditionModel.load_config(config_folder(config_name(family), configs_dir) / "unet")
        dtype = acceleration.torch_dtype(family)
        with torch.device("meta"):
            unet = UNet2DConditionModel.from_config(config)
        unet = unet.to_empty(device=acceleration.device).to(dtype).eval()
        unet.set_attn_processor(AttnProcessor2_0())
        if acceleration.on_gpu and acceleration.channels_last:
            unet.to(memory_format=torch.channels_last)
        compiled = torch.compile(unet, mode=COMPILE_MODE)
        args, kwargs = unet_inputs(unet.config, family, (width, height), device=acceleration.device, dtype=dtype)
        with torch.inference_mode():
            compiled(*args, **kwargs)
        logger.info(
            "warm-up: %s UNet at %dx%d compiled in %.1f s", family, width, height, time.perf_counter() - started
        )
        del unet, compiled


def unet_inputs(
    config: Any, family: str, size: tuple[int, int], *, device: str, dtype: Any, batch: int = 2
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A UNet call as a pipeline makes it (classifier-free guidance doubles the batch)."""
    import torch

    width, height = size
    sample = torch.randn(batch, config.in_channels, height // 8, width // 8, device=device, dtype=dtype)
    timestep = torch.tensor(999, device=device)
    context = torch.randn(batch, 77, config.cross_attention_dim, device=device, dtype=dtype)
    if config.addition_embed_type != "text_time":
        return (sample, timestep, context), {}
    # SDXL's size and crop conditioning: six time ids; the refiner's five (an aesthetic score).
    time_ids = 5 if family == "sdxl_refiner" else 6
    pooled = config.projection_class_embeddings_input_dim - time_ids * config.addition_time_embed_dim
    added = {
        "text_embeds": torch.randn(batch, pooled, device=device, dtype=dtype),
        "time_ids": torch.randn(batch, time_ids, device=device, dtype=dtype),
    }
    return (sample, timestep, context), {"added_cond_kwargs": added}
