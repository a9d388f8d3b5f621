"""Model references resolve like the WebUI's: name, name.ext, title with hash, sha256 prefix."""

from __future__ import annotations

import pytest

from sdpipe.adapters.models_table import ModelsTable
from sdpipe.contracts.models import ModelFamily, ModelType
from sdpipe.errors import ModelAmbiguous, ModelNotFound, ModelNotUsable
from sdpipe.logic.model_refs import resolve_model
from tests.helpers import create_table_from_template

SD15 = "6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa"
XL = "31e35c80fc4829d14f90153f4c74cd59c90b779f6afe05a74cd6120b893f7e5b"
TWIN = "6ce0161689aa0000000000000000000000000000000000000000000000000000"  # same 10-digit prefix


def item(model_id, name, sha, *, kind="checkpoint", family="sd1", status="ACTIVE", ext=".safetensors"):
    return {
        "model_id": model_id, "name": name, "filename": name.rsplit("/", 1)[-1] + ext, "type": kind,
        "family": family, "status": status, "sha256": sha, "hash_shard": sha[:2], "short_hash": sha[:10],
        "legacy_hash": sha[-8:], "s3_key": f"models/x/{name}{ext}", "size": 1, "etag": "e",
        "created_at": "2026-01-01T00:00:00+00:00", "updated_at": "2026-01-01T00:00:00+00:00",
    }  # fmt: skip


@pytest.fixture
def catalog(moto_clients):
    aws = moto_clients
    create_table_from_template(aws.get("dynamodb"), "ModelsTable", "models")
    table = aws.get_resource("dynamodb").Table("models")
    for row in (
        item("a", "v1-5-pruned-emaonly", SD15),
        item("b", "xl/sd_xl_base_1.0", XL, family="sdxl"),
        item("c", "sd15/v1-5-pruned-emaonly", TWIN),
        item("d", "old", "ab" * 32, status="REJECTED"),
        item("e", "v1-5-pruned-emaonly", "cd" * 32, kind="lora"),
    ):
        table.put_item(Item=row)
    return ModelsTable("models", aws)


@pytest.mark.parametrize(
    ("reference", "model_id"),
    [
        ("xl/sd_xl_base_1.0", "b"),
        ("xl/sd_xl_base_1.0.safetensors", "b"),
        ("sd_xl_base_1.0", "b"),  # unique without its folder
        ("v1-5-pruned-emaonly [6ce0161689]", "a"),  # A1111 title, short hash
        (f"v1-5-pruned-emaonly [{SD15[-8:]}]", "a"),  # legacy hash
        (SD15[:12], "a"),  # sha256 prefix
        (XL, "b"),
    ],
)
def test_references_resolve(catalog, reference, model_id):
    assert resolve_model(reference, ModelType.CHECKPOINT, catalog).model_id == model_id


def test_the_same_name_in_two_folders_is_ambiguous_only_without_its_folder(catalog):
    assert resolve_model("sd15/v1-5-pruned-emaonly", ModelType.CHECKPOINT, catalog).model_id == "c"
    assert resolve_model("v1-5-pruned-emaonly", ModelType.CHECKPOINT, catalog).model_id == "a"  # exact name first


def test_a_prefix_shared_by_two_models_is_ambiguous_and_lists_them(catalog):
    with pytest.raises(ModelAmbiguous) as failed:
        resolve_model("6ce0161689", ModelType.CHECKPOINT, catalog, field="override_settings.sd_model_checkpoint")
    assert "override_settings.sd_model_checkpoint '6ce0161689' matches 2 checkpoints" in failed.value.message
    assert "sd15/v1-5-pruned-emaonly [6ce0161689]" in failed.value.message


def test_a_hash_prefix_needs_ten_digits(catalog):
    with pytest.raises(ModelNotFound):
        resolve_model("6ce01616", ModelType.CHECKPOINT, catalog)


def test_unknown_names_suggest_close_ones(catalog):
    with pytest.raises(
        ModelNotFound, match=r"model 'v1-5-pruned' matches no ACTIVE checkpoint; did you mean .*v1-5-pruned-emaonly"
    ):
        resolve_model("v1-5-pruned", ModelType.CHECKPOINT, catalog)


def test_rejected_models_and_wrong_families_are_not_usable(catalog):
    with pytest.raises(ModelNotUsable, match="old is REJECTED"):
        resolve_model("old", ModelType.CHECKPOINT, catalog)
    with pytest.raises(ModelNotUsable, match="is a sdxl checkpoint, but this needs sd1"):
        resolve_model("sd_xl_base_1.0", ModelType.CHECKPOINT, catalog, family=ModelFamily.SD1)


def test_types_are_kept_apart(catalog):
    assert resolve_model("v1-5-pruned-emaonly", ModelType.LORA, catalog).model_id == "e"
    with pytest.raises(ModelNotFound):
        resolve_model("sd_xl_base_1.0", ModelType.LORA, catalog)
