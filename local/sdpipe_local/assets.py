"""Dropping local model files into the stack's bucket the way users do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdpipe_local.tiny_models import config_folder_for


def drop_checkpoint(s3: Any, bucket: str, path: Path, key: str) -> None:
    """Upload ``path`` to ``key`` and, first, its diffusers config folder to ``<key stem>.config/``.

    The config goes first so the checkpoint is loadable the moment it is registered; without
    one, the inference container uses its bundled config for the detected family.
    """
    config = config_folder_for(path)
    stem = key.rsplit(".", 1)[0]
    if config.is_dir():
        for item in sorted(config.rglob("*")):
            if item.is_file():
                s3.upload_file(str(item), bucket, f"{stem}.config/{item.relative_to(config).as_posix()}")
    s3.upload_file(str(path), bucket, key)  # multipart above 8 MiB, as large files are


def create_tiny_dataset(
    root: Path, *, concept: str = "mystyle", repeats: int = 10, count: int = 4, size: int = 64, seed: int = 0
) -> Path:
    """A small captioned dataset in Kohya's layout: ``<root>/<repeats>_<concept>/NN.png`` + ``NN.txt``.

    Each image is a bold two-colour pattern (stripes or checks in a warm palette), distinctive
    enough that a few LoRA steps on it visibly move what the tiny model draws. Returns the concept
    folder.
    """
    import random

    from PIL import Image, ImageDraw

    rng = random.Random(seed)  # noqa: S311 - picture patterns, not secrets
    folder = Path(root) / f"{repeats}_{concept}"
    folder.mkdir(parents=True, exist_ok=True)
    palette = [(230, 90, 30), (250, 200, 40), (140, 20, 60), (255, 140, 0)]
    for index in range(count):
        image = Image.new("RGB", (size, size), palette[index % len(palette)])
        draw = ImageDraw.Draw(image)
        step = max(4, size // rng.choice([4, 8]))
        accent = palette[(index + 1) % len(palette)]
        for offset in range(0, size, step * 2):
            if index % 2:
                draw.rectangle([offset, 0, offset + step - 1, size], fill=accent)
            else:
                for y in range(0, size, step * 2):
                    draw.rectangle([offset, y, offset + step - 1, y + step - 1], fill=accent)
        image.save(folder / f"{index:02d}.png")
        pattern = "stripes" if index % 2 else "checks"
        (folder / f"{index:02d}.txt").write_text(f"{concept}, {pattern}, warm colours")
    return folder
