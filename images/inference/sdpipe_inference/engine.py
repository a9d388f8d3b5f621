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
import functools
import gc
import io
import json
import random
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from sdpipe.contracts.inference import (
    CONTROL_MODES,
    MAX_SEED,
    ControlNetUnit,
    Img2ImgParams,
    Txt2ImgParams,
    strip_extra_networks,
)
from sdpipe.errors import SdpipeError
from sdpipe_inference.acceleration import HOT_ADAPTER, Acceleration
from sdpipe_inference.controlnet import ControlNetMismatch, control_map, load_controlnet
from sdpipe_inference.infotext import Infotext, png_with_parameters
from sdpipe_inference.memory import HEADROOM, ModelTooLarge, free_device_memory, weight_count
from sdpipe_inference.samplers import make_scheduler
from sdpipe_inference.weights import read_state_dict

VERSION = "sdpipe 0.1.0"


class InvalidInput(SdpipeError):
    code = "VALIDATION_ERROR"


def _size(count: int) -> str:
    return f"{count / 2**30:.1f} GiB" if count >= 2**30 else f"{count / 2**20:.0f} MiB"


class ModelConfigMismatch(SdpipeError):
    """The weights are not the architecture the chosen config describes (a wrong <name>.config/
    or .yaml beside the file, or a family told wrongly)."""

    code = "MODEL_CONFIG_MISMATCH"


# diffusers' words when a tensor of the file does not fit the module the config built.
_SHAPE_MISMATCH = re.compile(r"(\S+) expected shape torch\.Size\((\[[^\]]*\])\), but got torch\.Size\((\[[^\]]*\])\)")


def _component(tensor: str) -> str:
    """Which part of the pipeline a converted (diffusers-named) tensor belongs to."""
    if tensor.startswith(("embeddings.", "encoder.layers.", "final_layer_norm", "text_model.", "text_projection")):
        return "the text encoder's"
    if tensor.startswith(("encoder.", "decoder.", "quant_conv", "post_quant_conv")):
        return "the VAE's"
    return "the UNet's"


@dataclass(frozen=True)
class ModelSpec:
    """A registered checkpoint, resolved to local files."""

    name: str
    sha256: str
    short_hash: str
    family: str
    path: Path
    config: Path

    @functools.cached_property
    def pipeline_class(self) -> str:
        """The diffusers pipeline the config describes (``model_index.json``'s ``_class_name``),
        read once per spec (a generation asks several times)."""
        try:
            name = str(json.loads((self.config / "model_index.json").read_text())["_class_name"])
        except (OSError, ValueError, KeyError) as exc:
            raise ModelConfigMismatch(
                f"config {self.config.name!r} of {self.name!r} has no readable model_index.json: {exc}"
            ) from None
        if name not in PIPELINE_CLASSES:
            raise ModelConfigMismatch(
                f"config {self.config.name!r} of {self.name!r} describes a {name}, which sdpipe does not run "
                f"({', '.join(sorted(PIPELINE_CLASSES))})"
            )
        return name

    @property
    def is_inpainting(self) -> bool:
        """A 9-channel UNet that always reads a mask and the masked image (``sd-v1-5-inpainting``)."""
        return "Inpaint" in self.pipeline_class

    @property
    def refines_only(self) -> bool:
        """The SDXL refiner: it denoises an image it is given, it does not start from noise."""
        return self.pipeline_class == "StableDiffusionXLImg2ImgPipeline"


