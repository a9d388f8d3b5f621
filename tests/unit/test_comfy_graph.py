"""ComfyUI API-format workflows checked before any compute: shape, links, node types against the
endpoint's catalogue, and the models the loaders name resolved against the registry."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from sdpipe.adapters.models_table import ModelsTable
from sdpipe.contracts.models import ModelType
from sdpipe.errors import ModelNotFound, ModelNotUsable, ValidationFailed
from sdpipe.logic.comfy_graph import apply_inputs, check_workflow, parse_catalogue, resolve_models
from tests.helpers import create_table_from_template
from tests.unit.test_model_refs import SD15, item

# ComfyUI's default text-to-image graph, as "Export (API)" writes it, with a LoRA added.
DEFAULT: dict[str, Any] = {
    "3": {"class_type": "KSampler", "inputs": {
        "seed": 156680208700286, "steps": 20, "cfg": 8, "sampler_name": "euler", "scheduler": "normal",
        "denoise": 1, "model": ["10", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {
        "text": "beautiful scenery, (embedding:easynegative:1.2), purple galaxy bottle", "clip": ["10", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "text, watermark", "clip": ["10", 1]}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
    "10": {"class_type": "LoraLoader", "inputs": {
        "lora_name": "mystyle", "strength_model": 1, "strength_clip": 1, "model": ["4", 0], "clip": ["4", 1]}},
}  # fmt: skip


def node_type(required: list[str], outputs: list[str], output_node: bool = False) -> dict[str, Any]:
    """An ``/object_info`` entry as ComfyUI answers it."""
    return {"input": {"required": {name: ["*"] for name in required}, "optional": {}}, "output": outputs,
            "output_is_list": [False] * len(outputs), "output_name": outputs, "name": "", "output_node": output_node,
            "category": "test"}  # fmt: skip


OBJECT_INFO = {
    "KSampler": node_type(["model", "seed", "steps", "cfg", "sampler_name", "scheduler", "positive", "negative",
                           "latent_image", "denoise"], ["LATENT"]),
    "CheckpointLoaderSimple": node_type(["ckpt_name"], ["MODEL", "CLIP", "VAE"]),
    "EmptyLatentImage": node_type(["width", "height", "batch_size"], ["LATENT"]),
    "CLIPTextEncode": node_type(["text", "clip"], ["CONDITIONING"]),
    "VAEDecode": node_type(["samples", "vae"], ["IMAGE"]),
    "SaveImage": node_type(["images", "filename_prefix"], [], output_node=True),
    "PreviewImage": node_type(["images"], [], output_node=True),
    "LoraLoader": node_type(["model", "clip", "lora_name", "strength_model", "strength_clip"], ["MODEL", "CLIP"]),
}  # fmt: skip
CATALOGUE = parse_catalogue(OBJECT_INFO)


def edited(**changes: Any) -> dict[str, Any]:
    """The default workflow with nodes replaced (None removes one)."""
    workflow = copy.deepcopy(DEFAULT)
    for node_id, node in changes.items():
        if node is None:
            workflow.pop(node_id)
        else:
            workflow[node_id] = node
    return workflow


def test_the_default_workflow_passes_and_names_its_models_and_its_output():
    graph = check_workflow(DEFAULT, CATALOGUE)
    assert graph.output_nodes == ["9"]
    uses = {(use.node_id, use.model_type, use.reference) for use in graph.models}
    assert uses == {
        ("4", ModelType.CHECKPOINT, "v1-5-pruned-emaonly.safetensors"),
        ("10", ModelType.LORA, "mystyle"),
        ("6", ModelType.EMBEDDING, "easynegative"),
    }


@pytest.mark.parametrize(
    ("workflow", "message"),
    [
        ([1, 2], "must be a workflow in ComfyUI's API format"),
        ({"nodes": [], "links": [], "version": 0.4}, "UI format; export it with 'Export (API)'"),
        ({}, "has no nodes"),
        (edited(**{"5": {"inputs": {}}}), "node 5: class_type: Field required"),
        (edited(**{"5": {"class_type": "EmptyLatentImage", "inputs": [1]}}), "node 5: inputs:"),
        (edited(**{"8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["42", 2]}}}),
         "node 8 (VAEDecode) input 'vae' links to node 42, which the workflow does not have"),
        (edited(**{"8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 3]}}}),
         "links to output 3 of node 4 (CheckpointLoaderSimple); it has 3"),
        (edited(**{"5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512}}}),
         "node 5 (EmptyLatentImage): required input 'batch_size' not given"),
        (edited(**{"9": {"class_type": "SaveImageWebsocket", "inputs": {"images": ["8", 0]}}}),
         "node 9: node type 'SaveImageWebsocket' is not installed on the endpoint (close: SaveImage"),
        (edited(**{"9": None}), "no output node (such as SaveImage)"),
        (edited(**{"3": DEFAULT["3"] | {"inputs": DEFAULT["3"]["inputs"] | {"latent_image": ["8", 0]}}}),
         "the links of nodes 3, 8, 9 form a loop (or wait on one)"),
    ],
)  # fmt: skip
def test_a_bad_workflow_is_refused_naming_the_node_and_the_cause(workflow, message):
    with pytest.raises(ValidationFailed) as refused:
        check_workflow(workflow, CATALOGUE)
    assert message in str(refused.value)
    assert str(refused.value).startswith("params.workflow")


def test_without_a_catalogue_the_graph_itself_is_still_checked():
    assert check_workflow(DEFAULT).output_nodes == []
    unknown = edited(**{"9": {"class_type": "MyCustomSaver", "inputs": {"images": ["8", 0]}}})
    assert check_workflow(unknown).nodes["9"].class_type == "MyCustomSaver"
    with pytest.raises(ValidationFailed, match="links to node 42"):
        check_workflow(edited(**{"9": {"class_type": "SaveImage", "inputs": {"images": ["42", 0]}}}))


@pytest.fixture
def registry(moto_clients):
    create_table_from_template(moto_clients.get("dynamodb"), "ModelsTable", "models")
    table = moto_clients.get_resource("dynamodb").Table("models")
    table.put_item(Item=item("a", "v1-5-pruned-emaonly", SD15))
    table.put_item(Item=item("l", "mystyle", "ef" * 32, kind="lora"))
    table.put_item(Item=item("e", "easynegative", "12" * 32, kind="embedding", ext=".pt"))
    return ModelsTable("models", moto_clients)


def test_every_model_a_loader_names_resolves_to_one_registered_model(registry):
    resolved = resolve_models(check_workflow(DEFAULT, CATALOGUE), registry)
    assert {(use.node_id, model.model_id) for use, model in resolved} == {("4", "a"), ("10", "l"), ("6", "e")}


def test_an_unregistered_model_fails_naming_the_node_and_the_close_names(registry):
    workflow = edited(**{"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned"}}})
    with pytest.raises(ModelNotFound) as missing:
        resolve_models(check_workflow(workflow, CATALOGUE), registry)
    message = str(missing.value)
    assert "params.workflow node 4 (CheckpointLoaderSimple) input 'ckpt_name'" in message
    assert "v1-5-pruned-emaonly" in message


def test_a_lora_named_in_a_checkpoint_loader_is_not_taken_for_a_checkpoint(registry):
    workflow = edited(**{"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "mystyle"}}})
    with pytest.raises(ModelNotFound, match="node 4"):
        resolve_models(check_workflow(workflow, CATALOGUE), registry)


def test_inputs_set_widget_values_by_node_id_or_title():
    workflow = edited(**{"3": DEFAULT["3"] | {"_meta": {"title": "Sampler"}}})
    changed = apply_inputs(workflow, {"Sampler.seed": 42, "6.text": "a red fox in snow", "5.width": 768})
    assert changed["3"]["inputs"]["seed"] == 42 and changed["3"]["inputs"]["model"] == ["10", 0]
    assert changed["6"]["inputs"]["text"] == "a red fox in snow"
    assert changed["5"]["inputs"] == {"width": 768, "height": 512, "batch_size": 1}
    assert workflow["3"]["inputs"]["seed"] == 156680208700286  # the request's own workflow is left as it was
    assert check_workflow(changed, CATALOGUE).output_nodes == ["9"]


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"seed": 1}, "'seed' is not NODE.INPUT"),
        ({"42.seed": 1}, "the workflow has no node '42' (by id or title)"),
        ({"3.sed": 1}, "node 3 (KSampler) has no input 'sed' (inputs: cfg, denoise, latent_image, model,"),
        ({"3.model": "x"}, "input 'model' of node 3 (KSampler) is a link to another node"),
        ({"Prompt.text": "x"}, "nodes 6, 7 are all titled 'Prompt'"),
    ],
)
def test_an_input_that_names_nothing_settable_is_refused(inputs, message):
    workflow = edited(**{node: DEFAULT[node] | {"_meta": {"title": "Prompt"}} for node in ("6", "7")})
    with pytest.raises(ValidationFailed) as refused:
        apply_inputs(workflow, inputs)
    assert message in str(refused.value)


def test_an_add_on_for_another_family_than_the_checkpoint_is_refused_naming_the_node(registry, moto_clients):
    table = moto_clients.get_resource("dynamodb").Table("models")
    table.put_item(Item=item("x", "xl-style", "ab" * 32, kind="lora", family="sdxl"))
    workflow = edited(**{"10": DEFAULT["10"] | {"inputs": DEFAULT["10"]["inputs"] | {"lora_name": "xl-style"}}})
    with pytest.raises(ModelNotUsable) as refused:
        resolve_models(check_workflow(workflow, CATALOGUE), registry)
    assert "node 10 (LoraLoader) input 'lora_name' 'xl-style' is a sdxl lora, but this needs sd1" in str(refused.value)
