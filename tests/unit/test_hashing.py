import hashlib
import os

import pytest

from sdpipe.hashing import LEGACY_LENGTH, LEGACY_OFFSET, hash_stream


def chunked(data: bytes, size: int):
    return (data[i : i + size] for i in range(0, len(data), size))


@pytest.mark.parametrize("chunk", [1000, 65_536, 1 << 20, 3 << 20])
def test_hashes_match_a1111_definitions_at_any_chunking(chunk):
    data = os.urandom(LEGACY_OFFSET + LEGACY_LENGTH + 123_457)
    start = 9_000
    result = hash_stream(chunked(data, chunk), tensor_data_start=start)
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert result.short_hash == result.sha256[:10]
    assert result.legacy_hash == hashlib.sha256(data[LEGACY_OFFSET : LEGACY_OFFSET + LEGACY_LENGTH]).hexdigest()[:8]
    assert result.tensor_hash == hashlib.sha256(data[start:]).hexdigest()[:12]
    assert result.size == len(data)


def test_small_file_legacy_hash_is_of_nothing_like_a1111():
    result = hash_stream([b"tiny"], tensor_data_start=None)
    assert result.legacy_hash == hashlib.sha256(b"").hexdigest()[:8]
    assert result.tensor_hash is None


def test_errors_from_the_source_propagate():
    def broken():
        yield b"x" * 10
        raise ConnectionResetError("reset mid-stream")

    with pytest.raises(ConnectionResetError):
        hash_stream(broken(), tensor_data_start=0)
