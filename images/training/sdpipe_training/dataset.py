"""Kohya's DreamBooth-style dataset semantics for the builtin engine, from the dataset config.

Each subset is an image folder with ``num_repeats``; an image's caption is its same-stem
``.txt`` (or the subset's ``class_tokens`` when there is none). An epoch is every image times its
repeats, shuffled; ``shuffle_caption`` shuffles comma-separated tags after the first
``keep_tokens``; ``flip_aug`` flips half the images. Images are resized so the shorter side
matches the resolution, then centre-cropped (no aspect-ratio buckets: that is the kohya engine).
"""

from __future__ import annotations

import random
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdpipe.contracts.datasets import IMAGE_EXTENSIONS


@dataclass(frozen=True)
class Example:
    image: Path
    caption: str
    folder: str


@dataclass(frozen=True)
class DatasetConfig:
    examples: list[Example]  # each image once
    repeats: dict[str, int]  # folder -> num_repeats
    size: tuple[int, int]  # (width, height)
    batch_size: int
    caption_extension: str
    shuffle_caption: bool
    keep_tokens: int
    flip_aug: bool

    @classmethod
    def from_toml(cls, text: str) -> DatasetConfig:
        document = tomllib.loads(text)
        general: dict[str, Any] = document.get("general", {})
        [dataset] = document["datasets"]
        options = general | {k: v for k, v in dataset.items() if k != "subsets"}
        resolution = options.get("resolution", 512)
        size = (resolution, resolution) if isinstance(resolution, int) else (resolution[0], resolution[1])
        extension = options.get("caption_extension", ".txt")
        examples: list[Example] = []
        repeats: dict[str, int] = {}
        for subset in dataset["subsets"]:
            folder = Path(subset["image_dir"])
            repeats[folder.name] = int(subset.get("num_repeats", 1))
            for image in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS):
                caption_file = image.with_suffix(extension)
                caption = (
                    caption_file.read_text(encoding="utf-8").strip()
                    if caption_file.is_file()
                    else str(subset.get("class_tokens", ""))
                )
                examples.append(Example(image, caption, folder.name))
        if not examples:
            raise ValueError("the dataset has no images")
        return cls(
            examples=examples,
            repeats=repeats,
            size=size,
            batch_size=int(options.get("batch_size", 1)),
            caption_extension=extension,
            shuffle_caption=bool(options.get("shuffle_caption", False)),
            keep_tokens=int(options.get("keep_tokens", 0)),
            flip_aug=bool(options.get("flip_aug", False)),
        )

    @property
    def images_per_epoch(self) -> int:
        return sum(self.repeats[e.folder] for e in self.examples)

    def epoch(self, rng: random.Random) -> list[int]:
        """Indexes into ``examples`` for one epoch: each image times its repeats, shuffled."""
        order = [i for i, e in enumerate(self.examples) for _ in range(self.repeats[e.folder])]
        rng.shuffle(order)
        return order

    def caption(self, index: int, rng: random.Random) -> str:
        caption = self.examples[index].caption
        if not self.shuffle_caption:
            return caption
        tags = [t.strip() for t in caption.split(",")]
        kept, rest = tags[: self.keep_tokens], tags[self.keep_tokens :]
        rng.shuffle(rest)
        return ", ".join(kept + rest)

    def tag_frequency(self) -> dict[str, dict[str, int]]:
        """Kohya's ``ss_tag_frequency``: per folder, how often each caption tag occurs."""
        frequency: dict[str, dict[str, int]] = {}
        for example in self.examples:
            counts = frequency.setdefault(example.folder, {})
            for tag in (t.strip() for t in example.caption.split(",")):
                if tag:
                    counts[tag] = counts.get(tag, 0) + 1
        return frequency


def load_pixels(path: Path, size: tuple[int, int]) -> Any:
    """The image as a ``3 x H x W`` float tensor in [-1, 1]: shorter side resized, centre-cropped."""
    import numpy as np
    import torch
    from PIL import Image

    width, height = size
    with Image.open(path) as opened:
        image = opened.convert("RGB")
    scale = max(width / image.width, height / image.height)
    resized = image.resize(
        (max(width, round(image.width * scale)), max(height, round(image.height * scale))), Image.Resampling.LANCZOS
    )
    left, top = (resized.width - width) // 2, (resized.height - height) // 2
    cropped = resized.crop((left, top, left + width, top + height))
    array = np.asarray(cropped, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()
