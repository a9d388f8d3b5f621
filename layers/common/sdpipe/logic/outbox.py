"""Store-then-publish for every event that announces a change to a table item.

The writer stores the event in the same conditional write as the change (``stored``/``stage``/
``item_fields``), then ``publish``es it. Should it die in between, the event stays on the item
with its lease; ``flush`` (on a redelivery) or ``sweep`` (the sweeper, every minute, through the
sparse due index) publishes it once the lease has run out. So an event is published at least once
and at most ``lease + sweep period`` after its writer died; a subscriber de-duplicates on its
``event_id``, which stays the same however many times it is published.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools import Logger
from pydantic import BaseModel, ConfigDict, Field

from sdpipe.adapters.dynamo import DynamoTable, UpdateBuilder
from sdpipe.adapters.events import EventPublisher
from sdpipe.adapters.outbox import PENDING_EVENTS, OutboxTable, outbox_fields, stage_event
from sdpipe.contracts.events import Event
from sdpipe.settings import SweepSettings, settings_of

if TYPE_CHECKING:
    from sdpipe.logic.endpoint_announcements import EndpointAnnouncer

logger = Logger(child=True)

DEFAULT_LEASE_SECONDS = 60


@dataclass
class Outbox:
    table: OutboxTable
    publisher: EventPublisher
    # How long an event's writer has to publish it before anyone else may.
    lease_seconds: int = DEFAULT_LEASE_SECONDS

    @classmethod
    def on(cls, table: DynamoTable, key_name: str, publisher: EventPublisher, lease_seconds: int) -> Outbox:
        """The outbox of the items of ``table`` (keyed by ``key_name``), read with its clients."""
        return cls(OutboxTable(table.table_name, key_name, table.aws), publisher, lease_seconds)

    def stored(self, event: Event) -> dict[str, Any]:
        return {"event": event.model_dump(mode="json"), "lease_until": int(time.time()) + self.lease_seconds}

    def item_fields(self, event: Event) -> dict[str, Any]:
        """Attributes that store ``event`` on a new item (a put)."""
        return outbox_fields(event.event_id, self.stored(event))

    def stage(self, update: UpdateBuilder, event: Event) -> UpdateBuilder:
        """Store ``event`` in ``update`` (the item has a ``pending_events`` map)."""
        return stage_event(update, event.event_id, self.stored(event))

    def publish(self, key: str, event: Event) -> None:
        """Publish an event this writer stored, then remove it from the item."""
        self.publisher.publish(event)
        self.table.clear(key, event.event_id)
        logger.info("published", extra={"type": event.type.value, "key": key, "event_id": event.event_id})

    def flush(self, item: dict[str, Any]) -> int:
        """Publish the events stored on ``item`` whose writer's lease has run out, oldest first;
        how many. An event still under a live lease is left to its writer or to a later sweep."""
        key = str(item[self.table.key_name])
        now = int(time.time())
        published = 0
        for event_id, stored in pending_events(item):
            if stored.lease_until >= now:
                continue
            if self.table.lease(key, event_id, now + self.lease_seconds, now):
                event = Event.model_validate(stored.event | {"event_id": event_id})
                self.publish(key, event)
                published += 1
        return published

    def sweep(self, limit: int = 100) -> int:
        """Publish what dead writers left on the items due by now; how many events."""
        published = 0
        for item in self.table.due(int(time.time()), limit):
            published += self.flush(item)
            if not item.get(PENDING_EVENTS):
                self.table.drop_marker(str(item[self.table.key_name]))
        if published:
            logger.info("stored events recovered", extra={"table": self.table.table_name, "published": published})
        return published


@dataclass
class StoredEventSweep:
    """The sweeper's pass over every table that stores events: jobs, models, datasets."""

    outboxes: list[Outbox]
    # Endpoint records are announced as they are (snapshots), by their own outbox.
    endpoints: EndpointAnnouncer | None = None

    @classmethod
    def from_settings(cls) -> StoredEventSweep:
        from sdpipe.adapters.endpoints_table import EndpointsTable
        from sdpipe.logic.endpoint_announcements import EndpointAnnouncer

        settings = settings_of(SweepSettings)
        publisher = EventPublisher(settings.events_topic_arn)
        tables = [
            OutboxTable(settings.jobs_table_name, "job_id"),
            OutboxTable(settings.models_table_name, "model_id"),
            OutboxTable(settings.datasets_table_name, "name"),
        ]
        endpoints = EndpointAnnouncer(
            EndpointsTable(settings.endpoints_table_name), publisher, settings.event_lease_seconds
        )
        return cls([Outbox(table, publisher, settings.event_lease_seconds) for table in tables], endpoints)

    def sweep(self) -> int:
        """Publish every stored event whose writer's lease has run out; how many."""
        published = sum(outbox.sweep() for outbox in self.outboxes)
        return published + (self.endpoints.sweep() if self.endpoints is not None else 0)


class StoredEvent(BaseModel):
    """An event stored on an item until it is published, and its writer's lease on publishing it."""

    model_config = ConfigDict(defer_build=True, extra="ignore")

    event: dict[str, Any] = Field(default_factory=dict)
    lease_until: int = 0

    @property
    def occurred_at(self) -> str:
        return str(self.event.get("occurred_at"))


def pending_events(item: dict[str, Any]) -> list[tuple[str, StoredEvent]]:
    """The events stored on an item and not yet published, in the order they happened."""
    stored = {
        event_id: StoredEvent.model_validate(value) for event_id, value in (item.get(PENDING_EVENTS) or {}).items()
    }
    return sorted(stored.items(), key=lambda kv: kv[1].occurred_at)
