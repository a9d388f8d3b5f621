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

from sdpipe.contracts.inference import MAX_SEED, Img2ImgParams, Txt2ImgParams
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
        self.loads = 0

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
            self._pipelines.popitem(last=False)
        return entry

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

    def generate(self, params: Txt2ImgParams | Img2ImgParams, model: ModelSpec) -> GenerationResult:
        import torch

        init_image = (
            decode_image(params.init_images[0], "init_images[0]") if isinstance(params, Img2ImgParams) else None
        )
        total = params.batch_size * params.n_iter
        first_seed = params.seed if params.seed != -1 else random.randint(0, MAX_SEED)  # noqa: S311 - not crypto
        seeds = [(first_seed + i) % (MAX_SEED + 1) for i in range(total)]
        with self._lock:
            pipeline, scheduler_config = self.cache.get(model)
            if init_image is not None:
                from diffusers import AutoPipelineForImage2Image

                pipeline = AutoPipelineForImage2Image.from_pipe(pipeline)  # shares the loaded weights
                pipeline.set_progress_bar_config(disable=True)
                init_image = init_image.resize((params.width, params.height))
            pipeline.scheduler = make_scheduler(scheduler_config, params.sampler_name, params.scheduler)
            images: list[Image.Image] = []
            for iteration in range(params.n_iter):
                batch_seeds = seeds[iteration * params.batch_size : (iteration + 1) * params.batch_size]
                kwargs: dict[str, Any] = {
                    "prompt": [params.prompt] * len(batch_seeds),
                    "negative_prompt": [params.negative_prompt] * len(batch_seeds),
                    "num_inference_steps": params.steps,
                    "guidance_scale": params.cfg_scale,
                    "generator": [torch.Generator("cpu").manual_seed(seed) for seed in batch_seeds],
                }
                if params.clip_skip > 1:
                    kwargs["clip_skip"] = params.clip_skip - 1  # A1111 counts the last layer as 1
                if init_image is not None:
                    assert isinstance(params, Img2ImgParams)
                    kwargs |= {"image": init_image, "strength": params.denoising_strength}
                else:
                    kwargs |= {"width": params.width, "height": params.height}
                images.extend(pipeline(**kwargs).images)
        infotexts = [self._infotext(params, model, seed).text() for seed in seeds]
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
            "denoising_strength": params.denoising_strength if isinstance(params, Img2ImgParams) else None,
            "infotexts": infotexts,
            "version": VERSION,
        }
        return GenerationResult(images=images, seeds=seeds, infotexts=infotexts, info=info)

    def _infotext(self, params: Txt2ImgParams | Img2ImgParams, model: ModelSpec, seed: int) -> Infotext:
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
                "Denoising strength": params.denoising_strength if isinstance(params, Img2ImgParams) else None,
                "Clip skip": params.clip_skip if params.clip_skip > 1 else None,
                "Version": VERSION,
            },
        )


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def info_json(result: GenerationResult) -> str:
    return json.dumps(result.info)
