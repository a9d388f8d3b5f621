"""``requests/*.json`` drops: each file is published on the requests topic as if a client had.

The request id defaults to one derived from the object (key and ETag), so the duplicate S3
events of one drop make one job, while dropping a changed file again makes a new one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from aws_lambda_powertools import Logger

from sdpipe.adapters.events import EventPublisher
from sdpipe.adapters.object_store import ObjectStore
from sdpipe.contracts.jobs import EnvelopeHead
from sdpipe.contracts.s3_events import S3EventNotification
from sdpipe.errors import RequestNotJson
from sdpipe.settings import RequestFilesSettings, settings_of

logger = Logger(child=True)


@dataclass
class RequestFiles:
    store: ObjectStore
    requests: EventPublisher
    max_bytes: int

    @classmethod
    def from_settings(cls) -> RequestFiles:
        settings = settings_of(RequestFilesSettings)
        return cls(
            ObjectStore(settings.assets_bucket_name),
            EventPublisher(settings.requests_topic_arn),
            settings.max_request_file_bytes,
        )

    def handle_notification(self, notification: S3EventNotification) -> None:
        if notification.is_test_event:
            return
        for record in notification.records:
            if record.is_created and record.s3.bucket.name == self.store.bucket:
                self.publish_file(record.s3.object.decoded_key)

    def publish_file(self, key: str) -> None:
        info = self.store.head(key)
        if info is None:
            logger.info("request file deleted before it was read", extra={"key": key})
            return
        try:
            body = self.store.get_bytes(key, self.max_bytes)
            data = json.loads(body)
        except ValueError as exc:  # over the size limit, not UTF-8, not JSON
            raise RequestNotJson(f"s3://{self.store.bucket}/{key} is not a JSON request envelope: {exc}") from None
        attributes = {}
        if isinstance(data, dict):
            head = EnvelopeHead.model_validate(data)
            if not head.request_id:
                digest = hashlib.sha256(f"{key}\n{info.etag}".encode()).hexdigest()[:32]
                data |= {"request_id": f"file-{digest}"}
            if isinstance(head.action, str) and head.action:
                attributes = {"action": head.action}
        self.requests.publish_raw(json.dumps(data), attributes)
        logger.info("request file published", extra={"key": key, **attributes})
