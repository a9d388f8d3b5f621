"""CatalogApi: what a client reads of the stack (registered models, endpoints with what SageMaker
and autoscaling say of them, datasets) and a dataset's deletion. The CLI goes through this
function, so a client needs ``lambda:InvokeFunction`` on it and no rights on the tables,
SageMaker or autoscaling."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sdpipe.adapters.autoscaling import EndpointScaling, ScalingDescription
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
        return [record.model_dump(mode="json", exclude_none=True) for record in self.models.list(model_type)]

    def list_endpoints(self) -> list[dict[str, Any]]:
        return [public_endpoint(r) for r in sorted(self.endpoints.all(), key=lambda r: r.name)]

    def describe_endpoint(self, name: str) -> dict[str, Any]:
        """The record, what SageMaker says of the endpoint, and its autoscaling as the APIs report it."""
        record = self.endpoints.get(name)
        if record is None:
            raise EndpointNotFound(f"endpoint {name!r} does not exist")
        found = self.sagemaker.describe(record.sagemaker_name) if record.sagemaker_name else None
        sagemaker = None
        if found is not None:  # in SageMaker's words, as `aws sagemaker describe-endpoint` shows them
            said = {"EndpointStatus": found.status, "EndpointConfigName": found.config_name}
            sagemaker = {k: v for k, v in (said | {"FailureReason": found.failure_reason}).items() if v}
        scaling = self.scaling.describe(record.sagemaker_name) if record.sagemaker_name else None
        return public_endpoint(record) | {
            "sagemaker": sagemaker,
            "autoscaling": (scaling or ScalingDescription()).public(),
        }

    def describe_dataset(self, name: str) -> dict[str, Any]:
        """The dataset's record, and whether its event is out (``settled``: a client waits on it)."""
        record = self.datasets.get(name)
        stored = self.datasets.table.get(name) or {}
        return record.model_dump(mode="json") | {"settled": not stored.get("pending_events")}
