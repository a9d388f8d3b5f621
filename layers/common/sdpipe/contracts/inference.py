"""The txt2img/img2img payload: an AUTOMATIC1111 ``/sdapi/v1/txt2img`` or ``img2img`` body.

Validated before any compute is spent (the way diffusers' ``check_inputs`` does), with messages
that name the field and the rule. Unknown A1111 fields are accepted and reported as warnings;
fields that would change the picture but are not supported are errors, so nobody gets a silently
different image.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

# A1111 sampler names (1.9+ splits the schedule into ``scheduler``; the old combined names such
# as "DPM++ 2M Karras" are still accepted, as the WebUI accepts them).
SAMPLERS: frozenset[str] = frozenset(
    [
        "Euler", "Euler a", "LMS", "Heun", "DPM2", "DPM2 a", "DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE",
        "DPM++ 2S a", "DPM fast", "DPM adaptive", "DDIM", "PLMS", "UniPC", "DEIS", "LCM",
    ]
)  # fmt: skip
# Samplers whose multistep start-up needs a few steps (diffusers' PNDM fails below 4).
MIN_STEPS: dict[str, int] = {"PLMS": 4}
SCHEDULE_TYPES: frozenset[str] = frozenset(["Automatic", "Uniform", "Karras", "Exponential", "SGM Uniform"])
_COMBINED_SUFFIXES = {" Karras": "Karras", " Exponential": "Exponential"}

MAX_SIDE = 2048
MAX_STEPS = 150
MAX_BATCH = 8
MAX_ITERATIONS = 16
MAX_SEED = 2**32 - 1

# A1111 fields that change the picture and that sdpipe does not implement: refusing them beats
# returning an image that silently differs from what the WebUI would make.
_UNSUPPORTED_WHEN_SET: dict[str, Any] = {
    "enable_hr": False,
    "restore_faces": False,
    "tiling": False,
    "subseed_strength": 0,
    "seed_resize_from_h": -1,
    "seed_resize_from_w": -1,
    "refiner_checkpoint": None,
    "script_name": None,
}
# Known A1111 fields that do not change the picture (or that sdpipe honours elsewhere).
_IGNORED_KNOWN = frozenset(
    ["send_images", "save_images", "do_not_save_samples", "do_not_save_grid", "styles",
     "sampler_index", "eta", "s_churn", "s_tmax", "s_tmin", "s_noise", "force_task_id",
     "infotext", "comments", "disable_extra_networks", "firstpass_image", "include_init_images",
     "override_settings_restore_afterwards", "script_args", "subseed", "hr_scale", "hr_upscaler",
     "hr_second_pass_steps", "hr_resize_x", "hr_resize_y", "denoising_strength_hr", "resize_mode",
     "image_cfg_scale", "mask_blur", "mask_blur_x", "mask_blur_y", "inpainting_fill",
     "inpaint_full_res", "inpaint_full_res_padding", "inpainting_mask_invert",
     "initial_noise_multiplier", "latent_mask"]
)  # fmt: skip


# The ControlNet extension's (sd-webui-controlnet) unit fields, and the preprocessors sdpipe runs
# itself. Preprocessors that need their own annotator models (depth, openpose, ...) are refused:
# send the preprocessed image with module "none" instead.
CONTROLNET_MODULES: frozenset[str] = frozenset(["none", "canny", "invert"])
_MODULE_ALIASES = {"None": "none", "": "none", "invert (from white bg & black line)": "invert"}
RESIZE_MODES = ("Just Resize", "Crop and Resize", "Resize and Fill")
CONTROL_MODES = ("Balanced", "My prompt is more important", "ControlNet is more important")
MAX_CONTROLNET_UNITS = 3
# The extension's defaults for canny's low/high thresholds (its threshold_a/threshold_b sliders).
CANNY_THRESHOLDS = (100.0, 200.0)


def _named_choice(value: Any, names: tuple[str, ...]) -> str:
    """The extension accepts both the name and its index (older API clients send the index)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(names):
        return names[value]
    if isinstance(value, str) and value in names:
        return value
    raise ValueError(f"{value!r} is not one of {list(names)}")


