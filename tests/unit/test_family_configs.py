"""The shipped family configs and the CLIP tokenizers built offline from open_clip's BPE file."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from sdpipe_inference.family_configs import (
    CONFIGS,
    KOHYA_TOKENIZERS,
    ModelConfigMissing,
    config_folder,
    config_name,
    kohya_tokenizer_cache,
)

# (config, UNet in/context/blocks, text encoders and their widths): the reference checkpoints'
# architectures, which a loaded single file must match key for key.
ARCHITECTURES = {
    "sd1": (4, 768, [320, 640, 1280, 1280], {"text_encoder": 768}),
    "sd1_inpainting": (9, 768, [320, 640, 1280, 1280], {"text_encoder": 768}),
    "sd2": (4, 1024, [320, 640, 1280, 1280], {"text_encoder": 1024}),
    "sd2_v": (4, 1024, [320, 640, 1280, 1280], {"text_encoder": 1024}),
    "sdxl": (4, 2048, [320, 640, 1280], {"text_encoder": 768, "text_encoder_2": 1280}),
    "sdxl_refiner": (4, 1280, [384, 768, 1536, 1536], {"text_encoder_2": 1280}),
}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("configs")


def test_the_shipped_configs_are_what_the_tool_writes():
    from tools.family_configs import out_of_step

    assert out_of_step() == []
    assert sorted(p.name for p in CONFIGS.iterdir() if p.is_dir()) == sorted(ARCHITECTURES)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_each_config_describes_its_reference_architecture(name, built):
    in_channels, context, blocks, encoders = ARCHITECTURES[name]
    folder = config_folder(name, built)
    unet = json.loads((folder / "unet" / "config.json").read_text())
    found = (unet["in_channels"], unet["cross_attention_dim"], unet["block_out_channels"])
    assert found == (in_channels, context, blocks)
    index = json.loads((folder / "model_index.json").read_text())
    for encoder, width in encoders.items():
        assert json.loads((folder / encoder / "config.json").read_text())["hidden_size"] == width
        assert index[encoder.replace("text_encoder", "tokenizer")] == ["transformers", "CLIPTokenizer"]
        assert (folder / encoder.replace("text_encoder", "tokenizer") / "vocab.json").is_file()
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["prediction_type"] == ("v_prediction" if name == "sd2_v" else "epsilon")


def test_the_clip_tokenizer_gives_clips_token_ids(built):
    from transformers import CLIPTokenizer

    folder = config_folder("sdxl", built)
    first = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    second = CLIPTokenizer.from_pretrained(folder / "tokenizer_2")
    assert len(first) == 49408
    for tokenizer in (first, second):
        assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    # SD1 and SDXL's first encoder pad with the end token; OpenCLIP's (SDXL's second, SD2) with "!".
    padded = {"padding": "max_length", "max_length": 77}
    assert first("a cat", **padded).input_ids[4:] == [49407] * 73
    assert second("a cat", **padded).input_ids[4:] == [0] * 73
    sd2 = CLIPTokenizer.from_pretrained(config_folder("sd2", built) / "tokenizer")
    assert sd2.pad_token == "!" and sd2.pad_token_id == 0


def test_kohya_finds_its_tokenizers_where_sd_scripts_looks(tmp_path):
    from transformers import CLIPTokenizer

    cache = kohya_tokenizer_cache(tmp_path)
    for name in KOHYA_TOKENIZERS:
        tokenizer = CLIPTokenizer.from_pretrained(cache / name)
        assert tokenizer("a photo of a cat").input_ids[:3] == [49406, 320, 1125]


def test_the_kohya_config_names_the_offline_tokenizers(tmp_path, monkeypatch):
    from sdpipe.contracts.training import LoraConfig
    from sdpipe.logic.kohya_config import build_kohya_files
    from sdpipe_training.entrypoint import kohya_files
    from sdpipe_training.sagemaker_env import SageMakerPaths
    from tests.unit.test_training_config import dataset

    monkeypatch.setenv("SDPIPE_CONFIGS_DIR", str(tmp_path / "configs"))
    paths = SageMakerPaths(tmp_path / "ml")
    files = build_kohya_files(LoraConfig(), dataset(("1_a", "a", 1, 2)), "m.safetensors", "out")
    config = tomllib.loads(kohya_files(paths, files.config_toml, files.dataset_toml).read_text())
    cache = Path(config["tokenizer_cache_dir"])
    assert cache.parent == tmp_path / "configs" and (cache / "openai_clip-vit-large-patch14" / "vocab.json").is_file()


@pytest.mark.parametrize(
    ("family", "variant", "prediction", "expected"),
    [
        ("sd1", None, None, "sd1"),
        ("sd1", "inpainting", None, "sd1_inpainting"),
        ("sd2", None, "v_prediction", "sd2_v"),
        ("sd2", None, "epsilon", "sd2"),
        ("sdxl_refiner", None, None, "sdxl_refiner"),
    ],
)
def test_registrations_findings_choose_the_config(family, variant, prediction, expected):
    assert config_name(family, variant, prediction) == expected


@pytest.mark.parametrize(
    ("family", "variant", "named"),
    [("unknown", None, "family 'unknown'"), ("sd1", "instruct-pix2pix", "variant 'instruct-pix2pix'")],
)
def test_a_checkpoint_no_config_fits_is_refused_naming_what_was_detected(family, variant, named):
    with pytest.raises(ModelConfigMissing) as raised:
        config_name(family, variant)
    assert named in str(raised.value) and "sd1, sd1_inpainting" in str(raised.value)
    assert raised.value.code == "MODEL_CONFIG_MISSING"


def test_concurrent_builders_leave_one_complete_folder(tmp_path):
    first = config_folder("sd1", tmp_path)
    again = config_folder("sd1", tmp_path)
    assert first == again and [p.name for p in tmp_path.iterdir()] == ["sd1"]


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("model:\n  params:\n    parameterization: \"v\"\n    unet_config:\n      params:\n        in_channels: 4\n",
         (None, "v_prediction")),
        ("model:\n  params:\n    unet_config:\n      params:\n        in_channels: 9\n", ("inpainting", "epsilon")),
    ],
)  # fmt: skip
def test_an_ldm_yaml_beside_the_checkpoint_says_what_the_weights_are(yaml_text, expected):
    from sdpipe_inference.family_configs import choice_from_ldm_yaml

    assert choice_from_ldm_yaml(yaml_text) == expected
    with pytest.raises(ModelConfigMissing, match="not an LDM config"):
        choice_from_ldm_yaml("just: text\n")


def test_weights_that_do_not_fit_the_chosen_config_are_named(tmp_path, built):
    """A config override (or a family told wrongly) that does not match the file: the job's error
    names the module, the tensor and both shapes instead of diffusers' traceback."""
    from sdpipe_inference.engine import Engine, ModelConfigMismatch, ModelSpec
    from sdpipe_local.tiny_models import create_tiny_checkpoint

    path = tmp_path / "tiny.safetensors"
    create_tiny_checkpoint("sd1", path, seed=1)  # 32-wide CLIP: not SD 1.5's 768
    spec = ModelSpec("tiny", "ab" * 32, "abababab", "sd1", path, config_folder("sd1", built))
    with pytest.raises(ModelConfigMismatch) as raised:
        Engine(device="cpu").cache.get(spec)
    message = str(raised.value)
    assert raised.value.code == "MODEL_CONFIG_MISMATCH"
    assert "'tiny' does not fit the config 'sd1'" in message and "the text encoder's" in message
    assert "[77, 32] in the file, the config expects [77, 768]" in message


