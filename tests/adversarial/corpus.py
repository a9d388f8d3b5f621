"""The project's own corpus of pickle-format model files: malicious, malformed and benign.

Every sample is built here, opcode by opcode or archive byte by archive byte, so nothing is
downloaded. Three kinds:

- ``malicious``: loading it with ``torch.load(weights_only=False)`` (what most tools outside
  this project still do, and what weights-only used to fall back to) runs the payload. The
  payload is harmless and observable: it calls ``builtins.open(<marker>, "w")``, so a test can
  prove each sample really executes (``tests/adversarial/test_corpus_oracle.py``).
- ``malformed``: archives and streams two readers could read differently, or that crash naive
  parsers, or that exhaust memory; a scanner must reject them with a reason, not crash.
- ``benign``: real ``torch.save`` output that ``torch.load(weights_only=True)`` loads.

The classes follow issue 14 (an allowlisted global that unpickles, archive differentials,
crashes, unbounded work, dtypes), each with several spellings.
"""

from __future__ import annotations

import io
import pickle
import struct
import tarfile
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Sample:
    name: str
    kind: str  # malicious | malformed | benign
    data: bytes
    how: str  # how a loader reaches the payload, or what is wrong


MARKER_PLACEHOLDER = "/tmp/sdpipe-corpus-marker"  # replaced per sample by the oracle


# ---------------------------------------------------------------------- opcode-level pickles
def _unicode(text: str) -> bytes:
    raw = text.encode("utf-8")
    return b"X" + struct.pack("<I", len(raw)) + raw


def _short_unicode(text: str) -> bytes:
    raw = text.encode("utf-8")
    return b"\x8c" + bytes([len(raw)]) + raw


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _stack_global(module: str, name: str) -> bytes:
    return _short_unicode(module) + _short_unicode(name) + b"\x93"


def payload_call(marker: str, via: str = "global") -> bytes:
    """Opcodes that leave ``open(marker, "w")`` on the stack (the call happens when loaded)."""
    target = _global("builtins", "open") if via == "global" else _stack_global("builtins", "open")
    return target + _unicode(marker) + _unicode("w") + b"\x86" + b"R"  # TUPLE2 REDUCE


def _pickle(body: bytes, protocol: int = 2) -> bytes:
    return b"\x80" + bytes([protocol]) + body + b"."


def evil_pickle(marker: str, protocol: int = 2, via: str = "global") -> bytes:
    """A state-dict-looking pickle whose ``x`` entry calls the payload."""
    return _pickle(b"}" + _unicode("x") + payload_call(marker, via) + b"s", protocol)


def _load_from_bytes(inner: bytes, spelling: str) -> bytes:
    """``torch.storage._load_from_bytes(inner)``: torch.load(weights_only=False) on ``inner``."""
    if spelling == "global":
        function = _global("torch.storage", "_load_from_bytes")
    elif spelling == "stack_global_dotted":
        function = _stack_global("torch", "storage._load_from_bytes")
    else:
        function = _stack_global("torch.storage", "_load_from_bytes")
    return function + b"B" + struct.pack("<I", len(inner)) + inner + b"\x85" + b"R"  # BINBYTES TUPLE1 REDUCE


def _torch_inner(marker: str) -> bytes:
    buffer = io.BytesIO()
    torch_save_raw(evil_pickle(marker), buffer)
    return buffer.getvalue()


def torch_save_raw(
    data_pkl: bytes, out: io.BytesIO, folder: str = "archive", names: Callable[[str], str] = str
) -> None:
    """A zip laid out as torch.save writes it, with ``data_pkl`` as its pickle."""
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(names(f"{folder}/data.pkl"), data_pkl)
        archive.writestr(f"{folder}/byteorder", b"little")
        archive.writestr(f"{folder}/version", b"3\n")


def _zip(data_pkl: bytes, **options: object) -> bytes:
    buffer = io.BytesIO()
    torch_save_raw(data_pkl, buffer, **options)  # type: ignore[arg-type]
    return buffer.getvalue()


def _legacy(first: bytes, rest: list[bytes]) -> bytes:
    return first + b"".join(rest)


def _legacy_magic_pickle() -> bytes:
    return pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)