# The checkpoints' own pipelines: text-to-image, inpainting models, and SDXL's refiner (img2img).
PIPELINE_CLASSES = frozenset(
    ["StableDiffusionPipeline", "StableDiffusionInpaintPipeline", "StableDiffusionXLPipeline",
     "StableDiffusionXLInpaintPipeline", "StableDiffusionXLImg2ImgPipeline"]
)  # fmt: skip
# An inpainting model in txt2img sees what A1111 gives it: everything masked, over mid-grey
# (what its "masked image" conditioning is with nothing left unmasked).
_MASK_ALL, _NOTHING_KEPT = 255, (127, 127, 127)


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
    controlnets: tuple[AddOn, ...] = ()  # one per enabled ControlNet unit, in order


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

    def __init__(
        self, capacity: int, acceleration: Acceleration, free_memory: Callable[[str], int] | None = None
    ) -> None:
        self.capacity = capacity
        self.acceleration = acceleration
        self.device = acceleration.device
        self.free_memory = free_memory or free_device_memory
        self._pipelines: OrderedDict[str, tuple[Any, Any]] = OrderedDict()
        self._applied: dict[int, set[str]] = {}  # id(pipeline) -> LoRAs and embeddings loaded into it
        self._hot: dict[int, str] = {}  # id(pipeline) -> sha256 of the LoRA in its hot slot
        self._vaes: OrderedDict[str, Any] = OrderedDict()
        self._controlnets: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self.loads = 0
        self.lora_loads = 0

    def get(self, spec: ModelSpec) -> tuple[Any, Any]:
        """The loaded pipeline and its checkpoint's own scheduler config (requests change samplers)."""
        entry = self._pipelines.get(spec.sha256)
        if entry is not None:
            self._pipelines.move_to_end(spec.sha256)
            return entry
        self._make_room(spec)
        pipeline = self._load(spec)
        entry = (pipeline, pipeline.scheduler.config)
        self._pipelines[spec.sha256] = entry
        while len(self._pipelines) > self.capacity:
            _, (evicted, _) = self._pipelines.popitem(last=False)
            self._forget(evicted)
        return entry

    def _forget(self, pipeline: Any) -> None:
        self._applied.pop(id(pipeline), None)
        self._hot.pop(id(pipeline), None)

    def apply(self, pipeline: Any, spec: ModelSpec, add_ons: AddOns) -> None:
        """Set the request's LoRAs (loaded once per pipeline, then only re-weighted) and embeddings."""
        loaded = self._applied.setdefault(id(pipeline), set())
        if self.acceleration.hotswap_loras and len(add_ons.loras) == 1:
            self._hotswap(pipeline, spec, add_ons.loras[0], loaded)
        else:
            self._apply_loras(pipeline, spec, add_ons.loras, loaded)
        self._apply_embeddings(pipeline, spec, add_ons.embeddings, loaded)

    def _apply_loras(self, pipeline: Any, spec: ModelSpec, loras: tuple[AddOn, ...], loaded: set[str]) -> None:
        for lora in loras:
            if lora.adapter_name not in loaded:
                self._load_lora(pipeline, spec, lora, lora.adapter_name)
                loaded.add(lora.adapter_name)
        if loras:
            pipeline.enable_lora()
            pipeline.set_adapters(
                [lora.adapter_name for lora in loras], adapter_weights=[lora.weight for lora in loras]
            )
        elif self._hot.get(id(pipeline)) is not None:
            # Weight 0 rather than switching adapters off: a compiled UNet would recompile for that.
            pipeline.set_adapters([HOT_ADAPTER], adapter_weights=[0.0])
        elif any(name.startswith("lora_") for name in loaded):
            pipeline.disable_lora()

    def _hotswap(self, pipeline: Any, spec: ModelSpec, lora: AddOn, loaded: set[str]) -> None:
        """One LoRA in the pipeline's hot slot: a new one replaces the slot's weights in place
        (diffusers' hotswap), so a compiled UNet runs on without recompiling."""
        current = self._hot.get(id(pipeline))
        if current != lora.sha256:
            self._load_lora(pipeline, spec, lora, HOT_ADAPTER, hotswap=current is not None)
            self._hot[id(pipeline)] = lora.sha256
            loaded.add(HOT_ADAPTER)
        pipeline.enable_lora()
        pipeline.set_adapters([HOT_ADAPTER], adapter_weights=[lora.weight])

    def _load_lora(self, pipeline: Any, spec: ModelSpec, lora: AddOn, adapter: str, hotswap: bool = False) -> None:
        try:
            pipeline.load_lora_weights(str(lora.path), adapter_name=adapter, hotswap=hotswap)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise InvalidInput(f"LoRA {lora.name!r} does not fit model {spec.name!r}: {exc}") from None
        self.lora_loads += 1

    def _apply_embeddings(
        self, pipeline: Any, spec: ModelSpec, embeddings: tuple[AddOn, ...], loaded: set[str]
    ) -> None:
        for embedding in embeddings:
            key = "embedding_" + embedding.sha256
            if key in loaded:
                continue
            token = embedding.name.rsplit("/", 1)[-1]
            try:
                if spec.family.startswith("sdxl"):
                    _load_sdxl_embedding(pipeline, embedding.path, token)
                else:
                    pipeline.load_textual_inversion(str(embedding.path), token=token)
            except (ValueError, KeyError, RuntimeError) as exc:
                raise InvalidInput(f"embedding {embedding.name!r} does not fit model {spec.name!r}: {exc}") from None
            loaded.add(key)

    def vae(self, add_on: AddOn, spec: ModelSpec) -> Any:
        """A VAE override, loaded once with the checkpoint's VAE config."""
        found = self._vaes.get(add_on.sha256)
        if found is None:
            from diffusers import AutoencoderKL

            found = AutoencoderKL.from_single_file(
                str(add_on.path), config=str(spec.config / "vae"), local_files_only=True,
                torch_dtype=self.acceleration.torch_dtype(spec.family),
            )  # fmt: skip
            if self.device != "cpu":
                found.to(self.device)
            self._vaes[add_on.sha256] = found
            while len(self._vaes) > self.capacity:
                self._vaes.popitem(last=False)
        return found

    def controlnet(self, add_on: AddOn, spec: ModelSpec, unet: Any) -> Any:
        """A ControlNet built for this checkpoint family's UNet, loaded once."""
        key = (add_on.sha256, spec.family)
        found = self._controlnets.get(key)
        if found is not None:
            self._controlnets.move_to_end(key)
            return found
        try:
            found = load_controlnet(add_on.path, unet, self.acceleration.torch_dtype(spec.family), self.device)
        except (ControlNetMismatch, KeyError) as exc:
            raise InvalidInput(f"ControlNet {add_on.name!r} does not fit model {spec.name!r}: {exc}") from None
        self._controlnets[key] = found
        while len(self._controlnets) > self.capacity:
            self._controlnets.popitem(last=False)
        return found

    def _make_room(self, spec: ModelSpec) -> None:
        """Refuse a checkpoint the device cannot hold (rather than be OOM-killed and restarted
        into the same request), after evicting the cached pipelines that stand in its way."""
        import torch

        dtype = self.acceleration.torch_dtype(spec.family)
        needed = int(weight_count(spec.path) * torch.empty((), dtype=dtype).element_size() * HEADROOM)
        free = self.free_memory(self.device)
        while needed > free and self._pipelines:
            _, (evicted, _) = self._pipelines.popitem(last=False)
            self._forget(evicted)
            del evicted
            gc.collect()
            if self.device != "cpu":
                torch.cuda.empty_cache()
            free = self.free_memory(self.device)
        if needed > free:
            raise ModelTooLarge(
                f"checkpoint {spec.name!r} needs about {_size(needed)} of {self.device} memory in "
                f"{str(dtype).removeprefix('torch.')}, and {_size(free)} are free: "
                "deploy the endpoint on a larger instance type"
            )

    def _load(self, spec: ModelSpec) -> Any:
        import diffusers

        cls = getattr(diffusers, spec.pipeline_class)
        try:
            pipeline = cls.from_single_file(
                str(spec.path), config=str(spec.config), local_files_only=True,
                torch_dtype=self.acceleration.torch_dtype(spec.family),
            )  # fmt: skip
        except ValueError as exc:
            mismatch = _SHAPE_MISMATCH.search(str(exc))
            if mismatch is None:
                raise
            tensor, expected, found = mismatch.groups()
            raise ModelConfigMismatch(
                f"checkpoint {spec.name!r} does not fit the config {spec.config.name!r}: {_component(tensor)} "
                f"tensor {tensor} is {found} in the file, the config expects {expected}"
            ) from None
        pipeline.set_progress_bar_config(disable=True)
        if self.device != "cpu":
            pipeline.to(self.device)
        self.acceleration.prepare(pipeline)
        self.loads += 1
        return pipeline


