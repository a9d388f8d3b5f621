"""train_lora params and the Kohya configs generated from them, checked against sd-scripts' own
option names (at the commit the training image pins) - sd-scripts itself cannot run here."""

from __future__ import annotations

import json
import tomllib
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from sdpipe.contracts.datasets import Concept, DatasetRecord, DatasetStatus
from sdpipe.contracts.training import LoraConfig, TrainLoraParams, builtin_problems
from sdpipe.logic.kohya_config import build_kohya_files, to_toml
from sdpipe_training.entrypoint import flatten
from sdpipe_training.kohya import SD_SCRIPTS_COMMIT, kohya_command

SD_SCRIPTS = json.loads((Path(__file__).parents[1] / "data" / "sd_scripts_options.json").read_text())


def dataset(*concepts: tuple[str, str, int, int]) -> DatasetRecord:
    now = datetime.now(UTC)
    return DatasetRecord(
        name="mystyle",
        prefix="datasets/mystyle/",
        status=DatasetStatus.REGISTERED,
        concepts=[Concept(folder=f, concept=c, repeats=r, images=n, captions=n) for f, c, r, n in concepts],
        images=sum(c[3] for c in concepts),
        steps_per_epoch_at_batch_1=sum(c[2] * c[3] for c in concepts),
        marker_version="v",
        registered_at=now,
        updated_at=now,
    )


def test_the_image_pins_the_commit_the_options_were_taken_from():
    assert SD_SCRIPTS["commit"] == SD_SCRIPTS_COMMIT
    dockerfile = (Path(__file__).parents[2] / "images" / "training" / "Dockerfile").read_text()
    assert f"SD_SCRIPTS_COMMIT={SD_SCRIPTS_COMMIT}" in dockerfile


def test_every_option_sdpipe_accepts_is_an_sd_scripts_option():
    options = set(SD_SCRIPTS["train_network_options"])
    dataset_keys = set(SD_SCRIPTS["dataset_config"]["general"])
    accepted = set(LoraConfig.model_fields) - {"resolution", "train_batch_size"}  # dataset-config keys
    assert accepted - options - dataset_keys == set()


def test_the_generated_configs_use_only_sd_scripts_keys():
    config = LoraConfig.model_validate(
        {"network_dim": 32, "network_alpha": 16, "resolution": "1024,768", "max_train_epochs": 4,
         "save_every_n_epochs": 2, "optimizer_type": "AdamW8bit", "enable_bucket": True, "min_bucket_reso": 256,
         "shuffle_caption": True, "keep_tokens": 1, "network_args": ["conv_dim=4"], "noise_offset": 0.05}
    )  # fmt: skip
    files = build_kohya_files(
        config, dataset(("10_mystyle", "mystyle", 10, 20), ("3_other", "other", 3, 5)), "base.safetensors", "out"
    )
    options = flatten(tomllib.loads(files.config_toml))
    assert set(options) - set(SD_SCRIPTS["train_network_options"]) == set()
    assert options["network_module"] == "networks.lora"
    assert options["pretrained_model_name_or_path"] == "/opt/ml/input/data/model/base.safetensors"
    assert options["output_dir"] == "/opt/ml/model" and options["save_model_as"] == "safetensors"
    assert options["dataset_config"] == "/opt/ml/input/data/config/dataset.toml"
    assert options["network_args"] == ["conv_dim=4"] and options["optimizer_type"] == "AdamW8bit"
    described = tomllib.loads(files.dataset_toml)
    assert set(described["general"]) <= set(SD_SCRIPTS["dataset_config"]["general"])
    assert described["general"]["caption_extension"] == ".txt"  # not Kohya's default .caption
    [entry] = described["datasets"]
    assert set(entry) - {"subsets"} <= set(SD_SCRIPTS["dataset_config"]["datasets"])
    assert entry["resolution"] == [1024, 768] and entry["enable_bucket"] is True
    assert [(s["image_dir"], s["num_repeats"], s["class_tokens"]) for s in entry["subsets"]] == [
        ("/opt/ml/input/data/dataset/10_mystyle", 10, "mystyle"),
        ("/opt/ml/input/data/dataset/3_other", 3, "other"),
    ]
    for subset in entry["subsets"]:
        assert set(subset) <= set(SD_SCRIPTS["dataset_config"]["subsets"])
    assert files.total_steps == 4 * (20 * 10 + 5 * 3)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_the_kohya_command(family, tmp_path):
    command = kohya_command(family, tmp_path / "config.toml", "bf16", Path("/opt/sd-scripts"), Path("/venv"))
    assert command[:2] == ["/venv/bin/accelerate", "launch"]
    script = "sdxl_train_network.py" if family == "sdxl" else "train_network.py"
    assert command[command.index("--mixed_precision") + 1] == "bf16"
    assert f"/opt/sd-scripts/{script}" in command
    flags = [c[2:] for c in command[command.index(f"/opt/sd-scripts/{script}") + 1 :] if c.startswith("--")]
    assert set(flags) <= set(SD_SCRIPTS["train_network_options"])


