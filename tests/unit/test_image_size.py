"""Image sizes from headers alone (the control plane has no image library)."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from sdpipe.inspect.images import ImageUnreadable, image_size


def encoded(width: int, height: int, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA" if fmt == "WEBP" else "RGB", (width, height), (10, 200, 30, 255)).save(
        buffer, format=fmt, **options
    )
    return buffer.getvalue()


def reader(data: bytes, reads: list[int] | None = None):
    def read(offset: int, length: int) -> bytes:
        if reads is not None:
            reads.append(offset)
        return data[offset : offset + length]

    return read


@pytest.mark.parametrize(
    ("fmt", "options", "expected"),
    [
        ("PNG", {}, "png"),
        ("JPEG", {}, "jpeg"),
        ("JPEG", {"progressive": True}, "jpeg"),
        ("WEBP", {"lossless": True}, "webp"),  # VP8L
        ("WEBP", {"quality": 80}, "webp"),  # VP8X (alpha) or VP8
    ],
)
def test_sizes_of_every_training_format(fmt, options, expected):
    data = encoded(321, 123, fmt, **options)
    assert image_size(reader(data)) == (expected, 321, 123)


def test_lossy_webp_without_alpha():
    buffer = io.BytesIO()
    Image.new("RGB", (50, 70), (1, 2, 3)).save(buffer, format="WEBP", quality=70)
    assert image_size(reader(buffer.getvalue())) == ("webp", 50, 70)


def test_a_jpeg_whose_frame_header_is_past_a_large_exif_block_is_read_further():
    data = encoded(40, 30, "JPEG")
    app1 = b"\xff\xe1" + (65533).to_bytes(2, "big") + b"Exif\x00\x00" + b"\x00" * 65525
    padded = data[:2] + app1 + app1 + data[2:]  # two 64 KiB segments before the frame header
    reads: list[int] = []
    assert image_size(reader(padded, reads)) == ("jpeg", 40, 30)
    assert len(reads) >= 2


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"hello, this is text", "not an image"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "IHDR"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "frame header"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "WebP"),
        (b"GIF89a\x01\x00\x01\x00", "GIF images are not used"),
    ],
)
def test_unreadable_headers_say_why(data, message):
    with pytest.raises(ImageUnreadable, match=message):
        image_size(reader(data))
