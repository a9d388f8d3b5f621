"""Container image URIs: SageMaker runs images from Amazon ECR, named by tag or by digest."""

from __future__ import annotations

import re
from dataclasses import dataclass

ECR_IMAGE_PATTERN = (
    r"^(?P<registry>(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?)/"
    r"(?P<repository>[a-z0-9]+(?:[._/-][a-z0-9]+)*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})|@(?P<digest>sha256:[a-f0-9]{64}))?$"
)
_ECR_IMAGE = re.compile(ECR_IMAGE_PATTERN)
ECR_IMAGE_FORM = "ACCOUNT.dkr.ecr.REGION.amazonaws.com/REPOSITORY:TAG (or @sha256:DIGEST)"


@dataclass(frozen=True)
class EcrImage:
    registry: str
    account: str
    region: str
    repository: str
    tag: str | None  # None when named by digest
    digest: str | None

    @classmethod
    def parse(cls, uri: str) -> EcrImage:
        """Raises ``ValueError`` naming the expected form when ``uri`` is not an ECR image URI."""
        match = _ECR_IMAGE.match(uri)
        if match is None:
            raise ValueError(f"{uri!r} is not an Amazon ECR image URI ({ECR_IMAGE_FORM}); SageMaker runs ECR images")
        return cls(
            registry=match["registry"],
            account=match["account"],
            region=match["region"],
            repository=match["repository"],
            tag=match["tag"] or (None if match["digest"] else "latest"),
            digest=match["digest"],
        )

    @property
    def image_id(self) -> dict[str, str]:
        """ECR's ``imageIds`` entry for this image."""
        return {"imageDigest": self.digest} if self.digest else {"imageTag": str(self.tag)}

    def pinned(self, digest: str) -> str:
        """The same image by digest: what a tag points at now, fixed for the life of a deployment."""
        return f"{self.registry}/{self.repository}@{digest}"


def check_image_uri(value: str) -> str:
    """A pydantic validator: the value is an ECR image URI."""
    EcrImage.parse(value)
    return value