def test_defaults_that_matter_are_explicit():
    files = build_kohya_files(LoraConfig(), dataset(("10_a", "a", 10, 4)), "m.safetensors", "out")
    options = flatten(tomllib.loads(files.config_toml))
    assert options["network_dim"] == 16 and options["network_alpha"] == 8.0 and options["learning_rate"] == 1e-4
    assert options["max_train_epochs"] == 10  # not sd-scripts' 1600 steps
    assert tomllib.loads(files.dataset_toml)["general"]["caption_extension"] == ".txt"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"network_dimension": 8}, "unknown Kohya option 'network_dimension'"),
        ({"output_dir": "/tmp"}, "output_dir: set by sdpipe"),
        ({"pretrained_model_name_or_path": "x"}, "set by sdpipe"),
        ({"network_dim": 0}, "greater than or equal to 1"),
        ({"learning_rate": 5}, "less than or equal to 1"),
        ({"resolution": "500"}, "multiple of 8"),
        ({"resolution": "huge"}, "a size in pixels"),
        ({"caption_extension": ".caption"}, "'.txt'"),
        ({"max_train_epochs": 2, "max_train_steps": 10}, "not both"),
        ({"optimizer_type": "Adam9000"}, "optimizer_type"),
        ({"color_aug": True}, "color_aug change each image every epoch, so they need cache_latents = false"),
        ({"random_crop": True, "color_aug": True, "cache_latents": True}, "color_aug and random_crop .* cache_latents"),
        ({"xformers": True, "sdpa": True}, "sdpa or xformers, not both"),
    ],
)
def test_bad_configs_are_refused_by_name(config, message):
    with pytest.raises(ValidationError, match=message):
        TrainLoraParams.model_validate({"base_model": "m", "dataset": "d", "family": "sd1", "config": config})


def test_the_builtin_engine_refuses_what_it_does_not_implement():
    assert builtin_problems(LoraConfig()) == []
    problems = builtin_problems(LoraConfig(optimizer_type="Prodigy", enable_bucket=True, network_dropout=0.1))
    assert any("enable_bucket" in p for p in problems) and any("network_dropout" in p for p in problems)
    assert any("optimizer_type: Prodigy" in p for p in problems)
    assert builtin_problems(LoraConfig(enable_bucket=False)) == []  # given, but the default: harmless


def test_toml_round_trips():
    document = {
        "a": {"x": 1, "y": 2.5, "z": 'it\'s "quoted" \\ é', "flag": True, "items": ["p", "q"]},
        "datasets": [{"resolution": [512, 768], "subsets": [{"image_dir": "/d/1"}, {"image_dir": "/d/2"}]}],
    }
    assert tomllib.loads(to_toml(document)) == document


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (["training sd1 LoRA: …", "step=3/9 epoch=1/2 loss=0.500000 lr=1.000e-04", "saved x"],
         {"step": 3, "total_steps": 9, "loss": 0.5, "epoch": 1, "epochs": 2}),
        (["steps:   4%|▍ | 4/100 [00:03<01:20, 1.19it/s, avr_loss=0.15]\rsteps:   5%|▌ | 5/100 [00:04<01:19,"
          " 1.2it/s, avr_loss=0.142]"], {"step": 5, "total_steps": 100, "loss": 0.142}),
        (["loading the model"], None),
        (["epoch 1/2", "steps:  50%|█████     | 4/8 [00:03<00:03, 1.2it/s, avr_loss=0.2]", "",
          "epoch 2/2", "steps:  62%|██████▎   | 5/8 [00:04<00:02, 1.2it/s, avr_loss=0.18]"],
         {"step": 5, "total_steps": 8, "loss": 0.18, "epoch": 2, "epochs": 2}),
    ],
)  # fmt: skip
def test_step_and_loss_are_read_from_either_engines_log(lines, expected):
    from sdpipe.logic.training_progress import latest_progress

    assert latest_progress(lines) == expected


