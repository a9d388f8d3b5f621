"""Inspect pickle-format model files (.ckpt .pt .pth .bin) without executing them.

A pickle is a program for a stack machine; loading one runs it, and a ``GLOBAL`` opcode can
import any callable (``os.system``). Here the opcode stream is only *walked* with
``pickletools.genops`` while a symbolic stack tracks which module and name each ``GLOBAL``,
``STACK_GLOBAL`` and ``INST`` would import. Anything outside the allowlist PyTorch's
weights-only loader needs to rebuild tensors rejects the file, naming the global.

Both PyTorch containers are handled: the zip format (``<archive>/data.pkl`` and friends, read
through the zip central directory with ranged reads) and the legacy format (a few pickles in a row
followed by raw storage bytes).
"""

from __future__ import annotations

import _compat_pickle
import io
import pickletools
import zipfile
from dataclasses import dataclass, field
from typing import IO

from sdpipe.errors import InvalidPickle, UnsafePickle

_STORAGE_TYPES = [
    "Float", "Half", "BFloat16", "Double", "Long", "Int", "Short", "Char", "Byte", "Bool",
    "ComplexFloat", "ComplexDouble", "QUInt8", "QInt8", "QInt32", "QUInt4x2", "QUInt2x4",
]  # fmt: skip
_DTYPES = [
    "float32", "float", "float16", "half", "bfloat16", "float64", "double", "int64", "long",
    "int32", "int", "int16", "short", "int8", "uint8", "bool", "complex64", "complex128",
    "float8_e4m3fn", "float8_e5m2",
]  # fmt: skip

# What torch.load(weights_only=True) needs to rebuild tensors and state dicts; nothing that
# can run code. Kept as data (no torch import) because the control plane never imports torch.
TENSOR_REBUILD_ALLOWLIST: frozenset[str] = frozenset(
    [
        "collections.OrderedDict",
        "torch._utils._rebuild_tensor",
        "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_tensor_v3",
        "torch._utils._rebuild_parameter",
        "torch._utils._rebuild_parameter_with_state",
        "torch._utils._rebuild_sparse_tensor",
        "torch._utils._rebuild_meta_tensor_no_storage",
        "torch._utils._rebuild_qtensor",
        "torch._utils._rebuild_nested_tensor",
        "torch._tensor._rebuild_from_type_v2",
        "torch.serialization._get_layout",
        "torch.nn.parameter.Parameter",
        "torch.Size",
        "torch.Tensor",
        "torch.storage.UntypedStorage",
        "torch.UntypedStorage",
        "torch.storage._load_from_bytes",
        "torch.strided",
        "torch.sparse_coo",
        "torch.contiguous_format",
        "torch.channels_last",
        "torch.preserve_format",
        "_codecs.encode",
        *(f"torch.{kind}Storage" for kind in _STORAGE_TYPES),
        *(f"torch.{name}" for name in _DTYPES),
    ]
)

_STRING_OPS = frozenset(
    ["SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING",
     "SHORT_BINSTRING"]
)  # fmt: skip
_MEMO_STORE_OPS = frozenset(["PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"])
_MEMO_LOAD_OPS = frozenset(["GET", "BINGET", "LONG_BINGET"])
# The legacy torch format starts with this magic number pickled as a LONG1.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PICKLE_COUNT = 5  # magic, protocol, sys_info, the object, storage keys
ZIP_MAGIC = b"PK\x03\x04"


class _Unknown:
    """A stack value the scanner does not track (anything but strings and globals)."""


_UNKNOWN = _Unknown()


@dataclass
class PickleScan:
    """What walking the opcodes found: the globals imported and the strings seen."""

    globals: set[str] = field(default_factory=set)
    strings: set[str] = field(default_factory=set)
    pickles: int = 0

    def merge(self, other: PickleScan) -> None:
        self.globals |= other.globals
        self.strings |= other.strings
        self.pickles += other.pickles


class _CappedReader(io.RawIOBase):
    """Wrap a binary stream so no more than ``cap`` bytes can be read through it."""

    def __init__(self, stream: IO[bytes], cap: int) -> None:
        self._stream = stream
        self._remaining = cap
        self.cap = cap

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.cap - self._remaining

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = self._remaining + 1
        if size > self._remaining:
            data = self._stream.read(self._remaining + 1)
            if len(data) > self._remaining:
                raise InvalidPickle(f"the pickle stream is larger than the {self.cap}-byte scan cap")
            self._remaining -= len(data)
            return data
        data = self._stream.read(size)
        self._remaining -= len(data)
        return data

    def readline(self, size: int | None = -1) -> bytes:
        out = bytearray()
        while True:
            ch = self.read(1)
            if not ch:
                break
            out += ch
            if ch == b"\n":
                break
        return bytes(out)


