"""A ComfyUI workflow in API format (ComfyUI's "Export (API)"), checked before any compute.

The format is one JSON object of node id -> ``{"class_type": ..., "inputs": {...}}``; an input
is either a widget value or a link ``[source node id, output index]``. The checks here are what
can be told from the graph and the endpoint's node catalogue (ComfyUI's ``/object_info``):

- the shape: an object of nodes, each with a ``class_type`` and an ``inputs`` object (the UI's
  own format, with ``nodes`` and ``links`` lists, is named as such);
- every link goes to an existing node and, with the catalogue, to an output that node has; no
  node depends on itself through its links;
- with the catalogue: every ``class_type`` is a node the endpoint has (the error names the node,
  its type and close names), every required input is given, and at least one node is an output
  node (ComfyUI runs nothing otherwise);
- the models the core loader nodes name (checkpoints, LoRAs, VAEs, ControlNets, hypernetworks)
  and the embeddings written as ``embedding:NAME`` in text inputs, resolved against the registry
  with the usual rules (``model_refs``).

What a custom node loads from a folder of its own is not known here: it is not resolved.
Not wired to a request yet (issue 18): the ``comfy_workflow`` request and the ComfyUI runtime
are still to come.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sdpipe.contracts.models import ModelFamily, ModelRecord, ModelType
from sdpipe.errors import ValidationFailed
from sdpipe.logic.model_refs import ModelCatalog, resolve_model

FIELD = "params.workflow"
# The core loaders: which input names which kind of model (ComfyUI's nodes.py).
LOADER_INPUTS: dict[str, dict[str, ModelType]] = {
    "CheckpointLoaderSimple": {"ckpt_name": ModelType.CHECKPOINT},
    "CheckpointLoader": {"ckpt_name": ModelType.CHECKPOINT},
    "unCLIPCheckpointLoader": {"ckpt_name": ModelType.CHECKPOINT},
    "ImageOnlyCheckpointLoader": {"ckpt_name": ModelType.CHECKPOINT},
    "LoraLoader": {"lora_name": ModelType.LORA},
    "LoraLoaderModelOnly": {"lora_name": ModelType.LORA},
    "VAELoader": {"vae_name": ModelType.VAE},
    "ControlNetLoader": {"control_net_name": ModelType.CONTROLNET},
    "DiffControlNetLoader": {"control_net_name": ModelType.CONTROLNET},
    "HypernetworkLoader": {"hypernetwork_name": ModelType.HYPERNETWORK},
}
# ComfyUI reads an embedding from a prompt as the word "embedding:NAME", optionally weighted
# inside brackets: "(embedding:NAME:1.2)".
_EMBEDDING = re.compile(r"embedding:([^\s,()]+)")
_WEIGHT_SUFFIX = re.compile(r":[0-9]*\.?[0-9]+$")


class ComfyNode(BaseModel):
    model_config = ConfigDict(extra="allow")  # "_meta" (the node's title) and what exports add

    class_type: str = Field(min_length=1)
    inputs: dict[str, Any] = {}

    @property
    def title(self) -> str | None:
        """The node's title in the editor, which exports keep under ``_meta``."""
        meta = (self.model_extra or {}).get("_meta")
        title = meta.get("title") if isinstance(meta, dict) else None
        return title if isinstance(title, str) else None


class NodeType(BaseModel):
    """One entry of ``/object_info``: what the checks read of it."""

    model_config = ConfigDict(extra="ignore")

    input: dict[str, Any] = {}
    output: list[Any] = []
    output_node: bool = False

    @property
    def required_inputs(self) -> list[str]:
        required = self.input.get("required")
        return list(required) if isinstance(required, dict) else []


NodeCatalogue = Mapping[str, NodeType]


@dataclass(frozen=True)
class ModelUse:
    """A model a node names: where (node, input), what kind, and the name as written."""

    node_id: str
    class_type: str
    input_name: str
    model_type: ModelType
    reference: str

    @property
    def field(self) -> str:
        return _input_field(self.node_id, self.class_type, self.input_name)


def _input_field(node_id: str, class_type: str, input_name: str) -> str:
    """How an error names one input of one node."""
    return f"{FIELD} node {node_id} ({class_type}) input {input_name!r}"


@dataclass(frozen=True)
class ComfyGraph:
    nodes: dict[str, ComfyNode]
    output_nodes: list[str]  # empty when checked without a catalogue
    models: list[ModelUse]


