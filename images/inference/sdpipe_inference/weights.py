"""Tensors from a model file: safetensors, or a pickle read only through PyTorch's weights-only loader."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def read_state_dict(path: Path) -> dict[str, Any]:
    import torch

    with path.open("rb") as handle:
        head = handle.read(16)
    if path.suffix == ".safetensors" or (len(head) > 8 and head[8:9] == b"{"):
        from safetensors.torch import load_file

        return dict(load_file(str(path)))
    loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise ValueError(f"{path.name} holds no state dict")
    return {k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)}
