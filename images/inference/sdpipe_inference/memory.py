"""Whether a checkpoint fits where it is to be loaded: how many weights the file holds and how
much memory the device has free. The engine refuses what does not fit with a clear error,
instead of being OOM-killed and restarted into the same request by SageMaker."""

from __future__ import annotations

import math
from pathlib import Path

from sdpipe.errors import SdpipeError
from sdpipe.inspect.safetensors_header import parse_header


class ModelTooLarge(SdpipeError):
    code = "MODEL_TOO_LARGE"


# Loaded weights take their size and some more (activations, the VAE's decode) on top.
HEADROOM = 1.25


def weight_count(path: Path) -> int:
    """How many weights the file holds: exact from a safetensors header, a lower bound (fp32
    storage) for a pickle, which is not opened before the weights-only load."""
    size = path.stat().st_size
    with path.open("rb") as handle:

        def read_range(start: int, length: int) -> bytes:
            handle.seek(start)
            return handle.read(length)

        try:
            header = parse_header(read_range, size, 100 * 2**20)
        except SdpipeError:
            return size // 4
    return sum(math.prod(info.shape) for info in header.tensors.values())


def free_device_memory(device: str) -> int:
    """Free bytes where the weights go: the GPU's, else the container's (its cgroup limit counts)."""
    import torch

    if device != "cpu":
        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    free = _meminfo_available()
    limit, used = _read_int("/sys/fs/cgroup/memory.max"), _read_int("/sys/fs/cgroup/memory.current")
    if limit is not None and used is not None:
        free = min(free, limit - used)
    return free


def _meminfo_available() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 1 << 62  # pragma: no cover - not Linux: nothing to go by


def _read_int(path: str) -> int | None:
    try:
        return int(Path(path).read_text().strip())
    except (OSError, ValueError):  # absent, or "max"
        return None