def test_augmentations_train_with_latents_uncached_and_sdpa_is_the_default_attention():
    assert LoraConfig(color_aug=True, random_crop=True, cache_latents=False).color_aug
    assert LoraConfig().sdpa and not LoraConfig(xformers=True).sdpa
    options = flatten(tomllib.loads(build_kohya_files(LoraConfig(), dataset(("1_a", "a", 1, 2)), "m", "o").config_toml))
    assert options["sdpa"] is True


@pytest.mark.parametrize(
    ("line", "step", "epoch"),
    [
        ("steps:  30%|███       | 3/10 [00:05<00:12, 1.7s/it, avr_loss=0.123]", "3", None),
        ("step=3/10 epoch=1/2 loss=0.500000 lr=1.000e-04", "3", "1"),
        ("epoch 2/5", None, "2"),
    ],
)
def test_sagemakers_metric_regexes_match_both_engines_lines(line, step, epoch):
    import re

    from sdpipe.logic.training_progress import METRIC_DEFINITIONS

    regexes = {d["Name"]: re.compile(d["Regex"]) for d in METRIC_DEFINITIONS}
    found = {name: (m.group(1) if (m := regex.search(line)) else None) for name, regex in regexes.items()}
    assert (found["train:step"], found["train:epoch"]) == (step, epoch)


def test_a_failed_kohya_run_is_explained_by_sd_scripts_first_error_not_accelerates_traceback():
    from sdpipe_training.kohya import KohyaLog

    log = KohyaLog()
    lines = [
        "loading u-net: <All keys matched successfully>",
        "Traceback (most recent call last):",
        '  File "/opt/sd-scripts/train_network.py", line 1115, in <module>',
        "RuntimeError: Error(s) in loading state_dict for UNet2DConditionModel:",
        "\tsize mismatch for conv_in.weight: copying a param with shape torch.Size([320, 9, 3, 3]) from checkpoint,"
        " the shape in current model is torch.Size([320, 4, 3, 3]).",
        "Traceback (most recent call last):",
        *[f'  File "/opt/sd-scripts/venv/lib/python3.10/site-packages/accelerate/{n}.py", line 1' for n in range(30)],
        "subprocess.CalledProcessError: Command '['python', 'train_network.py']' returned non-zero exit status 1.",
    ]
    for line in lines:
        log.add(line + "\n")
    reason = log.reason(1)
    assert reason.startswith(
        "sd-scripts exited with status 1: RuntimeError: Error(s) in loading state_dict for UNet2DConditionModel: "
        "size mismatch for conv_in.weight"
    )
    assert "CalledProcessError" in reason and len(reason) <= 900
    assert KohyaLog().reason(2) == "sd-scripts exited with status 2: "


def test_kohya_reads_the_relocated_dataset_file_when_opt_ml_lives_elsewhere(tmp_path):
    """The local stand-in runs the entrypoint over a folder of its own: the channel's dataset file
    still names /opt/ml, so sd-scripts must be pointed at the relocated copy (it found "No data")."""
    from sdpipe_training.entrypoint import kohya_files
    from sdpipe_training.sagemaker_env import SageMakerPaths

    paths = SageMakerPaths(tmp_path)
    files = build_kohya_files(LoraConfig(), dataset(("1_a", "a", 1, 2)), "m.safetensors", "out")
    config_file = kohya_files(paths, paths.relocate(files.config_toml), paths.relocate(files.dataset_toml))
    named = Path(flatten(tomllib.loads(config_file.read_text()))["dataset_config"])
    assert named.parent == config_file.parent
    image_dirs = [s["image_dir"] for d in tomllib.loads(named.read_text())["datasets"] for s in d["subsets"]]
    assert image_dirs and all(d.startswith(str(tmp_path)) for d in image_dirs)