class ControlNetUnit(BaseModel):
    """One unit of ``alwayson_scripts.controlnet.args`` (the sd-webui-controlnet API)."""

    model_config = ConfigDict(defer_build=True, extra="allow")

    enabled: bool = True
    module: str = "none"
    model: str = ""
    weight: float = Field(default=1.0, ge=0.0, le=2.0)
    image: str | dict[str, Any] | None = None
    input_image: str | None = None  # the extension's older name for ``image``
    resize_mode: str = "Crop and Resize"
    processor_res: int = Field(default=512, ge=-1, le=MAX_SIDE)
    threshold_a: float = -1
    threshold_b: float = -1
    guidance_start: float = Field(default=0.0, ge=0.0, le=1.0)
    guidance_end: float = Field(default=1.0, ge=0.0, le=1.0)
    control_mode: str = "Balanced"
    pixel_perfect: bool = False

    @field_validator("module", mode="before")
    @classmethod
    def _known_module(cls, value: Any) -> str:
        module = _MODULE_ALIASES.get(str(value), str(value))
        if module not in CONTROLNET_MODULES:
            raise ValueError(
                f"{value!r} is not a preprocessor sdpipe runs ({sorted(CONTROLNET_MODULES)}); "
                "preprocess the image yourself and send it with module 'none'"
            )
        return module

    @field_validator("resize_mode", mode="before")
    @classmethod
    def _known_resize_mode(cls, value: Any) -> str:
        return _named_choice(value, RESIZE_MODES)

    @field_validator("control_mode", mode="before")
    @classmethod
    def _known_control_mode(cls, value: Any) -> str:
        mode = _named_choice(value, CONTROL_MODES)
        if mode == "My prompt is more important":
            raise ValueError(f"{mode!r} is not supported by sdpipe; use 'Balanced' or {CONTROL_MODES[2]!r}")
        return mode

    @model_validator(mode="after")
    def _consistent(self) -> ControlNetUnit:
        if self.enabled and self.model in ("", "None", "none"):
            raise ValueError("model is required (a registered ControlNet: name, 'name [hash]' or hash prefix)")
        if self.guidance_start > self.guidance_end:
            raise ValueError(f"guidance_start {self.guidance_start} is after guidance_end {self.guidance_end}")
        return self

    @property
    def control_image(self) -> str | None:
        """The unit's own image (base64 or ``s3://``), in whichever field the client used."""
        if isinstance(self.image, dict):
            found = self.image.get("image")
            return found if isinstance(found, str) else None
        return self.image or self.input_image

    @property
    def thresholds(self) -> tuple[float, float]:
        low = self.threshold_a if self.threshold_a >= 0 else CANNY_THRESHOLDS[0]
        high = self.threshold_b if self.threshold_b >= 0 else CANNY_THRESHOLDS[1]
        return low, high


def _controlnet_units(scripts: dict[str, Any]) -> list[ControlNetUnit]:
    """The enabled units of ``alwayson_scripts.controlnet``, or a ValueError naming the field."""
    script = scripts.get("controlnet")
    if not script:
        return []
    where = "alwayson_scripts.controlnet.args"
    args = script.get("args") if isinstance(script, dict) else None
    if not isinstance(args, list):
        raise ValueError(f"{where} must be a list of ControlNet units")
    units = []
    for index, arg in enumerate(args):
        if not isinstance(arg, dict):
            raise ValueError(f"{where}[{index}] must be an object (the extension's named-field unit)")
        if arg.get("enabled") is False:  # UIs send their disabled units too, with whatever settings
            continue
        try:
            unit = ControlNetUnit.model_validate(arg)
        except ValidationError as exc:
            error = exc.errors()[0]
            location = ".".join(str(part) for part in error["loc"])
            detail = error["msg"].removeprefix("Value error, ")
            raise ValueError(f"{where}[{index}]{'.' + location if location else ''}: {detail}") from None
        units.append(unit)
    if len(units) > MAX_CONTROLNET_UNITS:
        raise ValueError(f"{where}: {len(units)} enabled units, at most {MAX_CONTROLNET_UNITS}")
    if len({unit.control_mode for unit in units}) > 1:
        raise ValueError(f"{where}: all enabled units must use the same control_mode")
    return units


class OverrideSettings(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="allow")

    sd_model_checkpoint: str | None = None
    sd_vae: str | None = None
    CLIP_stop_at_last_layers: int | None = Field(default=None, ge=1, le=12)


