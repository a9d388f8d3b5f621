"""CatalogApi: what a client reads of the stack (registered models, endpoints with what SageMaker
and autoscaling say of them, datasets) and a dataset's deletion. The CLI goes through this
function, so a client needs ``lambda:InvokeFunction`` on it and no rights on the tables,
SageMaker or autoscaling."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sdpipe.adapters.autoscaling import EndpointScaling
from sdpipe.adapters.datasets_table import DatasetsTable
from sdpipe.adapters.endpoints_table import EndpointsTable
from sdpipe.adapters.events import EventPublisher
from sdpipe.adapters.models_table import ModelsTable
from sdpipe.adapters.object_store import ObjectStore
from sdpipe.adapters.sagemaker import SageMakerEndpoints
from sdpipe.contracts.catalog import (
    CatalogRequest,
    DeleteDataset,
    DescribeDataset,
    DescribeEndpoint,
    ListDatasets,
    ListEndpoints,
    ListModels,
)
from sdpipe.contracts.models import ModelType
from sdpipe.errors import EndpointNotFound
from sdpipe.logic.datasets import DatasetCatalog
from sdpipe.logic.endpoint_announcements import public_endpoint
from sdpipe.settings import CatalogSettings, settings_of

# Bookkeeping on a model's item that is not part of the model (claims, events not yet out).
_INTERNAL_MODEL_FIELDS = frozenset({"pending_events", "outbox_shard", "outbox_due", "claim_token", "claim_expires_at"})


@dataclass
class Catalog:
    models: ModelsTable
    endpoints: EndpointsTable
    sagemaker: SageMakerEndpoints
    scaling: EndpointScaling
    datasets: DatasetCatalog

    @classmethod
    def from_settings(cls) -> Catalog:
        settings = settings_of(CatalogSettings)
        return cls(
            ModelsTable(settings.models_table_name),
            EndpointsTable(settings.endpoints_table_name),
            SageMakerEndpoints(),
            EndpointScaling(),
            DatasetCatalog(
                ObjectStore(settings.assets_bucket_name),
                DatasetsTable(settings.datasets_table_name),
                EventPublisher(settings.events_topic_arn),
            ),
        )

    def answer(self, request: CatalogRequest) -> dict[str, Any]:
        if isinstance(request, ListModels):
            return {"models": self.list_models(request.type)}
        if isinstance(request, ListEndpoints):
            return {"endpoints": self.list_endpoints()}
        if isinstance(request, DescribeEndpoint):
            return {"endpoint": self.describe_endpoint(request.name)}
        if isinstance(request, ListDatasets):
            return {"datasets": [d.model_dump(mode="json") for d in self.datasets.all()]}
        if isinstance(request, DescribeDataset):
            return {"dataset": self.describe_dataset(request.name)}
        assert isinstance(request, DeleteDataset)
        return {"deleted": self.datasets.delete(request.name)}

    def list_models(self, model_type: ModelType | None) -> list[dict[str, Any]]:
        return [
            {k: v for k, v in item.items() if k not in _INTERNAL_MODEL_FIELDS} for item in self.models.list(model_type)
        ]

    def list_endpoints(self) -> list[dict[str, Any]]:
        return sorted((public_endpoint(r) for r in self.endpoints.all()), key=lambda r: str(r["name"]))

    def describe_endpoint(self, name: str) -> dict[str, Any]:
        """The record, what SageMaker says of the endpoint, and its autoscaling as the APIs report it."""
        record = self.endpoints.get(name)
        if record is None:
            raise EndpointNotFound(f"endpoint {name!r} does not exist")
        described = public_endpoint(record)
        sagemaker_name = str(record.get("sagemaker_name") or "")
        found = self.sagemaker.describe(sagemaker_name) if sagemaker_name else None
        described["sagemaker"] = (
            {k: found.get(k) for k in ("EndpointStatus", "EndpointConfigName", "FailureReason") if found.get(k)}
            if found
            else None
        )
        scaling = self.scaling.describe(sagemaker_name) if sagemaker_name else {}
        described["autoscaling"] = {
            "targets": [{"min": t.get("MinCapacity"), "max": t.get("MaxCapacity")} for t in scaling.get("targets", [])],
            "policies": [f"{p.get('PolicyName')} ({p.get('PolicyType')})" for p in scaling.get("policies", [])],
            "alarms": [a.get("AlarmName") for a in scaling.get("alarms", [])],
        }
        return described

    def describe_dataset(self, name: str) -> dict[str, Any]:
        """The dataset's record, and whether its event is out (``settled``: a client waits on it)."""
        record = self.datasets.get(name)
        stored = self.datasets.table.get(name) or {}
        return record.model_dump(mode="json") | {"settled": not stored.get("pending_events")}
