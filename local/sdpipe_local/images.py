"""The checkout's container images, as the local stack runs them.

In AWS, ``make images`` builds ``images/<name>/Dockerfile`` and pushes it to the stack's ECR
repository; SageMaker pulls it and runs the image's ENTRYPOINT with ``serve`` (endpoints) or
``train`` (training jobs) appended. Locally nothing is built. At start the local stack records
one image per ECR repository of the template that names a Dockerfile (resource ``Metadata``),
tagged ``latest`` and with the commit, whose manifest points back at the Dockerfile; the SageMaker
stand-ins then look the image URI up in the local ECR as SageMaker does (a missing image fails
the same way) and start the Dockerfile's own ENTRYPOINT, from the virtualenv that has the image's
package installed, with the Dockerfile's ENV. Absolute paths in that ENV (caches, /opt/ml...)
are moved under a folder that plays the container's filesystem.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdpipe.contracts.images import EcrImage
from sdpipe_client.images import checkout_revision

# Annotation of the manifests the local stack writes: which Dockerfile the image is built from.
DOCKERFILE_ANNOTATION = "io.sdpipe.dockerfile"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
_HOST_VARIABLES = frozenset({"PATH", "VIRTUAL_ENV"})
_VARIABLE = re.compile(r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")


class ImageError(Exception):
    """An image URI that cannot be run; the message is what SageMaker would report."""


@dataclass(frozen=True)
class ImageDefinition:
    """What a Dockerfile says about how its image starts."""

    dockerfile: Path
    entrypoint: tuple[str, ...]
    environment: dict[str, str]

    def command(self, argument: str, search_path: str | None = None) -> list[str]:
        """``docker run IMAGE <argument>``: the exec-form ENTRYPOINT with the argument appended
        (replacing CMD). The executable is looked up as the container's PATH would find it: the
        virtualenv this process runs in, then PATH."""
        if not self.entrypoint:
            raise ImageError(f"{self.dockerfile} has no ENTRYPOINT; SageMaker would run `{argument}` itself")
        program, *arguments = self.entrypoint
        found = program if os.path.isabs(program) else shutil.which(program, path=search_path or _search_path())
        if found is None:
            raise ImageError(
                f"exec: {program!r}: executable file not found in $PATH (the ENTRYPOINT of {self.dockerfile.name}; "
                "is the image's package installed in this virtualenv?)"
            )
        return [found, *arguments, argument]

    def container_environment(self, root: Path) -> dict[str, str]:
        """The Dockerfile's ENV, with absolute paths moved under ``root`` (the container's filesystem).
        PATH and VIRTUAL_ENV are the host's: the stand-ins run this checkout's virtualenv instead of
        the image's."""
        return {
            name: _relocated(value, root) for name, value in self.environment.items() if name not in _HOST_VARIABLES
        }


def _search_path() -> str:
    return os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", os.defpath)])


def _relocated(value: str, root: Path) -> str:
    if value.startswith("/") and os.pathsep not in value and " " not in value:
        return str(root / value.lstrip("/"))
    return value


def parse_dockerfile(path: Path) -> ImageDefinition:
    """ENTRYPOINT and ENV of the final stage (exec-form ENTRYPOINT; ``ENV k=v ...`` and ``ENV k v``)."""
    entrypoint: tuple[str, ...] = ()
    environment: dict[str, str] = {}
    for instruction, argument in _instructions(path.read_text()):
        if instruction == "FROM":
            entrypoint, environment = (), {}
        elif instruction == "ENTRYPOINT":
            entrypoint = _exec_form(argument, path)
        elif instruction == "ENV":
            environment.update(_env(argument, environment))
    return ImageDefinition(path, entrypoint, environment)


def _instructions(text: str) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        keyword, _, rest = current.partition(" ")
        found.append((keyword.upper(), rest.strip()))
        current = ""
    return found


def _exec_form(argument: str, path: Path) -> tuple[str, ...]:
    try:
        parsed = json.loads(argument)
    except json.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, list) or not all(isinstance(p, str) for p in parsed):
        # Shell form would run under /bin/sh -c and ignore `serve`: SageMaker images need exec form.
        raise ImageError(f"{path}: ENTRYPOINT must be in exec form (a JSON array), got {argument!r}")
    return tuple(parsed)


