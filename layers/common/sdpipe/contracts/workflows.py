"""What the workflows pass between their steps, and the job record the jobs ledger returns.

Every Lambda task of every state machine (``statemachines/*.asl.json``) sends the same shape,
``{"step": <name>, "state": {...}}`` (``StepCall``); ``state`` is the execution's state, or the
part of it the step needs, and is read into the workflow's model below. A state machine's
``Catch`` puts the error at ``$.failure`` (``StepFailure``). A field renamed here must be renamed
in the ASL too: ``tests/unit/test_workflow_contracts.py`` checks that every path the ASL reads
from a step's result, or passes to a step, is a field of these models.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import AliasChoices, AliasPath, BaseModel, ConfigDict, Field, field_validator

from sdpipe.contracts.jobs import Action, JobStatus

# The workflows' state carries more than a step reads (results of earlier states): ignore it.
_STATE = ConfigDict(defer_build=True, extra="ignore", populate_by_name=True)


class StepFailure(BaseModel):
    """A caught error, as Step Functions writes it: the state's error name and its cause (for a
    Lambda task that raised, the cause is the Lambda error JSON)."""

    model_config = _STATE

    error: str = Field(default="States.Runtime", alias="Error")
    cause: str = Field(default="", alias="Cause")

    def lambda_error(self) -> LambdaError:
        """The Lambda error JSON the cause is (empty when the cause is not one)."""
        if self.cause.startswith("{"):
            try:
                return LambdaError.model_validate_json(self.cause)
            except ValueError:
                pass
        return LambdaError()


class LambdaError(BaseModel):
    """A failed Lambda task's error (``errorType``/``errorMessage``); an SDK integration's
    error carries a ``message`` or ``Message`` instead."""

    model_config = ConfigDict(defer_build=True, extra="ignore", populate_by_name=True)

    error_type: str = Field(default="", validation_alias="errorType")
    error_message: str = Field(default="", validation_alias="errorMessage")
    message: str = Field(default="", validation_alias=AliasChoices("message", "Message"))


class StepCall(BaseModel):
    """The payload of every workflow task: which step, and the state it runs on."""

    model_config = ConfigDict(defer_build=True, extra="forbid")

    step: str = Field(min_length=1)
    state: dict[str, Any] = Field(default_factory=dict)


# ---------------------------------------------------------------------- FetchModel
class FetchExecution(BaseModel):
    """The FetchModel execution's input."""

    model_config = _STATE

    job_id: str
    max_concurrency: int = Field(ge=1)


class FetchState(BaseModel):
    """What a FetchModel step gets: the job, a part for ``copy_part``, the failure for ``fail``."""

    model_config = _STATE

    job_id: str
    part: int | None = Field(default=None, ge=1)
    start: int | None = Field(default=None, ge=0)
    end: int | None = Field(default=None, ge=0)
    failure: StepFailure | None = None


class ProbeResult(BaseModel):
    """``probe``'s answer: how to copy (ranged parts or one stream) and where the part list is."""

    model_config = _STATE

    job_id: str
    ranges: bool
    bucket: str
    parts_key: str


# ---------------------------------------------------------------------- TrainLora
class TrainingOutcome(BaseModel):
    """``poll``'s answer: SageMaker's status of the training job and the job's own status."""

    model_config = _STATE

    status: str | None = None
    secondary: str = ""
    job_status: str | None = None


class TrainingExecution(BaseModel):
    """The TrainLora execution's input (``outcome`` is filled by each poll)."""

    model_config = _STATE

    job_id: str
    poll_seconds: int = Field(ge=1)
    outcome: TrainingOutcome = Field(default_factory=TrainingOutcome)


class TrainingState(BaseModel):
    """What a TrainLora step gets."""

    model_config = _STATE

    job_id: str
    outcome: TrainingOutcome = Field(default_factory=TrainingOutcome)
    failure: StepFailure | None = None


class TrainedFrom(BaseModel):
    """The checkpoint a training started from, as the job records it."""

    model_config = ConfigDict(defer_build=True, extra="allow")

    name: str
    sha256: str
    s3_key: str
    short_hash: str | None = None
    legacy_hash: str | None = None
    family: str | None = None
    # What registration found beyond the family (an inpainting UNet, v-prediction): the trainer
    # loads the checkpoint with the shipped config these choose.
    variant: str | None = None
    prediction: str | None = None

    @property
    def filename(self) -> str:
        return self.s3_key.rsplit("/", 1)[-1]


class TrainedOn(BaseModel):
    """The dataset version a training read."""

    model_config = ConfigDict(defer_build=True, extra="allow")

    name: str
    images: int = 0
    marker_version: str = ""


class TrainingPlan(BaseModel):
    """What ``prepare`` decided, kept on the job for the later steps."""

    model_config = ConfigDict(defer_build=True, extra="allow")

    name: str
    output_name: str = ""
    base_model: TrainedFrom
    dataset: TrainedOn
    total_steps: int = 0
    image: str | None = None


# SageMaker's answers are read by SageMaker's names (validation aliases) or by ours. Each class
# spells its config out: mypy's pydantic plugin sees ``populate_by_name`` only there.
class FinalMetric(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="ignore", populate_by_name=True)

    name: str = Field(validation_alias="MetricName")
    value: float = Field(validation_alias="Value")


class DescribedTrainingJob(BaseModel):
    """DescribeTrainingJob's answer (read by SageMaker's names), what the steps decide on."""

    model_config = ConfigDict(defer_build=True, extra="ignore", populate_by_name=True)

    status: str = Field(validation_alias="TrainingJobStatus")
    secondary_status: str = Field(default="", validation_alias="SecondaryStatus")
    failure_reason: str = Field(default="", validation_alias="FailureReason")
    billable_seconds: int | None = Field(default=None, validation_alias="BillableTimeInSeconds")
    artefact_uri: str = Field(default="", validation_alias=AliasPath("ModelArtifacts", "S3ModelArtifacts"))
    final_metrics: list[FinalMetric] = Field(default_factory=list, validation_alias="FinalMetricDataList")


