"""Read template.yaml and turn it into CloudFormation with the SAM translator.

Local paths (``CodeUri``, ``ContentUri``, ``DefinitionUri``) are swapped for placeholder S3 URIs
before translating, as ``sam validate`` does, and remembered, so the local stack can map the
translated resources back to the folders they came from.
"""

from __future__ import annotations

import copy
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from samtranslator.metrics.metrics import Metrics
from samtranslator.parser.parser import Parser
from samtranslator.translator.translator import Translator
from samtranslator.yaml_helper import yaml_parse

ARTIFACT_BUCKET = "sdpipe-local-artifacts"
_LOCAL_PATH_PROPERTIES = {
    "AWS::Serverless::Function": "CodeUri",
    "AWS::Serverless::LayerVersion": "ContentUri",
    "AWS::Serverless::StateMachine": "DefinitionUri",
}


@dataclass
class TranslatedTemplate:
    root: Path
    resources: dict[str, dict[str, Any]]
    parameters: dict[str, Any]
    conditions: dict[str, Any]
    mappings: dict[str, Any]
    outputs: dict[str, dict[str, Any]]
    artifacts: dict[str, Path] = field(default_factory=dict)

    def local_path(self, s3_key: str) -> Path:
        return self.artifacts[s3_key]


def load_template(path: Path) -> dict[str, Any]:
    return yaml_parse(path.read_text())  # type: ignore[no-any-return]


def samconfig_parameters(root: Path, environment: str = "local") -> dict[str, str]:
    """``parameter_overrides`` of one samconfig.toml environment (the local stack uses "local")."""
    path = root / "samconfig.toml"
    if not path.exists():
        return {}
    config = tomllib.loads(path.read_text())
    raw = config.get(environment, {}).get("deploy", {}).get("parameters", {}).get("parameter_overrides", "")
    items = raw if isinstance(raw, list) else shlex.split(raw)
    return dict(item.split("=", 1) for item in items)


def translate(path: Path, parameter_overrides: dict[str, str], pseudo: dict[str, str]) -> TranslatedTemplate:
    """Translate with ``pseudo`` parameters (``AWS::Region``, ``AWS::AccountId``, ...) set."""
    root = path.parent.resolve()
    template = load_template(path)
    artifacts: dict[str, Path] = {}
    prepared = copy.deepcopy(template)
    for resource in prepared.get("Resources", {}).values():
        prop = _LOCAL_PATH_PROPERTIES.get(resource.get("Type", ""))
        if prop is None:
            continue
        value = resource.get("Properties", {}).get(prop)
        if isinstance(value, str) and not value.startswith("s3://"):
            key = value.strip("/") or "."
            artifacts[key] = (root / value).resolve()
            resource["Properties"][prop] = f"s3://{ARTIFACT_BUCKET}/{key}"
    declared = prepared.get("Parameters", {})
    unknown = set(parameter_overrides) - set(declared)
    if unknown:
        raise ValueError(f"parameter overrides name parameters the template does not declare: {sorted(unknown)}")
    parameters = {name: spec.get("Default") for name, spec in declared.items()}
    parameters.update(parameter_overrides)
    missing = [name for name, value in parameters.items() if value is None]
    if missing:
        raise ValueError(f"template parameters without a value: {missing}")
    # An explicit session: the translator needs a region and must not look for credentials.
    session = boto3.session.Session(region_name=pseudo["AWS::Region"])
    metrics = Metrics()  # publishes nowhere; flushed below so it does not warn when collected
    translator = Translator({}, Parser(), boto_session=session, metrics=metrics)
    translated = translator.translate(prepared, {**parameters, **pseudo}, get_managed_policy_map=dict)
    metrics.publish()
    return TranslatedTemplate(
        root=root,
        resources=translated.get("Resources", {}),
        parameters=parameters,
        conditions=translated.get("Conditions", {}),
        mappings=translated.get("Mappings", {}),
        outputs=translated.get("Outputs", {}),
        artifacts=artifacts,
    )
