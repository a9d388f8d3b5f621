"""txt2img and img2img on single-file checkpoints, with AUTOMATIC1111's seed semantics.

- Image *i* of a request uses ``seed + i`` across the whole batch and every iteration, each from
  its own CPU generator, so a seed gives the same picture alone or inside a batch, on CPU or GPU.
- Loaded pipelines are kept in a small LRU keyed by the file's sha256 (switching between a few
  checkpoints does not reload them).
- Pickle checkpoints would be loaded by diffusers with PyTorch's weights-only loader; the
  registration scan has already refused anything else.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import random
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from sdpipe.contracts.inference import MAX_SEED, Img2ImgParams, Txt2ImgParams, strip_extra_networks
from sdpipe.errors import SdpipeError
from sdpipe_inference.infotext import Infotext, png_with_parameters
from sdpipe_inference.samplers import make_scheduler

VERSION = "sdpipe 0.1.0"


class InvalidInput(SdpipeError):
    code = "VALIDATION_ERROR"


@dataclass(frozen=True)
class ModelSpec:
    """A registered checkpoint, resolved to local files."""

    name: str
    sha256: str
    short_hash: str
    family: str
    path: Path
    config: Path


@dataclass(frozen=True)
class AddOn:
    """A LoRA, embedding or VAE file applied on top of a checkpoint."""

    name: str
    sha256: str
    short_hash: str
    path: Path
    weight: float = 1.0

    @property
    def adapter_name(self) -> str:
        return "lora_" + self.sha256[:16]


@dataclass(frozen=True)
class AddOns:
    loras: tuple[AddOn, ...] = ()
    embeddings: tuple[AddOn, ...] = ()
    vae: AddOn | None = None


@dataclass
class GenerationResult:
    images: list[Image.Image]
    seeds: list[int]
    infotexts: list[str]
    info: dict[str, Any] = field(default_factory=dict)

    def pngs(self) -> list[bytes]:
        return [png_with_parameters(image, text) for image, text in zip(self.images, self.infotexts, strict=True)]


class PipelineCache:
    """At most ``capacity`` loaded pipelines, least recently used evicted first."""

    def __init__(self, capacity: int, device: str, dtype: Any) -> None:
        self.capacity = capacity
        self.device = device
        self.dtype = dtype
        self._pipelines: OrderedDict[str, tuple[Any, Any]] = OrderedDict()
        self._applied: dict[int, set[str]] = {}  # id(pipeline) -> LoRAs and embeddings loaded into it
        self._vaes: OrderedDict[str, Any] = OrderedDict()
        self.loads = 0
        self.lora_loads = 0

    def get(self, spec: ModelSpec) -> tuple[Any, Any]:
        """The loaded pipeline and its checkpoint's own scheduler config (requests change samplers)."""
        entry = self._pipelines.get(spec.sha256)
        if entry is not None:
            self._pipelines.move_to_end(spec.sha256)
            return entry
        pipeline = self._load(spec)
        entry = (pipeline, pipeline.scheduler.config)
        self._pipelines[spec.sha256] = entry
        while len(self._pipelines) > self.capacity:
            _, (evicted, _) = self._pipelines.popitem(last=False)
            self._applied.pop(id(evicted), None)
        return entry

    def apply(self, pipeline: Any, spec: ModelSpec, add_ons: AddOns) -> None:
        """Set the request's LoRAs (loaded once per pipeline, then only re-weighted) and embeddings."""
        loaded = self._applied.setdefault(id(pipeline), set())
        for lora in add_ons.loras:
            if lora.adapter_name not in loaded:
                try:
                    pipeline.load_lora_weights(str(lora.path), adapter_name=lora.adapter_name)
                except (ValueError, KeyError, RuntimeError) as exc:
                    raise InvalidInput(f"LoRA {lora.name!r} does not fit model {spec.name!r}: {exc}") from None
                loaded.add(lora.adapter_name)
                self.lora_loads += 1
        if add_ons.loras:
            pipeline.enable_lora()
            pipeline.set_adapters(
                [lora.adapter_name for lora in add_ons.loras], adapter_weights=[lora.weight for lora in add_ons.loras]
            )
        elif any(name.startswith("lora_") for name in loaded):
            pipeline.disable_lora()
        for embedding in add_ons.embeddings:
            key = "embedding_" + embedding.sha256
            if key in loaded:
                continue
            if spec.family.startswith("sdxl"):
                raise InvalidInput(f"embedding {embedding.name!r}: SDXL embeddings are not supported yet")
            try:
                pipeline.load_textual_inversion(str(embedding.path), token=embedding.name.rsplit("/", 1)[-1])
            except (ValueError, KeyError, RuntimeError) as exc:
                raise InvalidInput(f"embedding {embedding.name!r} does not fit model {spec.name!r}: {exc}") from None
            loaded.add(key)

    def vae(self, add_on: AddOn, spec: ModelSpec) -> Any:
        """A VAE override, loaded once with the checkpoint's VAE config."""
        found = self._vaes.get(add_on.sha256)
        if found is None:
            from diffusers import AutoencoderKL

            found = AutoencoderKL.from_single_file(
                str(add_on.path), config=str(spec.config / "vae"), local_files_only=True, torch_dtype=self.dtype
            )
            if self.device != "cpu":
                found.to(self.device)
            self._vaes[add_on.sha256] = found
            while len(self._vaes) > self.capacity:
                self._vaes.popitem(last=False)
        return found

    def _load(self, spec: ModelSpec) -> Any:
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

        cls = StableDiffusionXLPipeline if spec.family.startswith("sdxl") else StableDiffusionPipeline
        pipeline = cls.from_single_file(
            str(spec.path), config=str(spec.config), local_files_only=True, torch_dtype=self.dtype
        )
        pipeline.set_progress_bar_config(disable=True)
        if self.device != "cpu":
            pipeline.to(self.device)
        self.loads += 1
        return pipeline


