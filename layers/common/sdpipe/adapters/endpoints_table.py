"""The Endpoints table: which endpoints exist, their status and the jobs in flight on each.

A write that changes an endpoint's status also marks it as due to be announced
(``pending_announcement``, with the outbox's due-index attributes): the writer then publishes
the record as it is (``endpoint.status``) and clears the mark; if it dies first, the sweeper
publishes it once the mark's lease has run out (``logic.endpoint_announcements``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sdpipe.adapters.dynamo import DynamoTable, UpdateBuilder, from_dynamo, to_dynamo
from sdpipe.adapters.outbox import DUE_ATTRIBUTE, DUE_SHARD, DUE_SHARD_ATTRIBUTE
from sdpipe.contracts.endpoints import EndpointRecord

ANNOUNCEMENT = "pending_announcement"

IN_SERVICE = "IN_SERVICE"


def utc_iso() -> str:
    return datetime.now(UTC).isoformat()


class EndpointsTable(DynamoTable):
    def get(self, name: str) -> EndpointRecord | None:
        item = self._table.get_item(Key={"name": name}, ConsistentRead=True).get("Item")
        return EndpointRecord.model_validate(from_dynamo(item)) if item else None

    def in_service(self) -> list[EndpointRecord]:
        response = self._table.query(
            IndexName="by_status",
            KeyConditionExpression="#status = :status",
            ExpressionAttributeNames={"#status": "status"},
            ExpressionAttributeValues={":status": IN_SERVICE},
        )
        return [EndpointRecord.model_validate(from_dynamo(i)) for i in response.get("Items", [])]

    def all(self) -> list[EndpointRecord]:
        return [EndpointRecord.model_validate(from_dynamo(i)) for i in self._table.scan().get("Items", [])]

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
        announcement: dict[str, Any] | None = None,
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
        _mark(update, announcement)
        pending, current = update.name("pending_job"), update.name("status")
        allowed = ", ".join(update.value(s) for s in from_statuses)
        free = f"({current} IN ({allowed}) AND attribute_not_exists({pending}))"
        condition = f"{free} OR {pending} = {update.value(job_id)}"
        if may_create:
            condition = f"attribute_not_exists({update.name('name')}) OR {condition}"
        return self._update_if(Key={"name": name}, **update.request(condition))

    def finish_workflow(
        self,
        name: str,
        job_id: str,
        status: str,
        fields: dict[str, Any],
        *,
        remove: tuple[str, ...] = (),
        announcement: dict[str, Any] | None = None,
    ) -> bool:
        """Record where ``job_id``'s workflow left the endpoint; False when it no longer holds it."""
        update = UpdateBuilder().set("status", status).set("last_job", job_id).set("updated_at", utc_iso())
        for key, value in fields.items():
            update.set(key, value)
        for key in remove:
            update.remove(key)
        update.remove("pending_job")
        _mark(update, announcement)
        return self._update_if(
            Key={"name": name}, **update.request(f"{update.name('pending_job')} = {update.value(job_id)}")
        )

    def set_status(
        self,
        name: str,
        status: str,
        fields: dict[str, Any],
        *,
        unless_pending: bool = True,
        announcement: dict[str, Any] | None = None,
    ) -> bool:
        """A status seen from outside sdpipe (SageMaker's own events); never over a running workflow."""
        update = UpdateBuilder().set("status", status).set("updated_at", utc_iso())
        for key, value in fields.items():
            update.set(key, value)
        _mark(update, announcement)
        condition = f"attribute_exists({update.name('name')})"
        if unless_pending:
            condition += f" AND attribute_not_exists({update.name('pending_job')})"
        return self._update_if(Key={"name": name}, **update.request(condition))

    def lease_announcement(self, name: str, event_id: str, until: int, now: int) -> bool:
        """Take over announcing a mark whose writer's lease ran out (one taker at a time)."""
        update = UpdateBuilder().set(f"{ANNOUNCEMENT}.lease_until", until)
        mark = update.name(ANNOUNCEMENT)
        condition = (
            f"{mark}.{update.name('event_id')} = {update.value(event_id)} "
            f"AND {mark}.{update.name('lease_until')} < {update.value(now)}"
        )
        return self._update_if(Key={"name": name}, **update.request(condition))

    def clear_announcement(self, name: str, event_id: str) -> None:
        """The record was announced: drop its mark (unless a newer write marked it again)."""
        update = UpdateBuilder().remove(ANNOUNCEMENT).remove(DUE_SHARD_ATTRIBUTE).remove(DUE_ATTRIBUTE)
        condition = f"{update.name(ANNOUNCEMENT)}.{update.name('event_id')} = {update.value(event_id)}"
        self._update_if(Key={"name": name}, **update.request(condition))


def _mark(update: UpdateBuilder, announcement: dict[str, Any] | None) -> None:
    if announcement is not None:
        update.set(ANNOUNCEMENT, announcement)
        update.set(DUE_SHARD_ATTRIBUTE, DUE_SHARD).set(DUE_ATTRIBUTE, int(announcement["lease_until"]))
