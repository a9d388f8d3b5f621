"""The Datasets table: one item per dataset name, written once per drop of its marker.

Each write stores the event announcing it (``adapters.outbox``). A deletion first leaves a
tombstone (``deleted_at``) holding the ``dataset.deleted`` event, so the event outlives a writer
that dies before publishing it; readers never see tombstones.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from sdpipe.adapters.dynamo import DynamoTable, UpdateBuilder, from_dynamo, is_condition_failure, to_dynamo
from sdpipe.adapters.outbox import PENDING_EVENTS, stage_event

_TOMBSTONE = "deleted_at"


class DatasetsTable(DynamoTable):
    def get(self, name: str) -> dict[str, Any] | None:
        item = self.stored(name)
        return None if item is None or _TOMBSTONE in item else item

    def stored(self, name: str) -> dict[str, Any] | None:
        """The item as stored, tombstone or not."""
        item = self._table.get_item(Key={"name": name}, ConsistentRead=True).get("Item")
        return from_dynamo(item) if item else None

    def all(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        request: dict[str, Any] = {}
        while True:
            page = self._table.scan(**request)
            items.extend(from_dynamo(i) for i in page.get("Items", []) if _TOMBSTONE not in i)
            if "LastEvaluatedKey" not in page:
                return items
            request["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def put_version(self, item: dict[str, Any], outbox: dict[str, Any], carried: dict[str, Any]) -> bool:
        """Store the registration of one marker version with its event to publish (``outbox``)
        and the earlier ones not yet out (``carried``); False when this version (or a newer drop
        of the marker) is stored already."""
        condition = "attribute_not_exists(#name) OR #version < :version"
        outbox = outbox | {PENDING_EVENTS: carried | outbox[PENDING_EVENTS]}
        try:
            self._table.put_item(
                Item=to_dynamo(item | outbox),
                ConditionExpression=condition,
                ExpressionAttributeNames={"#name": "name", "#version": "marker_version"},
                ExpressionAttributeValues={":version": item["marker_version"]},
            )
        except ClientError as exc:
            if is_condition_failure(exc):
                return False
            raise
        return True

    def mark_deleted(self, name: str, deleted_at: str, event_id: str, stored: dict[str, Any]) -> bool:
        """Turn the item into a tombstone holding its deletion event; False when there was none."""
        update = UpdateBuilder().set(_TOMBSTONE, deleted_at)
        stage_event(update, event_id, stored)
        key, tombstone = update.name("name"), update.name(_TOMBSTONE)
        condition = f"attribute_exists({key}) AND attribute_not_exists({tombstone})"
        return self._update_if(Key={"name": name}, **update.request(condition))

    def purge(self, name: str) -> None:
        """Remove a tombstone whose events are all out."""
        all_out = "attribute_not_exists(#events) OR size(#events) = :zero"
        try:
            self._table.delete_item(
                Key={"name": name},
                ConditionExpression=f"attribute_exists(#tomb) AND ({all_out})",
                ExpressionAttributeNames={"#tomb": _TOMBSTONE, "#events": PENDING_EVENTS},
                ExpressionAttributeValues={":zero": 0},
            )
        except ClientError as exc:
            if not is_condition_failure(exc):
                raise