def _load_sdxl_embedding(pipeline: Any, path: Path, token: str) -> None:
    """An SDXL embedding holds one set of vectors per text encoder (``clip_l``, ``clip_g``)."""
    state = read_state_dict(path)
    if "clip_l" not in state or "clip_g" not in state:
        raise ValueError("an SDXL embedding needs both clip_l and clip_g vectors")
    pipeline.load_textual_inversion(
        state["clip_l"], token=token, text_encoder=pipeline.text_encoder, tokenizer=pipeline.tokenizer
    )
    pipeline.load_textual_inversion(
        state["clip_g"], token=token, text_encoder=pipeline.text_encoder_2, tokenizer=pipeline.tokenizer_2
    )


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
    def __init__(
        self, device: str | None = None, max_pipelines: int = 2, acceleration: Acceleration | None = None
    ) -> None:
        import torch

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.acceleration = acceleration or Acceleration.from_environment(self.device)
        self.cache = PipelineCache(max_pipelines, self.acceleration)
        self._lock = threading.Lock()  # one generation at a time per device

    def generate(
        self,
        params: Txt2ImgParams | Img2ImgParams,
        model: ModelSpec,
        add_ons: AddOns | None = None,
        on_step: Callable[[StepProgress], None] | None = None,
    ) -> GenerationResult:
        """Validate and prepare the inputs, run the batches under the device lock, describe them.
        ``on_step`` is called after each denoising step of each batch, with the latents."""
        add_ons = add_ons or AddOns()
        inputs = self._inputs(params, add_ons, model)
        with self._lock:
            pipeline, scheduler_config = self.cache.get(model)
            self.cache.apply(pipeline, model, add_ons)
            self.acceleration.compile_once(pipeline)  # after the first LoRA is in: later ones hot-swap
            pipeline = self._task_pipeline(pipeline, model, add_ons, inputs)
            pipeline.set_progress_bar_config(disable=True)
            pipeline.scheduler = make_scheduler(scheduler_config, params.sampler_name, params.scheduler)
            own_vae = pipeline.vae
            if add_ons.vae is not None:
                pipeline.vae = self.cache.vae(add_ons.vae, model)
            self.acceleration.for_size(pipeline, params.width, params.height)
            try:
                images: list[Image.Image] = []
                for iteration in range(params.n_iter):
                    batch_seeds = inputs.seeds[iteration * params.batch_size : (iteration + 1) * params.batch_size]
                    arguments = _call_arguments(params, inputs, batch_seeds)
                    if on_step is not None:
                        first = iteration * params.batch_size + 1
                        arguments["callback_on_step_end"] = _step_callback(on_step, first, len(inputs.seeds))
                        arguments["callback_on_step_end_tensor_inputs"] = ["latents"]
                    images.extend(pipeline(**arguments).images)
            finally:
                pipeline.vae = own_vae
        infotexts = [self._infotext(params, model, seed, add_ons).text() for seed in inputs.seeds]
        info = _generation_info(params, model, add_ons, inputs.seeds, infotexts)
        return GenerationResult(images=images, seeds=inputs.seeds, infotexts=infotexts, info=info)

    def _inputs(self, params: Txt2ImgParams | Img2ImgParams, add_ons: AddOns, model: ModelSpec) -> _Inputs:
        """Everything a generation needs decided before the device is taken: images, seeds, maps."""
        size = (params.width, params.height)
        init_image = mask = None
        strength: float | None = None
        if isinstance(params, Img2ImgParams):
            init_image = decode_image(params.init_images[0], "init_images[0]").resize(size)
            strength = params.denoising_strength
            if params.mask:
                mask = decode_image(params.mask, "mask").convert("L").resize(size)
        elif model.refines_only:
            raise InvalidInput(
                f"model {model.name!r} is an SDXL refiner, which refines an image it is given: "
                "use it with img2img (txt2img needs a base checkpoint)"
            )
        if model.is_inpainting:  # its UNet always reads a mask: without one, all of the image is redone
            init_image = init_image or Image.new("RGB", size, _NOTHING_KEPT)
            mask = mask or Image.new("L", size, _MASK_ALL)
            strength = 1.0 if strength is None else strength
        units = params.controlnet_units
        if len(units) != len(add_ons.controlnets):
            raise InvalidInput(
                f"{len(units)} enabled ControlNet units but {len(add_ons.controlnets)} ControlNet models were sent"
            )
        total = params.batch_size * params.n_iter
        first_seed = params.seed if params.seed != -1 else random.randint(0, MAX_SEED)  # noqa: S311 - not crypto
        return _Inputs(
            prompt=strip_extra_networks(params.prompt),
            negative_prompt=strip_extra_networks(params.negative_prompt),
            init_image=init_image,
            mask=mask,
            strength=strength,
            control_images=[self._control_image(index, unit, params, size) for index, unit in enumerate(units)],
            seeds=[(first_seed + i) % (MAX_SEED + 1) for i in range(total)],
        )

    def _task_pipeline(self, pipeline: Any, model: ModelSpec, add_ons: AddOns, inputs: _Inputs) -> Any:
        """The task's pipeline: it shares the loaded weights; with ControlNets it is their variant."""
        controlnets = [self.cache.controlnet(add_on, model, pipeline.unet) for add_on in add_ons.controlnets]
        variant: dict[str, Any] = {}
        if controlnets:
            variant["controlnet"] = controlnets[0] if len(controlnets) == 1 else controlnets
        own_task = model.is_inpainting or (model.refines_only and inputs.mask is None)
        if own_task and not controlnets:
            return pipeline  # an inpainting model inpaints, the refiner refines: their own pipelines
        if inputs.mask is not None:
            from diffusers import AutoPipelineForInpainting

            return AutoPipelineForInpainting.from_pipe(pipeline, **variant)
        if inputs.init_image is not None:
            from diffusers import AutoPipelineForImage2Image

            return AutoPipelineForImage2Image.from_pipe(pipeline, **variant)
        if controlnets:
            from diffusers import AutoPipelineForText2Image

            return AutoPipelineForText2Image.from_pipe(pipeline, **variant)
        return pipeline

    @staticmethod
    def _control_image(
        index: int, unit: ControlNetUnit, params: Txt2ImgParams | Img2ImgParams, size: tuple[int, int]
    ) -> Image.Image:
        """The unit's control map; without its own image a unit uses the init image, as in the WebUI."""
        if unit.control_image is not None:
            source = decode_image(unit.control_image, f"alwayson_scripts.controlnet.args[{index}].image")
        elif isinstance(params, Img2ImgParams):
            source = decode_image(params.init_images[0], "init_images[0]")
        else:  # pragma: no cover - Txt2ImgParams requires the image
            raise InvalidInput(f"alwayson_scripts.controlnet.args[{index}].image is required for txt2img")
        return control_map(unit, source, size)

    def _infotext(
        self, params: Txt2ImgParams | Img2ImgParams, model: ModelSpec, seed: int, add_ons: AddOns
    ) -> Infotext:
        schedule = None if params.scheduler == "Automatic" else params.scheduler
        controlnets = {
            f"ControlNet {index}": _controlnet_infotext(unit, add_on)
            for index, (unit, add_on) in enumerate(zip(params.controlnet_units, add_ons.controlnets, strict=True))
        }
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
                **controlnets,
                "Version": VERSION,
            },
        )


