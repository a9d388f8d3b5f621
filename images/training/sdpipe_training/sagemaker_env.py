"""SageMaker's training contract: where hyperparameters, input channels and outputs live.

- ``input/config/hyperparameters.json``: string values (SageMaker passes strings only)
- ``input/data/<channel>/``: each input channel, downloaded before the entrypoint starts
- ``model/``: what ends up in ``model.tar.gz``; ``output/data/``: ``output.tar.gz``
- ``output/failure``: the reason SageMaker reports when the job fails

``SDPIPE_OPT_ML`` moves the root (the local stand-in runs the entrypoint over a folder of its own).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from sdpipe.logic.kohya_config import OPT_ML


@dataclass(frozen=True)
class SageMakerPaths:
    root: Path

    @classmethod
    def from_environment(cls) -> SageMakerPaths:
        return cls(Path(os.environ.get("SDPIPE_OPT_ML", OPT_ML)))

    def hyperparameters(self) -> dict[str, str]:
        path = self.root / "input" / "config" / "hyperparameters.json"
        return {k: str(v) for k, v in json.loads(path.read_text()).items()} if path.is_file() else {}

    def channel(self, name: str) -> Path:
        return self.root / "input" / "data" / name

    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    @property
    def output_data_dir(self) -> Path:
        return self.root / "output" / "data"

    def relocate(self, text: str) -> str:
        """Config text written for ``/opt/ml`` with its paths moved under this root."""
        if str(self.root) == OPT_ML:
            return text
        return text.replace(f'"{OPT_ML}/', f'"{self.root.as_posix()}/')

    def write_failure(self, reason: str) -> None:
        """SageMaker shows this file's contents (up to 1 KiB) as the job's FailureReason."""
        path = self.root / "output" / "failure"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(reason[:1024])
