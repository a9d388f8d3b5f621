"""The images' contract with SageMaker, checked from their Dockerfiles: SageMaker runs
``<ENTRYPOINT> serve`` / ``<ENTRYPOINT> train``, and so does the local stack, from the same line."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from sdpipe_local.images import ImageDefinition, ImageError, parse_dockerfile

ROOT = Path(__file__).resolve().parents[2]
IMAGES = {"inference": "serve", "training": "train"}


@pytest.mark.parametrize(("image", "argument"), IMAGES.items())
def test_the_entrypoint_is_the_images_own_console_script_and_takes_sagemakers_argument(image, argument):
    definition = parse_dockerfile(ROOT / "images" / image / "Dockerfile")
    scripts = tomllib.loads((ROOT / "images" / image / "pyproject.toml").read_text())["project"]["scripts"]
    [program] = definition.entrypoint
    assert program in scripts, f"ENTRYPOINT {program} is not a console script of images/{image}"
    module, function = scripts[program].split(":")
    main = getattr(__import__(module, fromlist=[function]), function)
    with pytest.raises(SystemExit) as shown:
        main([argument, "--help"])  # argparse accepts SageMaker's word and exits after the help
    assert shown.value.code == 0
    # What the local stand-in runs: this very entrypoint, from the virtualenv, with the word appended.
    command = definition.command(argument)
    assert Path(command[0]).name == program and command[1:] == [argument]


@pytest.mark.parametrize("image", IMAGES)
def test_the_image_runs_the_torch_ci_tests_on_a_base_pinned_by_digest(image):
    text = (ROOT / "images" / image / "Dockerfile").read_text()
    bases = re.findall(r"^FROM\s+(\S+)", text, flags=re.MULTILINE)
    assert bases and all(re.search(r"@sha256:[0-9a-f]{64}$", base) for base in bases), bases
    assert all("cuda" in base for base in bases)
    # torch comes from constraints.txt, which pins the version CI installs.
    assert re.search(r"pip install --constraint constraints\.txt torch\b", text)
    assert "torch==" not in text.replace("grep -E '^torch(vision)?==' constraints.txt", "")
    constraints = (ROOT / "constraints.txt").read_text()
    makefile = (ROOT / "Makefile").read_text()
    [pinned] = re.findall(r"^torch==(\S+)$", constraints, flags=re.MULTILINE)
    assert f"torch=={pinned}" in makefile


def test_the_training_image_has_the_torchvision_sd_scripts_imports_built_for_its_torch():
    """sd-scripts imports torchvision at start (library/utils.py), and its requirements leave it to
    the torch install: without it every kohya job fails with ModuleNotFoundError (a hand run of
    sd-scripts at the pinned commit did)."""
    text = (ROOT / "images" / "training" / "Dockerfile").read_text()
    assert re.search(r"pip install --constraint constraints\.txt torch torchvision\b", text)
    constraints = (ROOT / "constraints.txt").read_text()
    [torch_minor] = re.findall(r"^torch==2\.(\d+)\.", constraints, flags=re.MULTILINE)
    [vision_minor] = re.findall(r"^torchvision==0\.(\d+)\.", constraints, flags=re.MULTILINE)
    assert int(vision_minor) == int(torch_minor) + 15  # PyTorch's pairing: 2.13 <-> 0.28


def test_dockerfile_parsing(tmp_path):
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(
        'FROM builder AS build\nENTRYPOINT ["wrong"]\n'
        "FROM base@sha256:" + "0" * 64 + "\n"
        'ENV A=1 \\\n    B="two words" \\\n    CACHE=/var/cache/x\n'
        "# a comment\nENV LEGACY value with spaces\nENV C=$A-${B}\n"
        'ENTRYPOINT ["serve-it", "--flag"]\n'
    )
    definition = parse_dockerfile(dockerfile)
    assert definition.entrypoint == ("serve-it", "--flag")
    assert definition.environment == {
        "A": "1", "B": "two words", "CACHE": "/var/cache/x", "LEGACY": "value with spaces", "C": "1-two words",
    }  # fmt: skip
    assert definition.container_environment(tmp_path)["CACHE"] == str(tmp_path / "var/cache/x")
    with pytest.raises(ImageError, match="executable file not found"):
        definition.command("serve")
    shell_form = tmp_path / "Shell"
    shell_form.write_text("FROM x\nENTRYPOINT python -m app\n")
    with pytest.raises(ImageError, match="exec form"):
        parse_dockerfile(shell_form)
    assert ImageDefinition(dockerfile, (), {}).entrypoint == ()


@pytest.mark.parametrize("image", IMAGES)
def test_no_image_asks_a_model_hub_for_anything(image):
    text = (ROOT / "images" / image / "Dockerfile").read_text()
    for hub_call in ("from_pretrained", "snapshot_download", "hf_hub_download", "HF_HUB_OFFLINE=0", "huggingface.co"):
        assert hub_call not in text, hub_call
    # The shipped configs and the offline tokenizers are built into the image from the BPE file.
    assert "python -m sdpipe_inference.family_configs" in text and "--no-deps open_clip_torch" in text