def decode_image(data: str, field_name: str) -> Image.Image:
    """A base64 image (optionally a data: URL) from the request, or a clear error."""
    payload = data.split(",", 1)[1] if data.startswith("data:") else data
    try:
        raw = base64.b64decode(payload, validate=True)
        image = Image.open(io.BytesIO(raw))
        image.load()
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"{field_name} is not valid base64: {exc}") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise InvalidInput(f"{field_name} is not an image: {exc}") from None
    return image.convert("RGB")


class Engine:
    def __init__(self, device: str | None = None, dtype: Any = None, max_pipelines: int = 2) -> None:
        import torch

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if dtype is None:
            dtype = torch.float16 if self.device == "cuda" else torch.float32
        self.cache = PipelineCache(max_pipelines, self.device, dtype)
        self._lock = threading.Lock()  # one generation at a time per device

    def generate(
        self, params: Txt2ImgParams | Img2ImgParams, model: ModelSpec, add_ons: AddOns | None = None
    ) -> GenerationResult:
        import torch

        add_ons = add_ons or AddOns()
        prompt, negative_prompt = strip_extra_networks(params.prompt), strip_extra_networks(params.negative_prompt)

        init_image = mask = None
        if isinstance(params, Img2ImgParams):
            size = (params.width, params.height)
            init_image = decode_image(params.init_images[0], "init_images[0]").resize(size)
            if params.mask:
                mask = decode_image(params.mask, "mask").convert("L").resize(size)
        total = params.batch_size * params.n_iter
        first_seed = params.seed if params.seed != -1 else random.randint(0, MAX_SEED)  # noqa: S311 - not crypto
        seeds = [(first_seed + i) % (MAX_SEED + 1) for i in range(total)]
        with self._lock:
            pipeline, scheduler_config = self.cache.get(model)
            self.cache.apply(pipeline, model, add_ons)
            if mask is not None:
                from diffusers import AutoPipelineForInpainting

                pipeline = AutoPipelineForInpainting.from_pipe(pipeline)  # shares the loaded weights
            elif init_image is not None:
                from diffusers import AutoPipelineForImage2Image

                pipeline = AutoPipelineForImage2Image.from_pipe(pipeline)
            pipeline.set_progress_bar_config(disable=True)
            pipeline.scheduler = make_scheduler(scheduler_config, params.sampler_name, params.scheduler)
            own_vae = pipeline.vae
            if add_ons.vae is not None:
                pipeline.vae = self.cache.vae(add_ons.vae, model)
            try:
                images: list[Image.Image] = []
                for iteration in range(params.n_iter):
                    batch_seeds = seeds[iteration * params.batch_size : (iteration + 1) * params.batch_size]
                    kwargs: dict[str, Any] = {
                        "prompt": [prompt] * len(batch_seeds),
                        "negative_prompt": [negative_prompt] * len(batch_seeds),
                        "num_inference_steps": params.steps,
                        "guidance_scale": params.cfg_scale,
                        "generator": [torch.Generator("cpu").manual_seed(seed) for seed in batch_seeds],
                    }
                    if params.clip_skip > 1:
                        kwargs["clip_skip"] = params.clip_skip - 1  # A1111 counts the last layer as 1
                    if isinstance(params, Img2ImgParams):
                        kwargs |= {"image": init_image, "strength": params.denoising_strength}
                        if mask is not None:
                            kwargs |= {"mask_image": mask, "width": params.width, "height": params.height}
                    else:
                        kwargs |= {"width": params.width, "height": params.height}
                    images.extend(pipeline(**kwargs).images)
            finally:
                pipeline.vae = own_vae
        infotexts = [self._infotext(params, model, seed, add_ons).text() for seed in seeds]
        info = {
            "prompt": params.prompt,
            "all_prompts": [params.prompt] * total,
            "negative_prompt": params.negative_prompt,
            "all_negative_prompts": [params.negative_prompt] * total,
            "seed": seeds[0],
            "all_seeds": seeds,
            "subseed": -1,
            "all_subseeds": [-1] * total,
            "width": params.width,
            "height": params.height,
            "sampler_name": params.sampler_name,
            "scheduler": params.scheduler,
            "cfg_scale": params.cfg_scale,
            "steps": params.steps,
            "batch_size": params.batch_size,
            "clip_skip": params.clip_skip,
            "sd_model_name": model.name,
            "sd_model_hash": model.short_hash,
            "sd_vae_name": add_ons.vae.name if add_ons.vae else None,
            "sd_vae_hash": add_ons.vae.short_hash if add_ons.vae else None,
            "denoising_strength": params.denoising_strength if isinstance(params, Img2ImgParams) else None,
            "infotexts": infotexts,
            "version": VERSION,
        }
        return GenerationResult(images=images, seeds=seeds, infotexts=infotexts, info=info)

    def _infotext(
        self, params: Txt2ImgParams | Img2ImgParams, model: ModelSpec, seed: int, add_ons: AddOns
    ) -> Infotext:
        schedule = None if params.scheduler == "Automatic" else params.scheduler
        return Infotext(
            prompt=params.prompt,
            negative_prompt=params.negative_prompt,
            parameters={
                "Steps": params.steps,
                "Sampler": params.sampler_name,
                "Schedule type": schedule,
                "CFG scale": _number(params.cfg_scale),
                "Seed": seed,
                "Size": f"{params.width}x{params.height}",
                "Model hash": model.short_hash,
                "Model": model.name,
                "VAE hash": add_ons.vae.short_hash if add_ons.vae else None,
                "VAE": add_ons.vae.name if add_ons.vae else None,
                "Denoising strength": params.denoising_strength if isinstance(params, Img2ImgParams) else None,
                "Clip skip": params.clip_skip if params.clip_skip > 1 else None,
                "Lora hashes": ", ".join(f"{lora.name}: {lora.short_hash}" for lora in add_ons.loras) or None,
                "TI hashes": ", ".join(f"{e.name}: {e.short_hash}" for e in add_ons.embeddings) or None,
                "Version": VERSION,
            },
        )


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def info_json(result: GenerationResult) -> str:
    return json.dumps(result.info)
