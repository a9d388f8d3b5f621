"""S3 event notifications as delivered through SQS.

Our own lenient models: Powertools' ``S3Model`` insists on fields (``userIdentity``,
``requestParameters``) that some senders, moto among them, leave out.
"""

from __future__ import annotations

from urllib.parse import unquote_plus

from pydantic import BaseModel, ConfigDict, Field


class S3Object(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="ignore", populate_by_name=True)

    key: str
    size: int = 0
    etag: str | None = Field(default=None, alias="eTag")
    version_id: str | None = Field(default=None, alias="versionId")
    sequencer: str | None = None

    @property
    def decoded_key(self) -> str:
        """Keys arrive URL-encoded (spaces as '+'); decode before use."""
        return unquote_plus(self.key)


class S3Bucket(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="ignore")

    name: str


class S3Entity(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="ignore")

    bucket: S3Bucket
    object: S3Object


class S3EventRecord(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="ignore", populate_by_name=True)

    event_name: str = Field(alias="eventName")
    event_time: str | None = Field(default=None, alias="eventTime")
    s3: S3Entity

    @property
    def is_created(self) -> bool:
        return self.event_name.startswith("ObjectCreated:")

    @property
    def is_removed(self) -> bool:
        return self.event_name.startswith("ObjectRemoved:")


class S3EventNotification(BaseModel):
    """The SQS body S3 sends: either ``Records`` or the one-off ``s3:TestEvent``."""

    model_config = ConfigDict(defer_build=True, extra="ignore", populate_by_name=True)

    records: list[S3EventRecord] = Field(default_factory=list, alias="Records")
    event: str | None = Field(default=None, alias="Event")

    @property
    def is_test_event(self) -> bool:
        return self.event == "s3:TestEvent"
