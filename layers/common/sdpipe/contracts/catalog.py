"""Requests of the CatalogApi function: what a client reads of the registry, the endpoints and the
datasets (and a dataset's deletion), so that it needs no rights on the tables or SageMaker."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from sdpipe.contracts.models import ModelType


class _Request(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid")


class ListModels(_Request):
    operation: Literal["list_models"]
    type: ModelType | None = None


class ListEndpoints(_Request):
    operation: Literal["list_endpoints"]


class DescribeEndpoint(_Request):
    operation: Literal["describe_endpoint"]
    name: str = Field(min_length=1, max_length=63)


class ListDatasets(_Request):
    operation: Literal["list_datasets"]


class DescribeDataset(_Request):
    operation: Literal["describe_dataset"]
    name: str = Field(min_length=1, max_length=100)


class DeleteDataset(_Request):
    operation: Literal["delete_dataset"]
    name: str = Field(min_length=1, max_length=100)


CatalogRequest = ListModels | ListEndpoints | DescribeEndpoint | ListDatasets | DescribeDataset | DeleteDataset
CatalogApiRequest: TypeAdapter[CatalogRequest] = TypeAdapter(
    Annotated[CatalogRequest, Field(discriminator="operation")]
)
