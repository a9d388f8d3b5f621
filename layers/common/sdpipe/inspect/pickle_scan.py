"""Walk pickle streams without executing them, and decide whether loading them could run code.

A pickle is a program for a stack machine; loading one runs it, and a ``GLOBAL`` opcode can
import any callable (``os.system``). Here the opcodes are only *read* (``pickletools.genops``)
while a symbolic stack tracks what each slot would hold: a string, an int, an imported global,
or "something else". The rules are those of ``torch.load(weights_only=True)``, the loader the
inference image uses, made symbolic:

- every global (``GLOBAL``, ``INST``, ``STACK_GLOBAL``) must be one torch's weights-only loader
  admits (``torch_globals``), named exactly (no dotted attribute paths, no extension registry);
- only such a global may be called (``REDUCE``, ``NEWOBJ``, ``OBJ``), so nothing reachable is
  callable but them;
- an imported global may not be modified (``BUILD``, ``SETITEM``, ``APPEND`` on it), which is how
  ``__setstate__`` tricks patch a class;
- the walk is bounded: bytes read, opcodes, memo entries, stack size, nesting; each bound
  rejects the file with its own message.

Being symbolic, it accepts every protocol (0-5), also those torch's loader refuses, without
giving up any of those rules. Any malformed stream ends as ``InvalidPickle``, never as another
exception.
"""

from __future__ import annotations

import _compat_pickle
import io
import pickletools
import struct
from dataclasses import dataclass, field
from typing import IO

from sdpipe.errors import InvalidPickle, UnsafePickle
from sdpipe.inspect.torch_globals import TORCH_WEIGHTS_ONLY_GLOBALS

# The legacy torch format starts with this magic number pickled as a LONG1, then four more pickles.
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PICKLE_COUNT = 5  # magic, protocol, sys_info, the object, storage keys

_STRING_OPS = frozenset(
    ["SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING", "SHORT_BINSTRING"]
)
_INT_OPS = frozenset(["LONG1", "LONG4", "INT", "BININT", "BININT1", "BININT2", "LONG"])
_MEMO_STORE_OPS = frozenset(["PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"])
_MEMO_LOAD_OPS = frozenset(["GET", "BINGET", "LONG_BINGET"])
# Opcodes that call the value below their arguments.
_CALLS = frozenset(["REDUCE", "NEWOBJ", "NEWOBJ_EX"])
# Opcodes that modify the value below their arguments in place.
_MUTATIONS = frozenset(["BUILD", "SETITEM", "SETITEMS", "APPEND", "APPENDS", "ADDITEMS"])
_REFUSED_OPS = {
    "EXT1": "imports from the copyreg extension registry",
    "EXT2": "imports from the copyreg extension registry",
    "EXT4": "imports from the copyreg extension registry",
    "NEXT_BUFFER": "needs out-of-band buffers",
    "READONLY_BUFFER": "needs out-of-band buffers",
}


@dataclass(frozen=True)
class PickleLimits:
    """Bounds on the work one file's pickles may cost (time and memory)."""

    max_bytes: int = 256 * 1024 * 1024  # the pickle data itself, after decompression
    max_opcodes: int = 10_000_000
    max_memo: int = 1_000_000
    max_stack: int = 1_000_000
    max_depth: int = 256  # open MARKs: containers inside containers


