"""Image build step: the diffusers config folders (JSON and tokenizer files, no weights) that
single-file checkpoints of each family are loaded with, so the running container never
downloads anything. Run by the Dockerfile; the containers run with HF_HUB_OFFLINE=1.

    python fetch_configs.py /opt/sdpipe/configs
"""

from __future__ import annotations

import sys
from pathlib import Path

# The reference repositories whose layouts the A1111 single-file checkpoints of a family follow.
REPOSITORIES = {
    "sd1": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sd2": "stabilityai/stable-diffusion-2-1",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
    "sdxl_refiner": "stabilityai/stable-diffusion-xl-refiner-1.0",
}
PATTERNS = ["*.json", "*.txt", "tokenizer*/*"]


def main(target: Path) -> None:
    from huggingface_hub import snapshot_download

    for family, repository in REPOSITORIES.items():
        folder = target / family
        snapshot_download(repository, local_dir=folder, allow_patterns=PATTERNS, ignore_patterns=["*.safetensors"])
        if not (folder / "model_index.json").is_file():
            raise SystemExit(f"{repository} gave no model_index.json")
        print(f"{family}: {repository} -> {folder}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
