"""Recognising image files by their first bytes (no image library in the control plane)."""

from __future__ import annotations

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