def parse_catalogue(object_info: Mapping[str, Any]) -> dict[str, NodeType]:
    """``/object_info`` as ComfyUI answers it, read into the node types the checks use."""
    return {name: NodeType.model_validate(info) for name, info in object_info.items() if isinstance(info, dict)}


def check_workflow(workflow: Any, catalogue: NodeCatalogue | None = None) -> ComfyGraph:
    """The checked graph, or ``ValidationFailed`` naming the node and what is wrong with it."""
    nodes = _nodes(workflow)
    for node_id, node in nodes.items():
        if catalogue is not None:
            _check_type(node_id, node, catalogue)
        for input_name, value in node.inputs.items():
            link = _link(value)
            if link is not None:
                _check_link(_input_field(node_id, node.class_type, input_name), link, nodes, catalogue)
    _check_acyclic(nodes)
    outputs: list[str] = []
    if catalogue is not None:
        outputs = [node_id for node_id, node in nodes.items() if catalogue[node.class_type].output_node]
        if not outputs:
            raise ValidationFailed(f"{FIELD}: no output node (such as SaveImage): ComfyUI would run nothing")
    return ComfyGraph(nodes, outputs, model_uses(nodes))


def model_uses(nodes: Mapping[str, ComfyNode]) -> list[ModelUse]:
    """Every model the core loaders name, and every ``embedding:NAME`` in a text input."""
    uses = []
    for node_id, node in nodes.items():
        for input_name, model_type in LOADER_INPUTS.get(node.class_type, {}).items():
            value = node.inputs.get(input_name)
            if isinstance(value, str):
                uses.append(ModelUse(node_id, node.class_type, input_name, model_type, value))
        for input_name, value in node.inputs.items():
            if isinstance(value, str):
                for word in _EMBEDDING.findall(value):
                    name = _WEIGHT_SUFFIX.sub("", word)
                    uses.append(ModelUse(node_id, node.class_type, input_name, ModelType.EMBEDDING, name))
    return uses


