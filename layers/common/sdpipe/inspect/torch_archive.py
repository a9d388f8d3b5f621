"""Find every pickle ``torch.load`` could unpickle from a file, reading it the way torch does.

``torch.load`` decides by the first four bytes: ``PK\\x03\\x04`` is the zip format, read by
torch's own reader (miniz, through ``PyTorchStreamReader``), anything else the legacy format (a
tar archive, else pickles in a row). A scanner that reads the file differently from torch scans
something else than what torch runs, so this module reads zips by miniz's rules and refuses
every archive on which two readers could disagree:

- the end-of-central-directory record is the last one in the file (as both miniz and Python's
  ``zipfile`` pick it) and nothing follows it; a zip64 record sits where both expect it;
- the central directory ends where that record starts (no prepended or interleaved data, so
  offsets mean the same to every reader), every entry is on disk 0, none overlaps another;
- names are UTF-8, unique when compared case-insensitively (miniz looks names up ignoring ASCII
  case), all in the one top folder torch takes from the first entry; local headers repeat the
  central directory's name, method and flags;
- no encryption, no compression but stored and deflate, CRCs and sizes right;
- no TorchScript (``constants.pkl``, ``code/``: a program, not weights); no tar archive.

Then ``data.pkl`` and every other ``.pkl`` member is walked by ``pickle_scan``. Every problem is
an ``InvalidPickle`` naming it; work and memory are bounded by ``PickleLimits``.
"""

from __future__ import annotations

import io
import itertools
import struct
import tarfile
import zlib
from dataclasses import dataclass
from typing import IO

from sdpipe.errors import InvalidPickle
from sdpipe.inspect.pickle_scan import PickleLimits, PickleScan, scan_one_pickle, scan_pickle_sequence

ZIP_MAGIC = b"PK\x03\x04"
_EOCD = b"PK\x05\x06"
_ZIP64_LOCATOR = b"PK\x06\x07"
_ZIP64_EOCD = b"PK\x06\x06"
_CENTRAL = b"PK\x01\x02"
_EOCD_SIZE = 22
_ZIP64_LOCATOR_SIZE = 20
_ZIP64_EOCD_SIZE = 56
_MAX_COMMENT = 0xFFFF
_MAX_ENTRIES = 100_000
_MAX_CENTRAL_BYTES = 64 * 1024 * 1024
_FLAG_ENCRYPTED = 0x0001
_FLAG_STRONG_ENCRYPTION = 0x0040
_FLAG_MASKED_HEADERS = 0x2000
_STORED, _DEFLATED = 0, 8
_U16, _U32 = 0xFFFF, 0xFFFFFFFF


@dataclass(frozen=True)
class ZipEntry:
    name: bytes
    flags: int
    method: int
    crc: int
    compressed_size: int
    size: int
    header_offset: int

    @property
    def display(self) -> str:
        return _display(self.name)


def scan_torch_file(fileobj: IO[bytes], size: int, limits: PickleLimits) -> PickleScan:
    """Walk every pickle torch could load from ``fileobj`` (seekable, ``size`` bytes long)."""
    head = _read_at(fileobj, 0, min(size, tarfile.BLOCKSIZE))
    if head[:4] == ZIP_MAGIC:
        return scan_torch_zip(fileobj, size, limits)
    if _is_tar_header(head):
        raise InvalidPickle(
            "the file is a tar archive (torch.save's pre-1.0 legacy format); torch's weights-only loader "
            "refuses it and so does sdpipe: re-save it with a current torch or as .safetensors"
        )
    if head[:1] != b"\x80":
        raise InvalidPickle(f"the file starts with {head[:4]!r}, which is neither a PyTorch zip archive nor a pickle")
    fileobj.seek(0)
    return scan_pickle_sequence(fileobj, limits)


def _is_tar_header(block: bytes) -> bool:
    """What ``tarfile.open`` (torch's legacy loader tries it first) would take for a tar."""
    if len(block) < tarfile.BLOCKSIZE:
        return False
    try:
        tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    except (tarfile.TarError, ValueError, OverflowError):
        return False
    return True


