"""Small helpers shared by the DynamoDB adapters: type conversion and conditional updates."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from sdpipe.adapters.clients import AwsClients, clients

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


class DynamoTable:
    """Base of the table adapters: the table's name and its lazily created boto3 Table."""

    def __init__(self, table_name: str, aws: AwsClients = clients) -> None:
        self.table_name = table_name
        self._aws = aws

    @property
    def aws(self) -> AwsClients:
        """The clients this table is read with (an outbox on the same table shares them)."""
        return self._aws

    @property
    def _table(self) -> Any:
        return self._aws.get_resource("dynamodb").Table(self.table_name)

    def _update_if(self, **request: Any) -> bool:
        """UpdateItem; False (not an error) when its ConditionExpression does not hold."""
        try:
            self._table.update_item(**request)
        except ClientError as exc:
            if is_condition_failure(exc):
                return False
            raise
        return True


def is_condition_failure(exc: ClientError) -> bool:
    code = exc.response.get("Error", {}).get("Code")
    return code in ("ConditionalCheckFailedException", "TransactionCanceledException")


def to_dynamo(value: Any) -> Any:
    """Python values as DynamoDB accepts them: floats as Decimal, None left out of maps."""
    if isinstance(value, float):
        return Decimal(str(value))
    if isinstance(value, dict):
        return {k: to_dynamo(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [to_dynamo(v) for v in value]
    return value


def from_dynamo(value: Any) -> Any:
    """DynamoDB values back as plain JSON-able Python: integral Decimals as int."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: from_dynamo(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_dynamo(v) for v in value]
    return value


def serialize(value: Any) -> dict[str, Any]:
    """One value in the low-level client's typed form (for transactions)."""
    return dict(_serializer.serialize(to_dynamo(value)))


def serialize_item(item: dict[str, Any]) -> dict[str, Any]:
    return {name: serialize(value) for name, value in to_dynamo(item).items()}


def deserialize_item(item: dict[str, Any]) -> dict[str, Any]:
    return {name: from_dynamo(_deserializer.deserialize(value)) for name, value in item.items()}


class UpdateBuilder:
    """Builds an UpdateExpression with placeholder names and values, so any attribute name works."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}
        self.values: dict[str, Any] = {}
        self._sets: list[str] = []
        self._removes: list[str] = []
        self._adds: list[str] = []

    def name(self, path: str) -> str:
        """``a.b`` as ``#n0.#n1``."""
        parts = []
        for part in path.split("."):
            placeholder = f"#n{len(self.names)}"
            self.names[placeholder] = part
            parts.append(placeholder)
        return ".".join(parts)

    def value(self, value: Any) -> str:
        placeholder = f":v{len(self.values)}"
        self.values[placeholder] = to_dynamo(value)
        return placeholder

    def set(self, path: str, value: Any, *, if_not_exists: bool = False) -> UpdateBuilder:
        target = self.name(path)
        source = self.value(value)
        self._sets.append(f"{target} = if_not_exists({target}, {source})" if if_not_exists else f"{target} = {source}")
        return self

    def append(self, path: str, values: list[Any]) -> UpdateBuilder:
        target = self.name(path)
        empty, added = self.value([]), self.value(values)
        self._sets.append(f"{target} = list_append(if_not_exists({target}, {empty}), {added})")
        return self

    def remove(self, path: str) -> UpdateBuilder:
        self._removes.append(self.name(path))
        return self

    def add(self, path: str, amount: int) -> UpdateBuilder:
        self._adds.append(f"{self.name(path)} {self.value(amount)}")
        return self

    def expression(self) -> str:
        clauses = []
        if self._sets:
            clauses.append("SET " + ", ".join(self._sets))
        if self._removes:
            clauses.append("REMOVE " + ", ".join(self._removes))
        if self._adds:
            clauses.append("ADD " + ", ".join(self._adds))
        return " ".join(clauses)

    def request(self, condition: str | None = None) -> dict[str, Any]:
        """Keyword arguments for ``Table.update_item`` (resource form, plain values)."""
        request: dict[str, Any] = {"UpdateExpression": self.expression()}
        if condition:
            request["ConditionExpression"] = condition
        if self.names:
            request["ExpressionAttributeNames"] = self.names
        if self.values:
            request["ExpressionAttributeValues"] = self.values
        return request

    def low_level(self, condition: str | None = None) -> dict[str, Any]:
        """The same for the low-level client (transactions): values typed."""
        request = self.request(condition)
        if "ExpressionAttributeValues" in request:
            request["ExpressionAttributeValues"] = {k: serialize(v) for k, v in self.values.items()}
        return request
