"""Domain exceptions with stable names and codes.

The class names are matched by ASL ``Retry``/``Catch`` (``ErrorEquals``) and the codes travel in
events, so neither may change once released.
"""

from __future__ import annotations


class SdpipeError(Exception):
    """Base of every error sdpipe raises on purpose."""

    code = "INTERNAL_ERROR"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def to_error(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class WorkInProgress(SdpipeError):
    """Another delivery holds a live claim on this work: it is not done, and if that worker died
    nobody will do it unless this message comes back once the claim has run out."""

    code = "WORK_IN_PROGRESS"

    def __init__(self, message: str, *, retry_after_seconds: int) -> None:
        super().__init__(message)
        self.retry_after_seconds = max(1, retry_after_seconds)


class ConfigurationError(SdpipeError):
    """A required setting (resource name, ARN) is missing or malformed."""

    code = "CONFIGURATION_ERROR"


class ModelRejected(SdpipeError):
    """A model file failed validation; the code names the kind of problem."""

    code = "MODEL_REJECTED"


class InvalidSafetensors(ModelRejected):
    code = "INVALID_SAFETENSORS"


class UnsafePickle(ModelRejected):
    code = "UNSAFE_PICKLE"


class InvalidPickle(ModelRejected):
    code = "INVALID_PICKLE"


class UnrecognisedModel(ModelRejected):
    code = "UNRECOGNISED_MODEL"


class WrongFolder(ModelRejected):
    code = "WRONG_FOLDER"


class EmptyFile(ModelRejected):
    code = "EMPTY_FILE"


class UnsupportedExtension(ModelRejected):
    code = "UNSUPPORTED_EXTENSION"


class ObjectChanged(SdpipeError):
    """The S3 object was overwritten or deleted while it was being read; retry later."""

    code = "OBJECT_CHANGED"


class ModelNotFound(SdpipeError):
    """A model reference matches no registered, usable model."""

    code = "MODEL_NOT_FOUND"


class ModelAmbiguous(SdpipeError):
    """A model reference matches more than one model; the message lists them."""

    code = "MODEL_AMBIGUOUS"


class ModelNotUsable(SdpipeError):
    """The model exists but is not ACTIVE, or is of the wrong type or family."""

    code = "MODEL_NOT_USABLE"


class ValidationFailed(SdpipeError):
    """A request's envelope or parameters are invalid; the message names the field and the rule."""

    code = "VALIDATION_ERROR"


class UnknownAction(SdpipeError):
    """A request names an action this deployment does not handle (or none at all)."""

    code = "UNKNOWN_ACTION"


class RequestNotJson(SdpipeError):
    """A request body is not JSON at all: nothing to answer, so it goes to the dead-letter queue."""

    code = "NOT_JSON"


class EndpointNotFound(SdpipeError):
    """The endpoint a request names is not registered, or was deleted."""

    code = "ENDPOINT_NOT_FOUND"


class NoEndpointInService(SdpipeError):
    """No endpoint is in service to run the request on."""

    code = "NO_ENDPOINT_IN_SERVICE"


class EndpointFailed(SdpipeError):
    """The endpoint refused the invocation or answered with an error."""

    code = "ENDPOINT_ERROR"


class EndpointCrashed(SdpipeError):
    """The model container died mid-invocation (a CUDA OOM, a segfault) without answering."""

    code = "ENDPOINT_CRASHED"


class JobNotFound(SdpipeError):
    code = "JOB_NOT_FOUND"


class JobAlreadyFinished(SdpipeError):
    """A terminal job cannot be cancelled (or moved at all)."""

    code = "JOB_ALREADY_FINISHED"


class EndpointExists(SdpipeError):
    """A deploy_endpoint for a name that is already deployed (or being deployed)."""

    code = "ENDPOINT_EXISTS"


class EndpointBusy(SdpipeError):
    """Another workflow is changing this endpoint, or it is not in a state this request applies to."""

    code = "ENDPOINT_BUSY"


class EndpointWorkflowFailed(SdpipeError):
    """A deploy/update/delete workflow stopped on a SageMaker or autoscaling error."""

    code = "ENDPOINT_WORKFLOW_FAILED"


class EndpointDeleted(SdpipeError):
    """The endpoint a job was queued on was deleted before the job finished."""

    code = "ENDPOINT_DELETED"


class Throttled(SdpipeError):
    """An AWS API throttled us; workflows retry the step with jitter (ASL matches this name)."""

    code = "THROTTLED"


class RegistrationPending(SdpipeError):
    """A file a step needs registered is being registered by another worker; the TrainLora
    workflow retries the step (ASL matches this name) instead of a Lambda waiting for it."""

    code = "REGISTRATION_PENDING"


class JobNotCancellable(SdpipeError):
    """A job that cannot be stopped half-way (an endpoint workflow)."""

    code = "JOB_NOT_CANCELLABLE"


class UrlRejected(SdpipeError):
    """A URL to fetch from is not acceptable (scheme, credentials in it, malformed, extension)."""

    code = "URL_REJECTED"


class ForbiddenAddress(UrlRejected):
    """The URL's host is (or resolves to, or redirects to) an address sdpipe never connects to."""

    code = "FORBIDDEN_ADDRESS"


class SourceFailed(SdpipeError):
    """The server of a URL failed to deliver the file (HTTP error, reset, timeout); retried."""

    code = "SOURCE_FAILED"


class SourceMisbehaved(SdpipeError):
    """The server's answers contradict each other (size, ranges); not retried."""

    code = "SOURCE_MISBEHAVED"


class FileTooLarge(SdpipeError):
    code = "FILE_TOO_LARGE"


class UploadNotFound(SdpipeError):
    code = "UPLOAD_NOT_FOUND"


class UploadPartsInvalid(SdpipeError):
    """``complete_upload`` named parts that are missing or do not match the plan."""

    code = "UPLOAD_PARTS_INVALID"


class UploadFinished(SdpipeError):
    """The upload was completed, aborted or timed out already."""

    code = "UPLOAD_FINISHED"


class Sha256Mismatch(ModelRejected):
    code = "SHA256_MISMATCH"


class SourceRefused(SdpipeError):
    """The server of a URL refused the request (4xx: not found, forbidden, bad token); not retried."""

    code = "SOURCE_REFUSED"


class ModelExists(SdpipeError):
    """Uploading or fetching would overwrite a model file that exists (pass overwrite to replace it)."""

    code = "MODEL_EXISTS"


class FetchTimedOut(SdpipeError):
    """A fetch could not finish in the time a function has (a slow server without range support)."""

    code = "FETCH_TIMED_OUT"


class DatasetNotFound(SdpipeError):
    """No registered dataset of that name (it was never marked ready, or was deleted)."""

    code = "DATASET_NOT_FOUND"


class DatasetNotUsable(SdpipeError):
    """The dataset was inspected and rejected (its problems say why)."""

    code = "DATASET_NOT_USABLE"


class TrainingFailed(SdpipeError):
    """The training job ended Failed (SageMaker's reason and the last log lines say why)."""

    code = "TRAINING_FAILED"


class TrainingTimedOut(SdpipeError):
    """The training job ran past its max_runtime_seconds and was stopped."""

    code = "TRAINING_TIMED_OUT"


class NoLoraOutput(SdpipeError):
    """The training job finished but its model artefact holds no LoRA file."""

    code = "NO_LORA_OUTPUT"


class ImageNotFound(SdpipeError):
    """A container image is not in ECR (never pushed, or expired by the repository's lifecycle rule)."""

    code = "IMAGE_NOT_FOUND"

    def __init__(self, uri: str, detail: str = "") -> None:
        why = f" ({detail})" if detail else ""
        super().__init__(
            f"image {uri} is not in ECR{why}: build and push it with `make images` (or name an image that exists)"
        )
        self.uri = uri


class AccessDenied(SdpipeError):
    """An AWS call was refused by IAM: a role lacks a permission. The message names the action
    and the resource (AWS's own words); retrying does not help, the template must grant it."""

    code = "ACCESS_DENIED"
