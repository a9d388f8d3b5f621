"""``train_lora``: Kohya LoRA training on SageMaker training jobs, through the TrainLora workflow.

A request becomes a job and an execution named after it. The workflow's steps (``step``):
``prepare`` resolves the base model (an ACTIVE checkpoint of the family) and the dataset (a
registered one) and writes the Kohya config, the dataset config and the model channel's manifest
under ``jobs/<job_id>/``; ``create`` calls CreateTrainingJob; ``poll`` reads DescribeTrainingJob
and the end of the log (the job's step and loss) until the job ends; ``register`` unpacks
``model.tar.gz`` and registers every LoRA in it through the normal registration path; ``fail``
records why it ended otherwise (SageMaker's reason and the log's last lines, the max runtime, a
stop). ``cancel_job`` stops the training job (see ``JobControl``).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools import Logger

from sdpipe import errors
from sdpipe.adapters.datasets_table import DatasetsTable
from sdpipe.adapters.images import ContainerImages
from sdpipe.adapters.models_table import ModelsTable
from sdpipe.adapters.object_store import ObjectStore
from sdpipe.adapters.sagemaker import SageMakerTraining
from sdpipe.adapters.training_logs import TrainingLogs
from sdpipe.adapters.workflows import Workflows
from sdpipe.contracts.datasets import DatasetRecord, dataset_prefix
from sdpipe.contracts.jobs import JobStatus, RequestEnvelope
from sdpipe.contracts.models import ModelFamily, ModelRecord, ModelSource, ModelType
from sdpipe.contracts.training import TrainLoraParams, builtin_problems
from sdpipe.contracts.uploads import META_BASE_MODEL, META_DATASET, META_SOURCE, META_TRAINING_JOB
from sdpipe.contracts.workflows import (
    JobRecord,
    StepFailure,
    TrainedFrom,
    TrainedOn,
    TrainingExecution,
    TrainingOutcome,
    TrainingPlan,
    TrainingState,
)
from sdpipe.errors import (
    DatasetNotFound,
    DatasetNotUsable,
    JobAlreadyFinished,
    ModelExists,
    ModelNotUsable,
    NoLoraOutput,
    RegistrationPending,
    TrainingFailed,
    TrainingTimedOut,
    ValidationFailed,
    WorkInProgress,
)
from sdpipe.layout import ModelKey, model_key_for, parse_model_key
from sdpipe.logic.jobs import JobLedger
from sdpipe.logic.kohya_config import (
    CHANNEL_CONFIG,
    CONFIG_FILE,
    DATASET_CONFIG_FILE,
    BaseArchitecture,
    build_kohya_files,
)
from sdpipe.logic.lora_archive import lora_members
from sdpipe.logic.model_refs import resolve_model
from sdpipe.logic.training_progress import latest_progress
from sdpipe.logic.training_request import CONFIG_SUFFIX, ORIGINAL_CONFIG_SUFFIX, training_job_request
from sdpipe.logic.workflows import Accepted, WorkflowRequests, error_of_failure, run_step, validated
from sdpipe.settings import TrainingSettings, settings_of

if TYPE_CHECKING:
    from sdpipe.logic.registration import Registrar

logger = Logger(child=True)

_LOG_LINES = 20
# How long the register step waits for a registration another worker holds before it hands the
# wait to the workflow (RegistrationPending, retried by the ASL) rather than sleeping in a Lambda.
_REGISTRATION_WAIT_S = 10
_OPEN = [JobStatus.ACCEPTED, JobStatus.QUEUED, JobStatus.RUNNING]
# What the job records of its base model, and what its outputs say of each LoRA it registered.
_BASE_MODEL_FIELDS = {"name", "sha256", "short_hash", "legacy_hash", "family", "s3_key"}
_OUTPUT_MODEL_FIELDS = {"name", "filename", "s3_key", "status", "sha256", "short_hash", "tensor_hash", "family"}


def training_job_name(stack_name: str, job_id: str) -> str:
    return f"{stack_name}-{job_id}"


@dataclass
class LoraTraining:
    settings: TrainingSettings
    ledger: JobLedger
    store: ObjectStore
    models: ModelsTable
    datasets: DatasetsTable
    workflows: Workflows
    sagemaker: SageMakerTraining
    logs: TrainingLogs
    images: ContainerImages = field(default_factory=ContainerImages)
    # Registers the LoRAs the register step unpacks (default: one from the environment's settings).
    registrar: Callable[[], Registrar] | None = None

    @classmethod
    def from_settings(cls) -> LoraTraining:
        settings = settings_of(TrainingSettings)
        return cls(
            settings=settings,
            ledger=JobLedger.from_settings(settings),
            store=ObjectStore(settings.assets_bucket_name),
            models=ModelsTable(settings.models_table_name),
            datasets=DatasetsTable(settings.datasets_table_name),
            workflows=Workflows(),
            sagemaker=SageMakerTraining(),
            logs=TrainingLogs(),
            images=ContainerImages(),
        )

    @property
    def requests(self) -> WorkflowRequests:
        return WorkflowRequests(self.ledger, self.workflows)

    # ------------------------------------------------------------------ requests
    def handle_message(self, body: str, attribute_action: str | None, message_id: str) -> str:
        def accept(envelope: RequestEnvelope) -> Accepted:
            params = self.validate(envelope.params)
            # The sweeper must not time out a job SageMaker is still allowed to run.
            deadline = int(params.max_runtime_seconds or 0) + 3 * 3600
            return Accepted(params.model_dump(mode="json", exclude_none=True), deadline_seconds=deadline)

        return self.requests.accept((body, attribute_action, message_id), validate=accept, start=self._start)

    def validate(self, raw: dict[str, Any]) -> TrainLoraParams:
        """The request's params with the stack's defaults filled in; an error names each problem."""
        params = validated(TrainLoraParams, raw)
        params = params.model_copy(
            update={
                "engine": params.engine or self.settings.default_training_engine,
                "instance_type": params.instance_type or self.settings.training_instance_type,
                "max_runtime_seconds": params.max_runtime_seconds or self.settings.training_max_runtime_seconds,
            }
        )
        if params.engine == "builtin":
            problems = builtin_problems(params.config)
            if problems:
                raise ValidationFailed("; ".join(f"params.{p}" for p in problems))
        return params

    def _start(self, job: JobRecord) -> None:
        # ``outcome`` is filled by each poll; a step that fails first records it empty.
        execution = TrainingExecution(job_id=job.job_id, poll_seconds=self.settings.training_poll_seconds)
        self.requests.start(job, self.settings.train_lora_state_machine_arn, execution, status=JobStatus.QUEUED)

    # ------------------------------------------------------------------ workflow steps
    def step(self, event: dict[str, Any]) -> dict[str, Any]:
        steps: dict[str, Any] = {
            "prepare": lambda state: self.prepare(state.job_id),
            "create": lambda state: self.create(state.job_id),
            "poll": lambda state: self.poll(state.job_id),
            "register": lambda state: self.register(state.job_id),
            "fail": lambda state: self.fail(state.job_id, state.outcome, state.failure),
        }
        return run_step("training", event, TrainingState, steps)

    def prepare(self, job_id: str) -> dict[str, Any]:
        """Resolve the base model and the dataset; write the configs and the model manifest."""
        job = self._open(job_id)
        # First: a training image that was never pushed fails the job before anything else is done.
        image = self.images.pinned(self.settings.training_image_uri)
        params = TrainLoraParams.model_validate(job.params)
        family = ModelFamily(params.family)
        base = resolve_model(params.base_model, ModelType.CHECKPOINT, self.models, family, field="params.base_model")
        if base.family is not family:
            raise ModelNotUsable(
                f"params.base_model {params.base_model!r} is a checkpoint of unknown family; "
                f"training needs a recognised {family.value} checkpoint"
            )
        dataset = self._dataset(params.dataset)
        output_name = params.config.output_name or f"{params.dataset}-{job_id[2:10]}"
        final_key = model_key_for(ModelType.LORA, f"{output_name}.safetensors").key
        existing = self.store.head(final_key)
        if existing is not None and existing.metadata.get(META_TRAINING_JOB) != job_id:
            raise ModelExists(f"{final_key} exists already; choose another config.output_name")
        files = build_kohya_files(
            params.config, dataset, base.filename, output_name, BaseArchitecture(family.value, base.prediction)
        )
        prefix = f"jobs/{job_id}/"
        self.store.put_bytes(prefix + f"{CHANNEL_CONFIG}/{CONFIG_FILE}", files.config_toml.encode(), "application/toml")
        self.store.put_bytes(
            prefix + f"{CHANNEL_CONFIG}/{DATASET_CONFIG_FILE}", files.dataset_toml.encode(), "application/toml"
        )
        self.store.put_bytes(prefix + "model.manifest", json.dumps(self._manifest(base)).encode(), "application/json")
        training = TrainingPlan(
            name=training_job_name(self.settings.stack_name, job_id),
            output_name=output_name,
            base_model=TrainedFrom.model_validate(
                base.model_dump(mode="json", include=_BASE_MODEL_FIELDS)
                | {"variant": base.variant, "prediction": base.prediction}
            ),
            dataset=TrainedOn(name=dataset.name, images=dataset.images, marker_version=dataset.marker_version),
            total_steps=files.total_steps,
            image=image,
        )
        self.ledger.move(job, job.status, allowed_from=[job.status], fields={"training": training})
        logger.info("prepared", extra={"job_id": job_id, "training_job": training.name})
        return {"training_job_name": training.name}

    def _dataset(self, name: str) -> DatasetRecord:
        item = self.datasets.get(name)
        if item is None:
            raise DatasetNotFound(
                f"params.dataset {name!r} is not registered (upload it with `sdpipe datasets upload`, or drop "
                f"{dataset_prefix(name)}_READY)"
            )
        dataset = DatasetRecord.model_validate(item)
        if not dataset.is_usable:
            reason = (dataset.error or {}).get("message", "see `sdpipe datasets describe`")
            raise DatasetNotUsable(f"params.dataset {name!r} was rejected: {reason}")
        return dataset

    def _manifest(self, base: ModelRecord) -> list[Any]:
        """The model channel: the checkpoint and, when it has them, its diffusers config folder and
        its A1111 ``<name>.yaml`` (either says what the weights are, as they do for inference)."""
        folder, filename = base.s3_key.rsplit("/", 1)
        stem = filename.rsplit(".", 1)[0]
        configs = [info.key[len(folder) + 1 :] for info in self.store.list_prefix(f"{folder}/{stem}{CONFIG_SUFFIX}")]
        original = (
            [f"{stem}{ORIGINAL_CONFIG_SUFFIX}"] if self.store.head(f"{folder}/{stem}{ORIGINAL_CONFIG_SUFFIX}") else []
        )
        return [{"prefix": self.store.uri(folder + "/")}, filename, *configs, *original]

    def create(self, job_id: str) -> dict[str, Any]:
        job = self._open(job_id)
        params = TrainLoraParams.model_validate(job.params)
        training = self._plan(job)
        if self.settings.training_role_arn is None:
            raise errors.ConfigurationError("TRAINING_ROLE_ARN is not set")
        request = training_job_request(
            job_id,
            training,
            params,
            image=training.image or self.settings.training_image_uri,
            role_arn=self.settings.training_role_arn,
            volume_gb=self.settings.training_volume_gb,
            job_prefix=self.store.uri(f"jobs/{job_id}/"),
            dataset_uri=self.store.uri(dataset_prefix(params.dataset)),
        )
        self.sagemaker.create(request)
        if self.ledger.require(job_id).status not in (JobStatus.QUEUED, JobStatus.RUNNING):
            self.sagemaker.stop(training.name)  # cancelled while the job was being created
            raise JobAlreadyFinished(f"job {job_id} was cancelled; its training job is stopped")
        return {"training_job_name": training.name}

    def poll(self, job_id: str) -> TrainingOutcome:
        """SageMaker's status of the training job; the job moves RUNNING and shows step and loss."""
        job = self.ledger.require(job_id)
        name = self._plan(job).name
        described = self.sagemaker.describe(name)
        if described is None:
            raise TrainingFailed(f"training job {name} does not exist")
        status, secondary = described.status, described.secondary_status
        if job.is_finished:
            return TrainingOutcome(status=status, secondary=secondary, job_status=job.status.value)
        if secondary == "Training" and job.status is JobStatus.QUEUED:
            job = self.ledger.move(job, JobStatus.RUNNING, allowed_from=[JobStatus.QUEUED]) or self.ledger.require(
                job_id
            )
        progress = latest_progress(self.logs.tail(name, _LOG_LINES))
        if progress and progress != job.progress:
            self.ledger.report(job, progress)
        return TrainingOutcome(status=status, secondary=secondary, job_status=job.status.value)

    def register(self, job_id: str) -> dict[str, Any]:
        """Register every LoRA in the model artefact; the job SUCCEEDED with them as its models."""
        job = self.ledger.require(job_id)
        if job.is_finished:
            return {"models": job.outputs.get("models", [])}
        training = self._plan(job)
        described = self.sagemaker.describe(training.name)
        artefact = described.artefact_uri if described is not None else ""
        key = self.store.key_of(artefact)
        if key is None:
            raise NoLoraOutput(f"the training job reports no model artefact in this bucket ({artefact or 'none'})")
        metadata = {
            META_SOURCE: ModelSource.TRAINING.value,
            META_TRAINING_JOB: job_id,
            META_BASE_MODEL: training.base_model.sha256,
            META_DATASET: training.dataset.name,
        }
        keys = self._unpack(key, metadata)
        if not keys:
            raise NoLoraOutput("the training job finished, but its model.tar.gz holds no .safetensors LoRA file")
        registrar = self.registrar() if self.registrar is not None else _registrar_from_settings()
        records = [self._registered(registrar, model_key) for model_key in keys]
        models = [
            r.model_dump(mode="json", include=_OUTPUT_MODEL_FIELDS)
            | {"title": r.title, "error": r.error.model_dump() if r.error else None}
            for r in records
        ]
        outputs = {
            "models": models,
            "training_job_name": training.name,
            "billable_seconds": described.billable_seconds if described is not None else None,
            "metrics": {m.name: m.value for m in described.final_metrics} if described is not None else {},
        }
        rejected = [r for r in records if not r.is_active]
        if rejected:
            first = rejected[0]
            why = first.error.message if first.error else f"it is {first.status.value}"
            error = {"code": "MODEL_REJECTED", "message": f"{first.s3_key}: {why}"}
            self.ledger.move(job, JobStatus.FAILED, allowed_from=_OPEN, fields={"outputs": outputs, "error": error})
        else:
            self.ledger.move(job, JobStatus.SUCCEEDED, allowed_from=_OPEN, fields={"outputs": outputs})
        return {"models": [r.s3_key for r in records]}

    def _registered(self, registrar: Registrar, model_key: ModelKey) -> ModelRecord:
        """Register the file here (the S3 event's registration may get there first: then wait for
        it); the settled Models item."""
        with contextlib.suppress(WorkInProgress):  # being registered by the S3 event: wait below
            registrar.on_created(model_key)
        info = self.store.head(model_key.key)
        deadline = time.monotonic() + _REGISTRATION_WAIT_S
        while True:
            record = registrar.table.get(model_key.model_id)
            if record is not None and record.is_settled and info is not None and record.etag == info.etag:
                return record
            if time.monotonic() > deadline:
                raise RegistrationPending(f"{model_key.key} is still being registered; the step is retried")
            time.sleep(0.5)

    def _unpack(self, key: str, metadata: dict[str, str]) -> list[ModelKey]:
        """Stream the artefact; each ``.safetensors`` member into ``models/Lora/``; their keys."""
        info = self.store.head(key)
        if info is None:
            raise NoLoraOutput(f"the model artefact s3://{self.store.bucket}/{key} does not exist")
        written = []
        for name, source in lora_members(self.store.iter_chunks(info, 8 * 1024 * 1024)):
            target = model_key_for(ModelType.LORA, name).key
            existing = self.store.head(target)
            if existing is not None and existing.metadata.get(META_TRAINING_JOB) != metadata[META_TRAINING_JOB]:
                raise ModelExists(f"{target} exists already and was not written by this job; it is left alone")
            self.store.upload_stream(target, source, metadata, "application/octet-stream")
            parsed = parse_model_key(target)
            if parsed is not None:
                written.append(parsed)
        return written

    def fail(self, job_id: str, outcome: TrainingOutcome, failure: StepFailure | None = None) -> dict[str, Any]:
        """End the job for a step's error or for how the training job ended (Failed or Stopped)."""
        job = self.ledger.get(job_id)
        if job is None or job.is_finished:
            return {"recorded": False}
        name = job.training.name if job.training else None
        status = JobStatus.FAILED
        if failure is not None:
            error = error_of_failure(failure, fallback_code="TRAINING_FAILED")
            if name and outcome.status in ("InProgress", "Stopping", None):
                self.sagemaker.stop(name)  # a step failed while SageMaker still trains: do not leave it running
        elif outcome.status == "Stopped" and outcome.secondary == "MaxRuntimeExceeded":
            seconds = TrainLoraParams.model_validate(job.params).max_runtime_seconds
            error = TrainingTimedOut(
                f"the training ran past max_runtime_seconds ({seconds}) and was stopped"
            ).to_error()
        elif outcome.status == "Stopped":
            status = JobStatus.CANCELLED
            error = {"code": "CANCELLED", "message": "the training job was stopped outside sdpipe"}
        else:
            described = self.sagemaker.describe(name) if name else None
            reason = (described.failure_reason if described is not None else "") or "SageMaker gives no reason"
            tail = self.logs.tail(name, _LOG_LINES) if name else []
            error = TrainingFailed(f"{reason}" + ("\nlast log lines:\n" + "\n".join(tail) if tail else "")).to_error()
        moved = self.ledger.move(job, status, allowed_from=_OPEN, fields={"error": error})
        logger.info("training ended", extra={"job_id": job_id, "recorded": moved is not None, "error": error})
        return {"recorded": moved is not None, "error": error}

    # ------------------------------------------------------------------ helpers
    def _open(self, job_id: str) -> JobRecord:
        return self.requests.open_job(
            job_id,
            self.settings.train_lora_state_machine_arn,
            started_as=JobStatus.QUEUED,
            stops="the training workflow stops",
        )

    @staticmethod
    def _plan(job: JobRecord) -> TrainingPlan:
        if job.training is None:
            raise errors.JobNotFound(f"job {job.job_id} has no training prepared (the prepare step did not run)")
        return job.training


def _registrar_from_settings() -> Registrar:
    # Only the register step registers files: a cold start for any other step does not import it.
    from sdpipe.logic.registration import Registrar

    return Registrar.from_settings()
