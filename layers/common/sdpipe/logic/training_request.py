"""The CreateTrainingJob request of a train_lora job: its channels, hyperparameters and limits."""

from __future__ import annotations

from typing import Any

from sdpipe.contracts.training import TrainLoraParams
from sdpipe.contracts.workflows import TrainingPlan
from sdpipe.logic.kohya_config import CHANNEL_CONFIG, CHANNEL_DATASET, CHANNEL_MODEL
from sdpipe.logic.training_progress import METRIC_DEFINITIONS

# Checkpoint files in the model channel: the file and its diffusers config folder beside it.
CONFIG_SUFFIX = ".config/"
ORIGINAL_CONFIG_SUFFIX = ".yaml"  # an A1111 <name>.yaml: the checkpoint's original LDM config


def training_job_request(
    job_id: str,
    plan: TrainingPlan,
    params: TrainLoraParams,
    *,
    image: str,
    role_arn: str,
    volume_gb: int,
    job_prefix: str,
    dataset_uri: str,
) -> dict[str, Any]:
    """What CreateTrainingJob gets: the model channel from the job's manifest, the dataset's
    prefix, the Kohya configs; the engine and the base model as hyperparameters."""
    base = plan.base_model
    base_file = base.filename
    stem = base_file.rsplit(".", 1)[0]
    return {
        "TrainingJobName": plan.name,
        "AlgorithmSpecification": {
            "TrainingImage": image,
            "TrainingInputMode": "File",
            "MetricDefinitions": METRIC_DEFINITIONS,
        },
        "RoleArn": role_arn,
        "HyperParameters": {
            "engine": str(params.engine),
            "family": params.family,
            "checkpoint": base_file,
            "model_config": stem + CONFIG_SUFFIX.rstrip("/"),
            "original_config": stem + ORIGINAL_CONFIG_SUFFIX,
            "base_model_name": base.name,
            "base_model_sha256": base.sha256,
            "base_model_legacy_hash": base.legacy_hash or "",
            "base_model_variant": base.variant or "",
            "base_model_prediction": base.prediction or "",
        },
        "InputDataConfig": [
            _channel(CHANNEL_MODEL, "ManifestFile", job_prefix + "model.manifest"),
            _channel(CHANNEL_DATASET, "S3Prefix", dataset_uri),
            _channel(CHANNEL_CONFIG, "S3Prefix", job_prefix + f"{CHANNEL_CONFIG}/"),
        ],
        "OutputDataConfig": {"S3OutputPath": job_prefix + "output"},
        "ResourceConfig": {"InstanceType": params.instance_type, "InstanceCount": 1, "VolumeSizeInGB": volume_gb},
        "StoppingCondition": {"MaxRuntimeInSeconds": params.max_runtime_seconds},
        "Tags": [{"Key": "sdpipe:job-id", "Value": job_id}],
    }


def _channel(name: str, data_type: str, uri: str) -> dict[str, Any]:
    return {
        "ChannelName": name,
        "DataSource": {
            "S3DataSource": {"S3DataType": data_type, "S3Uri": uri, "S3DataDistributionType": "FullyReplicated"}
        },
        "InputMode": "File",
    }
