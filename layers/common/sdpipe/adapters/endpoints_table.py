"""The Endpoints table: which endpoints exist, their status and the jobs in flight on each."""

from __future__ import annotations

from typing import Any

from sdpipe.adapters.dynamo import DynamoTable, from_dynamo, to_dynamo

IN_SERVICE = "IN_SERVICE"


class EndpointsTable(DynamoTable):
    def get(self, name: str) -> dict[str, Any] | None:
        item = self._table.get_item(Key={"name": name}, ConsistentRead=True).get("Item")
        return from_dynamo(item) if item else None

    def in_service(self) -> list[dict[str, Any]]:
        response = self._table.query(
            IndexName="by_status",
            KeyConditionExpression="#status = :status",
            ExpressionAttributeNames={"#status": "status"},
            ExpressionAttributeValues={":status": IN_SERVICE},
        )
        return [from_dynamo(i) for i in response.get("Items", [])]

    def all(self) -> list[dict[str, Any]]:
        return [from_dynamo(i) for i in self._table.scan().get("Items", [])]

    def put(self, item: dict[str, Any]) -> None:
        self._table.put_item(Item=to_dynamo(item))