def apply_inputs(workflow: Any, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The workflow with widget values replaced: ``{"NODE.INPUT": value}``, NODE being a node id
    or a node's title (``_meta.title``, when one node has it), as ``--set NODE.INPUT=VALUE``
    writes them. Only inputs the node has, and not its links (that would change the graph)."""
    nodes = _nodes(workflow)
    changed = {str(node_id): dict(node) for node_id, node in workflow.items()}  # as _nodes keys them
    for target, value in inputs.items():
        node_ref, dot, input_name = target.rpartition(".")
        if not dot or not node_ref or not input_name:
            raise ValidationFailed(f"params.inputs: {target!r} is not NODE.INPUT (a node id or title, a dot, an input)")
        node_id = _node_named(node_ref, nodes, target)
        node = nodes[node_id]
        if input_name not in node.inputs:
            known = ", ".join(sorted(node.inputs)) or "none"
            raise ValidationFailed(
                f"params.inputs {target!r}: node {node_id} ({node.class_type}) has no input {input_name!r} "
                f"(inputs: {known})"
            )
        if _link(node.inputs[input_name]) is not None:
            raise ValidationFailed(
                f"params.inputs {target!r}: input {input_name!r} of node {node_id} ({node.class_type}) is a link "
                "to another node; only widget values can be set"
            )
        changed[node_id] = changed[node_id] | {"inputs": {**changed[node_id].get("inputs", {}), input_name: value}}
    return changed


def _node_named(reference: str, nodes: Mapping[str, ComfyNode], target: str) -> str:
    if reference in nodes:
        return reference
    titled = [node_id for node_id, node in nodes.items() if node.title == reference]
    if len(titled) == 1:
        return titled[0]
    if titled:
        raise ValidationFailed(f"params.inputs {target!r}: nodes {', '.join(titled)} are all titled {reference!r}")
    raise ValidationFailed(f"params.inputs {target!r}: the workflow has no node {reference!r} (by id or title)")


def resolve_models(graph: ComfyGraph, catalog: ModelCatalog) -> list[tuple[ModelUse, ModelRecord]]:
    """Each model use with the one registered model it names (``MODEL_NOT_FOUND`` and the close
    names, ``MODEL_AMBIGUOUS`` or ``MODEL_NOT_USABLE`` naming the node otherwise). When the
    checkpoints of the workflow are all of one known family, its LoRAs, VAEs, ControlNets and
    embeddings must be for that family too (several families: each add-on is taken as it is)."""
    checkpoints = [use for use in graph.models if use.model_type is ModelType.CHECKPOINT]
    resolved = {id(use): resolve_model(use.reference, use.model_type, catalog, field=use.field) for use in checkpoints}
    families = {model.family for model in resolved.values()}
    family = next(iter(families)) if len(families) == 1 else None
    if family is ModelFamily.UNKNOWN:  # registration could not tell: nothing to hold the add-ons to
        family = None
    for use in graph.models:
        if id(use) not in resolved:
            resolved[id(use)] = resolve_model(use.reference, use.model_type, catalog, family, field=use.field)
    return [(use, resolved[id(use)]) for use in graph.models]


def _nodes(workflow: Any) -> dict[str, ComfyNode]:
    if not isinstance(workflow, dict):
        raise ValidationFailed(f"{FIELD} must be a workflow in ComfyUI's API format (an object of nodes)")
    if isinstance(workflow.get("nodes"), list) and "links" in workflow:
        raise ValidationFailed(
            f"{FIELD} is in ComfyUI's UI format; export it with 'Export (API)' (or 'Save (API Format)')"
        )
    if not workflow:
        raise ValidationFailed(f"{FIELD} has no nodes")
    nodes = {}
    for node_id, node in workflow.items():
        try:
            nodes[str(node_id)] = ComfyNode.model_validate(node)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'node'}: {e['msg']}" for e in exc.errors())
            raise ValidationFailed(f"{FIELD} node {node_id}: {problems}") from None
    return nodes


def _link(value: Any) -> tuple[str, int] | None:
    """``[source id, output index]`` as the API format writes a link; None for a widget value."""
    if not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str | int)):
        return None
    index = value[1]
    return (str(value[0]), index) if isinstance(index, int) and not isinstance(index, bool) else None


def _check_type(node_id: str, node: ComfyNode, catalogue: NodeCatalogue) -> None:
    node_type = catalogue.get(node.class_type)
    if node_type is None:
        close = difflib.get_close_matches(node.class_type, list(catalogue), n=3)
        hint = f" (close: {', '.join(close)})" if close else ""
        raise ValidationFailed(
            f"{FIELD} node {node_id}: node type {node.class_type!r} is not installed on the endpoint{hint}"
        )
    missing = [name for name in node_type.required_inputs if name not in node.inputs]
    if missing:
        raise ValidationFailed(
            f"{FIELD} node {node_id} ({node.class_type}): required input {', '.join(map(repr, missing))} not given"
        )


def _check_link(
    where: str, link: tuple[str, int], nodes: Mapping[str, ComfyNode], catalogue: NodeCatalogue | None
) -> None:
    source_id, index = link
    source = nodes.get(source_id)
    if source is None:
        raise ValidationFailed(f"{where} links to node {source_id}, which the workflow does not have")
    outputs = len(catalogue[source.class_type].output) if catalogue is not None else None
    if index < 0 or (outputs is not None and index >= outputs):
        count = f"; it has {outputs}" if outputs is not None else ""
        raise ValidationFailed(f"{where} links to output {index} of node {source_id} ({source.class_type}){count}")


def _check_acyclic(nodes: Mapping[str, ComfyNode]) -> None:
    """ComfyUI runs a node after the nodes it links to: nodes in a loop would never start."""
    sources = {
        node_id: {link[0] for link in map(_link, node.inputs.values()) if link is not None and link[0] in nodes}
        for node_id, node in nodes.items()
    }
    waiting = {node_id: len(linked) for node_id, linked in sources.items()}
    users: dict[str, list[str]] = {node_id: [] for node_id in nodes}
    for node_id, linked in sources.items():
        for source in linked:
            users[source].append(node_id)
    ready = [node_id for node_id, count in waiting.items() if count == 0]
    while ready:  # Kahn's order: what is left at the end waits on itself
        for user in users[ready.pop()]:
            waiting[user] -= 1
            if waiting[user] == 0:
                ready.append(user)
    looped = sorted(node_id for node_id, count in waiting.items() if count > 0)
    if looped:
        raise ValidationFailed(
            f"{FIELD}: the links of nodes {', '.join(looped)} form a loop (or wait on one): "
            "ComfyUI would never run them"
        )
