"""Recognising image files by their first bytes (no image library in the control plane)."""

from __future__ import annotations

from collections.abc import Callable

_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
)
SNIFF_BYTES = 16


def image_format(head: bytes) -> str | None:
    """``png``, ``jpeg``, ``webp``, ``gif`` or ``bmp`` from the first bytes; None if not an image."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    for signature, name in _SIGNATURES:
        if head.startswith(signature):
            return name
    return None


# Enough of the file for the size of any PNG or WebP and of nearly every JPEG; a JPEG whose
# frame header comes later (a huge EXIF thumbnail) is read further, segment by segment.
SIZE_PROBE_BYTES = 64 * 1024
_JPEG_FRAME_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_JPEG_MAX_SEGMENTS = 256


class ImageUnreadable(ValueError):
    """The bytes are not an image of a known format, or its header is cut short or corrupt."""


def image_size(read: Callable[[int, int], bytes]) -> tuple[str, int, int]:
    """``(format, width, height)`` from the header alone; ``read(offset, length)`` gives bytes.

    No pixel is decoded (the control plane has no image library): PNG's IHDR, JPEG's frame
    header, WebP's VP8/VP8L/VP8X header.
    """
    head = read(0, SIZE_PROBE_BYTES)
    kind = image_format(head)
    if kind == "png":
        if len(head) < 24 or head[12:16] != b"IHDR":
            raise ImageUnreadable("a PNG without its IHDR header")
        return kind, int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    if kind == "webp":
        return (kind, *_webp_size(head))
    if kind == "jpeg":
        return (kind, *_jpeg_size(head, read))
    if kind is None:
        raise ImageUnreadable("not an image (the file does not start like a PNG, JPEG or WebP)")
    raise ImageUnreadable(f"{kind.upper()} images are not used for training; convert it to PNG or JPEG")


def _webp_size(head: bytes) -> tuple[int, int]:
    chunk = head[12:16]
    if chunk == b"VP8 " and len(head) >= 30 and head[23:26] == b"\x9d\x01\x2a":
        return int.from_bytes(head[26:28], "little") & 0x3FFF, int.from_bytes(head[28:30], "little") & 0x3FFF
    if chunk == b"VP8L" and len(head) >= 25 and head[20] == 0x2F:
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(head) >= 30:
        return int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1
    raise ImageUnreadable("a WebP file whose header is cut short or unknown")


def _jpeg_size(head: bytes, read: Callable[[int, int], bytes]) -> tuple[int, int]:
    data, base, offset = head, 0, 2  # ``data`` holds the file's bytes from ``base`` on

    def window(at: int, length: int) -> bytes:
        nonlocal data, base
        if at - base + length > len(data):
            data, base = read(at, max(length, SIZE_PROBE_BYTES)), at
        return data[at - base : at - base + length]

    for _ in range(_JPEG_MAX_SEGMENTS):
        marker = window(offset, 4)
        if len(marker) < 4 or marker[0] != 0xFF:
            break
        code = marker[1]
        if code in (0xD8, 0x01) or 0xD0 <= code <= 0xD7:  # markers without a length
            offset += 2
            continue
        if code in _JPEG_FRAME_MARKERS:
            frame = window(offset + 5, 4)
            if len(frame) == 4:
                height, width = int.from_bytes(frame[0:2], "big"), int.from_bytes(frame[2:4], "big")
                if width and height:
                    return width, height
            break
        if code in (0xD9, 0xDA):  # end of image, or the scan began without a frame header
            break
        offset += 2 + int.from_bytes(marker[2:4], "big")
    raise ImageUnreadable("a JPEG file whose frame header is missing or corrupt")
