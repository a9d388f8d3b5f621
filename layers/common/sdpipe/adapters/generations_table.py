"""The Generations table: one item per generated image (a WebUI "generations database")."""

from __future__ import annotations

from typing import Any

from sdpipe.adapters.dynamo import DynamoTable, to_dynamo


class GenerationsTable(DynamoTable):
    def put_all(self, items: list[dict[str, Any]]) -> None:
        """Write (or rewrite, identically) the items: keyed by job and index, so replays are harmless."""
        with self._table.batch_writer() as batch:
            for item in items:
                batch.put_item(Item=to_dynamo(item))
