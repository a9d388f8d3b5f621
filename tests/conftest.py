from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["sdpipe_local.pytest_plugin"]


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from sdpipe_local.tiny_models import create_tiny_checkpoint

    folder = tmp_path_factory.mktemp("tiny")
    paths = {}
    for family in ("sd1", "sd2", "sdxl"):
        path = folder / f"tiny-{family}.safetensors"
        create_tiny_checkpoint(family, path, seed=1)  # type: ignore[arg-type]
        paths[family] = path
    return paths