def test_a_kohya_lora_records_the_registered_base_model_and_its_hashes_stay_true(tmp_path):
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    from sdpipe_training.lora_files import kohya_hashes, save_lora, stamp_base_model

    path = tmp_path / "style.safetensors"
    tensors = {"lora_unet_x.lora_down.weight": torch.ones(4, 8), "lora_unet_x.alpha": torch.tensor(4.0)}
    save_lora(path, tensors, {"ss_sd_model_name": "model.safetensors", "ss_network_dim": "4"})
    stamp_base_model(path, name="dreamshaper_8", sha256="ab" * 32, legacy_hash="")
    with safe_open(str(path), "pt") as opened:
        metadata = opened.metadata()
    assert metadata["ss_sd_model_name"] == "dreamshaper_8" and metadata["ss_new_sd_model_hash"] == "ab" * 32
    assert metadata["ss_network_dim"] == "4" and "ss_sd_model_hash" not in metadata  # nothing given: nothing said
    assert (metadata["sshs_model_hash"], metadata["sshs_legacy_hash"]) == kohya_hashes(load_file(str(path)), metadata)


def test_sd2_bases_tell_sd_scripts_what_it_does_not_look_for():
    """sd-scripts reads no architecture from the file: an SD 2.x base needs ``v2`` (its OpenCLIP
    encoder), a 768 one ``v_parameterization`` too; other families get neither."""
    from sdpipe.logic.kohya_config import BaseArchitecture

    def options(base: BaseArchitecture | None) -> dict:
        files = build_kohya_files(LoraConfig(), dataset(("1_a", "a", 1, 2)), "m.safetensors", "out", base)
        return flatten(tomllib.loads(files.config_toml))

    v768 = options(BaseArchitecture("sd2", "v_prediction"))
    assert v768["v2"] is True and v768["v_parameterization"] is True
    assert {"v2", "v_parameterization"} <= set(SD_SCRIPTS["train_network_options"])
    base512 = options(BaseArchitecture("sd2", "epsilon"))
    assert base512["v2"] is True and "v_parameterization" not in base512
    for other in (None, BaseArchitecture("sd1"), BaseArchitecture("sdxl")):
        assert not {"v2", "v_parameterization"} & set(options(other))


def test_the_trainer_takes_its_config_from_a_yaml_in_the_model_channel(tmp_path):
    from sdpipe_training.entrypoint import _model_config
    from sdpipe_training.sagemaker_env import SageMakerPaths

    paths = SageMakerPaths(tmp_path)
    channel = paths.channel("model")
    channel.mkdir(parents=True)
    hyperparameters = {"model_config": "m.config", "original_config": "m.yaml", "base_model_prediction": "epsilon"}
    assert _model_config(paths, hyperparameters, "sd2").name == "sd2"  # no yaml: registration's finding
    (channel / "m.yaml").write_text("model:\n  params:\n    parameterization: v\n")
    assert _model_config(paths, hyperparameters, "sd2").name == "sd2_v"


def test_sd_scripts_is_told_v_parameterization_from_a_yaml_in_the_model_channel(tmp_path):
    from sdpipe.logic.kohya_config import BaseArchitecture
    from sdpipe_training.entrypoint import _with_yaml_prediction
    from sdpipe_training.sagemaker_env import SageMakerPaths

    paths = SageMakerPaths(tmp_path)
    (paths.channel("model")).mkdir(parents=True)
    files = build_kohya_files(LoraConfig(), dataset(("1_a", "a", 1, 2)), "m.safetensors", "o", BaseArchitecture("sd2"))
    hyperparameters = {"original_config": "m.yaml"}
    assert _with_yaml_prediction(paths, hyperparameters, "sd2", files.config_toml) == files.config_toml
    (paths.channel("model") / "m.yaml").write_text("model:\n  params:\n    parameterization: v\n")
    options = flatten(tomllib.loads(_with_yaml_prediction(paths, hyperparameters, "sd2", files.config_toml)))
    assert options["v2"] is True and options["v_parameterization"] is True
    assert _with_yaml_prediction(paths, hyperparameters, "sd1", files.config_toml) == files.config_toml
