"""CatalogApi: what a client reads of models, endpoints and datasets, without table rights."""

from __future__ import annotations

import pytest

from sdpipe.adapters.autoscaling import ScalingDescription
from sdpipe.contracts.catalog import CatalogApiRequest
from sdpipe.errors import DatasetNotFound, EndpointNotFound
from sdpipe.logic.catalog import Catalog
from sdpipe.logic.datasets import DatasetCatalog
from tests.unit.world import FakeEndpoints, FakeScaling, World, add_dataset, add_model


class DescribedScaling(FakeScaling):
    def describe(self, sagemaker_name: str) -> ScalingDescription:
        return ScalingDescription(ranges=[(0, 2)])


@pytest.fixture
def catalog(world: World) -> Catalog:
    sagemaker = FakeEndpoints(endpoints={"sdpipe-fast": {"EndpointStatus": "InService", "EndpointConfigName": "c"}})
    datasets = DatasetCatalog(world.store, world.datasets, world.publisher)
    return Catalog(world.models, world.endpoints, sagemaker, DescribedScaling(), datasets)


def ask(catalog: Catalog, request: dict) -> dict:
    return catalog.answer(CatalogApiRequest.validate_python(request))


def test_models_are_listed_without_their_bookkeeping(catalog, world):
    add_model(world, "v1-5", "6c" * 32)
    add_model(world, "style", "ab" * 32, kind="lora", folder="Lora")
    models = ask(catalog, {"operation": "list_models"})["models"]
    assert sorted(m["name"] for m in models) == ["style", "v1-5"]
    assert [m["name"] for m in ask(catalog, {"operation": "list_models", "type": "lora"})["models"]] == ["style"]
    assert all("claim_token" not in m and "pending_events" not in m for m in models)


def test_endpoints_are_described_with_what_sagemaker_and_autoscaling_say(catalog, world):
    world.endpoints.put({"name": "fast", "status": "IN_SERVICE", "sagemaker_name": "sdpipe-fast", "in_flight": 1,
                         "announcement": {"event_id": "x"}})  # fmt: skip
    assert [e["name"] for e in ask(catalog, {"operation": "list_endpoints"})["endpoints"]] == ["fast"]
    described = ask(catalog, {"operation": "describe_endpoint", "name": "fast"})["endpoint"]
    assert described["sagemaker"] == {"EndpointStatus": "InService", "EndpointConfigName": "c"}
    assert described["autoscaling"]["targets"] == [{"min": 0, "max": 2}] and "announcement" not in described
    with pytest.raises(EndpointNotFound):
        ask(catalog, {"operation": "describe_endpoint", "name": "nowhere"})


def test_datasets_are_read_and_deleted(catalog, world):
    add_dataset(world, "cats")
    world.put("datasets/cats/10_cat/a.png", b"png")
    assert [d["name"] for d in ask(catalog, {"operation": "list_datasets"})["datasets"]] == ["cats"]
    assert ask(catalog, {"operation": "describe_dataset", "name": "cats"})["dataset"]["settled"] is True
    assert ask(catalog, {"operation": "delete_dataset", "name": "cats"}) == {"deleted": 1}
    with pytest.raises(DatasetNotFound):
        ask(catalog, {"operation": "describe_dataset", "name": "cats"})
