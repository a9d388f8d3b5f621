"""The kohya engine: kohya-ss/sd-scripts' ``train_network.py`` / ``sdxl_train_network.py``.

sd-scripts is installed in the image at a pinned commit (see the Dockerfile); the entrypoint runs
it through ``accelerate launch`` with the job's config file, which names the dataset config.
"""

from __future__ import annotations

import os
from pathlib import Path

# The sd-scripts commit the image installs; the generated configs are tested against its options.
SD_SCRIPTS_COMMIT = "48d368fa557731ad0488c07304dfeba8c07910eb"
SD_SCRIPTS_DIR = Path(os.environ.get("SD_SCRIPTS_DIR", "/opt/sd-scripts"))
# sd-scripts pins its own diffusers/transformers, so it lives in a virtualenv of its own.
SD_SCRIPTS_VENV = Path(os.environ.get("SD_SCRIPTS_VENV", "/opt/sd-scripts/venv"))
SCRIPTS = {"sd1": "train_network.py", "sdxl": "sdxl_train_network.py"}


def kohya_command(
    family: str,
    config_file: Path,
    mixed_precision: str,
    scripts_dir: Path = SD_SCRIPTS_DIR,
    venv: Path = SD_SCRIPTS_VENV,
) -> list[str]:
    """The command line that trains with ``config_file`` (which also names the dataset config)."""
    return [
        str(venv / "bin" / "accelerate"), "launch",
        "--num_processes", "1",
        "--num_machines", "1",
        "--num_cpu_threads_per_process", "2",
        "--mixed_precision", mixed_precision,
        "--dynamo_backend", "no",
        str(scripts_dir / SCRIPTS[family]),
        "--config_file", str(config_file),
    ]  # fmt: skip
