"""The multipart plan: S3's limits, whole MiB parts, the same plan for the same size."""

from __future__ import annotations

import itertools

import pytest

from sdpipe.contracts.models import ModelType
from sdpipe.errors import FileTooLarge, ValidationFailed
from sdpipe.layout import model_key_for
from sdpipe.logic.part_plan import MAX_PARTS, MIB, plan_parts

GIB = 1024 * MIB


@pytest.mark.parametrize(
    ("size", "part_size", "count"),
    [
        (1, 8 * MIB, 1),
        (8 * MIB, 8 * MIB, 1),
        (8 * MIB + 1, 8 * MIB, 2),
        (7 * GIB, 8 * MIB, 896),
        (80 * GIB, 9 * MIB, 9103),  # 10,000 parts of 8 MiB would not hold it
        (5 * 1024 * GIB, 525 * MIB, 9987),
    ],
)
def test_parts_follow_s3s_limits(size: int, part_size: int, count: int) -> None:
    plan = plan_parts(size)
    assert (plan.part_size, plan.part_count) == (part_size, count)
    assert plan.part_count <= MAX_PARTS and plan.part_size % MIB == 0
    items = plan.items()
    assert items[0]["start"] == 0 and items[-1]["end"] == size - 1
    assert all(a["end"] + 1 == b["start"] for a, b in itertools.pairwise(items))
    assert plan_parts(size) == plan


def test_sizes_out_of_range_are_refused() -> None:
    with pytest.raises(ValidationFailed, match="size"):
        plan_parts(0)
    with pytest.raises(FileTooLarge):
        plan_parts(5 * 1024 * GIB + 1)


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("../x.safetensors", "'..'"),
        ("/abs.safetensors", "relative"),
        ("a//b.safetensors", "empty"),
        ("x.txt", "extension '.txt'"),
        ("x", "extension '(none)'"),
        ("back\\slash.safetensors", "backslash"),
        ("tab\there.safetensors", "control"),
    ],
)
def test_upload_names_are_checked(name: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        model_key_for(ModelType.LORA, name)


def test_subfolders_are_kept() -> None:
    key = model_key_for(ModelType.CHECKPOINT, "sdxl/juggernaut v9.safetensors")
    assert key.key == "models/Stable-diffusion/sdxl/juggernaut v9.safetensors" and key.name == "sdxl/juggernaut v9"
