"""The training container's entrypoint (SageMaker runs it with ``train`` as its argument).

Hyperparameters (strings): ``engine`` (kohya|builtin), ``family`` (sd1|sd2|sdxl), ``checkpoint`` (the
file in the ``model`` channel), ``model_config`` (its diffusers config folder there, or empty for
the image's own for the family), and the base model's ``base_model_name``/``base_model_sha256``/
``base_model_legacy_hash`` (recorded in the LoRA's metadata), what registration found
(``base_model_variant``, ``base_model_prediction``) and ``original_config`` (an A1111
``<name>.yaml`` in the channel, which overrides those). The ``config`` channel holds the
Kohya config and dataset config. LoRA files go to ``/opt/ml/model``; a failure's reason goes to
``/opt/ml/output/failure``; SIGTERM (StopTrainingJob, or the max runtime) stops the run.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import tomllib
import traceback
from pathlib import Path
from typing import Any

from sdpipe.logic.kohya_config import CHANNEL_CONFIG, CHANNEL_MODEL, CONFIG_FILE, DATASET_CONFIG_FILE, to_toml
from sdpipe_training.sagemaker_env import SageMakerPaths


class TrainingError(Exception):
    """A failure whose message is the job's FailureReason."""


def _log(message: str) -> None:
    print(message, flush=True)


def flatten(config: dict[str, Any]) -> dict[str, Any]:
    """sd-scripts reads a config file's tables as one flat set of options."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat |= flatten(value)
        else:
            flat[key] = value
    return flat


def run(paths: SageMakerPaths, stop: threading.Event) -> list[Path]:
    hyperparameters = paths.hyperparameters()
    engine, family = hyperparameters.get("engine", "builtin"), hyperparameters.get("family", "sd1")
    config_dir = paths.channel(CHANNEL_CONFIG)
    try:
        config_text = paths.relocate((config_dir / CONFIG_FILE).read_text())
        dataset_text = paths.relocate((config_dir / DATASET_CONFIG_FILE).read_text())
    except FileNotFoundError as exc:
        raise TrainingError(f"the config channel lacks {Path(exc.filename).name}") from None
    paths.model_dir.mkdir(parents=True, exist_ok=True)
    if engine == "kohya":
        _run_kohya(
            paths, family, _with_yaml_prediction(paths, hyperparameters, family, config_text), dataset_text, stop
        )
    elif engine == "builtin":
        _run_builtin(paths, hyperparameters, family, config_text=config_text, dataset_text=dataset_text, stop=stop)
    else:
        raise TrainingError(f"unknown engine {engine!r} (kohya or builtin)")
    written = sorted(paths.model_dir.glob("*.safetensors"))
    if not written and not stop.is_set():
        raise TrainingError("training ended without writing a LoRA file to /opt/ml/model")
    if engine == "kohya":
        from sdpipe_training.lora_files import stamp_base_model

        for path in written:
            stamp_base_model(path, name=hyperparameters.get("base_model_name", ""),
                             sha256=hyperparameters.get("base_model_sha256", ""),
                             legacy_hash=hyperparameters.get("base_model_legacy_hash", ""))  # fmt: skip
    return written


def _run_builtin(
    paths: SageMakerPaths,
    hyperparameters: dict[str, str],
    family: str,
    *,
    config_text: str,
    dataset_text: str,
    stop: threading.Event,
) -> None:
    from sdpipe_training.builtin import BaseModel, TrainingRun, train
    from sdpipe_training.dataset import DatasetConfig

    options = flatten(tomllib.loads(config_text))
    options["output_dir"] = str(paths.model_dir)
    checkpoint = paths.channel(CHANNEL_MODEL) / hyperparameters["checkpoint"]
    if not checkpoint.is_file():
        raise TrainingError(f"the model channel lacks the checkpoint {hyperparameters['checkpoint']}")
    config = _model_config(paths, hyperparameters, family)
    try:
        dataset = DatasetConfig.from_toml(dataset_text)
    except (OSError, ValueError) as exc:
        raise TrainingError(f"dataset: {exc}") from None
    base = BaseModel(
        path=checkpoint,
        config=config,
        name=hyperparameters.get("base_model_name", ""),
        sha256=hyperparameters.get("base_model_sha256", ""),
        legacy_hash=hyperparameters.get("base_model_legacy_hash", ""),
    )
    train(TrainingRun(family=family, base=base, options=options, dataset=dataset, output_dir=paths.model_dir,
                      stop=stop, log=_log))  # fmt: skip


def _model_config(paths: SageMakerPaths, hyperparameters: dict[str, str], family: str) -> Path:
    """The checkpoint's own diffusers config folder, else the shipped one its ``<name>.yaml`` or
    its registration chose (the order inference uses)."""
    from sdpipe_inference.family_configs import (
        ModelConfigMissing,
        built_configs_dir,
        choice_from_ldm_yaml,
        config_folder,
        config_name,
    )

    channel = paths.channel(CHANNEL_MODEL)
    own = hyperparameters.get("model_config")
    if own and (channel / own / "model_index.json").is_file():
        return channel / own
    variant = hyperparameters.get("base_model_variant") or None
    prediction = hyperparameters.get("base_model_prediction") or None
    original = hyperparameters.get("original_config")
    try:
        if original and (channel / original).is_file():
            variant, prediction = choice_from_ldm_yaml((channel / original).read_text(errors="replace"))
        return config_folder(config_name(family, variant, prediction), built_configs_dir())
    except ModelConfigMissing as exc:
        raise TrainingError(f"the checkpoint: {exc}") from None


def _with_yaml_prediction(paths: SageMakerPaths, hyperparameters: dict[str, str], family: str, config_text: str) -> str:
    """sd-scripts reads no architecture from the file: an SD 2.x base's ``<name>.yaml`` in the
    model channel overrides registration's v-prediction finding (as it does for inference)."""
    from sdpipe_inference.family_configs import choice_from_ldm_yaml

    original = hyperparameters.get("original_config")
    yaml_file = paths.channel(CHANNEL_MODEL) / original if original else None
    if family != "sd2" or yaml_file is None or not yaml_file.is_file():
        return config_text
    _variant, prediction = choice_from_ldm_yaml(yaml_file.read_text(errors="replace"))
    config = tomllib.loads(config_text)
    for table in (config, *(value for value in config.values() if isinstance(value, dict))):
        table.pop("v_parameterization", None)
    config.setdefault("model", {})["v_parameterization"] = prediction == "v_prediction"
    return to_toml(config)


