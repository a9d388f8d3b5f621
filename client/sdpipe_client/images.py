"""Build the stack's container images and push them to its ECR repositories (``make images``).

The template says which Dockerfile goes to which repository (the repository's ``Metadata``) and
which output gives its URI (the output whose value is the repository's ``RepositoryUri``). Each
image is built for SageMaker's platform, tagged with the commit (``-dirty`` when the checkout has
uncommitted changes) and ``latest`` (what the stack's image parameters default to), and pushed
after logging Docker in to ECR with a token from ``GetAuthorizationToken``.
"""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sdpipe.errors import ConfigurationError, SdpipeError

PLATFORM = "linux/amd64"  # SageMaker's instances (and the images' CUDA wheels) are x86_64


@dataclass(frozen=True)
class ImageBuild:
    logical_id: str
    dockerfile: Path
    context: Path
    output: str  # the stack output holding the repository URI


class _CloudFormationLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short tags (``!Ref``, ``!GetAtt``, ``!Sub``...) read as data."""


def _tag(loader: yaml.Loader, suffix: str, node: yaml.Node) -> Any:
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if suffix == "GetAtt" and isinstance(value, str):
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    return {name: value}


_CloudFormationLoader.add_multi_constructor("!", _tag)


def image_builds(template_path: Path) -> list[ImageBuild]:
    """The ECR repositories of the template whose Metadata names a Dockerfile."""
    template = yaml.load(template_path.read_text(), Loader=_CloudFormationLoader)  # noqa: S506 - a SafeLoader subclass
    root = template_path.parent
    builds = []
    for logical_id, resource in template.get("Resources", {}).items():
        metadata = resource.get("Metadata") or {}
        if resource.get("Type") != "AWS::ECR::Repository" or "Dockerfile" not in metadata:
            continue
        output = next(
            (
                name
                for name, spec in template.get("Outputs", {}).items()
                if spec.get("Value") == {"Fn::GetAtt": [logical_id, "RepositoryUri"]}
            ),
            None,
        )
        if output is None:
            raise ConfigurationError(f"{template_path.name}: no output gives {logical_id}.RepositoryUri")
        dockerfile = root / str(metadata["Dockerfile"])
        builds.append(ImageBuild(logical_id, dockerfile, root / str(metadata.get("DockerContext", ".")), output))
    return builds


def checkout_revision(root: Path) -> str:
    """The commit the checkout is at (``-dirty`` with uncommitted changes): the images' tag."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unversioned"
    return f"{commit}-dirty" if dirty else commit


Runner = Callable[[Sequence[str], bytes | None], None]


def run_docker(arguments: Sequence[str], stdin: bytes | None = None) -> None:
    try:
        subprocess.run(["docker", *arguments], input=stdin, check=True)
    except FileNotFoundError:
        raise SdpipeError("docker is not installed (make images builds the images with Docker)") from None
    except subprocess.CalledProcessError as exc:
        raise SdpipeError(f"docker {arguments[0]} failed with status {exc.returncode}") from None


@dataclass(frozen=True)
class Pushed:
    logical_id: str
    uri: str
    tags: tuple[str, ...]
    digest: str


def push_images(
    builds: list[ImageBuild],
    outputs: dict[str, str],
    ecr: Any,
    revision: str,
    *,
    docker: Runner = run_docker,
    on_step: Callable[[str], None] = lambda _message: None,
) -> list[Pushed]:
    """Log in, build, tag and push every image; returns each image's URI, tags and digest."""
    token = ecr.get_authorization_token()["authorizationData"][0]
    user, password = base64.b64decode(token["authorizationToken"]).decode().split(":", 1)
    registries = {outputs[b.output].split("/", 1)[0] for b in builds if b.output in outputs}
    for registry in sorted(registries):
        on_step(f"logging in to {registry}")
        docker(["login", "--username", user, "--password-stdin", registry], password.encode())
    pushed = []
    for build in builds:
        if build.output not in outputs:
            raise ConfigurationError(f"the stack has no output {build.output}; deploy the template first")
        uri = outputs[build.output]
        tags = (revision, "latest")
        on_step(f"building {build.dockerfile.relative_to(build.context)} as {uri}:{revision}")
        docker(
            ["build", "--platform", PLATFORM, "--file", str(build.dockerfile),
             *(a for tag in tags for a in ("--tag", f"{uri}:{tag}")), str(build.context)],
            None,
        )  # fmt: skip
        for tag in tags:
            on_step(f"pushing {uri}:{tag}")
            docker(["push", f"{uri}:{tag}"], None)
        repository = uri.split("/", 1)[1]
        described = ecr.describe_images(repositoryName=repository, imageIds=[{"imageTag": revision}])
        pushed.append(Pushed(build.logical_id, uri, tags, str(described["imageDetails"][0]["imageDigest"])))
    return pushed