# ---------------------------------------------------------------------- endpoints
class EndpointPlan(BaseModel):
    """Every name and setting an endpoint workflow needs, decided by the request: the execution's
    input (and kept on the job as ``workflow_input``)."""

    model_config = _STATE

    job_id: str
    action: Action  # deploy_endpoint, update_endpoint or delete_endpoint
    name: str
    sagemaker_name: str
    poll_seconds: int = Field(ge=1)
    # deploy and update: the resources this job creates and what they run.
    model_name: str | None = None
    config_name: str | None = None
    image_uri: str | None = None
    environment: dict[str, str] = Field(default_factory=dict)
    instance_type: str | None = None
    initial_instances: int | None = None
    max_concurrent_invocations: int | None = None
    output_path: str | None = None
    failure_path: str | None = None
    settings: dict[str, Any] = Field(default_factory=dict)
    # update: what the endpoint ran before, deleted once the update is in service.
    old_config_name: str | None = None
    old_model_name: str | None = None


class DescribedEndpoint(BaseModel):
    """DescribeEndpoint's answer (read by SageMaker's names), reduced to what the wait loops
    decide on; the steps answer it by these names."""

    model_config = ConfigDict(defer_build=True, extra="ignore", populate_by_name=True)

    status: str = Field(validation_alias="EndpointStatus")
    config_name: str = Field(default="", validation_alias="EndpointConfigName")
    failure_reason: str = Field(default="", validation_alias="FailureReason")
    # Milliseconds since the epoch, as the state-change events carry it: what the workflow saw
    # last, so a late event older than it changes nothing (``logic.endpoint_drift``).
    last_modified_ms: int = Field(default=0, validation_alias=AliasChoices("LastModifiedTime", "last_modified_ms"))

    @field_validator("last_modified_ms", mode="before")
    @classmethod
    def _milliseconds(cls, value: Any) -> Any:
        if isinstance(value, datetime):
            return int(value.timestamp() * 1000)
        if isinstance(value, float):  # DescribeEndpoint over plain JSON: seconds
            return int(value * 1000)
        return value


class EndpointState(EndpointPlan):
    """What an endpoint step gets: the plan and what earlier states added."""

    described: DescribedEndpoint | None = None
    scaling_resources: dict[str, Any] | None = None
    failure: StepFailure | None = None

    @property
    def scaling(self) -> dict[str, Any]:
        """What ``scale`` configured (the task keeps the step's answer under ``result``)."""
        return dict((self.scaling_resources or {}).get("result") or {})


# ---------------------------------------------------------------------- jobs
class UploadState(BaseModel):
    """The multipart upload an upload or fetch job holds."""

    model_config = ConfigDict(defer_build=True, extra="allow")

    upload_id: str
    key: str
    size: int = 0
    part_size: int


class FetchSource(BaseModel):
    """What ``probe`` learnt of the URL."""

    model_config = ConfigDict(defer_build=True, extra="allow")

    filename: str | None = None
    size: int | None = None
    ranges: bool = False


class CheckpointUsed(BaseModel):
    """The checkpoint an inference job runs on, as its job records it."""

    model_config = ConfigDict(defer_build=True, extra="allow")

    name: str = ""
    short_hash: str = ""
    sha256: str = ""


class JobRecord(BaseModel):
    """A Jobs table item as the ledger returns it: the fields every job has, typed, and each
    action's working state under its own name. Anything else on the item (the outbox's and the
    indexes' bookkeeping) is kept as it is."""

    model_config = ConfigDict(defer_build=True, extra="allow")

    job_id: str
    request_id: str = ""
    action: str = ""
    status: JobStatus
    created_at: str = ""
    updated_at: str = ""
    finished_at: str | None = None
    deadline: str | None = None
    context: dict[str, Any] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)
    outputs: dict[str, Any] = Field(default_factory=dict)
    error: dict[str, Any] | None = None
    progress: dict[str, Any] | None = None
    pending_events: dict[str, Any] | None = None
    claim_token: str | None = None
    claim_expires_at: int | None = None
    execution_arn: str | None = None
    # Inference: the endpoint whose slot the job holds, and what it asked for.
    endpoint: str | None = None
    sagemaker_endpoint: str | None = None
    input_uri: str | None = None
    model: CheckpointUsed | None = None
    loras: list[dict[str, Any]] | None = None
    warnings: list[str] | None = None
    # Uploads and fetches: the multipart upload; ``phase`` is ``registering`` once S3 holds it.
    upload: UploadState | None = None
    phase: str | None = None
    source: FetchSource | None = None
    fetch_url: str | None = None
    # train_lora and the endpoint workflows.
    training: TrainingPlan | None = None
    workflow_input: EndpointPlan | None = None

    @property
    def is_finished(self) -> bool:
        return self.status.is_terminal

    @property
    def error_message(self) -> str:
        return str((self.error or {}).get("message") or "")

    def item(self) -> dict[str, Any]:
        """The record as the table holds it (fields that are not set left out)."""
        return self.model_dump(mode="json", exclude_none=True)

    def changed(self, fields: dict[str, Any]) -> JobRecord:
        """The record with ``fields`` applied as the ledger writes them: a None removes the field."""
        item = self.item()
        for name, value in fields.items():
            if value is None:
                item.pop(name, None)
            else:
                item[name] = value.model_dump(mode="json", exclude_none=True) if isinstance(value, BaseModel) else value
        return JobRecord.model_validate(item)