def test_a_checkpoint_the_device_cannot_hold_is_refused_after_evicting_the_cache(tmp_path, built):
    """Not an OOM kill and a restart into the same request: a clear error, once the cached
    pipelines have been let go and it still does not fit."""
    from sdpipe_inference.acceleration import Acceleration
    from sdpipe_inference.engine import ModelSpec, PipelineCache
    from sdpipe_inference.memory import ModelTooLarge, weight_count
    from sdpipe_local.tiny_models import config_folder_for, create_tiny_checkpoint

    path = tmp_path / "tiny.safetensors"
    create_tiny_checkpoint("sd1", path, seed=1)
    spec = ModelSpec("tiny", "ab" * 32, "abababab", "sd1", path, config_folder_for(path))
    weights = weight_count(path)
    assert 0 < weights < path.stat().st_size  # fp32 in the file: four bytes a weight
    free = {"bytes": weights * 4 * 2}
    cache = PipelineCache(2, Acceleration("cpu"), free_memory=lambda device: free["bytes"])
    cache.get(spec)  # fits
    free["bytes"] = weights * 4  # without the headroom a generation needs
    other = ModelSpec("other", "cd" * 32, "cdcdcdcd", "sd1", path, spec.config)
    with pytest.raises(ModelTooLarge) as raised:
        cache.get(other)
    assert raised.value.code == "MODEL_TOO_LARGE" and "'other' needs about" in str(raised.value)
    assert "larger instance type" in str(raised.value)
    free["bytes"] = weights * 4 * 2
    cache.get(spec)
    assert cache.loads == 2  # the first had been evicted to make room: loaded again