def _control_kwargs(units: list[ControlNetUnit], images: list[Image.Image], image_key: str) -> dict[str, Any]:
    """diffusers' ControlNet arguments: scalars for one unit, lists (a MultiControlNet) for several."""

    def each(values: list[Any]) -> Any:
        return values[0] if len(values) == 1 else values

    return {
        image_key: each(images),
        "controlnet_conditioning_scale": each([unit.weight for unit in units]),
        "control_guidance_start": each([unit.guidance_start for unit in units]),
        "control_guidance_end": each([unit.guidance_end for unit in units]),
        # The extension's "ControlNet is more important" is ControlNet's guess mode (units agree on it).
        "guess_mode": units[0].control_mode == CONTROL_MODES[2],
    }


def _controlnet_infotext(unit: ControlNetUnit, add_on: AddOn) -> str:
    """One unit as the extension writes it into the infotext (a quoted list of its settings)."""
    low, high = unit.thresholds
    settings = {
        "Module": unit.module,
        "Model": f"{add_on.name} [{add_on.short_hash}]",
        "Weight": _number(unit.weight),
        "Resize Mode": unit.resize_mode,
        "Processor Res": unit.processor_res,
        "Threshold A": _number(low) if unit.module == "canny" else None,
        "Threshold B": _number(high) if unit.module == "canny" else None,
        "Guidance Start": _number(unit.guidance_start),
        "Guidance End": _number(unit.guidance_end),
        "Pixel Perfect": unit.pixel_perfect,
        "Control Mode": unit.control_mode,
    }
    return ", ".join(f"{key}: {value}" for key, value in settings.items() if value is not None)


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


