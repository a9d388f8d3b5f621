"""``fetch_model`` request params (the FetchModel workflow's state is in ``contracts.workflows``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sdpipe.contracts.models import ModelType
from sdpipe.contracts.uploads import SHA256_PATTERN, lower_hex


class FetchModelParams(BaseModel):
    """``fetch_model`` request params."""

    model_config = ConfigDict(defer_build=True, extra="forbid")

    url: str = Field(min_length=8, max_length=4096)
    type: ModelType
    name: str | None = Field(
        default=None,
        min_length=1,
        max_length=800,
        description="name under the type's folder, with or without the source's extension (default: the server's)",
    )
    sha256: str | None = Field(default=None, pattern=SHA256_PATTERN)
    # A Secrets Manager secret (named <stack>/...) holding a token or {"header": ..., "value": ...}.
    auth_secret: str | None = Field(default=None, min_length=1, max_length=512)
    overwrite: bool = False

    _normalise_sha = field_validator("sha256")(lower_hex)
