"""Training datasets in Kohya's layout and the Datasets table item."""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

DATASETS_PREFIX = "datasets/"
# Dropped last, after every image and caption: only then is the folder read and registered, so a
# half-uploaded dataset is never registered. Dropping it again re-registers the folder as it is.
DATASET_MARKER = "_READY"
DATASET_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp"})
CAPTION_EXTENSION = ".txt"
# Kohya's DreamBooth-style folders: ``<repeats>_<concept>``.
CONCEPT_FOLDER = re.compile(r"^(?P<repeats>\d+)_(?P<concept>.+)$")


class DatasetStatus(StrEnum):
    REGISTERED = "REGISTERED"
    REJECTED = "REJECTED"


class Severity(StrEnum):
    ERROR = "error"  # the dataset cannot be trained on as it is (it is rejected)
    WARNING = "warning"  # trained on, but probably not what was meant


class DatasetProblem(BaseModel):
    model_config = ConfigDict(defer_build=True)

    code: str
    severity: Severity
    path: str = Field(description="relative to the dataset folder")
    message: str


class Concept(BaseModel):
    model_config = ConfigDict(defer_build=True)

    folder: str
    concept: str
    repeats: int
    images: int
    captions: int
    resolutions: dict[str, int] = Field(default_factory=dict, description="'<width>x<height>' -> images")


class DatasetRecord(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="ignore")

    name: str
    prefix: str
    status: DatasetStatus
    concepts: list[Concept] = Field(default_factory=list)
    images: int = 0
    captions: int = 0
    # Images seen per epoch: each image times its folder's repeats (Kohya's count).
    steps_per_epoch_at_batch_1: int = 0
    bytes: int = 0
    resolutions: dict[str, int] = Field(default_factory=dict)
    problems: list[DatasetProblem] = Field(default_factory=list)
    error: dict[str, str] | None = None
    marker_version: str = Field(description="the marker object's ETag and time: one registration per drop")
    registered_at: datetime
    updated_at: datetime

    @property
    def is_usable(self) -> bool:
        return self.status is DatasetStatus.REGISTERED


def dataset_prefix(name: str) -> str:
    return f"{DATASETS_PREFIX}{name}/"


def dataset_of_marker(key: str) -> str | None:
    """The dataset a ``datasets/<name>/_READY`` key marks ready (its name may still be invalid);
    None for any other key."""
    parts = key.split("/")
    if len(parts) == 3 and parts[0] + "/" == DATASETS_PREFIX and parts[1] and parts[2] == DATASET_MARKER:
        return parts[1]
    return None
