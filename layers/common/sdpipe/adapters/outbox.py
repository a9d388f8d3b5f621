"""Events stored on the items they announce, until they are published (a transactional outbox).

A write that changes an item (a job's status, a model's registration, a dataset's version) also
stores the event announcing it under ``pending_events.<event_id>``, with the time until which its
writer holds the right to publish it (``lease_until``), and marks the item as having an event due
at that time (``outbox_shard``/``outbox_due``, which only such items carry: a sparse index). The
writer publishes and removes the event; the marker goes with the last one. If the writer dies in
between, whoever finds the lease run out (a redelivery, or the sweeper through the index) takes a
new lease with a conditional write and publishes it: one publisher at a time, nothing forgotten.
"""

from __future__ import annotations

from typing import Any

from sdpipe.adapters.clients import AwsClients, clients
from sdpipe.adapters.dynamo import DynamoTable, UpdateBuilder, deserialize_item

PENDING_EVENTS = "pending_events"
DUE_SHARD_ATTRIBUTE = "outbox_shard"
DUE_ATTRIBUTE = "outbox_due"
DUE_SHARD = "due"
DUE_INDEX = "outbox_by_due"


def outbox_fields(event_id: str, stored: dict[str, Any]) -> dict[str, Any]:
    """The attributes a put of a whole item carries to store one event."""
    return {
        PENDING_EVENTS: {event_id: stored},
        DUE_SHARD_ATTRIBUTE: DUE_SHARD,
        DUE_ATTRIBUTE: int(stored["lease_until"]),
    }


def stage_event(update: UpdateBuilder, event_id: str, stored: dict[str, Any]) -> UpdateBuilder:
    """Add storing one event to an update of an item that has a ``pending_events`` map."""
    update.set(f"{PENDING_EVENTS}.{event_id}", stored)
    update.set(DUE_SHARD_ATTRIBUTE, DUE_SHARD).set(DUE_ATTRIBUTE, int(stored["lease_until"]))
    return update


class OutboxTable(DynamoTable):
    """The outbox attributes of one table whose items are keyed by ``key_name``."""

    def __init__(self, table_name: str, key_name: str, aws: AwsClients = clients) -> None:
        super().__init__(table_name, aws)
        self.key_name = key_name

    def lease(self, key: str, event_id: str, until: int, now: int) -> bool:
        """Take the publishing lease of a stored event whose previous lease ran out."""
        update = UpdateBuilder()
        path = update.name(f"{PENDING_EVENTS}.{event_id}.lease_until")
        update_expression = f"SET {path} = {update.value(until)}"
        condition = f"{path} < {update.value(now)}"
        request = {"UpdateExpression": update_expression, "ConditionExpression": condition}
        return self._update_if(
            Key={self.key_name: key},
            **request,
            ExpressionAttributeNames=update.names,
            ExpressionAttributeValues=update.values,
        )

    def clear(self, key: str, event_id: str) -> None:
        """Remove a published event; with the last one, the item leaves the due index."""
        last = UpdateBuilder().remove(f"{PENDING_EVENTS}.{event_id}").remove(DUE_SHARD_ATTRIBUTE).remove(DUE_ATTRIBUTE)
        events = last.name(PENDING_EVENTS)
        this_one = last.name(f"{PENDING_EVENTS}.{event_id}")
        only_this = f"attribute_exists({this_one}) AND size({events}) = {last.value(1)}"
        if self._update_if(Key={self.key_name: key}, **last.request(only_this)):
            return
        one = UpdateBuilder().remove(f"{PENDING_EVENTS}.{event_id}")
        self._update_if(Key={self.key_name: key}, **one.request(f"attribute_exists({one.name(self.key_name)})"))

    def drop_marker(self, key: str) -> None:
        """Take an item whose events are all out off the due index (its last writer died after
        publishing, before clearing the marker)."""
        update = UpdateBuilder().remove(DUE_SHARD_ATTRIBUTE).remove(DUE_ATTRIBUTE)
        events = update.name(PENDING_EVENTS)
        empty = f"attribute_not_exists({events}) OR size({events}) = {update.value(0)}"
        exists = f"attribute_exists({update.name(self.key_name)})"
        self._update_if(Key={self.key_name: key}, **update.request(f"{exists} AND ({empty})"))

    def due(self, now: int, limit: int = 100) -> list[dict[str, Any]]:
        """Items whose stored events' writer leases have run out by ``now`` (oldest first)."""
        response = self._aws.get("dynamodb").query(
            TableName=self.table_name,
            IndexName=DUE_INDEX,
            KeyConditionExpression="#shard = :due AND #due <= :now",
            ExpressionAttributeNames={"#shard": DUE_SHARD_ATTRIBUTE, "#due": DUE_ATTRIBUTE},
            ExpressionAttributeValues={":due": {"S": DUE_SHARD}, ":now": {"N": str(now)}},
            Limit=limit,
        )
        return [deserialize_item(item) for item in response.get("Items", [])]
