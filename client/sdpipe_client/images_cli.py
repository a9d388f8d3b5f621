"""``sdpipe images push``: build the container images and push them to the stack's ECR (``make images``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

import click

from sdpipe.adapters.clients import clients
from sdpipe.errors import SdpipeError
from sdpipe_client.images import checkout_revision, image_builds, push_images
from sdpipe_client.stack import stack_outputs


class _Settings(Protocol):
    stack: str


@click.group()
def images() -> None:
    """The container images SageMaker runs (inference endpoints, training jobs)."""


@images.command("push")
@click.option(
    "--template",
    default="template.yaml",
    show_default=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The template naming each repository's Dockerfile.",
)
@click.option("--tag", help="Tag the images with this instead of the commit (latest is always set too).")
@click.option("--json", "as_json", is_flag=True, help="Print what was pushed as JSON.")
@click.pass_obj
def images_push(settings: _Settings, /, template: Path, **options: Any) -> None:
    """Build each image with Docker, log in to ECR and push it, tagged with the commit and latest."""
    try:
        builds = image_builds(template.resolve())
        outputs = stack_outputs(settings.stack).values
        revision = options.get("tag") or checkout_revision(template.resolve().parent)
        pushed = push_images(
            builds, outputs, clients.get("ecr"), revision, on_step=lambda message: click.echo(message, err=True)
        )
    except SdpipeError as exc:
        raise click.ClickException(exc.message) from exc
    if options.get("as_json"):
        click.echo(json.dumps([vars(p) for p in pushed], default=list))
        return
    for image in pushed:
        click.echo(f"{image.logical_id}: {image.uri}:{image.tags[0]} ({image.digest})")


COMMANDS = [images]
