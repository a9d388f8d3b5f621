"""Validate a safetensors header before anything trusts it.

The format: 8 bytes little-endian header length N, N bytes of JSON, then the tensor data. Every
tensor's ``data_offsets`` are relative to the data section; together they must tile it exactly
(sorted, contiguous, no gaps or overlaps, ending at the end of the file), and each byte length
must equal ``prod(shape) * itemsize(dtype)``.

The header is attacker-chosen, so the parse is bounded before anything trusts it: the length
against a cap (16 MiB by default: real headers, Kohya metadata included, are well under 2 MiB;
``json`` costs up to ~30x the text in memory), integers against 20 digits (u64) as they are
parsed, no floats or NaN, no duplicate keys (other parsers keep a different one), nesting that
ends in ``InvalidSafetensors`` rather than ``RecursionError``, shape products that stop as soon
as they pass the file's size, and messages that quote at most a few hundred characters of
anything. Whatever the bytes, the result is a validated header or ``InvalidSafetensors``.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from sdpipe.errors import InvalidSafetensors

# Item sizes in bits of the dtypes the safetensors format defines (sub-byte ones pack).
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "I64": 64,
    "U64": 64,
    "F64": 64,
}
DEFAULT_HEADER_CAP = 16 * 1024 * 1024
_MAX_INT_DIGITS = 20  # u64
_MAX_ELEMENTS = 1 << 64
_QUOTE = 200

FIRST_READ_BYTES = 1024 * 1024

# Magic numbers of files people rename by mistake, to say what the file really is.
_KNOWN_MAGIC: list[tuple[bytes, str]] = [
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"RIFF", "a RIFF (WebP/WAV) file"),
    (b"PK\x03\x04", "a zip archive (PyTorch .ckpt/.pt files are zips: use that extension)"),
    (b"\x80", "a pickle (use the .ckpt/.pt/.bin extension)"),
    (b"%PDF", "a PDF document"),
    (b"<", "an HTML or XML document"),
]


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    header_length: int
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def data_start(self) -> int:
        """Byte offset in the file where tensor data starts (the LoRA hash covers from here)."""
        return 8 + self.header_length

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: info.shape for name, info in self.tensors.items()}


def _describe_magic(prefix: bytes) -> str | None:
    for magic, what in _KNOWN_MAGIC:
        if prefix.startswith(magic):
            return what
    return None


def read_header_length(prefix: bytes, file_size: int, cap: int) -> int:
    """Check the 8-byte length prefix against the file size and the cap; return N."""
    if file_size == 0:
        raise InvalidSafetensors("the file is empty (0 bytes)")
    if len(prefix) < 8 or file_size < 8:
        raise InvalidSafetensors(f"the file is {file_size} bytes, too short for a safetensors header")
    length: int = struct.unpack("<Q", prefix[:8])[0]
    what = _describe_magic(prefix)
    if length + 8 > file_size:
        hint = f"; the file looks like {what}" if what else ""
        raise InvalidSafetensors(f"header length {length} is larger than the file ({file_size} bytes){hint}")
    if length > cap:
        raise InvalidSafetensors(f"header length {length} exceeds the {cap}-byte header cap")
    if length < 2:
        raise InvalidSafetensors(f"header length {length} is too small to hold a JSON object")
    return length


def parse_header(read_range: Callable[[int, int], bytes], file_size: int, cap: int) -> SafetensorsHeader:
    """Read and validate the header through ``read_range(start, length)`` (ranged reads)."""
    # One ranged read usually holds the whole header (checkpoints ~200 KiB, LoRAs with Kohya
    # metadata a few hundred KiB); read the rest only when it does not.
    prefix = read_range(0, min(file_size, FIRST_READ_BYTES, 8 + cap))
    length = read_header_length(prefix, file_size, cap)
    raw = prefix[8 : 8 + length]
    if len(raw) < length:
        raw += read_range(len(prefix), 8 + length - len(prefix))
    if len(raw) != length:
        raise InvalidSafetensors(f"the file ended inside the {length}-byte header")
    return validate_header_bytes(raw, file_size)


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:
        raise InvalidSafetensors(f"the header holds an integer of {len(text)} digits (at most {_MAX_INT_DIGITS})")
    return int(text)


def _no_float(text: str) -> float:
    raise InvalidSafetensors(f"the header holds a non-integer number ({_quote(text)}); shapes and offsets are integers")


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    document: dict[str, object] = {}
    for key, value in pairs:
        if key in document:
            raise InvalidSafetensors(f"the header names {_quote(key)} twice (parsers disagree on which one counts)")
        document[key] = value
    return document


def validate_header_bytes(raw: bytes, file_size: int) -> SafetensorsHeader:
    length = len(raw)
    try:
        document = json.loads(
            raw.decode("utf-8"),
            parse_int=_bounded_int,
            parse_float=_no_float,
            parse_constant=_no_float,
            object_pairs_hook=_unique_keys,
        )
    except RecursionError:
        raise InvalidSafetensors("the header nests JSON too deeply (a safetensors header is three levels)") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidSafetensors(f"the header is not valid JSON: {_quote(exc)}") from None
    if not isinstance(document, dict):
        raise InvalidSafetensors("the header is JSON but not an object")

    metadata: dict[str, str] = {}
    raw_metadata = document.pop("__metadata__", None)
    if raw_metadata is not None:
        if not isinstance(raw_metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in raw_metadata.items()
        ):
            raise InvalidSafetensors("__metadata__ must map strings to strings")
        metadata = raw_metadata

    data_length = file_size - 8 - length
    tensors: dict[str, TensorInfo] = {}
    for name, entry in document.items():
        tensors[name] = _validate_tensor(name, entry, data_length)

    ordered = sorted(tensors.items(), key=lambda item: (item[1].begin, item[1].end))
    position = 0
    for name, info in ordered:
        if info.begin != position:
            problem = "overlaps the previous tensor" if info.begin < position else "leaves a gap"
            raise InvalidSafetensors(
                f"tensor {_quote(name)} data_offsets [{info.begin}, {info.end}] {problem} "
                f"(expected to start at {position})"
            )
        position = info.end
    if position > data_length:
        raise InvalidSafetensors(
            f"tensor data ends at byte {position} of the data section but the file has only "
            f"{data_length} bytes of data: the file is truncated or an offset is out of range"
        )
    if position < data_length:
        raise InvalidSafetensors(
            f"{data_length - position} bytes after the last tensor are not described by the header"
        )
    return SafetensorsHeader(header_length=length, tensors=tensors, metadata=metadata)


def _validate_tensor(name: str, entry: object, data_length: int) -> TensorInfo:
    if not isinstance(entry, dict):
        raise InvalidSafetensors(f"tensor {_quote(name)} is not described by an object")
    dtype = entry.get("dtype")
    shape = entry.get("shape")
    offsets = entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise InvalidSafetensors(f"tensor {_quote(name)} has unknown dtype {_quote(dtype)}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise InvalidSafetensors(f"tensor {_quote(name)} has an invalid shape {_quote(shape)}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise InvalidSafetensors(f"tensor {_quote(name)} has invalid data_offsets {_quote(offsets)}")
    begin, end = offsets
    # Multiply with an early stop: a long shape of large dimensions would otherwise build a
    # huge integer (quadratic in its digits) before any comparison.
    elements = 0 if 0 in shape else 1
    for dimension in shape if elements else ():
        elements *= dimension
        if elements > _MAX_ELEMENTS:
            raise InvalidSafetensors(
                f"tensor {_quote(name)} of shape {_quote(shape)} has more elements than any file can hold "
                f"(the data section is {data_length} bytes)"
            )
    bits = elements * DTYPE_BITS[dtype]
    if bits % 8:
        raise InvalidSafetensors(f"tensor {_quote(name)} of dtype {dtype} does not fill whole bytes")
    expected = bits // 8
    if end - begin != expected:
        raise InvalidSafetensors(
            f"tensor {_quote(name)} of shape {_quote(shape)} and dtype {dtype} needs {expected} bytes "
            f"but its data_offsets span {end - begin}"
        )
    return TensorInfo(dtype=dtype, shape=tuple(shape), begin=begin, end=end)


def _quote(value: object) -> str:
    """``repr`` of anything from the header, cut short (names and shapes can be megabytes)."""
    if isinstance(value, list) and len(value) > 16:
        return f"{_quote(value[:16])[:-1]}, ... ({len(value)} items)]"
    try:
        text = repr(value) if not isinstance(value, BaseException) else str(value)
    except RecursionError:
        return "(a deeply nested value)"
    return text if len(text) <= _QUOTE else text[:_QUOTE] + "..."