class ImageGenerationParams(BaseModel):
    """Fields shared by txt2img and img2img, with A1111's defaults."""

    model_config = ConfigDict(defer_build=True, extra="allow", populate_by_name=True)

    prompt: str = ""
    negative_prompt: str = ""
    steps: int = Field(default=20, ge=1, le=MAX_STEPS)
    sampler_name: str = "Euler a"
    scheduler: str = "Automatic"
    cfg_scale: float = Field(default=7.0, ge=1.0, le=30.0)
    width: int = Field(default=512, ge=64, le=MAX_SIDE)
    height: int = Field(default=512, ge=64, le=MAX_SIDE)
    seed: int = Field(default=-1, ge=-1, le=MAX_SEED)
    batch_size: int = Field(default=1, ge=1, le=MAX_BATCH)
    n_iter: int = Field(default=1, ge=1, le=MAX_ITERATIONS)
    override_settings: OverrideSettings = Field(default_factory=OverrideSettings)
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict)
    # sdpipe's extras: shortcuts for override_settings.sd_model_checkpoint and the endpoint.
    model: str | None = None
    endpoint: str | None = None

    _controlnet_units: list[ControlNetUnit] = PrivateAttr(default_factory=list)

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_eight(cls, value: int, info: Any) -> int:
        if value % 8:
            raise ValueError(f"{info.field_name} must be a multiple of 8 (the VAE works on 8x8 blocks), got {value}")
        return value

    @model_validator(mode="after")
    def _sampler_and_schedule(self) -> ImageGenerationParams:
        name = self.sampler_name
        for suffix, schedule in _COMBINED_SUFFIXES.items():
            if name.endswith(suffix) and name[: -len(suffix)] in SAMPLERS:
                self.sampler_name, self.scheduler = name[: -len(suffix)], schedule
                break
        if self.sampler_name not in SAMPLERS:
            raise ValueError(f"sampler_name {name!r} is not a known sampler; use one of {sorted(SAMPLERS)}")
        minimum = MIN_STEPS.get(self.sampler_name, 1)
        if self.steps < minimum:
            raise ValueError(f"steps={self.steps} is too few for {self.sampler_name}; it needs at least {minimum}")
        if self.scheduler not in SCHEDULE_TYPES:
            raise ValueError(
                f"scheduler {self.scheduler!r} is not a known schedule type; use one of {sorted(SCHEDULE_TYPES)}"
            )
        return self

    @model_validator(mode="after")
    def _unsupported_fields(self) -> ImageGenerationParams:
        for field, default in _UNSUPPORTED_WHEN_SET.items():
            value = (self.model_extra or {}).get(field, default)
            if value not in (default, None) and value != default:
                raise ValueError(f"{field}={value!r} is not supported by sdpipe (it would change the picture)")
        return self

    @model_validator(mode="after")
    def _controlnet(self) -> ImageGenerationParams:
        self._controlnet_units = _controlnet_units(self.alwayson_scripts)
        return self

    @property
    def controlnet_units(self) -> list[ControlNetUnit]:
        """The enabled ControlNet units, validated."""
        return self._controlnet_units

    @property
    def checkpoint(self) -> str | None:
        """The checkpoint asked for: ``model`` or ``override_settings.sd_model_checkpoint``."""
        return self.model or self.override_settings.sd_model_checkpoint

    @property
    def clip_skip(self) -> int:
        return self.override_settings.CLIP_stop_at_last_layers or 1

    def warnings(self) -> list[str]:
        """Unknown fields, accepted and ignored; recorded on the job."""
        unknown = sorted(set(self.model_extra or {}) - _IGNORED_KNOWN - set(_UNSUPPORTED_WHEN_SET))
        found = [f"field {name!r} is not an AUTOMATIC1111 field sdpipe knows; it was ignored" for name in unknown]
        scripts = sorted(name for name, value in self.alwayson_scripts.items() if name != "controlnet" and value)
        found += [f"alwayson_scripts.{name} is not run by sdpipe; it was ignored" for name in scripts]
        return found


class Txt2ImgParams(ImageGenerationParams):
    kind: Literal["txt2img"] = "txt2img"

    @model_validator(mode="after")
    def _needs_a_prompt(self) -> Txt2ImgParams:
        if not self.prompt.strip():
            raise ValueError("prompt is required for txt2img")
        for index, unit in enumerate(self.controlnet_units):
            if unit.control_image is None:  # img2img falls back to the init image, as the extension does
                raise ValueError(f"alwayson_scripts.controlnet.args[{index}].image is required for txt2img")
        return self