def scan_torch_zip(fileobj: IO[bytes], size: int, limits: PickleLimits) -> PickleScan:
    entries, directory_offset = read_central_directory(fileobj, size)
    prefix = _archive_folder(entries)
    _check_entries(fileobj, entries, directory_offset)
    lowered = {entry.name.lower(): entry for entry in entries}
    if (prefix + b"/constants.pkl").lower() in lowered or any(
        name.startswith((prefix + b"/code/").lower()) for name in lowered
    ):
        raise InvalidPickle("the archive is a TorchScript program (constants.pkl, code/), not a weights file")
    data_pkl = (prefix + b"/data.pkl").lower()
    if data_pkl not in lowered:
        raise InvalidPickle("the zip archive has no data.pkl: not a PyTorch checkpoint")
    total = PickleScan()
    budget = [limits.max_opcodes]
    for entry in sorted(entries, key=lambda e: e.name.lower() != data_pkl):
        if not entry.name.lower().endswith(b".pkl"):
            continue
        data = _member_bytes(fileobj, entry, limits)
        scan, _value = scan_one_pickle(io.BytesIO(data), limits, budget)
        total.merge(scan)
    return total


def read_central_directory(fileobj: IO[bytes], size: int) -> tuple[list[ZipEntry], int]:
    """The entries of the zip's central directory, refusing every ambiguous layout."""
    tail_start = max(0, size - _EOCD_SIZE - _MAX_COMMENT)
    tail = _read_at(fileobj, tail_start, size - tail_start)
    position = tail.rfind(_EOCD)
    if position < 0 or len(tail) - position < _EOCD_SIZE:
        raise InvalidPickle("the zip archive has no end-of-central-directory record (truncated?)")
    eocd_offset = tail_start + position
    disk, cd_disk, disk_entries, entry_count, cd_size, cd_offset, comment_length = struct.unpack(
        "<HHHHIIH", tail[position + 4 : position + _EOCD_SIZE]
    )
    if eocd_offset + _EOCD_SIZE + comment_length != size:
        raise InvalidPickle(
            "data follows the zip archive's end-of-central-directory record: readers would disagree on where "
            "the archive is"
        )
    cd_end = eocd_offset
    locator_offset = eocd_offset - _ZIP64_LOCATOR_SIZE
    if locator_offset >= 0 and _read_at(fileobj, locator_offset, 4) == _ZIP64_LOCATOR:
        zip64 = _read_zip64_end(fileobj, locator_offset)
        for narrow, wide, marker in (
            (disk, zip64[0], _U16),
            (cd_disk, zip64[1], _U16),
            (disk_entries, zip64[2], _U16),
            (entry_count, zip64[3], _U16),
            (cd_size, zip64[4], _U32),
            (cd_offset, zip64[5], _U32),
        ):
            if narrow not in (wide, marker):
                raise InvalidPickle("the zip archive's zip64 and classic end records disagree")
        disk, cd_disk, disk_entries, entry_count, cd_size, cd_offset = zip64
        cd_end = locator_offset - _ZIP64_EOCD_SIZE
    elif _U32 in (cd_size, cd_offset) or _U16 in (entry_count, disk_entries):
        raise InvalidPickle("the zip archive needs a zip64 end record and has none")
    if disk or cd_disk or disk_entries != entry_count:
        raise InvalidPickle("the zip archive spans several disks")
    if cd_offset + cd_size != cd_end:
        raise InvalidPickle(
            "the zip archive's central directory does not end where its end record starts (prepended or "
            "interleaved data: readers would disagree on every offset)"
        )
    if entry_count > _MAX_ENTRIES or cd_size > _MAX_CENTRAL_BYTES:
        raise InvalidPickle(f"the zip archive has more than {_MAX_ENTRIES} entries or a central directory over 64 MiB")
    directory = _read_at(fileobj, cd_offset, cd_size)
    entries: list[ZipEntry] = []
    at = 0
    for _ in range(entry_count):
        entry, at = _central_entry(directory, at)
        entries.append(entry)
    if at != len(directory):
        raise InvalidPickle("the zip archive's central directory holds more than its end record counts")
    if not entries:
        raise InvalidPickle("the zip archive is empty")
    return entries, cd_offset


