"""The Models table item and the enums that describe a model file."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class ModelType(StrEnum):
    CHECKPOINT = "checkpoint"
    LORA = "lora"
    EMBEDDING = "embedding"
    CONTROLNET = "controlnet"
    HYPERNETWORK = "hypernetwork"
    VAE = "vae"


class ModelFamily(StrEnum):
    SD1 = "sd1"
    SD2 = "sd2"
    SDXL = "sdxl"
    SDXL_REFINER = "sdxl_refiner"
    UNKNOWN = "unknown"


class ModelStatus(StrEnum):
    PENDING = "PENDING"
    ACTIVE = "ACTIVE"
    REJECTED = "REJECTED"
    DELETED = "DELETED"


class ModelFormat(StrEnum):
    SAFETENSORS = "safetensors"
    PICKLE = "pickle"


class ModelSource(StrEnum):
    DROP = "drop"
    UPLOAD = "upload"
    URL = "url"
    TRAINING = "training"


class ModelError(BaseModel):
    model_config = ConfigDict(defer_build=True)

    code: str
    message: str


class ModelRecord(BaseModel):
    """One registered file (one S3 key); overwriting the key re-registers the same record."""

    model_config = ConfigDict(defer_build=True, extra="ignore", use_enum_values=False)

    model_id: str
    type: ModelType
    name: str = Field(description="path under the type folder, without extension (A1111 name)")
    filename: str
    s3_key: str
    size: int
    etag: str
    status: ModelStatus
    source: ModelSource = ModelSource.DROP
    family: ModelFamily | None = None
    format: ModelFormat | None = None
    sha256: str | None = None
    short_hash: str | None = Field(default=None, description="A1111 short hash: sha256[:10]")
    legacy_hash: str | None = Field(default=None, description="A1111 old hash, 8 hex")
    tensor_hash: str | None = Field(default=None, description="LoRA tensor-data hash, 12 hex")
    tensor_count: int | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    details: dict[str, str] = Field(default_factory=dict)
    error: ModelError | None = None
    # For a LoRA trained by sdpipe: the job, the base model's sha256 and the dataset.
    training: dict[str, str] | None = None
    created_at: datetime
    updated_at: datetime
    # Bookkeeping of a registration in progress, read from the table and never written from here.
    claim_expires_at: int = Field(default=0, exclude=True)

    @property
    def is_active(self) -> bool:
        return self.status is ModelStatus.ACTIVE

    @property
    def is_settled(self) -> bool:
        """Registered one way or the other (its inspection is over)."""
        return self.status in (ModelStatus.ACTIVE, ModelStatus.REJECTED)

    @property
    def variant(self) -> str | None:
        """What registration found of a checkpoint's UNet beyond its family (``inpainting``)."""
        return self.details.get("variant")

    @property
    def prediction(self) -> str | None:
        """An SD 2.x checkpoint's ``v_prediction`` or ``epsilon``, as registration told them apart."""
        return self.details.get("prediction")

    def is_for(self, family: ModelFamily) -> bool:
        """Usable with models of ``family`` (an unrecognised family is given the benefit of the doubt)."""
        return self.family in (family, ModelFamily.UNKNOWN, None)

    @property
    def title(self) -> str:
        """The A1111 title form ``name [short_hash]``."""
        return f"{self.name} [{self.short_hash}]" if self.short_hash else self.name