@dataclass
class _Inputs:
    prompt: str
    negative_prompt: str
    init_image: Image.Image | None
    mask: Image.Image | None
    control_images: list[Image.Image]
    seeds: list[int]
    strength: float | None = None  # img2img's denoising strength (1.0: an inpainting model's txt2img)


@dataclass(frozen=True)
class StepProgress:
    """After one denoising step: ``step`` of ``total`` (1-based) of the batch whose first image is
    ``image`` of ``images``, and that batch's latents."""

    step: int
    total: int
    image: int
    images: int
    latents: Any


def _step_callback(on_step: Callable[[StepProgress], None], image: int, images: int) -> Callable[..., dict[str, Any]]:
    """diffusers' ``callback_on_step_end`` (it must hand back the tensors it was given)."""

    def callback(pipeline: Any, step: int, _timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        on_step(StepProgress(step + 1, int(pipeline.num_timesteps), image, images, tensors.get("latents")))
        return tensors

    return callback


def _call_arguments(params: Txt2ImgParams | Img2ImgParams, inputs: _Inputs, seeds: list[int]) -> dict[str, Any]:
    """The diffusers pipeline call for one batch of ``seeds``."""
    import torch

    kwargs: dict[str, Any] = {
        "prompt": [inputs.prompt] * len(seeds),
        "negative_prompt": [inputs.negative_prompt] * len(seeds),
        "num_inference_steps": params.steps,
        "guidance_scale": params.cfg_scale,
        "generator": [torch.Generator("cpu").manual_seed(seed) for seed in seeds],
    }
    if params.clip_skip > 1:
        kwargs["clip_skip"] = params.clip_skip - 1  # A1111 counts the last layer as 1
    if inputs.init_image is not None:
        kwargs |= {"image": inputs.init_image, "strength": inputs.strength}
        if inputs.mask is not None:
            kwargs |= {"mask_image": inputs.mask, "width": params.width, "height": params.height}
    else:
        kwargs |= {"width": params.width, "height": params.height}
    if params.controlnet_units:
        image_key = "image" if inputs.init_image is None else "control_image"
        kwargs |= _control_kwargs(params.controlnet_units, inputs.control_images, image_key)
    return kwargs


def _generation_info(
    params: Txt2ImgParams | Img2ImgParams, model: ModelSpec, add_ons: AddOns, seeds: list[int], infotexts: list[str]
) -> dict[str, Any]:
    """The WebUI's ``info`` of a generation (what /sdapi/v1/txt2img answers beside the images)."""
    total = len(seeds)
    controlnet_info = [
        {"model": f"{add_on.name} [{add_on.short_hash}]", "module": unit.module, "weight": unit.weight}
        for unit, add_on in zip(params.controlnet_units, add_ons.controlnets, strict=True)
    ]
    return {
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
        "controlnet_units": controlnet_info,
        "version": VERSION,
    }
