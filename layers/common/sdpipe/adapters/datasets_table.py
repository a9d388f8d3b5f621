"""The Datasets table: one item per dataset name, written once per drop of its marker."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from sdpipe.adapters.dynamo import DynamoTable, UpdateBuilder, from_dynamo, is_condition_failure, to_dynamo


class DatasetsTable(DynamoTable):
    def get(self, name: str) -> dict[str, Any] | None:
        item = self._table.get_item(Key={"name": name}, ConsistentRead=True).get("Item")
        return from_dynamo(item) if item else None

    def all(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        request: dict[str, Any] = {}
        while True:
            page = self._table.scan(**request)
            items.extend(from_dynamo(i) for i in page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                return items
            request["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def put_version(self, item: dict[str, Any], pending_event: dict[str, Any]) -> bool:
        """Store the registration of one marker version with its event to publish; False when
        this version (or a newer drop of the marker) is stored already."""
        condition = "attribute_not_exists(#name) OR #version < :version"
        try:
            self._table.put_item(
                Item=to_dynamo(item | {"pending_event": pending_event}),
                ConditionExpression=condition,
                ExpressionAttributeNames={"#name": "name", "#version": "marker_version"},
                ExpressionAttributeValues={":version": item["marker_version"]},
            )
        except ClientError as exc:
            if is_condition_failure(exc):
                return False
            raise
        return True

    def clear_pending_event(self, name: str, event_id: str) -> None:
        update = UpdateBuilder().remove("pending_event")
        self._update_if(Key={"name": name}, **update.request(f"pending_event.event_id = {update.value(event_id)}"))

    def delete(self, name: str) -> bool:
        """Remove the item; False when there was none."""
        response = self._table.delete_item(Key={"name": name}, ReturnValues="ALL_OLD")
        return bool(response.get("Attributes"))
