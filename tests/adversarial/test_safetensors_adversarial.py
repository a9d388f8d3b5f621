"""The safetensors header validator under attack: a validated header or InvalidSafetensors, always;
nothing read past the cap; bounded time and memory."""

from __future__ import annotations

import contextlib
import json
import resource
import struct
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sdpipe.errors import InvalidSafetensors
from sdpipe.inspect.safetensors_header import DTYPE_BITS, parse_header

CAP = 1024 * 1024


def parse(data: bytes, cap: int = CAP):
    reads: list[tuple[int, int]] = []

    def read_range(start: int, length: int) -> bytes:
        reads.append((start, length))
        return data[start : start + length]

    try:
        return parse_header(read_range, len(data), cap)
    finally:
        assert all(start + length <= 8 + cap for start, length in reads), reads


def framed(header: bytes, data: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header)) + header + data


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "nests JSON too deeply"),
        (b'{"t": {"dtype": "F32", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 4]}}', "integer of 5000 digits"),
        (
            b'{"t": {"dtype": "F32", "shape": [' + b"18446744073709551615," * 5000 + b'1], "data_offsets": [0, 4]}}',
            "more elements than any file can hold",
        ),
        (b'{"t": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}}', "non-integer number"),
        (b'{"t": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 4]}}', "non-integer number"),
        (b'{"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "t": {}}', "names 't' twice"),
        (b'{"' + b"n" * 100_000 + b'": 1}', "is not described by an object"),
    ],
)
def test_hostile_headers_are_rejected_quickly_with_a_short_message(header, expected):
    started = time.monotonic()
    with pytest.raises(InvalidSafetensors, match=expected) as raised:
        parse(framed(header, b"\0" * 4))
    assert time.monotonic() - started < 2
    assert len(raised.value.message) < 600


def test_a_header_at_the_cap_costs_bounded_memory():
    cap = 8 * 1024 * 1024
    header = b"[" + b"[]," * (cap // 3 - 2) + b"[]]"
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(InvalidSafetensors):
        parse(framed(header), cap=cap)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 40 * cap / 2**20


def test_a_header_over_the_cap_is_refused_before_it_is_read():
    with pytest.raises(InvalidSafetensors, match="exceeds the 1024-byte header cap"):
        parse(framed(b"{" + b" " * 4000 + b"}"), cap=1024)


_dtypes = st.sampled_from(sorted(name for name, bits in DTYPE_BITS.items() if bits % 8 == 0))
_tensors = st.dictionaries(
    st.text(min_size=1, max_size=30).filter(lambda name: name != "__metadata__"),
    st.tuples(_dtypes, st.lists(st.integers(0, 6), max_size=4)),
    max_size=8,
)


@settings(max_examples=200, deadline=None)
@given(tensors=_tensors, metadata=st.dictionaries(st.text(max_size=10), st.text(max_size=30), max_size=4))
def test_every_well_formed_file_is_parsed_back_exactly(tensors, metadata):
    document: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        size = DTYPE_BITS[dtype] // 8
        for dimension in shape:
            size *= dimension
        document[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    header = parse(framed(json.dumps(document).encode(), b"\0" * offset))
    assert header.shapes() == {name: tuple(shape) for name, (_dtype, shape) in tensors.items()}
    assert header.metadata == metadata


@settings(max_examples=500, deadline=None)
@given(body=st.binary(max_size=3000), declared=st.one_of(st.none(), st.integers(0, 2**64 - 1)))
def test_arbitrary_bytes_give_a_header_or_invalid_safetensors(body, declared):
    data = (struct.pack("<Q", len(body) if declared is None else declared) + body) if declared != 0 else body
    with contextlib.suppress(InvalidSafetensors):
        parse(data)


_json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=15,
)


@settings(max_examples=300, deadline=None)
@given(document=st.dictionaries(st.text(max_size=8), _json_values, max_size=5), tail=st.binary(max_size=64))
def test_arbitrary_json_documents_give_a_header_or_invalid_safetensors(document, tail):
    with contextlib.suppress(InvalidSafetensors):
        parse(framed(json.dumps(document).encode(), tail))
