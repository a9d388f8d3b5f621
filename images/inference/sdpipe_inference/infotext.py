"""AUTOMATIC1111's generation parameters text, as the WebUI writes it into PNGs (PNG Info)."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo


def _quote(value: object) -> str:
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


@dataclass
class Infotext:
    prompt: str
    negative_prompt: str
    parameters: dict[str, Any] = field(default_factory=dict)

    def text(self) -> str:
        lines = [self.prompt]
        if self.negative_prompt:
            lines.append(f"Negative prompt: {self.negative_prompt}")
        lines.append(
            ", ".join(f"{key}: {_quote(value)}" for key, value in self.parameters.items() if value is not None)
        )
        return "\n".join(lines)


def png_with_parameters(image: Image.Image, parameters: str) -> bytes:
    """PNG bytes carrying the ``parameters`` text chunk the WebUI's PNG Info reads."""
    info = PngInfo()
    info.add_text("parameters", parameters)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def read_parameters(png: bytes) -> str | None:
    with Image.open(io.BytesIO(png)) as image:
        value = image.info.get("parameters")
        return str(value) if value is not None else None
