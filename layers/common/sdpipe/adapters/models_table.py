"""The Models table: conditional writes that make registration idempotent.

Protocol for one S3 key (one item):
1. ``claim`` takes the item for one object version (its ETag) with a lease. It fails when that
   version is already registered or another worker holds a live lease on it.
2. ``finish`` writes the outcome only if the claim is still ours (a newer upload takes the claim
   over, and the older worker's result is then dropped) and stores the event to announce it
   (``adapters.outbox``): published by the worker, or by the sweeper if the worker dies.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from sdpipe.adapters.dynamo import DynamoTable, UpdateBuilder, from_dynamo, to_dynamo
from sdpipe.adapters.outbox import PENDING_EVENTS, stage_event
from sdpipe.contracts.models import ModelRecord, ModelStatus, ModelType

# Fields that describe one outcome; re-registering a key removes those the new outcome lacks.
_OUTCOME_FIELDS = (
    "error", "sha256", "hash_shard", "family", "format", "short_hash", "legacy_hash",
    "tensor_hash", "tensor_count",
)  # fmt: skip


class ModelsTable(DynamoTable):
    def get(self, model_id: str) -> ModelRecord | None:
        item = self.item(model_id)
        return ModelRecord.model_validate(item) if item is not None else None

    def item(self, model_id: str) -> dict[str, Any] | None:
        """The item as stored, bookkeeping included (what the outbox reads its events from)."""
        item = self._table.get_item(Key={"model_id": model_id}, ConsistentRead=True).get("Item")
        return from_dynamo(item) if item else None

    def claim(self, *, model_id: str, etag: str, token: str, lease_seconds: int, fields: dict[str, Any]) -> bool:
        now = int(time.time())
        names = {"#status": "status"}
        values: dict[str, Any] = {
            ":pending": ModelStatus.PENDING.value,
            ":deleted": ModelStatus.DELETED.value,
            ":etag": etag,
            ":token": token,
            ":expires": now + lease_seconds,
            ":now": now,
            ":no_events": {},
        }
        sets = [
            "#status = :pending", "etag = :etag", "claim_token = :token", "claim_expires_at = :expires",
            f"{PENDING_EVENTS} = if_not_exists({PENDING_EVENTS}, :no_events)",
        ]  # fmt: skip
        for index, (name, value) in enumerate(fields.items()):
            names[f"#f{index}"] = name
            values[f":f{index}"] = to_dynamo(value)
            if name == "created_at":
                sets.append(f"#f{index} = if_not_exists(#f{index}, :f{index})")
            else:
                sets.append(f"#f{index} = :f{index}")
        return self._update_if(
            Key={"model_id": model_id},
            UpdateExpression="SET " + ", ".join(sets),
            ConditionExpression=(
                "attribute_not_exists(model_id) OR etag <> :etag OR #status = :deleted "
                "OR (#status = :pending AND claim_expires_at < :now)"
            ),
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
        )

    def finish(self, *, model_id: str, token: str, record: ModelRecord, event_id: str, stored: dict[str, Any]) -> bool:
        item = record.model_dump(mode="json", exclude_none=True)
        if record.sha256:
            item["hash_shard"] = record.sha256[:2]
        update = UpdateBuilder()
        for name, value in item.items():
            if name not in ("model_id", "created_at"):  # created_at: set once, by the first claim
                update.set(name, value)
        for stale in _OUTCOME_FIELDS:
            if stale not in item:
                update.remove(stale)
        update.remove("claim_token").remove("claim_expires_at")
        stage_event(update, event_id, stored)
        condition = f"{update.name('claim_token')} = {update.value(token)}"
        return self._update_if(Key={"model_id": model_id}, **update.request(condition))

    def renew_claim(self, model_id: str, token: str, lease_seconds: int) -> bool:
        """Extend our claim (a heartbeat while we work); False when it is no longer ours."""
        return self._update_if(
            Key={"model_id": model_id},
            UpdateExpression="SET claim_expires_at = :expires",
            ConditionExpression="claim_token = :token",
            ExpressionAttributeValues={":expires": int(time.time()) + lease_seconds, ":token": token},
        )

    def release_claim(self, model_id: str, token: str) -> None:
        """Expire our lease at once so the next delivery can claim the version again."""
        self._update_if(
            Key={"model_id": model_id},
            UpdateExpression="SET claim_expires_at = :zero",
            ConditionExpression="claim_token = :token",
            ExpressionAttributeValues={":zero": 0, ":token": token},
        )

    def mark_deleted(self, *, model_id: str, updated_at: str, event_id: str, stored: dict[str, Any]) -> bool:
        update = UpdateBuilder().set("status", ModelStatus.DELETED.value).set("updated_at", updated_at)
        update.remove("claim_token").remove("claim_expires_at")
        stage_event(update, event_id, stored)
        status = update.name("status")
        condition = f"attribute_exists(model_id) AND {status} <> {update.value(ModelStatus.DELETED.value)}"
        return self._update_if(Key={"model_id": model_id}, **update.request(condition))

    def find_by_hash_prefix(self, prefix: str) -> list[ModelRecord]:
        """Models whose sha256 starts with ``prefix`` (at least 2 hex digits: the index shard)."""
        prefix = prefix.lower()
        response = self._table.query(
            IndexName="by_hash",
            KeyConditionExpression="hash_shard = :shard AND begins_with(sha256, :prefix)",
            ExpressionAttributeValues={":shard": prefix[:2], ":prefix": prefix},
        )
        return [ModelRecord.model_validate(from_dynamo(item)) for item in response.get("Items", [])]

    def list(self, model_type: ModelType | None = None) -> Iterator[ModelRecord]:
        """Every model (optionally of one type), via the by-type index or a scan."""
        kwargs: dict[str, Any] = {}
        if model_type is not None:
            kwargs = {
                "IndexName": "by_type",
                "KeyConditionExpression": "#type = :type",
                "ExpressionAttributeNames": {"#type": "type"},
                "ExpressionAttributeValues": {":type": model_type.value},
            }
        operation = self._table.query if model_type is not None else self._table.scan
        while True:
            page = operation(**kwargs)
            for item in page.get("Items", []):
                yield ModelRecord.model_validate(from_dynamo(item))
            if "LastEvaluatedKey" not in page:
                return
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
