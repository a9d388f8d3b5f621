"""Amazon ECR: whether an image exists, and the digest its tag points at."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from sdpipe.adapters.clients import AwsClients, clients, error_code
from sdpipe.contracts.images import EcrImage
from sdpipe.errors import ImageNotFound

_MISSING = {"RepositoryNotFoundException", "ImageNotFoundException"}


class ContainerImages:
    def __init__(self, aws: AwsClients = clients) -> None:
        self._aws = aws

    def pinned(self, uri: str) -> str:
        """``uri`` by digest; ``ImageNotFound`` when ECR has no such repository or image.
        ``uri`` must be an ECR image URI (``EcrImage.parse``)."""
        image = EcrImage.parse(uri)
        ecr: Any = self._aws.get("ecr")
        try:
            described = ecr.describe_images(
                registryId=image.account, repositoryName=image.repository, imageIds=[image.image_id]
            )
        except ClientError as exc:
            if error_code(exc) in _MISSING:
                raise ImageNotFound(uri, str(exc.response.get("Error", {}).get("Message") or error_code(exc))) from None
            raise
        details = described.get("imageDetails") or []
        if not details:
            raise ImageNotFound(uri, "no such image")
        return image.pinned(str(details[0]["imageDigest"]))
