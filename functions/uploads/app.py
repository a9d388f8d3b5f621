"""Uploads: chunked multipart uploads of model files (invoked directly by the CLI and other clients).

Requests: ``{"operation": "create_upload", "type": "lora", "filename": "x.safetensors", "size": N,
"sha256": "...", "request_id": "..."}``, ``{"operation": "resume_upload", "job_id": "..."}``,
``{"operation": "part_urls", "job_id": "...", "part_numbers": [65, 66]}``,
``{"operation": "complete_upload", "job_id": "...", "parts": [{"part_number": 1, "etag": "..."}]}``,
``{"operation": "abort_upload", "job_id": "..."}``. Responses carry the plan and presigned part
URLs (the first 64; ``part_urls`` gives more), or ``{"error": {"code": ..., "message": ...}}``.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import TypeAdapter

from sdpipe.contracts.uploads import AbortUpload, CompleteUpload, CreateUpload, PartUrls, ResumeUpload, UploadRequest
from sdpipe.lambda_support import answer_direct
from sdpipe.logic.uploads import ModelUploads
from sdpipe.tracing import make_tracer

logger = Logger()
tracer = make_tracer()
_Request: TypeAdapter[CreateUpload | ResumeUpload | PartUrls | CompleteUpload | AbortUpload] = TypeAdapter(
    UploadRequest
)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return answer_direct(event, _Request, _answer)


def _answer(request: CreateUpload | ResumeUpload | PartUrls | CompleteUpload | AbortUpload) -> dict[str, Any]:
    uploads = ModelUploads.from_settings()
    if isinstance(request, CreateUpload):
        return uploads.create(request)
    if isinstance(request, ResumeUpload):
        return uploads.resume(request)
    if isinstance(request, PartUrls):
        return uploads.part_urls(request)
    if isinstance(request, CompleteUpload):
        return uploads.complete(request)
    return uploads.abort(request)