class _Global:
    """A stack slot holding an imported (and allowed) global."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


class _Unknown:
    """A stack slot the walk does not track (anything but strings, ints and globals)."""


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


class MalformedPickle(InvalidPickle):
    """The bytes stop being a pickle (as opposed to a pickle that breaks a rule or a bound)."""


class _Capped(io.RawIOBase):
    """At most ``cap`` bytes of ``stream`` (buffered on top, so genops' readline is fast)."""

    def __init__(self, stream: IO[bytes], cap: int, what: str) -> None:
        self._stream = stream
        self._remaining = cap
        self._cap = cap
        self._what = what

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self._remaining <= 0:
            if self._stream.read(1):
                raise InvalidPickle(f"{self._what} is larger than the {self._cap}-byte scan limit")
            return 0
        data = self._stream.read(min(len(buffer), self._remaining))
        self._remaining -= len(data)
        buffer[: len(data)] = data
        return len(data)


class _ReadOnly:
    """Only ``read`` and ``readline`` (genops asks for ``tell`` only where there is one).

    A length prefix can claim anything: reads are served in chunks, so memory follows the bytes
    that are really there, never the length a pickle announces.
    """

    _CHUNK = 1024 * 1024

    def __init__(self, buffered: io.BufferedReader[_Capped], cap: int, what: str) -> None:
        self._buffered = buffered
        self._cap = cap
        self._what = what
        self.readline = buffered.readline

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0 or size > self._cap:
            if size is not None and size > self._cap:
                raise InvalidPickle(f"{self._what} announces {size} bytes, over the {self._cap}-byte scan limit")
            size = self._cap + 1
        if size <= self._CHUNK:
            return self._buffered.read(size)
        parts = []
        while size > 0:
            part = self._buffered.read(min(size, self._CHUNK))
            if not part:
                break
            parts.append(part)
            size -= len(part)
        return b"".join(parts)


def capped_reader(stream: IO[bytes], cap: int, what: str = "the pickle data") -> IO[bytes]:
    """``stream`` read through a byte cap: going past it raises ``InvalidPickle``."""
    buffered = io.BufferedReader(_Capped(stream, cap, what), buffer_size=64 * 1024)
    return _ReadOnly(buffered, cap, what)  # type: ignore[return-value]


@dataclass
class _Walk:
    limits: PickleLimits
    scan: PickleScan = field(default_factory=lambda: PickleScan(pickles=1))
    stack: list[object] = field(default_factory=list)
    marks: list[int] = field(default_factory=list)
    memo: dict[int, object] = field(default_factory=dict)

    def pop(self, count: int, name: str) -> list[object]:
        if len(self.stack) < count:
            raise MalformedPickle(f"opcode {name} pops from an empty stack")
        popped = self.stack[len(self.stack) - count :]
        del self.stack[len(self.stack) - count :]
        return popped

    def pop_mark(self, name: str) -> list[object]:
        if not self.marks:
            raise MalformedPickle(f"opcode {name} without a MARK")
        start = self.marks.pop()
        items = self.stack[start:]
        del self.stack[start:]
        return items


def scan_one_pickle(
    stream: IO[bytes], limits: PickleLimits, budget: list[int] | None = None
) -> tuple[PickleScan, object]:
    """Walk one pickle up to its STOP; what it imports, and its top value when that is a literal.

    ``budget`` is a one-element list of opcodes still allowed, shared by every pickle of a file.
    """
    budget = budget if budget is not None else [limits.max_opcodes]
    walk = _Walk(limits)
    try:
        for opcode, arg, _position in pickletools.genops(stream):
            budget[0] -= 1
            if budget[0] < 0:
                raise InvalidPickle(f"the pickle data has more than {limits.max_opcodes} opcodes")
            if opcode.name == "STOP":
                if not walk.stack:
                    raise MalformedPickle("STOP on an empty stack")
                top = walk.stack[-1]
                return walk.scan, top if isinstance(top, int | str) else _UNKNOWN
            _step(walk, opcode, arg)
    except (ValueError, EOFError, struct.error, OverflowError) as exc:  # genops on malformed input
        raise MalformedPickle(f"not a valid pickle: {_short(exc)}") from None
    raise MalformedPickle("the pickle data ends before its STOP opcode")


def _step(walk: _Walk, opcode: pickletools.OpcodeInfo, arg: object) -> None:
    name = opcode.name
    stack = walk.stack
    if name in _REFUSED_OPS:
        raise UnsafePickle(f"opcode {name} {_REFUSED_OPS[name]}, which a model file never does")
    if name in _MEMO_STORE_OPS:
        if not stack:
            raise MalformedPickle(f"opcode {name} on an empty stack")
        if len(walk.memo) >= walk.limits.max_memo:
            raise InvalidPickle(f"the pickle stores more than {walk.limits.max_memo} memo entries")
        index = len(walk.memo) if name == "MEMOIZE" else int(str(arg))
        walk.memo[index] = stack[-1]
        return
    if name in _MEMO_LOAD_OPS:
        index = int(str(arg))
        if index not in walk.memo:
            raise MalformedPickle(f"opcode {name} reads memo entry {index}, which was never stored")
        _push(walk, walk.memo[index])
        return
    if name == "MARK":
        if len(walk.marks) >= walk.limits.max_depth:
            raise InvalidPickle(f"the pickle nests containers more than {walk.limits.max_depth} deep")
        walk.marks.append(len(stack))
        return
    if name in ("GLOBAL", "INST"):
        module, _, qualname = str(arg).partition(" ")
        imported = _check_global(module, qualname, walk.scan)
        if name == "GLOBAL":
            _push(walk, imported)
        else:
            walk.pop_mark(name)
            _push(walk, _UNKNOWN)
        return
    if name == "STACK_GLOBAL":
        pushed_module, pushed_name = walk.pop(2, name)
        if not isinstance(pushed_module, str) or not isinstance(pushed_name, str):
            raise UnsafePickle("STACK_GLOBAL imports a name built at load time, which cannot be checked")
        _push(walk, _check_global(pushed_module, pushed_name, walk.scan))
        return
    if name == "OBJ":
        items = walk.pop_mark(name)
        if not items or not isinstance(items[0], _Global):
            raise UnsafePickle("opcode OBJ instantiates something that is not an allowed global")
        _push(walk, _UNKNOWN)
        return
    if name in _STRING_OPS:
        value = arg.decode("latin-1") if isinstance(arg, bytes) else str(arg)
        walk.scan.strings.add(value)
        _push(walk, value)
        return
    if name in _INT_OPS:
        _push(walk, arg if isinstance(arg, int) and not isinstance(arg, bool) else _UNKNOWN)
        return
    if name == "DUP":
        if not stack:
            raise MalformedPickle("DUP on an empty stack")
        _push(walk, stack[-1])
        return
    if name == "POP_MARK":
        walk.pop_mark(name)
        return

    # Everything else: pop what the opcode consumes (through its MARK, if it has one), check what
    # a call or a mutation would touch, push what it produces (untracked).
    before = opcode.stack_before
    if pickletools.markobject in before:
        walk.pop_mark(name)
        fixed = before.index(pickletools.markobject)
    else:
        fixed = len(before)
    popped = walk.pop(fixed, name)
    if name in _CALLS and not isinstance(popped[0], _Global):
        raise UnsafePickle(f"opcode {name} calls something that is not an allowed global")
    if name in _MUTATIONS and isinstance(popped[0], _Global):
        raise UnsafePickle(f"opcode {name} modifies the imported {popped[0].name}, which a model file never does")
    for _ in opcode.stack_after:
        _push(walk, _UNKNOWN)


def _push(walk: _Walk, value: object) -> None:
    if len(walk.stack) >= walk.limits.max_stack:
        raise InvalidPickle(f"the pickle's stack grows past {walk.limits.max_stack} entries")
    walk.stack.append(value)


def _check_global(module: str, qualname: str, scan: PickleScan) -> _Global:
    # Name what the unpickler would really import: protocol-2 pickles say "__builtin__" and
    # friends, which Python 3 maps to their new homes (as pickle and torch both do).
    if (module, qualname) in _compat_pickle.NAME_MAPPING:
        module, qualname = _compat_pickle.NAME_MAPPING[(module, qualname)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    full = f"{module}.{qualname}"
    if "." in qualname or full not in TORCH_WEIGHTS_ONLY_GLOBALS:
        raise UnsafePickle(
            f"the pickle imports {_short(full)!r}, which torch's weights-only loader does not admit "
            "(a model file needs only tensors; convert it to .safetensors if it is yours)"
        )
    scan.globals.add(full)
    return _Global(full)


def scan_pickle_sequence(stream: IO[bytes], limits: PickleLimits) -> PickleScan:
    """A bare pickle file: one pickle, or the legacy ``torch.save`` format's five in a row.

    Every pickle any loader could go on to read is walked: after a first pickle whose value is
    not a literal int (torch compares it with the magic number, and a tensor can compare equal),
    the following ones are walked too, as far as they parse. Where the first value *is* the
    magic, all five must be valid.
    """
    capped = capped_reader(stream, limits.max_bytes)
    budget = [limits.max_opcodes]
    total, first = scan_one_pickle(capped, limits, budget)
    if isinstance(first, int | str) and first != LEGACY_MAGIC:
        return total
    for _ in range(_LEGACY_PICKLE_COUNT - 1):
        try:
            more, _value = scan_one_pickle(capped, limits, budget)
        except MalformedPickle:
            if first == LEGACY_MAGIC:
                raise
            break  # not a legacy file: a loader stops (fails) here as well
        total.merge(more)
    return total


def _short(value: object, limit: int = 200) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "..."
