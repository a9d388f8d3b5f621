"""The LoRA files in a training job's ``model.tar.gz``, read as a stream (never all in memory)."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterable, Iterator
from typing import IO, Any

# A file larger than this in a LoRA archive is not a LoRA.
MAX_LORA_BYTES = 4 * 1024 * 1024 * 1024


def lora_members(chunks: Iterable[bytes]) -> Iterator[tuple[str, IO[bytes]]]:
    """Each ``.safetensors`` file of a gzipped tar streamed from ``chunks``: its base name and a
    stream of its bytes, valid until the next item is asked for."""
    stream = io.BufferedReader(_ChunkReader(chunks))
    with tarfile.open(fileobj=stream, mode="r|gz") as archive:
        for member in archive:
            name = member.name.rsplit("/", 1)[-1]
            if not member.isfile() or not name.endswith(".safetensors") or member.size > MAX_LORA_BYTES:
                continue
            source = archive.extractfile(member)
            if source is not None:
                yield name, source


class _ChunkReader(io.RawIOBase):
    """A read-only stream over an iterator of chunks (for tarfile's streaming mode)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while not self._buffer:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._buffer = chunk
        count = min(len(view), len(self._buffer))
        view[:count] = self._buffer[:count]
        self._buffer = self._buffer[count:]
        return count
