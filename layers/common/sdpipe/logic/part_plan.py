"""How a file is cut into multipart-upload parts (S3's limits).

The plan depends on the size alone, so a client that resumes, a ``complete_upload`` that checks
the parts and a fetch workflow's parallel copiers all agree on it without storing it anywhere.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from sdpipe.errors import FileTooLarge, ValidationFailed

MIB = 1024 * 1024
MIN_PART_BYTES = 8 * MIB  # S3 allows 5 MiB; fewer, larger parts cost fewer requests
MAX_PART_BYTES = 5 * 1024 * MIB
MAX_PARTS = 10_000
MAX_OBJECT_BYTES = 5 * 1024 * 1024 * MIB  # 5 TiB


@dataclass(frozen=True)
class PartPlan:
    size: int
    part_size: int

    @property
    def part_count(self) -> int:
        return max(1, -(-self.size // self.part_size))

    def part_range(self, number: int) -> tuple[int, int]:
        """The inclusive byte range of part ``number`` (1-based)."""
        if not 1 <= number <= self.part_count:
            raise ValueError(f"part {number} is outside 1..{self.part_count}")
        start = (number - 1) * self.part_size
        return start, min(start + self.part_size, self.size) - 1

    def part_length(self, number: int) -> int:
        start, end = self.part_range(number)
        return end - start + 1

    def parts(self) -> list[PlannedPart]:
        return [PlannedPart(n, *self.part_range(n)) for n in range(1, self.part_count + 1)]

    def items(self) -> list[dict[str, int]]:
        """Every part as ``{"part", "start", "end"}`` (what the fetch workflow's Map iterates)."""
        return [dataclasses.asdict(part) for part in self.parts()]


@dataclass(frozen=True)
class PlannedPart:
    part: int
    start: int
    end: int  # inclusive


def plan_parts(size: int, min_part_bytes: int = MIN_PART_BYTES) -> PartPlan:
    """Parts of at least ``min_part_bytes`` (whole MiB), at most 10,000 of them, at most 5 GiB each."""
    if size <= 0:
        raise ValidationFailed(f"size: must be more than 0 bytes, got {size}")
    if size > MAX_OBJECT_BYTES:
        raise FileTooLarge(f"size: {size} bytes is over S3's 5 TiB object limit")
    needed = -(-size // MAX_PARTS)
    part_size = max(min_part_bytes, -(-needed // MIB) * MIB)
    if part_size > MAX_PART_BYTES:  # unreachable under the 5 TiB limit; kept as the rule's statement
        raise FileTooLarge(f"size: {size} bytes needs parts over S3's 5 GiB part limit")
    return PartPlan(size=size, part_size=part_size)