def _read_zip64_end(fileobj: IO[bytes], locator_offset: int) -> tuple[int, int, int, int, int, int]:
    _sig, _disk, record_offset, disks = struct.unpack("<4sIQI", _read_at(fileobj, locator_offset, _ZIP64_LOCATOR_SIZE))
    # Python's zipfile reads the record just before the locator; miniz where the locator points.
    if record_offset != locator_offset - _ZIP64_EOCD_SIZE or disks != 1:
        raise InvalidPickle("the zip archive's zip64 end record is not where the locator says")
    record = _read_at(fileobj, record_offset, _ZIP64_EOCD_SIZE)
    sig, record_size, _made, _needed, disk, cd_disk, disk_entries, entry_count, cd_size, cd_offset = struct.unpack(
        "<4sQHHIIQQQQ", record
    )
    if sig != _ZIP64_EOCD or record_size != _ZIP64_EOCD_SIZE - 12:
        raise InvalidPickle("the zip archive's zip64 end record is malformed")
    return disk, cd_disk, disk_entries, entry_count, cd_size, cd_offset


def _central_entry(directory: bytes, at: int) -> tuple[ZipEntry, int]:
    if len(directory) - at < 46 or directory[at : at + 4] != _CENTRAL:
        raise InvalidPickle("the zip archive's central directory is malformed")
    (flags, method, crc, compressed, size, name_length, extra_length, comment_length, disk, offset) = struct.unpack(
        "<8xHH4xIIIHHHH6xI", directory[at : at + 46]
    )
    end = at + 46 + name_length + extra_length + comment_length
    if end > len(directory):
        raise InvalidPickle("the zip archive's central directory is malformed")
    name = directory[at + 46 : at + 46 + name_length]
    extra = directory[at + 46 + name_length : at + 46 + name_length + extra_length]
    # The zip64 extra field holds, in this order, each field whose 32/16-bit slot is saturated.
    wide = _zip64_extra(extra)
    values = []
    for narrow, marker, width in ((size, _U32, 8), (compressed, _U32, 8), (offset, _U32, 8), (disk, _U16, 4)):
        if narrow != marker:
            values.append(narrow)
            continue
        if len(wide) < width:
            raise InvalidPickle(f"zip entry {_display(name)} needs a zip64 extra field and has none")
        values.append(int.from_bytes(wide[:width], "little"))
        wide = wide[width:]
    size, compressed, offset, disk = values
    entry = ZipEntry(name, flags, method, crc, compressed, size, offset)
    if disk:
        raise InvalidPickle(f"zip entry {entry.display} is on another disk")
    return entry, end


def _zip64_extra(extra: bytes) -> bytes:
    at = 0
    while at + 4 <= len(extra):
        tag, length = struct.unpack("<HH", extra[at : at + 4])
        if tag == 0x0001:
            return extra[at + 4 : at + 4 + length]
        at += 4 + length
    return b""


def _archive_folder(entries: list[ZipEntry]) -> bytes:
    """The folder every record is in, taken from the first entry as torch's reader takes it."""
    first = entries[0].name
    if b"/" not in first:
        raise InvalidPickle(f"zip entry {entries[0].display} is not in a folder: not a PyTorch checkpoint")
    prefix = first.split(b"/", 1)[0]
    seen: set[bytes] = set()
    for entry in entries:
        try:
            entry.name.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidPickle(f"zip entry {entry.display} has a name that is not UTF-8") from None
        if b"\x00" in entry.name:
            raise InvalidPickle(f"zip entry {entry.display} has a NUL byte in its name")
        if not entry.name.startswith(prefix + b"/"):
            raise InvalidPickle(
                f"zip entry {entry.display} is outside the archive's folder {_display(prefix)}: readers could "
                "disagree on which records belong to the checkpoint"
            )
        folded = entry.name.lower()  # ASCII only, as miniz compares
        if folded in seen:
            raise InvalidPickle(
                f"the zip archive has two entries named {entry.display} (ignoring case): readers could pick "
                "different ones"
            )
        seen.add(folded)
    return prefix


