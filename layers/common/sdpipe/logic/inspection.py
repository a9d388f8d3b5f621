"""Inspect one model object in S3: validate its container, detect what it is, hash it."""

from __future__ import annotations

from dataclasses import dataclass, field

from sdpipe.adapters.object_store import ObjectInfo, ObjectStore
from sdpipe.contracts.models import ModelFamily, ModelFormat, ModelType
from sdpipe.errors import (
    EmptyFile,
    UnrecognisedModel,
    UnsupportedExtension,
    WrongFolder,
)
from sdpipe.hashing import ModelHashes, hash_stream
from sdpipe.inspect.detect import Detection, detect
from sdpipe.inspect.pickle_scan import PickleLimits
from sdpipe.inspect.prediction import PREDICTION_TENSOR, decode_floats, prediction_from_bias, prediction_from_metadata
from sdpipe.inspect.safetensors_header import SafetensorsHeader, parse_header
from sdpipe.inspect.torch_archive import scan_torch_file
from sdpipe.layout import FOLDER_OF_TYPE, PICKLE_EXTENSIONS, SAFETENSORS_EXTENSIONS, ModelKey

# Kohya metadata worth keeping on the item (the rest can be large: tag frequencies, hashes).
_METADATA_SUMMARY_KEYS = (
    "ss_base_model_version", "ss_sd_model_name", "ss_network_module", "ss_network_dim",
    "ss_network_alpha", "ss_output_name", "ss_training_comment", "ss_num_epochs", "ss_epoch",
    "ss_steps", "ss_resolution", "ss_learning_rate", "ss_mixed_precision", "ss_v2",
    "ss_clip_skip", "ss_dataset_dirs", "ss_num_train_images", "sshs_model_hash",
    "sshs_legacy_hash", "modelspec.architecture", "modelspec.prediction_type", "modelspec.title", "format",
)  # fmt: skip
_METADATA_VALUE_LIMIT = 512

_TYPE_PLURALS = {
    ModelType.CHECKPOINT: "checkpoints",
    ModelType.LORA: "LoRAs",
    ModelType.EMBEDDING: "textual-inversion embeddings",
    ModelType.CONTROLNET: "ControlNets",
    ModelType.HYPERNETWORK: "hypernetworks",
    ModelType.VAE: "VAEs",
}
_TYPE_WORDS = {
    ModelType.CHECKPOINT: "a checkpoint",
    ModelType.LORA: "a LoRA",
    ModelType.EMBEDDING: "a textual-inversion embedding",
    ModelType.CONTROLNET: "a ControlNet",
    ModelType.HYPERNETWORK: "a hypernetwork",
    ModelType.VAE: "a VAE",
}


@dataclass(frozen=True)
class Inspection:
    type: ModelType
    family: ModelFamily
    format: ModelFormat
    hashes: ModelHashes
    tensor_count: int | None
    metadata: dict[str, str] = field(default_factory=dict)
    details: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class InspectionLimits:
    header_cap: int
    pickle_cap: int
    chunk_size: int


def inspect_model(store: ObjectStore, info: ObjectInfo, key: ModelKey, limits: InspectionLimits) -> Inspection:
    """Validate and identify the object; raise a ``ModelRejected`` subclass naming the problem."""
    if info.size == 0:
        raise EmptyFile("the file is empty (0 bytes)")
    if key.extension in SAFETENSORS_EXTENSIONS:
        header = parse_header(lambda start, length: store.read_range(info, start, length), info.size, limits.header_cap)
        detection = detect(header.tensors.keys(), header.shapes(), header.metadata)
        detection = _require_detection(detection, key, f"{len(header.tensors)} tensors")
        details = dict(detection.details)
        if detection.type is ModelType.CHECKPOINT and detection.family is ModelFamily.SD2:
            details["prediction"] = _sd2_prediction(store, info, header)
        hashes = hash_stream(store.iter_chunks(info, limits.chunk_size), tensor_data_start=header.data_start)
        return Inspection(
            type=detection.type,
            family=detection.family,
            format=ModelFormat.SAFETENSORS,
            hashes=hashes,
            tensor_count=len(header.tensors),
            metadata=_summarise_metadata(header.metadata),
            details=details,
        )
    if key.extension in PICKLE_EXTENSIONS:
        pickle_limits = PickleLimits(max_bytes=limits.pickle_cap)
        scan = scan_torch_file(store.open_ranged(info), info.size, pickle_limits)  # type: ignore[arg-type]
        detection = _require_detection(detect(scan.strings), key, f"{len(scan.strings)} names")
        hashes = hash_stream(store.iter_chunks(info, limits.chunk_size))
        return Inspection(
            type=detection.type,
            family=detection.family,
            format=ModelFormat.PICKLE,
            hashes=hashes,
            tensor_count=None,
            details=detection.details | {"globals": ",".join(sorted(scan.globals))},
        )
    raise UnsupportedExtension(
        f"extension {key.extension or '(none)'!r} is not a model format "
        f"(expected {', '.join(sorted(SAFETENSORS_EXTENSIONS | PICKLE_EXTENSIONS))})"
    )


def _sd2_prediction(store: ObjectStore, info: ObjectInfo, header: SafetensorsHeader) -> str:
    """v-prediction or epsilon: the file's metadata, else one bias tensor's spread (a ranged read)."""
    declared = prediction_from_metadata(header.metadata)
    tensor = header.tensors.get(PREDICTION_TENSOR)
    if declared is not None or tensor is None:
        return declared or "epsilon"
    raw = store.read_range(info, header.data_start + tensor.begin, tensor.end - tensor.begin)
    try:
        return prediction_from_bias(decode_floats(raw, tensor.dtype))
    except ValueError:
        return "epsilon"


def _require_detection(detection: Detection | None, key: ModelKey, what: str) -> Detection:
    if detection is None:
        raise UnrecognisedModel(
            f"the file is a valid container ({what}) but its tensor names match no supported model "
            "type (checkpoint, LoRA, embedding, ControlNet, hypernetwork, VAE)"
        )
    if detection.type is not key.type:
        raise WrongFolder(
            f"the file is {_TYPE_WORDS[detection.type]} but it is in models/{key.folder}/, which holds "
            f"{_TYPE_PLURALS[key.type]}; move it to models/{FOLDER_OF_TYPE[detection.type]}/"
        )
    return detection


def _summarise_metadata(metadata: dict[str, str]) -> dict[str, str]:
    return {name: value[:_METADATA_VALUE_LIMIT] for name, value in metadata.items() if name in _METADATA_SUMMARY_KEYS}