def _env(argument: str, defined: dict[str, str]) -> dict[str, str]:
    words = shlex.split(argument)
    if words and "=" not in words[0]:  # legacy `ENV NAME value with spaces`
        return {words[0]: _expand(" ".join(words[1:]), defined)}
    values: dict[str, str] = {}
    for word in words:
        name, _, value = word.partition("=")
        values[name] = _expand(value, defined | values)
    return values


def _expand(value: str, defined: dict[str, str]) -> str:
    return _VARIABLE.sub(lambda m: defined.get(m["braced"] or m["plain"], ""), value)


# ---------------------------------------------------------------------- the local ECR
@dataclass(frozen=True)
class RepositoryImage:
    """An ECR repository of the template and the Dockerfile whose image it holds."""

    logical_id: str
    repository: str
    uri: str
    dockerfile: Path


def source_digest(dockerfile: Path, root: Path) -> str:
    """A digest of what the image is built from (the Dockerfile and its image folder), so the
    recorded image changes when its sources do, as a rebuilt image's digest would."""
    digest = hashlib.sha256()
    for path in sorted([dockerfile, *dockerfile.parent.rglob("*")]):
        if path.is_file() and "__pycache__" not in path.parts and not path.name.endswith(".pyc"):
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return "sha256:" + digest.hexdigest()


def manifest_for(dockerfile: Path, root: Path) -> str:
    """An OCI image manifest whose annotation names the Dockerfile (how the stand-ins find it)."""
    relative = dockerfile.relative_to(root).as_posix()
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": source_digest(dockerfile, root),
                "size": 0,
            },
            "layers": [],
            "annotations": {DOCKERFILE_ANNOTATION: relative},
        },
        sort_keys=True,
    )


def record_checkout_images(ecr: Any, images: list[RepositoryImage], root: Path) -> None:
    """Put each repository's image in the local ECR, tagged ``latest`` and with the commit."""
    revision = checkout_revision(root)
    for image in images:
        manifest = manifest_for(image.dockerfile, root)
        for tag in ("latest", revision):
            put_manifest(ecr, image.repository, manifest, tag)


def put_manifest(ecr: Any, repository: str, manifest: str, tag: str) -> None:
    """What a registry push leaves in ECR: the manifest under its digest, with ``tag`` on it (a push
    of what is there already changes nothing)."""
    with contextlib.suppress(ecr.exceptions.ImageAlreadyExistsException):
        ecr.put_image(
            repositoryName=repository,
            imageManifest=manifest,
            imageManifestMediaType=MANIFEST_MEDIA_TYPE,
            imageTag=tag,
            imageDigest="sha256:" + hashlib.sha256(manifest.encode()).hexdigest(),  # as ECR computes it
        )


class ImageResolver:
    """Find the Dockerfile behind an image URI through the local ECR, as SageMaker pulls it.

    ``ecr`` makes an ECR client for a role (SageMaker pulls with the execution role)."""

    def __init__(self, root: Path, ecr: Callable[[str | None], Any]) -> None:
        self._root = root
        self._ecr = ecr

    def resolve(self, uri: str, role_arn: str | None = None) -> ImageDefinition:
        try:
            parsed = EcrImage.parse(uri)
        except ValueError as exc:
            raise ImageError(str(exc)) from None
        client = self._ecr(role_arn)
        try:
            found = client.batch_get_image(repositoryName=parsed.repository, imageIds=[parsed.image_id])
        except client.exceptions.RepositoryNotFoundException:
            raise ImageError(
                f"Requested image {uri} not found: the repository {parsed.repository} does not exist"
            ) from None
        images = found.get("images") or []
        if not images:
            raise ImageError(f"Requested image {uri} not found in ECR (push it with `make images`)")
        manifest = json.loads(images[0]["imageManifest"])
        relative = (manifest.get("annotations") or {}).get(DOCKERFILE_ANNOTATION)
        if not relative:
            raise ImageError(
                f"{uri} was not recorded from this checkout's images/*/Dockerfile; the local stack can only run those"
            )
        dockerfile = (self._root / relative).resolve()
        if not dockerfile.is_file() or self._root.resolve() not in dockerfile.parents:
            raise ImageError(f"{uri} names {relative}, which is not a Dockerfile of this checkout")
        return parse_dockerfile(dockerfile)
