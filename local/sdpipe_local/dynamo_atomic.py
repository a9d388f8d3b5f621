"""DynamoDB's conditional writes are atomic; moto's are not when two threads write at once.

moto evaluates a ConditionExpression and then applies the update with no lock between, so two
concurrent conditional writes on one item can both succeed: the local stack (a threaded server)
and in-process tests would then accept races AWS refuses (two sweepers both taking an event's
lease and publishing it twice). Every write of moto's DynamoDB backend runs under one lock here,
which is stricter than AWS needs (it serialises all items, not each) and as strict as it promises.
moto's UpdateItem handler also deep-copies the live item (for ReturnValues) before it calls the
backend, so a concurrent write could change the item mid-copy ("dictionary changed size during
iteration", a 500 AWS never gives): the handler runs under the same lock. The read handlers
(GetItem, Query, Scan, BatchGetItem, TransactGetItems) serialise the live items into their
answer the same way, so a write landing mid-read broke them alike (seen in CI: a GetItem 500
during a fetch): they run under the lock too, which gives each read one consistent item.

moto's TransactWriteItems also deep-copies every table it touches before it starts, to roll back
on a failure: each transaction cost time in proportion to the whole table (the jobs table of a
long-running local stack: tens of milliseconds and growing, with every other DynamoDB call
waiting on the lock). Here it copies only the items the transaction names (at most 100), and a
failed transaction puts those back: the same all-or-nothing, in time bounded by its own size. A
cancelled transaction's stream records are not withdrawn (the stack's tables have no streams).
"""

from __future__ import annotations

import copy
import functools
import threading
from typing import Any

_WRITES = ("put_item", "update_item", "delete_item", "transact_write_items", "batch_write_item")
_HANDLERS = ("update_item", "get_item", "query", "scan", "batch_get_item", "transact_get_items")
_LOCK = threading.RLock()
_ROLLING_BACK_BY_ITEM = threading.local()  # set while a transaction keeps its own item copies


def make_dynamodb_writes_atomic() -> None:
    """Patch moto's DynamoDB backend writes and its handlers that read live items (once; safe to
    call again)."""
    from moto.dynamodb.models import DynamoDBBackend
    from moto.dynamodb.responses import DynamoHandler

    patched = [*((DynamoDBBackend, name) for name in _WRITES), *((DynamoHandler, name) for name in _HANDLERS)]
    for owner, name in patched:
        original = getattr(owner, name)
        if getattr(original, "_sdpipe_atomic", False):
            continue

        @functools.wraps(original)
        def atomic(self: Any, *args: Any, __original: Any = original, **kwargs: Any) -> Any:
            with _LOCK:
                return __original(self, *args, **kwargs)

        atomic._sdpipe_atomic = True  # type: ignore[attr-defined]
        setattr(owner, name, atomic)

    _roll_back_transactions_by_item(DynamoDBBackend)


def _roll_back_transactions_by_item(backend_class: Any) -> None:
    from moto.dynamodb.models.dynamo_type import DynamoType
    from moto.dynamodb.models.table import Table

    original = backend_class.transact_write_items
    if getattr(original, "_sdpipe_item_rollback", False):
        return

    def copy_table(table: Any, memo: dict[int, Any]) -> Any:
        if getattr(_ROLLING_BACK_BY_ITEM, "active", False):
            return table  # moto's whole-table backup: the transaction keeps item copies instead
        return copy._reconstruct(table, memo, *table.__reduce_ex__(4))  # type: ignore[attr-defined]

    Table.__deepcopy__ = copy_table  # type: ignore[attr-defined]

    def slot(table: Any, operation: dict[str, Any]) -> tuple[Any, Any] | None:
        """The (hash, range) of the item an operation writes; None when it names none (it fails)."""
        key = operation.get("Item") if "Item" in operation else operation.get("Key")
        try:
            hash_value = DynamoType(key[table.hash_key_attr])  # type: ignore[index]
            range_value = DynamoType(key[table.range_key_attr]) if table.has_range_key else None  # type: ignore[index]
        except (KeyError, TypeError):
            return None
        return hash_value, range_value

    def restore(table: Any, hash_value: Any, range_value: Any, item: Any) -> None:
        if range_value is None:
            if item is None:
                table.items.pop(hash_value, None)
            else:
                table.items[hash_value] = item
        elif item is None:
            table.items.get(hash_value, {}).pop(range_value, None)
        else:
            table.items[hash_value][range_value] = item

    @functools.wraps(original)
    def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
        with _LOCK:
            saved = []
            for entry in transact_items[:100]:
                operation: Any = next(iter(entry.values()), {}) if isinstance(entry, dict) else {}
                table = self.tables.get(operation.get("TableName")) if isinstance(operation, dict) else None
                position = slot(table, operation) if table is not None else None
                if table is not None and position is not None:
                    saved.append((table, *position, copy.deepcopy(table.get_item(*position))))
            _ROLLING_BACK_BY_ITEM.active = True
            try:
                original(self, transact_items)
            except BaseException:
                for table, hash_value, range_value, item in reversed(saved):
                    restore(table, hash_value, range_value, item)
                raise
            finally:
                _ROLLING_BACK_BY_ITEM.active = False

    transact_write_items._sdpipe_item_rollback = True  # type: ignore[attr-defined]
    transact_write_items._sdpipe_atomic = True  # type: ignore[attr-defined]
    backend_class.transact_write_items = transact_write_items
