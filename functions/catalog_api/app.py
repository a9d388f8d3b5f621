"""CatalogApi: models, endpoints and datasets as a client reads them (invoked directly).

Requests: ``{"operation": "list_models", "type": "lora"}``, ``list_endpoints``,
``{"operation": "describe_endpoint", "name": ...}``, ``list_datasets``, ``describe_dataset`` and
``delete_dataset`` (with ``name``). Response: the answer, or ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from sdpipe.contracts.catalog import CatalogApiRequest, CatalogRequest
from sdpipe.lambda_support import answer_direct
from sdpipe.logic.catalog import Catalog
from sdpipe.tracing import make_tracer

logger = Logger()
tracer = make_tracer()


@logger.inject_lambda_context
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return answer_direct(event, CatalogApiRequest, _answer)


def _answer(request: CatalogRequest) -> dict[str, Any]:
    return Catalog.from_settings().answer(request)
