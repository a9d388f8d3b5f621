"""The hashes AUTOMATIC1111 shows, computed in one streaming pass with bounded memory.

- ``sha256``: the whole file; A1111's short hash is its first 10 hex digits.
- legacy hash: sha256 of the 64 KiB at offset 1 MiB, first 8 hex (A1111's old ``model_hash``).
- tensor hash: for safetensors, sha256 from the end of the header to the end of the file, first
  12 hex (the "addnet" hash A1111 shows for LoRAs).

The two full-length digests run in their own threads (hashlib releases the GIL on large
updates), so hashing twice costs little more wall time than hashing once.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Iterable
from dataclasses import dataclass

LEGACY_OFFSET = 0x100000
LEGACY_LENGTH = 0x10000
_QUEUE_DEPTH = 3


@dataclass(frozen=True)
class ModelHashes:
    sha256: str
    legacy_hash: str
    tensor_hash: str | None
    size: int

    @property
    def short_hash(self) -> str:
        return self.sha256[:10]


class _DigestThread(threading.Thread):
    """Feeds chunks to one sha256, skipping the first ``skip`` bytes of the stream."""

    def __init__(self, skip: int = 0) -> None:
        super().__init__(daemon=True)
        self.digest = hashlib.sha256()
        self.chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=_QUEUE_DEPTH)
        self._skip = skip
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while (chunk := self.chunks.get()) is not None:
                if self._skip:
                    if len(chunk) <= self._skip:
                        self._skip -= len(chunk)
                        continue
                    chunk = chunk[self._skip :]
                    self._skip = 0
                self.digest.update(chunk)
        except BaseException as exc:  # surfaced by the caller after join()
            self.error = exc


def hash_stream(chunks: Iterable[bytes], tensor_data_start: int | None = None) -> ModelHashes:
    """Hash a byte stream; ``tensor_data_start`` (safetensors only) enables the tensor hash."""
    workers = [_DigestThread()]
    if tensor_data_start is not None:
        workers.append(_DigestThread(skip=tensor_data_start))
    for worker in workers:
        worker.start()
    legacy = bytearray()
    position = 0
    try:
        for chunk in chunks:
            if not chunk:
                continue
            end = position + len(chunk)
            if end > LEGACY_OFFSET and position < LEGACY_OFFSET + LEGACY_LENGTH:
                lo = max(LEGACY_OFFSET - position, 0)
                hi = min(LEGACY_OFFSET + LEGACY_LENGTH - position, len(chunk))
                legacy += chunk[lo:hi]
            position = end
            for worker in workers:
                worker.chunks.put(chunk)
    finally:
        for worker in workers:
            worker.chunks.put(None)
        for worker in workers:
            worker.join()
    for worker in workers:
        if worker.error is not None:
            raise worker.error
    return ModelHashes(
        sha256=workers[0].digest.hexdigest(),
        legacy_hash=hashlib.sha256(bytes(legacy)).hexdigest()[:8],
        tensor_hash=workers[1].digest.hexdigest()[:12] if len(workers) > 1 else None,
        size=position,
    )