def scan_one_pickle(stream: IO[bytes]) -> tuple[PickleScan, object]:
    """Walk one pickle up to its STOP; return what it imports and its top value if trivial."""
    scan = PickleScan(pickles=1)
    stack: list[object] = []
    marks: list[int] = []
    memo: dict[int, object] = {}
    last_value: object = _UNKNOWN
    try:
        for opcode, arg, _pos in pickletools.genops(stream):
            name = opcode.name
            if name in ("GLOBAL", "INST"):
                module, _, qualname = str(arg).partition(" ")
                _check_global(module, qualname, scan)
            elif name == "STACK_GLOBAL":
                if len(stack) < 2 or not isinstance(stack[-1], str) or not isinstance(stack[-2], str):
                    raise UnsafePickle("STACK_GLOBAL imports a name built at load time, which cannot be checked")
                _check_global(stack[-2], stack[-1], scan)
            elif name in ("EXT1", "EXT2", "EXT4"):
                raise UnsafePickle(f"opcode {name} imports from the extension registry")

            if name in _MEMO_STORE_OPS:
                if not stack:
                    raise InvalidPickle(f"opcode {name} on an empty stack")
                memo[len(memo) if name == "MEMOIZE" else int(str(arg))] = stack[-1]
                continue
            if name == "MARK":
                marks.append(len(stack))
                continue
            if name == "STOP":
                last_value = stack[-1] if stack else _UNKNOWN
                break

            before = opcode.stack_before
            if pickletools.markobject in before:
                if not marks:
                    raise InvalidPickle(f"opcode {name} without a MARK")
                del stack[marks.pop() :]
                extra = before.index(pickletools.markobject)
            else:
                extra = len(before)
            if extra:
                if len(stack) < extra:
                    raise InvalidPickle(f"opcode {name} pops from an empty stack")
                popped = stack[-extra:]
                del stack[-extra:]
            else:
                popped = []

            if name in _STRING_OPS:
                value = arg.decode("latin-1") if isinstance(arg, bytes) else arg
                scan.strings.add(str(value))
                stack.append(str(value))
            elif name in _MEMO_LOAD_OPS:
                stack.append(memo.get(int(str(arg)), _UNKNOWN))
            elif name == "DUP":
                stack.extend([popped[0], popped[0]])
            elif name in ("LONG1", "LONG4", "INT", "BININT", "BININT1", "BININT2", "LONG"):
                stack.append(arg)
            else:
                stack.extend(_UNKNOWN for _ in opcode.stack_after)
    except (ValueError, EOFError) as exc:  # raised by genops on malformed input
        raise InvalidPickle(f"not a valid pickle: {exc}") from None
    else:
        if scan.pickles and last_value is _UNKNOWN and not stack and not scan.strings and not scan.globals:
            raise InvalidPickle("the pickle stream is empty")
    return scan, last_value


def _check_global(module: str, qualname: str, scan: PickleScan) -> None:
    # Name what the unpickler would really import: protocol-2 pickles say "__builtin__" and
    # friends, which Python 3 maps to their new homes (fix_imports).
    module, qualname = _compat_pickle.NAME_MAPPING.get((module, qualname), (module, qualname))
    module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    full = f"{module}.{qualname}"
    if full not in TENSOR_REBUILD_ALLOWLIST:
        raise UnsafePickle(
            f"the pickle imports {full!r}, which is outside the tensor-rebuild allowlist "
            "(a model file needs only tensors; convert it to .safetensors if it is yours)"
        )
    scan.globals.add(full)


def scan_pickle_stream(stream: IO[bytes], cap: int) -> PickleScan:
    """Scan a bare pickle file: one pickle, or the legacy torch format's series of pickles."""
    capped: IO[bytes] = _CappedReader(stream, cap)  # type: ignore[assignment]
    first, value = scan_one_pickle(capped)
    if value != _LEGACY_MAGIC:
        return first
    for _ in range(_LEGACY_PICKLE_COUNT - 1):
        more, _value = scan_one_pickle(capped)
        first.merge(more)
    return first


def scan_torch_zip(fileobj: IO[bytes], cap: int) -> PickleScan:
    """Scan every ``.pkl`` member of a PyTorch zip checkpoint (``fileobj`` must be seekable)."""
    try:
        archive = zipfile.ZipFile(fileobj)
    except zipfile.BadZipFile as exc:
        raise InvalidPickle(f"not a valid PyTorch zip archive: {exc}") from None
    with archive:
        members = [info for info in archive.infolist() if info.filename.endswith(".pkl")]
        if not members:
            raise InvalidPickle("the zip archive has no data.pkl: not a PyTorch checkpoint")
        total = PickleScan()
        for info in members:
            if info.file_size > cap:
                raise InvalidPickle(f"{info.filename} is {info.file_size} bytes, over the {cap}-byte scan cap")
            with archive.open(info) as member:
                capped: IO[bytes] = _CappedReader(member, cap)  # type: ignore[assignment]
                scan, _value = scan_one_pickle(capped)
            total.merge(scan)
        return total
