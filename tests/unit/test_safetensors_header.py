import json
import struct

import pytest

from sdpipe.errors import InvalidSafetensors
from sdpipe.inspect.safetensors_header import parse_header
from tests.helpers import raw_safetensors, safetensors_bytes

CAP = 1024 * 1024


def parse(data: bytes, cap: int = CAP):
    return parse_header(lambda start, length: data[start : start + length], len(data), cap)


def test_valid_header_is_parsed_with_metadata_and_shapes():
    data = safetensors_bytes({"a": ("F16", (2, 3)), "b": ("F32", (4,))}, metadata={"ss_network_dim": "4"})
    header = parse(data)
    assert header.shapes() == {"a": (2, 3), "b": (4,)}
    assert header.metadata == {"ss_network_dim": "4"}
    assert header.data_start == 8 + header.header_length


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", "empty"),
        (b"\x01\x02", "too short"),
        (struct.pack("<Q", 10_000) + b"{}", "larger than the file"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "looks like a PNG image"),
        (raw_safetensors(b"not json at all!"), "not valid JSON"),
        (raw_safetensors([1, 2]), "not an object"),
        (
            raw_safetensors({"t": {"dtype": "F17", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4),
            "unknown dtype 'F17'",
        ),
        (raw_safetensors({"t": {"dtype": "F32", "shape": [3], "data_offsets": [0, 4]}}, b"\0" * 4), "needs 12 bytes"),
        (raw_safetensors({"t": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4), "invalid shape"),
        (
            raw_safetensors({"t": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, b"\0" * 4),
            "invalid data_offsets",
        ),
        (
            raw_safetensors(
                {
                    "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                    "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
                },
                b"\0" * 12,
            ),
            "overlaps",
        ),
        (
            raw_safetensors(
                {
                    "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                    "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]},
                },
                b"\0" * 12,
            ),
            "leaves a gap",
        ),
        (raw_safetensors({"t": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8), "truncated"),
        (raw_safetensors({"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 9), "not described"),
        (raw_safetensors({"__metadata__": {"k": 1}}), "__metadata__"),
    ],
)
def test_bad_headers_are_rejected_with_the_problem_named(data, expected):
    with pytest.raises(InvalidSafetensors, match=expected):
        parse(data)


def test_header_over_the_cap_is_rejected_before_it_is_read():
    reads = []
    data = raw_safetensors({"t": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}, "pad": "x" * 2000}, b"\0")

    def read(start, length):
        reads.append((start, length))
        return data[start : start + length]

    with pytest.raises(InvalidSafetensors, match="exceeds the 100-byte header cap"):
        parse_header(read, len(data), cap=100)
    assert len(reads) == 1  # rejected on the first ranged read, the rest never requested


def test_header_larger_than_the_first_read_is_completed_with_a_second_read():
    big = {f"lora_unet_block_{i}.alpha": ("F16", ()) for i in range(30_000)}
    data = safetensors_bytes(big)
    reads = []

    def read(start, length):
        reads.append((start, length))
        return data[start : start + length]

    header = parse_header(read, len(data), cap=64 * 1024 * 1024)
    assert len(header.tensors) == 30_000
    assert len(reads) == 2 and reads[1][0] == 1024 * 1024


def test_truncated_real_file_is_rejected():
    data = safetensors_bytes({"w": ("F32", (256,))})
    with pytest.raises(InvalidSafetensors, match="truncated"):
        parse(data[:-10])


def test_json_header_is_never_evaluated_beyond_json():
    payload = json.dumps(
        {"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "__metadata__": {"a": "b"}}
    ).encode()
    header = parse(struct.pack("<Q", len(payload)) + payload + b"\0" * 4)
    assert header.metadata == {"a": "b"}
