"""The Generations table: one item per generated image (a WebUI "generations database")."""

from __future__ import annotations

from typing import Any

from sdpipe.adapters.dynamo import DynamoTable, from_dynamo, to_dynamo


class GenerationsTable(DynamoTable):
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
