"""The Kohya ``train_network`` config and dataset config of a training job, as TOML.

Both engines read these two files (``--config_file`` and ``--dataset_config`` for sd-scripts;
the builtin engine reads the same keys), with paths in SageMaker's container layout under
``/opt/ml``. The training entrypoint relocates them when ``/opt/ml`` lives elsewhere (the local
stand-in).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from sdpipe.contracts.datasets import DatasetRecord
from sdpipe.contracts.training import LoraConfig

OPT_ML = "/opt/ml"
CHANNEL_MODEL = "model"
CHANNEL_DATASET = "dataset"
CHANNEL_CONFIG = "config"
CONFIG_FILE = "config.toml"
DATASET_CONFIG_FILE = "dataset.toml"

# Only grouping for the reader: sd-scripts flattens the tables of a --config_file.
_SECTIONS: dict[str, tuple[str, ...]] = {
    "model": ("pretrained_model_name_or_path", "v2", "v_parameterization", "clip_skip", "no_half_vae",
              "max_token_length"),
    "network": ("network_module", "network_dim", "network_alpha", "network_dropout", "network_args",
                "network_train_unet_only"),
    "optimizer": ("optimizer_type", "optimizer_args", "learning_rate", "unet_lr", "text_encoder_lr", "lr_scheduler",
                  "lr_warmup_steps", "lr_scheduler_num_cycles", "max_grad_norm"),
    "saving": ("output_dir", "output_name", "save_model_as", "save_precision", "save_every_n_epochs",
               "training_comment", "logging_dir"),
}  # fmt: skip
# Dataset-level keys go to the dataset config, not the training config.
_DATASET_KEYS = ("resolution", "train_batch_size", "enable_bucket", "min_bucket_reso", "max_bucket_reso")
_SUBSET_KEYS = ("caption_extension", "shuffle_caption", "keep_tokens", "flip_aug", "color_aug", "random_crop")


@dataclass(frozen=True)
class BaseArchitecture:
    """What sd-scripts must be told about the base checkpoint (it does not look): an SD 2.x
    model (``v2``: OpenCLIP text encoder, 1024-wide context) and its prediction type."""

    family: str = "sd1"
    prediction: str | None = None

    def sd_scripts_options(self) -> dict[str, Any]:
        if self.family != "sd2":
            return {}
        return {"v2": True} | ({"v_parameterization": True} if self.prediction == "v_prediction" else {})


@dataclass(frozen=True)
class KohyaFiles:
    config_toml: str
    dataset_toml: str
    output_name: str
    total_steps: int | None  # known when the config gives epochs (or steps)


def build_kohya_files(
    config: LoraConfig,
    dataset: DatasetRecord,
    checkpoint_file: str,
    output_name: str,
    base: BaseArchitecture | None = None,
) -> KohyaFiles:
    """The two TOML files for training on ``dataset`` from the checkpoint in the model channel."""
    options = {k: v for k, v in config.explicit().items() if k not in _DATASET_KEYS + _SUBSET_KEYS}
    options |= (base or BaseArchitecture()).sd_scripts_options()
    options |= {
        "pretrained_model_name_or_path": f"{OPT_ML}/input/data/{CHANNEL_MODEL}/{checkpoint_file}",
        "network_module": "networks.lora",
        "output_dir": f"{OPT_ML}/model",
        "output_name": output_name,
        "save_model_as": "safetensors",
        "logging_dir": f"{OPT_ML}/output/data/logs",
        "dataset_config": f"{OPT_ML}/input/data/{CHANNEL_CONFIG}/{DATASET_CONFIG_FILE}",
    }
    steps_per_epoch = math.ceil(dataset.steps_per_epoch_at_batch_1 / config.train_batch_size)
    epochs = config.max_train_epochs or 0
    if config.max_train_steps is None and config.max_train_epochs is None:
        epochs = 10  # explicit: sd-scripts' own default is 1600 steps
        options |= {"max_train_epochs": epochs}
    total = config.max_train_steps or epochs * math.ceil(steps_per_epoch / config.gradient_accumulation_steps)
    sections: dict[str, dict[str, Any]] = {name: {} for name in (*_SECTIONS, "training")}
    for key, value in sorted(options.items()):
        section = next((name for name, keys in _SECTIONS.items() if key in keys), "training")
        sections[section][key] = value
    width, height = config.size
    subset_options = {k: v for k, v in config.explicit().items() if k in _SUBSET_KEYS}
    dataset_config: dict[str, Any] = {
        "general": subset_options,
        "datasets": [
            {
                "resolution": width if width == height else [width, height],
                "batch_size": config.train_batch_size,
                "enable_bucket": config.enable_bucket,
                **({"min_bucket_reso": config.min_bucket_reso} if config.min_bucket_reso else {}),
                **({"max_bucket_reso": config.max_bucket_reso} if config.max_bucket_reso else {}),
                "subsets": [
                    {
                        "image_dir": f"{OPT_ML}/input/data/{CHANNEL_DATASET}/{concept.folder}",
                        "num_repeats": concept.repeats,
                        # An image without a caption is trained with its concept's name.
                        "class_tokens": concept.concept,
                    }
                    for concept in dataset.concepts
                    if concept.images
                ],
            }
        ],
    }
    return KohyaFiles(
        config_toml=to_toml({k: v for k, v in sections.items() if v}),
        dataset_toml=to_toml(dataset_config),
        output_name=output_name,
        total_steps=int(total) if total else None,
    )


# ---------------------------------------------------------------------- a small TOML writer
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def to_toml(document: dict[str, Any]) -> str:
    """TOML for what these configs hold: tables of scalars and lists, arrays of tables one deep
    (``[[datasets]]`` with ``[[datasets.subsets]]``). ``tomllib`` reads it back unchanged."""
    lines: list[str] = []
    _table(lines, [], document)
    return "\n".join(lines).strip() + "\n"


def _table(lines: list[str], path: list[str], table: dict[str, Any]) -> None:
    scalars = {k: v for k, v in table.items() if not _is_table(v) and not _is_table_array(v)}
    for key, value in scalars.items():
        lines.append(f"{_key(key)} = {_value(value)}")
    for key, value in table.items():
        if _is_table(value):
            lines.extend(["", f"[{'.'.join(_key(p) for p in [*path, key])}]"])
            _table(lines, [*path, key], value)
        elif _is_table_array(value):
            for item in value:
                lines.extend(["", f"[[{'.'.join(_key(p) for p in [*path, key])}]]"])
                _table(lines, [*path, key], item)


def _is_table(value: Any) -> bool:
    return isinstance(value, dict)


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise ValueError("TOML configs hold finite numbers only")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")
