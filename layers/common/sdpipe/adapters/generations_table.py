"""The Generations table: one item per generated image (a WebUI "generations database")."""

from __future__ import annotations

from typing import Any

from boto3.dynamodb.conditions import Key

from sdpipe.adapters.dynamo import DynamoTable, to_dynamo


class GenerationsTable(DynamoTable):
    def put_all(self, items: list[dict[str, Any]]) -> None:
        """Write (or rewrite, identically) the items: keyed by job and index, so replays are harmless."""
        with self._table.batch_writer() as batch:
            for item in items:
                batch.put_item(Item=to_dynamo(item))

    def delete_job(self, job_id: str) -> int:
        """Delete every item of ``job_id``; how many there were."""
        keys: list[dict[str, Any]] = []
        query: dict[str, Any] = {
            "KeyConditionExpression": Key("job_id").eq(job_id),
            "ProjectionExpression": "job_id, image_index",
        }
        while True:
            page = self._table.query(**query)
            keys.extend(page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                break
            query["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        with self._table.batch_writer() as batch:
            for key in keys:
                batch.delete_item(Key=key)
        return len(keys)