def kohya_files(paths: SageMakerPaths, config_text: str, dataset_text: str) -> Path:
    """Write the run's two files where sd-scripts reads them; the config file's path. The config
    names the dataset file written here: the channel's copy still holds /opt/ml paths, which are
    not where the data is when /opt/ml lives elsewhere (the local stand-in). sd-scripts reads its
    CLIP tokenizers from the folder built offline (it would otherwise ask the hub)."""
    from sdpipe_inference.family_configs import KOHYA_CACHE, built_configs_dir, kohya_tokenizer_cache

    work = paths.output_data_dir / "config"
    work.mkdir(parents=True, exist_ok=True)
    dataset_file = work / DATASET_CONFIG_FILE
    dataset_file.write_text(dataset_text)
    config = tomllib.loads(config_text)
    for table in (config, *(value for value in config.values() if isinstance(value, dict))):
        if "dataset_config" in table:
            table["dataset_config"] = str(dataset_file)
    if not any("tokenizer_cache_dir" in table for table in (config, *config.values()) if isinstance(table, dict)):
        config["tokenizer_cache_dir"] = str(kohya_tokenizer_cache(built_configs_dir() / KOHYA_CACHE))
    config_file = work / CONFIG_FILE
    config_file.write_text(to_toml(config))
    return config_file


def _run_kohya(paths: SageMakerPaths, family: str, config_text: str, dataset_text: str, stop: threading.Event) -> None:
    from sdpipe_training.kohya import KohyaLog, kohya_command, run_in_own_group

    config_file = kohya_files(paths, config_text, dataset_text)
    precision = str(flatten(tomllib.loads(config_text)).get("mixed_precision", "no"))
    command = kohya_command(family, config_file, precision)
    _log("running " + " ".join(command))
    log = KohyaLog()

    def echo(line: str) -> None:
        sys.stdout.write(line)
        sys.stdout.flush()
        log.add(line)

    code = run_in_own_group(command, stop, echo)
    if code != 0 and not stop.is_set():
        raise TrainingError(log.reason(code))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="sdpipe training entrypoint (SageMaker training contract)")
    # SageMaker starts a training container as `docker run IMAGE train`.
    parser.add_argument("command", nargs="?", choices=["train"], help="what SageMaker passes to training containers")
    parser.parse_args(argv)
    paths = SageMakerPaths.from_environment()
    stop = threading.Event()

    def on_stop(signum: int, _frame: Any) -> None:
        _log(f"signal {signum}: stopping")
        stop.set()

    signal.signal(signal.SIGTERM, on_stop)
    try:
        written = run(paths, stop)
    except Exception as exc:
        from sdpipe_training.builtin import TrainingStopped

        if isinstance(exc, TrainingStopped):
            _log("training stopped before it finished")
            sys.exit(0)
        traceback.print_exc()
        reason = str(exc) if isinstance(exc, TrainingError) else f"{type(exc).__name__}: {exc}"
        paths.write_failure(reason)
        _log(f"training failed: {reason}")
        sys.exit(1)
    _log("wrote " + ", ".join(p.name for p in written))


if __name__ == "__main__":
    main()
