"""The Generations table: one item per generated image (a WebUI "generations database")."""

from __future__ import annotations

from typing import Any

from sdpipe.adapters.clients import AwsClients, clients
from sdpipe.adapters.dynamo import from_dynamo, to_dynamo


class GenerationsTable:
    def __init__(self, table_name: str, aws: AwsClients = clients) -> None:
        self.table_name = table_name
        self._aws = aws

    @property
    def _table(self) -> Any:
        return self._aws.get_resource("dynamodb").Table(self.table_name)

    def put_all(self, items: list[dict[str, Any]]) -> None:
        """Write (or rewrite, identically) the items: keyed by job and index, so replays are harmless."""
        with self._table.batch_writer() as batch:
            for item in items:
                batch.put_item(Item=to_dynamo(item))

    def for_job(self, job_id: str) -> list[dict[str, Any]]:
        response = self._table.query(
            KeyConditionExpression="job_id = :job", ExpressionAttributeValues={":job": job_id}, ConsistentRead=True
        )
        return [from_dynamo(i) for i in response.get("Items", [])]