class Img2ImgParams(ImageGenerationParams):
    kind: Literal["img2img"] = "img2img"

    init_images: list[str] = Field(min_length=1, max_length=1)
    mask: str | None = None
    denoising_strength: float = Field(default=0.75, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _denoises_at_least_once(self) -> Img2ImgParams:
        # img2img runs the last steps x strength steps of the schedule; with none left diffusers
        # fails deep inside the VAE instead of saying why.
        if self.denoising_strength == 0:
            raise ValueError("denoising_strength 0 would change nothing: give a strength above 0")
        if int(self.steps * self.denoising_strength) < 1:
            raise ValueError(
                f"denoising_strength {self.denoising_strength} of {self.steps} steps leaves no step to run: "
                f"raise steps to at least {math.ceil(1 / self.denoising_strength)} or the strength"
            )
        return self


# ``<lora:name:weight>`` (A1111's extra-network syntax; ``lyco`` is the LyCORIS extension's alias).
# The name may hold spaces and colons are separators, as in the WebUI.
_EXTRA_NETWORK = re.compile(r"<(?P<kind>lora|lyco|hypernet):(?P<args>[^>]+)>")


@dataclass(frozen=True)
class ExtraNetworkUse:
    kind: str
    name: str
    weight: float
    text: str


def extra_networks(prompt: str, field: str = "prompt") -> list[ExtraNetworkUse]:
    """The extra networks a prompt names, with their weights (default 1.0, as in the WebUI)."""
    found = []
    for match in _EXTRA_NETWORK.finditer(prompt):
        args = match["args"].split(":")
        name = args[0].strip()
        if not name:
            raise ValueError(f"{field}: {match[0]!r} names no model")
        weight = 1.0
        if len(args) > 1 and args[1].strip():
            try:
                weight = float(args[1])
            except ValueError:
                raise ValueError(f"{field}: weight {args[1]!r} in {match[0]!r} is not a number") from None
        kind = "lora" if match["kind"] == "lyco" else match["kind"]
        found.append(ExtraNetworkUse(kind=kind, name=name, weight=weight, text=match[0]))
    return found


def strip_extra_networks(prompt: str) -> str:
    """The prompt the text encoder sees: extra-network tags removed, as the WebUI does."""
    return re.sub(r"\s*,\s*,", ",", _EXTRA_NETWORK.sub("", prompt)).strip(" ,")


class ModelFile(BaseModel):
    """A registered model file as the inference container needs it."""

    model_config = ConfigDict(defer_build=True)

    name: str
    sha256: str
    short_hash: str
    family: str
    uri: str
    config_uri: str | None = None
    # What registration found beyond the family, choosing the shipped config (a checkpoint's
    # own config folder, ``config_uri``, overrides it).
    variant: str | None = None
    prediction: str | None = None
    # An original (LDM) config beside the checkpoint, A1111's ``<name>.yaml``: its
    # parameterization and UNet input channels override what registration detected.
    original_config_uri: str | None = None


class WeightedModelFile(ModelFile):
    weight: float = 1.0


class InvocationInput(BaseModel):
    """``jobs/<job_id>/input.json``: what SubmitInference asks the endpoint to do."""

    model_config = ConfigDict(defer_build=True)

    job_id: str | None = None
    # The request's envelope fields, for the job.progress events the endpoint publishes itself.
    request_id: str | None = None
    context: dict[str, Any] = Field(default_factory=dict)
    kind: Literal["txt2img", "img2img"]
    params: dict[str, Any]
    model: ModelFile
    loras: list[WeightedModelFile] = Field(default_factory=list)
    embeddings: list[ModelFile] = Field(default_factory=list)
    vae: ModelFile | None = None
    # One per enabled unit of ``alwayson_scripts.controlnet.args``, in order.
    controlnets: list[ModelFile] = Field(default_factory=list)


def stop_request_key(job_id: str) -> str:
    """Where a cancel or a time-out asks the endpoint to stop working on a job."""
    return f"jobs/{job_id}/stop.json"


class StopRequest(BaseModel):
    """``jobs/<job_id>/stop.json``: the job ended (cancelled or timed out) while the endpoint may
    still be generating it. The container looks for it between denoising steps and stops; the
    job's status in the ledger, not this file, is the truth."""

    model_config = ConfigDict(defer_build=True, extra="ignore")

    status: Literal["CANCELLED", "TIMED_OUT"]
    reason: str = ""
