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
"""

from __future__ import annotations

import functools
import threading
from typing import Any

_WRITES = ("put_item", "update_item", "delete_item", "transact_write_items", "batch_write_item")
_HANDLERS = ("update_item", "get_item", "query", "scan", "batch_get_item", "transact_get_items")
_LOCK = threading.RLock()


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
