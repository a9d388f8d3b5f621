"""``train_lora`` params: Kohya ``train_network`` options, checked before any compute.

``LoraConfig`` names Kohya's own options; a key it does not know is rejected by name, and the
options sdpipe sets itself (paths, the network module, the output format) are refused with a
message that says so. Defaults that matter are explicit: Kohya's own (``.caption`` captions,
rank 4, learning rate 2e-6) are wrong for LoRA training on a ``.txt``-captioned dataset.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sdpipe.contracts.datasets import DATASET_NAME_PATTERN

Engine = Literal["kohya", "builtin"]
Family = Literal["sd1", "sd2", "sdxl"]

# Set by sdpipe from the request and the SageMaker contract; a config may not override them.
MANAGED_KEYS = frozenset(
    {
        "pretrained_model_name_or_path", "output_dir", "logging_dir", "dataset_config", "config_file",
        "network_module", "save_model_as", "train_data_dir", "reg_data_dir", "in_json", "sample_prompts",
        "huggingface_repo_id", "huggingface_token", "resume", "save_state", "output_config", "log_with",
        "wandb_api_key",
    }
)  # fmt: skip
OUTPUT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,80}$"


class LoraConfig(BaseModel):
    """The Kohya ``train_network`` options sdpipe accepts, with its defaults."""

    model_config = ConfigDict(defer_build=True, extra="forbid")

    network_dim: int = Field(default=16, ge=1, le=1024, description="LoRA rank")
    network_alpha: float = Field(default=8, gt=0, le=1024)
    learning_rate: float = Field(default=1e-4, gt=0, le=1)
    unet_lr: float | None = Field(default=None, gt=0, le=1)
    text_encoder_lr: float | None = Field(default=None, ge=0, le=1)
    max_train_epochs: int | None = Field(default=None, ge=1, le=10_000)
    max_train_steps: int | None = Field(default=None, ge=1, le=1_000_000)
    resolution: str = Field(default="512", description="'512' or '<width>,<height>'")
    train_batch_size: int = Field(default=1, ge=1, le=64)
    gradient_accumulation_steps: int = Field(default=1, ge=1, le=1024)
    optimizer_type: Literal[
        "AdamW", "AdamW8bit", "PagedAdamW8bit", "Lion", "Lion8bit", "SGDNesterov", "SGDNesterov8bit", "DAdaptAdam",
        "Prodigy", "Adafactor",
    ] = "AdamW"  # fmt: skip
    optimizer_args: list[str] | None = None
    lr_scheduler: Literal[
        "constant", "constant_with_warmup", "cosine", "cosine_with_restarts", "linear", "polynomial", "adafactor"
    ] = "constant"
    lr_warmup_steps: int = Field(default=0, ge=0, le=1_000_000)
    lr_scheduler_num_cycles: int | None = Field(default=None, ge=1, le=1000)
    mixed_precision: Literal["no", "fp16", "bf16"] = "bf16"
    save_precision: Literal["float", "fp16", "bf16"] = "fp16"
    seed: int = Field(default=42, ge=0, le=2**32 - 1)
    save_every_n_epochs: int | None = Field(default=None, ge=1, le=10_000)
    output_name: str | None = Field(default=None, pattern=OUTPUT_NAME_PATTERN)
    training_comment: str | None = Field(default=None, max_length=1000)
    gradient_checkpointing: bool = False
    cache_latents: bool = True
    network_train_unet_only: bool = False
    clip_skip: int | None = Field(default=None, ge=1, le=12)
    caption_extension: Literal[".txt"] = ".txt"
    shuffle_caption: bool = False
    keep_tokens: int = Field(default=0, ge=0, le=75)
    flip_aug: bool = False
    color_aug: bool = False
    random_crop: bool = False
    noise_offset: float | None = Field(default=None, ge=0, le=1)
    min_snr_gamma: float | None = Field(default=None, gt=0, le=20)
    max_grad_norm: float = Field(default=1.0, ge=0, le=100)
    network_dropout: float | None = Field(default=None, ge=0, lt=1)
    network_args: list[str] | None = None
    enable_bucket: bool = False
    min_bucket_reso: int | None = Field(default=None, ge=64, le=4096)
    max_bucket_reso: int | None = Field(default=None, ge=64, le=8192)
    max_token_length: Literal[75, 150, 225] | None = None
    # On by default (sd-scripts' own default is its slow attention); off when xformers is asked for.
    sdpa: bool = True
    xformers: bool = False
    no_half_vae: bool = False
    cache_text_encoder_outputs: bool = False
    full_fp16: bool = False
    full_bf16: bool = False
    max_data_loader_n_workers: int | None = Field(default=None, ge=0, le=64)
    persistent_data_loader_workers: bool = False

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        managed = sorted(k for k in data if k in MANAGED_KEYS)
        if managed:
            raise ValueError(f"{', '.join(managed)}: set by sdpipe from the request and SageMaker's layout")
        unknown = sorted(k for k in data if k not in cls.model_fields)
        if unknown:
            raise ValueError(
                f"unknown Kohya option {', '.join(repr(k) for k in unknown)} (sdpipe accepts: "
                f"{', '.join(sorted(cls.model_fields))})"
            )
        return data

    @field_validator("resolution", mode="before")
    @classmethod
    def _resolution(cls, value: Any) -> str:
        if isinstance(value, int):
            value = str(value)
        if isinstance(value, list | tuple) and len(value) == 2:
            value = f"{value[0]},{value[1]}"
        if not isinstance(value, str) or not re.fullmatch(r"\d+(,\d+)?", value.replace(" ", "")):
            raise ValueError("a size in pixels, '512' or '<width>,<height>'")
        sizes = [int(v) for v in value.replace(" ", "").split(",")]
        if any(s < 64 or s > 4096 or s % 8 for s in sizes):
            raise ValueError("each side must be a multiple of 8 from 64 to 4096")
        return ",".join(str(s) for s in sizes)

    @model_validator(mode="after")
    def _consistent(self) -> LoraConfig:
        if self.max_train_epochs is not None and self.max_train_steps is not None:
            raise ValueError("give max_train_epochs or max_train_steps, not both")
        if self.network_train_unet_only and self.text_encoder_lr:
            raise ValueError("text_encoder_lr is set but network_train_unet_only trains the U-Net only")
        # sd-scripts asserts on these after loading the model: refuse them before a GPU is paid for.
        augmented = [name for name in ("color_aug", "random_crop") if getattr(self, name)]
        if augmented and self.cache_latents:
            raise ValueError(
                f"{' and '.join(augmented)} change each image every epoch, so they need cache_latents = false "
                "(cache_latents is on by default)"
            )
        if self.xformers and "sdpa" not in self.model_fields_set:
            self.sdpa = False  # one attention implementation: the one asked for
        elif self.xformers and self.sdpa:
            raise ValueError("give sdpa or xformers, not both")
        return self

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)``."""
        parts = [int(v) for v in self.resolution.split(",")]
        return (parts[0], parts[-1])

    def explicit(self) -> dict[str, Any]:
        """The options that go into Kohya's config: everything set, defaults included, None left out."""
        return self.model_dump(exclude_none=True)