def _check_entries(fileobj: IO[bytes], entries: list[ZipEntry], directory_offset: int) -> None:
    spans = []
    for entry in entries:
        if entry.flags & (_FLAG_ENCRYPTED | _FLAG_STRONG_ENCRYPTION | _FLAG_MASKED_HEADERS):
            raise InvalidPickle(f"zip entry {entry.display} is encrypted")
        if entry.method not in (_STORED, _DEFLATED):
            raise InvalidPickle(
                f"zip entry {entry.display} uses compression method {entry.method} (only stored and deflate "
                "are read by torch)"
            )
        if entry.method == _STORED and entry.compressed_size != entry.size:
            raise InvalidPickle(f"zip entry {entry.display} is stored but its two sizes differ")
        header = _read_at(fileobj, entry.header_offset, 30)
        sig, _version, flags, method, _time, _date, crc, compressed, size, name_length, extra_length = struct.unpack(
            "<4sHHHHHIIIHH", header
        )
        if sig != ZIP_MAGIC:
            raise InvalidPickle(f"zip entry {entry.display} points at no local header")
        if flags != entry.flags or method != entry.method:
            raise InvalidPickle(f"zip entry {entry.display}: its local header and the central directory disagree")
        if _read_at(fileobj, entry.header_offset + 30, name_length) != entry.name:
            raise InvalidPickle(f"zip entry {entry.display}: its local header names another file")
        if not flags & 0x0008 and (
            crc != entry.crc or compressed not in (entry.compressed_size, _U32) or size not in (entry.size, _U32)
        ):
            raise InvalidPickle(f"zip entry {entry.display}: its local header and the central directory disagree")
        data_offset = entry.header_offset + 30 + name_length + extra_length
        spans.append((entry.header_offset, data_offset + entry.compressed_size, entry))
    spans.sort(key=lambda span: span[0])
    if spans[-1][1] > directory_offset:
        raise InvalidPickle(f"zip entry {spans[-1][2].display} runs into the central directory")
    for (_start, end, entry), (next_start, _end, following) in itertools.pairwise(spans):
        if next_start < end:
            raise InvalidPickle(f"zip entries {entry.display} and {following.display} overlap")


def _member_bytes(fileobj: IO[bytes], entry: ZipEntry, limits: PickleLimits) -> bytes:
    """A member's content, decompressed within the byte limit and checked against its CRC."""
    if entry.size > limits.max_bytes:
        raise InvalidPickle(f"{entry.display} is {entry.size} bytes, over the {limits.max_bytes}-byte scan limit")
    if entry.method == _DEFLATED and entry.compressed_size > limits.max_bytes:
        raise InvalidPickle(f"{entry.display} is over the {limits.max_bytes}-byte scan limit compressed")
    header = _read_at(fileobj, entry.header_offset, 30)
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    raw = _read_at(fileobj, entry.header_offset + 30 + name_length + extra_length, entry.compressed_size)
    if entry.method == _DEFLATED:
        inflater = zlib.decompressobj(-15)
        try:
            data = inflater.decompress(raw, entry.size + 1)
        except zlib.error as exc:
            raise InvalidPickle(f"{entry.display}: its deflate stream is corrupt ({exc})") from None
        if len(data) != entry.size or not inflater.eof or inflater.unconsumed_tail or inflater.unused_data:
            raise InvalidPickle(f"{entry.display}: its deflate stream does not hold the {entry.size} bytes announced")
    else:
        data = raw
    if zlib.crc32(data) != entry.crc:
        raise InvalidPickle(f"{entry.display}: CRC mismatch (the archive is corrupt; torch would refuse it too)")
    return data


def _read_at(fileobj: IO[bytes], offset: int, length: int) -> bytes:
    fileobj.seek(offset)
    data = fileobj.read(length)
    if len(data) != length:
        raise InvalidPickle("the file ends inside a zip structure (truncated, or an offset points past the end)")
    return data


def _display(name: bytes) -> str:
    return repr(name.decode("utf-8", "replace")[:200])
