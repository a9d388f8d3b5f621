"""The Jobs table: jobs move forward only, through conditional writes.

Every write that changes a job's status also stores the event announcing it on the item
(``adapters.outbox``): each transition is announced, and never lost.

Transitions that take or give back an endpoint slot update the endpoint's ``in_flight`` counter
in the same transaction, so the counter can neither leak nor be counted twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from botocore.exceptions import ClientError

from sdpipe.adapters.clients import AwsClients, clients
from sdpipe.adapters.dynamo import (
    DynamoTable,
    UpdateBuilder,
    deserialize_item,
    from_dynamo,
    is_condition_failure,
    serialize_item,
    to_dynamo,
)
from sdpipe.contracts.jobs import JobStatus
from sdpipe.errors import EndpointNotFound

# Only open jobs carry this attribute, so the sparse index lists nothing else.
OPEN_SHARD = "open"


class _EndpointGone(Exception):
    pass


class JobsTable(DynamoTable):
    def __init__(self, table_name: str, endpoints_table_name: str | None = None, aws: AwsClients = clients) -> None:
        super().__init__(table_name, aws)
        self.endpoints_table_name = endpoints_table_name

    def get(self, job_id: str) -> dict[str, Any] | None:
        item = self._table.get_item(Key={"job_id": job_id}, ConsistentRead=True).get("Item")
        return from_dynamo(item) if item else None

    def create(self, item: dict[str, Any], endpoint: str | None = None) -> bool:
        """Put a new job; False when one with this id exists already (a duplicate request).

        With ``endpoint``, the job takes a slot on it in the same transaction.
        """
        if endpoint is None:
            try:
                self._table.put_item(Item=to_dynamo(item), ConditionExpression="attribute_not_exists(job_id)")
            except ClientError as exc:
                if is_condition_failure(exc):
                    return False
                raise
            return True
        put = {
            "TableName": self.table_name,
            "Item": serialize_item(item),
            "ConditionExpression": "attribute_not_exists(job_id)",
        }
        return self._transact_with_endpoint({"Put": put}, endpoint, 1)

    def update(
        self,
        job_id: str,
        update: UpdateBuilder,
        *,
        statuses: Iterable[JobStatus],
        claim_token: str | None = None,
        endpoint: str | None = None,
        in_flight_delta: int = 0,
    ) -> bool:
        """Apply ``update`` if the job is in one of ``statuses`` (and holds ``claim_token``).

        False when the condition does not hold: another writer moved the job first.
        """
        conditions = [f"#status IN ({', '.join(update.value(s.value) for s in statuses)})"]
        update.names["#status"] = "status"
        if claim_token is not None:
            conditions.append(f"claim_token = {update.value(claim_token)}")
        condition = " AND ".join(conditions)
        if not (endpoint and in_flight_delta):
            return self.conditional_update(job_id, update, condition)
        return self._update_with_endpoint(job_id, update, condition, endpoint, in_flight_delta)

    def _update_with_endpoint(
        self, job_id: str, update: UpdateBuilder, condition: str, endpoint: str, delta: int
    ) -> bool:
        job_write = {"TableName": self.table_name, "Key": {"job_id": {"S": job_id}}} | update.low_level(condition)
        try:
            return self._transact_with_endpoint({"Update": job_write}, endpoint, delta)
        except _EndpointGone:
            # Giving back a slot of an endpoint that is gone: just move the job.
            return self.conditional_update(job_id, update, condition)

    def _transact_with_endpoint(self, job_write: dict[str, Any], endpoint: str, delta: int) -> bool:
        """The job write and the endpoint's counter change, all or nothing."""
        counter = UpdateBuilder().add("in_flight", delta)
        counter.names["#name"] = "name"
        endpoint_write = {
            "TableName": self.endpoints_table_name,
            "Key": {"name": {"S": endpoint}},
        } | counter.low_level("attribute_exists(#name)")
        try:
            self._aws.get("dynamodb").transact_write_items(TransactItems=[job_write, {"Update": endpoint_write}])
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "TransactionCanceledException":
                raise
            reasons = [r.get("Code", "None") for r in exc.response.get("CancellationReasons", [])]
            if reasons and reasons[0] == "ConditionalCheckFailed":
                return False
            if len(reasons) > 1 and reasons[1] == "ConditionalCheckFailed":
                if delta > 0:
                    raise EndpointNotFound(
                        f"endpoint {endpoint!r} is not registered (it may have been deleted)"
                    ) from exc
                raise _EndpointGone from exc
            raise
        return True

    def conditional_update(self, job_id: str, update: UpdateBuilder, condition: str) -> bool:
        """UpdateItem; False (not an error) when ``condition`` does not hold."""
        return self._update_if(Key={"job_id": job_id}, **update.request(condition))

    def add_progress(self, job_id: str, done_delta: int) -> dict[str, Any]:
        """Add to ``progress.bytes_done`` (parallel writers never lose an addition); the new progress."""
        update = UpdateBuilder().add("progress.bytes_done", done_delta)
        response = self._table.update_item(Key={"job_id": job_id}, ReturnValues="ALL_NEW", **update.request())
        return dict(from_dynamo(response["Attributes"]).get("progress") or {})

    def set_progress(self, job_id: str, progress: dict[str, Any]) -> None:
        update = UpdateBuilder().set("progress", progress)
        self._table.update_item(Key={"job_id": job_id}, **update.request())

    def take_progress_slot(self, job_id: str, now: float, interval: float) -> bool:
        """True for at most one caller per ``interval`` seconds: the one that announces progress."""
        update = UpdateBuilder().set("progress_announced_at", to_dynamo(now))
        path = update.name("progress_announced_at")
        condition = f"attribute_not_exists({path}) OR {path} <= {update.value(to_dynamo(now - interval))}"
        return self._update_if(Key={"job_id": job_id}, **update.request(condition))

    def recent(self, action: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        """Newest jobs first (of one action, or of every action)."""
        if action is not None:
            response = self._table.query(
                IndexName="by_action_time",
                KeyConditionExpression="#action = :action",
                ExpressionAttributeNames={"#action": "action"},
                ExpressionAttributeValues={":action": action},
                ScanIndexForward=False,
                Limit=limit,
            )
            return [from_dynamo(i) for i in response.get("Items", [])]
        items = list(self._scan())
        items.sort(key=lambda i: str(i.get("created_at", "")), reverse=True)
        return items[:limit]

    def _scan(self) -> Iterator[dict[str, Any]]:
        kwargs: dict[str, Any] = {}
        while True:
            page = self._table.scan(**kwargs)
            yield from (from_dynamo(i) for i in page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                return
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def open_past_deadline(self, now_iso: str, limit: int = 100) -> list[dict[str, Any]]:
        """Open jobs whose deadline has passed, oldest deadline first (via the sparse index)."""
        response = self._aws.get("dynamodb").query(
            TableName=self.table_name,
            IndexName="open_by_deadline",
            KeyConditionExpression="open_shard = :open AND deadline < :now",
            ExpressionAttributeValues={":open": {"S": OPEN_SHARD}, ":now": {"S": now_iso}},
            Limit=limit,
        )
        return [deserialize_item(i) for i in response.get("Items", [])]

    def open_jobs(self) -> list[dict[str, Any]]:
        """Every job not finished yet (the sparse index holds only those), all pages."""
        found: list[dict[str, Any]] = []
        request: dict[str, Any] = {
            "TableName": self.table_name,
            "IndexName": "open_by_deadline",
            "KeyConditionExpression": "open_shard = :open",
            "ExpressionAttributeValues": {":open": {"S": OPEN_SHARD}},
        }
        while True:
            response = self._aws.get("dynamodb").query(**request)
            found.extend(deserialize_item(i) for i in response.get("Items", []))
            if "LastEvaluatedKey" not in response:
                return found
            request["ExclusiveStartKey"] = response["LastEvaluatedKey"]