# What the builtin engine implements (diffusers + peft); any other option given is an error there,
# as is a value it does not implement (the optimizers it has, for one).
BUILTIN_OPTIONS = frozenset(
    {
        "network_dim", "network_alpha", "learning_rate", "unet_lr", "text_encoder_lr", "max_train_epochs",
        "max_train_steps", "resolution", "train_batch_size", "gradient_accumulation_steps", "optimizer_type",
        "lr_scheduler", "lr_warmup_steps", "lr_scheduler_num_cycles", "mixed_precision", "save_precision", "seed",
        "save_every_n_epochs", "output_name", "training_comment", "gradient_checkpointing", "cache_latents",
        "network_train_unet_only", "clip_skip", "caption_extension", "shuffle_caption", "keep_tokens", "flip_aug",
        "noise_offset", "min_snr_gamma", "max_grad_norm", "sdpa",
    }
)  # fmt: skip
BUILTIN_OPTIMIZERS = frozenset({"AdamW", "SGDNesterov", "Adafactor"})
BUILTIN_SCHEDULERS = frozenset(
    {"constant", "constant_with_warmup", "cosine", "cosine_with_restarts", "linear", "polynomial"}
)


def builtin_problems(config: LoraConfig) -> list[str]:
    """Why the builtin engine cannot honour ``config`` (empty when it can)."""
    problems = [
        f"config.{name}: not supported by the builtin engine (use engine 'kohya')"
        for name in sorted(config.model_fields_set - BUILTIN_OPTIONS)
        if getattr(config, name) not in (None, False, LoraConfig.model_fields[name].default)
    ]
    if config.optimizer_type not in BUILTIN_OPTIMIZERS:
        problems.append(
            f"config.optimizer_type: {config.optimizer_type} is not supported by the builtin engine "
            f"(it has {', '.join(sorted(BUILTIN_OPTIMIZERS))}; or use engine 'kohya')"
        )
    if config.lr_scheduler not in BUILTIN_SCHEDULERS:
        problems.append(f"config.lr_scheduler: {config.lr_scheduler} is not supported by the builtin engine")
    return problems


class TrainLoraParams(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid")

    base_model: str = Field(min_length=1, max_length=400, description="a registered checkpoint reference")
    dataset: str = Field(pattern=DATASET_NAME_PATTERN)
    family: Family
    engine: Engine | None = Field(default=None, description="default: the stack's DefaultTrainingEngine")
    instance_type: str | None = Field(default=None, pattern=r"^ml\.[a-z0-9-]+\.[a-z0-9]+$")
    # SageMaker's StoppingCondition.MaxRuntimeInSeconds bounds (1 s to 28 days).
    max_runtime_seconds: int | None = Field(default=None, ge=1, le=28 * 24 * 3600)
    config: LoraConfig = Field(default_factory=LoraConfig)
