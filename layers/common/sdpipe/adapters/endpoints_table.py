"""The Endpoints table: which endpoints exist, their status and the jobs in flight on each."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sdpipe.adapters.dynamo import DynamoTable, UpdateBuilder, from_dynamo, to_dynamo

IN_SERVICE = "IN_SERVICE"


def utc_iso() -> str:
    return datetime.now(UTC).isoformat()


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

    def begin_workflow(
        self,
        name: str,
        job_id: str,
        status: str,
        fields: dict[str, Any],
        *,
        from_statuses: tuple[str, ...],
        may_create: bool = False,
    ) -> bool:
        """Mark the endpoint as being worked on by ``job_id`` (its workflow's status and settings).

        Only from ``from_statuses`` with no other workflow in flight (or, with ``may_create``,
        when there is no record yet); True again for the job that already holds it, so a
        duplicate delivery carries on.
        """
        update = UpdateBuilder().set("status", status).set("pending_job", job_id).set("updated_at", utc_iso())
        for key, value in fields.items():
            update.set(key, value)
        update.set("in_flight", 0, if_not_exists=True).set("created_at", utc_iso(), if_not_exists=True)
        update.remove("failure_reason")
        pending, current = update.name("pending_job"), update.name("status")
        allowed = ", ".join(update.value(s) for s in from_statuses)
        free = f"({current} IN ({allowed}) AND attribute_not_exists({pending}))"
        condition = f"{free} OR {pending} = {update.value(job_id)}"
        if may_create:
            condition = f"attribute_not_exists({update.name('name')}) OR {condition}"
        return self._update_if(Key={"name": name}, **update.request(condition))

    def finish_workflow(
        self, name: str, job_id: str, status: str, fields: dict[str, Any], remove: tuple[str, ...] = ()
    ) -> bool:
        """Record where ``job_id``'s workflow left the endpoint; False when it no longer holds it."""
        update = UpdateBuilder().set("status", status).set("last_job", job_id).set("updated_at", utc_iso())
        for key, value in fields.items():
            update.set(key, value)
        for key in remove:
            update.remove(key)
        update.remove("pending_job")
        return self._update_if(
            Key={"name": name}, **update.request(f"{update.name('pending_job')} = {update.value(job_id)}")
        )

    def set_status(self, name: str, status: str, fields: dict[str, Any], *, unless_pending: bool = True) -> bool:
        """A status seen from outside sdpipe (SageMaker's own events); never over a running workflow."""
        update = UpdateBuilder().set("status", status).set("updated_at", utc_iso())
        for key, value in fields.items():
            update.set(key, value)
        condition = f"attribute_exists({update.name('name')})"
        if unless_pending:
            condition += f" AND attribute_not_exists({update.name('pending_job')})"
        return self._update_if(Key={"name": name}, **update.request(condition))
