"""The Endpoints table: which endpoints exist, their status and the jobs in flight on each."""

from __future__ import annotations

from typing import Any

from sdpipe.adapters.clients import AwsClients, clients
from sdpipe.adapters.dynamo import from_dynamo, to_dynamo

IN_SERVICE = "IN_SERVICE"


class EndpointsTable:
    def __init__(self, table_name: str, aws: AwsClients = clients) -> None:
        self.table_name = table_name
        self._aws = aws

    @property
    def _table(self) -> Any:
        return self._aws.get_resource("dynamodb").Table(self.table_name)

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