def _tar_with_pickle_header(marker: str) -> bytes:
    """A tar whose first header starts with a pickle (so a scanner takes it for one) and whose
    ``storages`` member torch's legacy tar loader unpickles."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as archive:
        decoy = tarfile.TarInfo(name="\x80\x02}q\x00.")  # PROTO 2, EMPTY_DICT, BINPUT 0, STOP
        decoy.size = 0
        archive.addfile(decoy, io.BytesIO(b""))
        for member, content in (
            ("storages", evil_pickle(marker)),
            ("tensors", pickle.dumps(0, protocol=2)),
            ("pickle", pickle.dumps({}, protocol=2)),
        ):
            info = tarfile.TarInfo(name=member)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    raw = buffer.getvalue()
    # tarfile encodes the name as UTF-8 ("\x80" -> C2 80); put the raw byte back and refresh the checksum.
    header = bytearray(raw[:512])
    header[:100] = b"\x80\x02}q\x00.".ljust(100, b"\x00")
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\x00 " % sum(header)
    return bytes(header) + raw[512:]


def malicious(marker: str = MARKER_PLACEHOLDER) -> list[Sample]:
    """Files that run code when loaded: every way we know to hide a call from a scanner."""
    return [*_hidden_in_archives(marker), *_nested_loads(marker), *_legacy_and_spellings(marker)]


def _hidden_in_archives(marker: str) -> list[Sample]:
    samples = []
    for protocol in (0, 2, 4):
        if protocol == 0:
            raw = b"(" + _unicode(marker) + _unicode("w") + b"i" + b"builtins\nopen\n" + b"."
        else:
            raw = evil_pickle(marker, protocol, via="stack" if protocol >= 4 else "global")
        samples.append(Sample(f"plain-protocol-{protocol}.ckpt", "malicious", raw, "a global call in a bare pickle"))
    samples.append(Sample("zip-data-pkl.ckpt", "malicious", _zip(evil_pickle(marker)), "a global call in data.pkl"))
    samples.append(
        Sample(
            "zip-upper-case-name.ckpt",
            "malicious",
            _zip(evil_pickle(marker), names=lambda name: name.replace("data.pkl", "DATA.PKL")),
            "torch finds data.pkl ignoring case",
        )
    )
    samples.append(
        Sample(
            "zip-other-folder.ckpt",
            "malicious",
            _zip(evil_pickle(marker), folder="weights"),
            "torch takes the folder from the first entry, whatever its name",
        )
    )
    return samples


def _nested_loads(marker: str) -> list[Sample]:
    """torch.storage._load_from_bytes unpickles bytes the pickle carries, however it is reached."""
    samples = []
    inner = _torch_inner(marker)
    for spelling in ("global", "stack_global", "stack_global_dotted"):
        samples.append(
            Sample(
                f"load-from-bytes-{spelling}.ckpt",
                "malicious",
                _zip(_pickle(b"}" + _unicode("x") + _load_from_bytes(inner, spelling) + b"s", 4)),
                "torch.storage._load_from_bytes unpickles bytes the pickle carries",
            )
        )
    # (func, new_type, args, state) as a 4-tuple built with MARK ... TUPLE.
    rebuild = (
        _global("torch._tensor", "_rebuild_from_type_v2")
        + b"("
        + _global("torch.storage", "_load_from_bytes")
        + _global("torch", "Tensor")
        + b"B"
        + struct.pack("<I", len(inner))
        + inner
        + b"\x85"
        + b"}"
        + b"t"
        + b"R"
    )
    samples.append(
        Sample(
            "rebuild-from-type-load-from-bytes.ckpt",
            "malicious",
            _zip(_pickle(b"}" + _unicode("x") + rebuild + b"s")),
            "an allowed rebuild function handed the unpickling one",
        )
    )
    # BUILD: state handed to a tensor's __setstate__ / dict update holds the nested load.
    build = _global("collections", "OrderedDict") + b")R" + b"}" + _unicode("y") + _load_from_bytes(inner, "global")
    build += b"sb"
    samples.append(
        Sample(
            "build-state-load-from-bytes.ckpt",
            "malicious",
            _zip(_pickle(b"}" + _unicode("x") + build + b"s")),
            "the nested load rides in BUILD's state",
        )
    )
    return samples


def _legacy_and_spellings(marker: str) -> list[Sample]:
    samples = []
    samples.append(
        Sample("legacy-tar.pt", "malicious", _tar_with_pickle_header(marker), "a tar whose header reads as a pickle")
    )
    samples.append(
        Sample(
            "legacy-second-pickle.pt",
            "malicious",
            _legacy(_legacy_magic_pickle(), [evil_pickle(marker)]),
            "the payload is the legacy format's second pickle",
        )
    )
    memo_magic = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little") + b"q\x010h\x01."
    samples.append(
        Sample(
            "legacy-magic-through-memo.pt",
            "malicious",
            _legacy(memo_magic, [pickle.dumps(1001, protocol=2), evil_pickle(marker)]),
            "the magic number comes back from the memo; the payload is in the third pickle",
        )
    )
    samples.append(
        Sample(
            "zip-two-pickles-in-data.ckpt",
            "malicious",
            _zip(evil_pickle(marker) + evil_pickle(marker)),
            "the payload is in the first pickle of data.pkl",
        )
    )
    samples.append(
        Sample(
            "builtin-spelling.ckpt",
            "malicious",
            _zip(
                _pickle(b"}" + _unicode("x") + b"c__builtin__\nopen\n" + _unicode(marker) + _unicode("w") + b"\x86Rs")
            ),
            "protocol 2's __builtin__ name for builtins",
        )
    )
    samples.append(
        Sample(
            "deflated-data-pkl.ckpt",
            "malicious",
            _deflated_zip(evil_pickle(marker)),
            "data.pkl compressed with deflate",
        )
    )
    return samples


def _deflated_zip(data_pkl: bytes, folder: str = "archive") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{folder}/data.pkl", data_pkl)
        archive.writestr(f"{folder}/byteorder", b"little")
        archive.writestr(f"{folder}/version", b"3\n")
    return buffer.getvalue()


# ---------------------------------------------------------------------- malformed
def _patch(data: bytes, offset: int, new: bytes) -> bytes:
    return data[:offset] + new + data[offset + len(new) :]


def _central_offset(data: bytes) -> int:
    return data.rfind(b"PK\x01\x02")


def malformed() -> list[Sample]:
    good = _zip(pickle.dumps({"w": 1}, protocol=2))
    first_central = good.find(b"PK\x01\x02")
    samples = [
        Sample(
            "bad-crc.ckpt",
            "malformed",
            _patch(_patch(good, first_central + 16, b"\0" * 4), 14, b"\0" * 4),
            "a wrong CRC",
        ),
        Sample("encrypted-flag.ckpt", "malformed", _patch(good, first_central + 8, b"\x01\x00"), "the encrypted flag"),
        Sample("unknown-method.ckpt", "malformed", _patch(good, first_central + 10, b"\x63\x00"), "compression 99"),
        Sample("name-mismatch.ckpt", "malformed", _patch(good, 30, b"A"), "local and central names differ"),
        Sample("undecodable-name.ckpt", "malformed", _undecodable_name(), "a name that is not UTF-8"),
        Sample("corrupt-deflate.ckpt", "malformed", _corrupt_deflate(), "a deflate stream that does not inflate"),
        Sample("duplicate-name.ckpt", "malformed", _duplicate(), "data.pkl twice, benign then not"),
        Sample("trailing-data.ckpt", "malformed", good + b"\x00" * 64, "bytes after the end record"),
        Sample("two-archives.ckpt", "malformed", good + good, "two zips in a row"),
        Sample("prepended.ckpt", "malformed", _prepended(good), "data before the first entry"),
        Sample("truncated.ckpt", "malformed", good[: len(good) // 2], "the archive cut in half"),
        Sample("memo-bomb.ckpt", "malformed", _memo_bomb(), "a deflated pickle that is mostly MEMOIZE"),
        Sample("deep-nesting.pt", "malformed", b"\x80\x02" + b"(" * 100_000 + b".", "100000 nested MARKs"),
        Sample("long-text-int.pt", "malformed", b"\x80\x02L" + b"9" * 100_000 + b"L\n.", "a 100000-digit LONG"),
        Sample("empty-pickle.pt", "malformed", b"\x80\x02.", "STOP on an empty stack"),
        Sample("get-unset-memo.pt", "malformed", b"\x80\x02h\x07.", "reads a memo entry never stored"),
        Sample("ext-opcode.pt", "malformed", b"\x80\x02\x82\x01.", "imports from the extension registry"),
        Sample("torchscript.ckpt", "malformed", _torchscript(), "a TorchScript archive"),
    ]
    return samples


def _undecodable_name() -> bytes:
    data = _zip(pickle.dumps({"w": 1}, protocol=2))
    # Replace one byte of every copy of "byteorder" (local and central) with an invalid UTF-8 byte.
    return data.replace(b"archive/byteorder", b"archive/byteorde\xff")


def _corrupt_deflate() -> bytes:
    data = _deflated_zip(pickle.dumps({"w": list(range(200))}, protocol=2))
    start = 30 + len("archive/data.pkl")
    return _patch(data, start + 5, b"\xff\xff\xff\xff")


def _duplicate() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"w": 1}, protocol=2))
        archive.writestr("archive/Data.pkl", evil_pickle(MARKER_PLACEHOLDER))
    return buffer.getvalue()


def _prepended(good: bytes) -> bytes:
    # Python's zipfile adjusts every offset for the prepended bytes; miniz does not.
    return good[:4] + b"\x00" * 26 + good


def _memo_bomb() -> bytes:
    body = b"\x80\x04N" + b"\x94" * 5_000_000 + b"."
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", body)
    return buffer.getvalue()


def _torchscript() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"w": 1}, protocol=2))
        archive.writestr("archive/constants.pkl", pickle.dumps((), protocol=2))
        archive.writestr("archive/code/__torch__.py", "def forward(self): pass\n")
    return buffer.getvalue()


# ---------------------------------------------------------------------- benign
def benign() -> list[Sample]:
    import torch

    def saved(obj: object, **options: object) -> bytes:
        buffer = io.BytesIO()
        torch.save(obj, buffer, **options)  # type: ignore[arg-type]
        return buffer.getvalue()

    weights = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3)}
    dtypes = [
        torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int8, torch.uint8, torch.int16,
        torch.int32, torch.int64, torch.bool, torch.uint16, torch.uint32, torch.uint64, torch.complex32,
        torch.complex64, torch.float8_e4m3fn, torch.float8_e5m2, torch.float8_e4m3fnuz, torch.float8_e5m2fnuz,
    ]  # fmt: skip
    samples = [
        Sample("sd-checkpoint.ckpt", "benign", saved({"state_dict": weights, "global_step": 10}), "a checkpoint"),
        Sample(
            "legacy-format.ckpt",
            "benign",
            saved({"state_dict": weights}, _use_new_zipfile_serialization=False),
            "torch.save's legacy format",
        ),
        Sample("all-dtypes.pt", "benign", saved({str(d): torch.zeros(2, dtype=d) for d in dtypes}), "every dtype"),
        Sample("module-state-dict.pt", "benign", saved(torch.nn.Linear(3, 2).state_dict()), "OrderedDict + BUILD"),
        Sample("parameters.pt", "benign", saved({"p": torch.nn.Parameter(torch.ones(3))}), "nn.Parameter"),
        Sample(
            "embedding.pt",
            "benign",
            saved(
                {
                    "string_to_token": {"*": 265},
                    "string_to_param": {"*": torch.zeros(2, 768)},
                    "name": "emb",
                    "step": 100,
                    "sd_checkpoint": "abc",
                    "sd_checkpoint_name": "v1-5",
                }
            ),
            "an A1111 textual-inversion embedding",
        ),
        Sample(
            "plain-values.pt",
            "benign",
            saved(
                {
                    "ints": [1, -2, 1 << 70],
                    "f": 0.5,
                    "s": "é",
                    "b": b"\x00\xff",
                    "t": (1, None, True),
                    "set": {1, 2},
                    "c": complex(1, 2),
                    "dev": torch.device("cpu"),
                    "size": torch.Size([2, 3]),
                    "od": OrderedDict(a=1),
                    "nested": [[[{"k": torch.ones(1)}]]],
                }
            ),
            "the plain values a training state holds",
        ),
        Sample("shared-storage.pt", "benign", _shared(), "two views of one storage"),
        Sample("non-contiguous.pt", "benign", saved({"t": torch.zeros(4, 4).t()}), "a transposed tensor"),
        Sample("empty-tensor.pt", "benign", saved({"t": torch.zeros(0)}), "an empty tensor"),
        Sample("unicode-folder.ckpt", "benign", _saved_named("模型"), "a non-ASCII archive folder"),
    ]
    return samples


def _shared() -> bytes:
    import torch

    base = torch.arange(10.0)
    buffer = io.BytesIO()
    torch.save({"a": base[:5], "b": base[5:]}, buffer)
    return buffer.getvalue()


def _saved_named(stem: str) -> bytes:
    import tempfile

    import torch

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{stem}.ckpt"
        torch.save({"w": torch.ones(2)}, path)
        return path.read_bytes()


def everything(marker: str = MARKER_PLACEHOLDER) -> list[Sample]:
    return malicious(marker) + malformed() + benign()
