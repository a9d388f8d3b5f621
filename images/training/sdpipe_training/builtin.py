"""The builtin engine: LoRA training for SD1.x and SDXL on diffusers + peft + accelerate.

It reads the same Kohya config and dataset config as sd-scripts and honours the options listed in
``sdpipe.contracts.training.BUILTIN_OPTIONS`` (the request is refused up front for any other).
The loop is the standard diffusers one: frozen VAE, text encoders and U-Net; peft LoRA adapters on
the U-Net's attention projections (and the text encoders' unless ``network_train_unet_only``);
noise, predict, MSE (optionally min-SNR weighted). Progress is printed as
``step=<n>/<total> epoch=<e>/<epochs> loss=<x> lr=<y>``, the form the job's SageMaker metric
definitions scrape, at most once a second.
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sdpipe_training.dataset import DatasetConfig, load_pixels
from sdpipe_training.lora_files import kohya_state_dict, save_lora

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
_LOG_INTERVAL_S = 1.0


class TrainingStopped(Exception):
    """StopTrainingJob (SIGTERM) arrived; the run ends without saving."""


@dataclass
class BaseModel:
    """The checkpoint trained on, as registered (its hashes go into the LoRA's metadata)."""

    path: Path
    config: Path  # the diffusers config folder it loads with
    name: str = ""
    sha256: str = ""
    legacy_hash: str = ""


@dataclass
class TrainingRun:
    family: str
    base: BaseModel
    options: dict[str, Any]  # the Kohya config, flattened
    dataset: DatasetConfig
    output_dir: Path
    stop: threading.Event = field(default_factory=threading.Event)
    log: Callable[[str], None] = print
    device: str | None = None
    comment: str = ""


@dataclass
class _Models:
    pipeline: Any
    unet: Any
    vae: Any
    text_encoders: list[Any]
    tokenizers: list[Any]
    trained_encoders: list[Any]
    scheduler: Any


@dataclass
class _Session:
    """What one training run holds while it loops: the prepared models, optimiser and schedule."""

    accelerator: Any
    models: _Models
    modules: list[Any]
    parameters: list[Any]
    optimizer: Any
    lr_scheduler: Any
    latents: Any
    rng: random.Random
    weight_dtype: Any
    precision: str
    epochs: int
    total_steps: int
    step: int = 0
    last_log: float = 0.0


def train(run: TrainingRun) -> list[Path]:
    """Train; the LoRA files written (each saved epoch, then the final one)."""
    session = _start(run)
    started = datetime.now(UTC)
    session_id = str(uuid.uuid4().int % 2**31)
    written: list[Path] = []
    run.log(
        f"training {run.family} LoRA: {len(run.dataset.examples)} images, {run.dataset.images_per_epoch} per epoch, "
        f"{session.epochs} epochs, {session.total_steps} steps, batch {run.dataset.batch_size}, "
        f"device {session.accelerator.device}, precision {session.precision}"
    )
    for epoch in range(1, session.epochs + 1):
        _train_epoch(run, session, epoch)
        every = run.options.get("save_every_n_epochs")
        final = session.step >= session.total_steps or epoch == session.epochs
        if final or (every and epoch % int(every) == 0):
            name = run.options["output_name"] if final else f"{run.options['output_name']}-{epoch:06d}"
            path = run.output_dir / f"{name}.safetensors"
            metadata = _metadata(run, session.models, epoch=epoch, step=session.step, total_steps=session.total_steps,
                                 epochs=session.epochs, started=started, session=session_id,
                                 precision=session.precision)  # fmt: skip
            _save(session.models, run, path, metadata, session.accelerator)
            written.append(path)
            run.log(f"saved {path.name} (epoch {epoch}, step {session.step})")
        if final:
            break
    return written


def _start(run: TrainingRun) -> _Session:
    """Load the models, choose what trains, and prepare optimiser and schedule with accelerate."""
    import torch
    from accelerate import Accelerator
    from diffusers.optimization import get_scheduler

    options = run.options
    device = run.device or ("cuda" if torch.cuda.is_available() else "cpu")
    precision = options.get("mixed_precision", "no") if device != "cpu" else "no"
    accelerator = Accelerator(
        mixed_precision=precision,
        gradient_accumulation_steps=int(options.get("gradient_accumulation_steps", 1)),
        cpu=device == "cpu",
    )
    seed = int(options.get("seed", 42))
    torch.manual_seed(seed)
    rng = random.Random(seed)  # noqa: S311 - shuffling and augmentation, reproducible by seed
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)
    models = _load(run, weight_dtype, accelerator.device)
    groups = _trainable(models, run)
    optimizer = _optimizer(groups, options)
    epochs, total_steps = _schedule(run, accelerator.gradient_accumulation_steps)
    lr_scheduler = get_scheduler(
        options.get("lr_scheduler", "constant"),
        optimizer=optimizer,
        num_warmup_steps=int(options.get("lr_warmup_steps", 0)),
        num_training_steps=total_steps,
        num_cycles=int(options.get("lr_scheduler_num_cycles") or 1),
    )
    modules = [models.unet, *models.trained_encoders]
    prepared = accelerator.prepare(*modules, optimizer, lr_scheduler)
    return _Session(
        accelerator=accelerator,
        models=models,
        modules=modules,
        parameters=[p for group in groups for p in group["params"]],
        optimizer=prepared[-2],
        lr_scheduler=prepared[-1],
        latents=_cache_latents(models, run.dataset, accelerator.device) if options.get("cache_latents") else None,
        rng=rng,
        weight_dtype=weight_dtype,
        precision=precision,
        epochs=epochs,
        total_steps=total_steps,
    )


def _schedule(run: TrainingRun, accumulation: int) -> tuple[int, int]:
    """Epochs and optimiser steps: ``max_train_steps`` wins over ``max_train_epochs``, as in sd-scripts."""
    dataset = run.dataset
    batches_per_epoch = math.ceil(dataset.images_per_epoch / dataset.batch_size)
    updates_per_epoch = math.ceil(batches_per_epoch / accumulation)
    if run.options.get("max_train_steps"):
        total_steps = int(run.options["max_train_steps"])
        return math.ceil(total_steps / updates_per_epoch), total_steps
    epochs = int(run.options.get("max_train_epochs", 1))
    return epochs, epochs * updates_per_epoch


def _train_epoch(run: TrainingRun, session: _Session, epoch: int) -> None:
    """One pass over the dataset (or up to the last step), logging step and loss every few seconds."""
    options, accelerator, dataset = run.options, session.accelerator, run.dataset
    order = dataset.epoch(session.rng)
    for start in range(0, len(order), dataset.batch_size):
        if run.stop.is_set():
            raise TrainingStopped("stopped on request")
        indexes = order[start : start + dataset.batch_size]
        with accelerator.accumulate(*session.modules):
            loss = _loss(session.models, run, indexes, cached=session.latents, rng=session.rng,
                         device=accelerator.device, weight_dtype=session.weight_dtype)  # fmt: skip
            accelerator.backward(loss)
            if accelerator.sync_gradients and float(options.get("max_grad_norm", 0)) > 0:
                accelerator.clip_grad_norm_(session.parameters, float(options["max_grad_norm"]))
            session.optimizer.step()
            session.lr_scheduler.step()
            session.optimizer.zero_grad(set_to_none=True)
        if not accelerator.sync_gradients:
            continue
        session.step += 1
        now = time.monotonic()
        if now - session.last_log >= _LOG_INTERVAL_S or session.step == session.total_steps:
            run.log(
                f"step={session.step}/{session.total_steps} epoch={epoch}/{session.epochs} "
                f"loss={float(loss.detach().item()):.6f} lr={session.lr_scheduler.get_last_lr()[0]:.3e}"
            )
            session.last_log = now
        if session.step >= session.total_steps:
            return


def _load(run: TrainingRun, weight_dtype: Any, device: Any) -> _Models:
    import torch
    from diffusers import DDPMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for library in (diffusers_logging, transformers_logging):  # keep the job's log to what matters
        library.set_verbosity_error()
        library.disable_progress_bar()
    cls = StableDiffusionXLPipeline if run.family == "sdxl" else StableDiffusionPipeline
    pipeline = cls.from_single_file(
        str(run.base.path), config=str(run.base.config), local_files_only=True, torch_dtype=torch.float32
    )
    encoders = [pipeline.text_encoder] + ([pipeline.text_encoder_2] if run.family == "sdxl" else [])
    tokenizers = [pipeline.tokenizer] + ([pipeline.tokenizer_2] if run.family == "sdxl" else [])
    for module in (pipeline.unet, pipeline.vae, *encoders):
        module.requires_grad_(False)
    pipeline.unet.to(device, dtype=weight_dtype)
    pipeline.vae.to(device, dtype=torch.float32)  # the VAE encodes in full precision (SDXL's overflows in fp16)
    for encoder in encoders:
        encoder.to(device, dtype=weight_dtype)
    scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
    return _Models(pipeline, pipeline.unet, pipeline.vae, encoders, tokenizers, [], scheduler)


def _trainable(models: _Models, run: TrainingRun) -> list[Any]:
    """Add the LoRA adapters; the parameter groups with their learning rates."""
    import torch
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    options = run.options
    rank, alpha = int(options.get("network_dim", 16)), float(options.get("network_alpha", 8))
    models.unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=UNET_TARGETS))  # type: ignore[arg-type]
    base_lr = float(options.get("learning_rate", 1e-4))
    groups = [{"params": [], "lr": float(options.get("unet_lr") or base_lr)}]
    te_lr = options.get("text_encoder_lr")
    if not options.get("network_train_unet_only") and (te_lr is None or float(te_lr) > 0):
        for encoder in models.text_encoders:
            encoder.add_adapter(
                LoraConfig(r=rank, lora_alpha=alpha, target_modules=TEXT_ENCODER_TARGETS)  # type: ignore[arg-type]
            )
            models.trained_encoders.append(encoder)
        groups.append({"params": [], "lr": float(te_lr if te_lr is not None else base_lr)})
    if options.get("gradient_checkpointing"):
        models.unet.enable_gradient_checkpointing()
        for encoder in models.trained_encoders:
            encoder.gradient_checkpointing_enable()
    cast_training_params([models.unet, *models.trained_encoders], dtype=torch.float32)
    groups[0]["params"] = [p for p in models.unet.parameters() if p.requires_grad]
    if len(groups) > 1:
        groups[1]["params"] = [p for e in models.trained_encoders for p in e.parameters() if p.requires_grad]
    return groups


def _optimizer(groups: list[Any], options: dict[str, Any]) -> Any:
    import torch

    name = options.get("optimizer_type", "AdamW")
    if name == "AdamW":
        return torch.optim.AdamW(groups)
    if name == "SGDNesterov":
        return torch.optim.SGD(groups, momentum=0.9, nesterov=True)
    if name == "Adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(groups, scale_parameter=False, relative_step=False, warmup_init=False)
    raise ValueError(f"optimizer_type {name} is not supported by the builtin engine")


def _cache_latents(models: _Models, dataset: DatasetConfig, device: Any) -> list[Any]:
    """Each image's latents once (and its mirror image's, with ``flip_aug``)."""
    import torch

    cached = []
    with torch.no_grad():
        for example in dataset.examples:
            pixels = load_pixels(example.image, dataset.size).unsqueeze(0).to(device)
            if dataset.flip_aug:
                pixels = torch.cat([pixels, torch.flip(pixels, dims=[3])])
            cached.append(_encode(models, pixels).cpu())
    return cached


def _encode(models: _Models, pixels: Any) -> Any:
    vae = models.vae
    latents = vae.encode(pixels.to(dtype=vae.dtype)).latent_dist.sample()
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (latents - shift) * vae.config.scaling_factor


def _loss(
    models: _Models,
    run: TrainingRun,
    indexes: list[int],
    *,
    cached: list[Any] | None,
    rng: random.Random,
    device: Any,
    weight_dtype: Any,
) -> Any:
    import torch
    from torch.nn import functional

    dataset, options = run.dataset, run.options
    flips = [dataset.flip_aug and rng.random() < 0.5 for _ in indexes]
    if cached is not None:
        latents = torch.cat(
            [cached[i][1 if flip else 0 : (2 if flip else 1)] for i, flip in zip(indexes, flips, strict=True)]
        )
        latents = latents.to(device)
    else:
        pixels = torch.stack([load_pixels(dataset.examples[i].image, dataset.size) for i in indexes]).to(device)
        for row, flip in enumerate(flips):
            if flip:
                pixels[row] = torch.flip(pixels[row], dims=[2])
        with torch.no_grad():
            latents = _encode(models, pixels)
    noise = torch.randn_like(latents)
    if options.get("noise_offset"):
        noise += float(options["noise_offset"]) * torch.randn(latents.shape[0], latents.shape[1], 1, 1, device=device)
    scheduler = models.scheduler
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), device=device).long()
    noisy = scheduler.add_noise(latents, noise, timesteps)
    captions = [dataset.caption(i, rng) for i in indexes]
    hidden, extra = _text_conditioning(models, run, captions, device)
    prediction = models.unet(
        noisy.to(weight_dtype), timesteps, hidden.to(weight_dtype), added_cond_kwargs=extra, return_dict=False
    )[0]
    v_prediction = scheduler.config.prediction_type == "v_prediction"
    target = scheduler.get_velocity(latents, noise, timesteps) if v_prediction else noise
    if not options.get("min_snr_gamma"):
        return functional.mse_loss(prediction.float(), target.float(), reduction="mean")
    from diffusers.training_utils import compute_snr

    snr = compute_snr(scheduler, timesteps)
    gamma = torch.full_like(snr, float(options["min_snr_gamma"]))
    weights = torch.minimum(snr, gamma) / (snr + 1 if v_prediction else snr)
    per_example = functional.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=[1, 2, 3])
    return (per_example * weights).mean()


def _text_conditioning(models: _Models, run: TrainingRun, captions: list[str], device: Any) -> tuple[Any, Any]:
    """The U-Net's text conditioning (and SDXL's pooled embedding and size ids)."""
    import torch

    train_text = bool(models.trained_encoders)
    context = torch.enable_grad() if train_text else torch.no_grad()
    with context:
        states = []
        pooled = None
        for encoder, tokenizer in zip(models.text_encoders, models.tokenizers, strict=True):
            ids = tokenizer(
                captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                return_tensors="pt",
            ).input_ids.to(device)  # fmt: skip
            output = encoder(ids, output_hidden_states=True)
            if run.family == "sdxl":
                states.append(output.hidden_states[-2])
                pooled = output[0] if encoder is models.text_encoders[-1] else pooled
            else:
                clip_skip = int(run.options.get("clip_skip") or 1)
                if clip_skip > 1:
                    states.append(encoder.text_model.final_layer_norm(output.hidden_states[-clip_skip]))
                else:
                    states.append(output[0])
        hidden = torch.cat(states, dim=-1)
    if run.family != "sdxl":
        return hidden, None
    width, height = run.dataset.size
    time_ids = torch.tensor([[height, width, 0, 0, height, width]] * len(captions), device=device, dtype=hidden.dtype)
    return hidden, {"text_embeds": pooled, "time_ids": time_ids}


def _save(models: _Models, run: TrainingRun, path: Path, metadata: dict[str, str], accelerator: Any) -> None:
    import torch
    from peft.utils import get_peft_model_state_dict

    states = {"unet": get_peft_model_state_dict(accelerator.unwrap_model(models.unet))}
    for part, encoder in zip(("text_encoder", "text_encoder_2"), models.trained_encoders, strict=False):
        states[part] = get_peft_model_state_dict(accelerator.unwrap_model(encoder))
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(
        run.options.get("save_precision", "fp16"), torch.float32
    )
    tensors = kohya_state_dict(
        states,
        family=run.family,
        alpha=float(run.options.get("network_alpha", 8)),
        layers_per_block=_layers_per_block(models.unet),
    )
    tensors = {name: tensor.detach().to("cpu", dtype=dtype).contiguous() for name, tensor in tensors.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_lora(path, tensors, metadata)


def _layers_per_block(unet: Any) -> int:
    value = unet.config.layers_per_block
    return int(value if isinstance(value, int) else value[0])


def _metadata(
    run: TrainingRun,
    models: _Models,
    *,
    epoch: int,
    step: int,
    total_steps: int,
    epochs: int,
    started: datetime,
    session: str,
    precision: str,
) -> dict[str, str]:
    """The ``ss_*`` and ``modelspec.*`` metadata sd-scripts writes (what A1111's LoRA tab shows)."""
    options, dataset = run.options, run.dataset
    width, height = dataset.size
    sdxl = run.family == "sdxl"
    finished = datetime.now(UTC)
    folders = {
        folder: {"n_repeats": repeats, "img_count": sum(1 for e in dataset.examples if e.folder == folder)}
        for folder, repeats in dataset.repeats.items()
    }
    base_lr = float(options.get("learning_rate", 1e-4))
    values: dict[str, Any] = {
        "ss_session_id": session,
        "ss_training_started_at": started.timestamp(),
        "ss_training_finished_at": finished.timestamp(),
        "ss_output_name": options["output_name"],
        "ss_learning_rate": base_lr,
        "ss_unet_lr": options.get("unet_lr") or base_lr,
        "ss_text_encoder_lr": options.get("text_encoder_lr", base_lr) if models.trained_encoders else 0,
        "ss_num_train_images": dataset.images_per_epoch,
        "ss_num_reg_images": 0,
        "ss_num_batches_per_epoch": math.ceil(dataset.images_per_epoch / dataset.batch_size),
        "ss_num_epochs": epochs,
        "ss_epoch": epoch,
        "ss_steps": step,
        "ss_max_train_steps": total_steps,
        "ss_batch_size_per_device": dataset.batch_size,
        "ss_total_batch_size": dataset.batch_size * int(options.get("gradient_accumulation_steps", 1)),
        "ss_gradient_accumulation_steps": options.get("gradient_accumulation_steps", 1),
        "ss_gradient_checkpointing": bool(options.get("gradient_checkpointing")),
        "ss_lr_warmup_steps": options.get("lr_warmup_steps", 0),
        "ss_lr_scheduler": options.get("lr_scheduler", "constant"),
        "ss_optimizer": _optimizer_class(options.get("optimizer_type", "AdamW")),
        "ss_network_module": "networks.lora",
        "ss_network_dim": options.get("network_dim", 16),
        "ss_network_alpha": options.get("network_alpha", 8),
        "ss_network_train_unet_only": not models.trained_encoders,
        "ss_mixed_precision": precision,
        "ss_full_fp16": False,
        "ss_v2": run.family == "sd2",
        "ss_base_model_version": _BASE_MODEL_VERSIONS[run.family, _prediction(models)],
        "ss_clip_skip": options.get("clip_skip"),
        "ss_max_token_length": None,
        "ss_cache_latents": bool(options.get("cache_latents")),
        "ss_seed": options.get("seed", 42),
        "ss_noise_offset": options.get("noise_offset"),
        "ss_min_snr_gamma": options.get("min_snr_gamma"),
        "ss_max_grad_norm": options.get("max_grad_norm", 1.0),
        "ss_resolution": f"({width}, {height})",
        "ss_caption_dropout_rate": 0.0,
        "ss_shuffle_caption": dataset.shuffle_caption,
        "ss_keep_tokens": dataset.keep_tokens,
        "ss_flip_aug": dataset.flip_aug,
        "ss_enable_bucket": False,
        "ss_sd_model_name": run.base.name or run.base.path.name,
        "ss_sd_model_hash": run.base.legacy_hash,
        "ss_new_sd_model_hash": run.base.sha256,
        "ss_dataset_dirs": json.dumps(folders),
        "ss_tag_frequency": json.dumps(dataset.tag_frequency()),
        "ss_training_comment": options.get("training_comment") or run.comment or None,
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": _ARCHITECTURES[_BASE_MODEL_VERSIONS[run.family, _prediction(models)]] + "/lora",
        # sd-scripts' words (sai_model_spec.py): "v" or "epsilon".
        "modelspec.prediction_type": "v" if _prediction(models) == "v_prediction" else "epsilon",
        "modelspec.implementation": "https://github.com/Stability-AI/generative-models" if sdxl else "diffusers",
        "modelspec.title": f"{options['output_name']}" + ("" if epoch == epochs else f" epoch {epoch}"),
        "modelspec.resolution": f"{width}x{height}",
        "modelspec.date": finished.date().isoformat(),
    }
    return {k: (str(v) if not isinstance(v, str) else v) for k, v in values.items() if v is not None}


def _optimizer_class(name: str) -> str:
    return {
        "AdamW": "torch.optim.adamw.AdamW",
        "SGDNesterov": "torch.optim.sgd.SGD(momentum=0.9,nesterov=True)",
        "Adafactor": "transformers.optimization.Adafactor(scale_parameter=False,relative_step=False,warmup_init=False)",
    }.get(name, name)


# sd-scripts' ``ss_base_model_version`` (what the WebUI and registration read a LoRA's base from).
_BASE_MODEL_VERSIONS = {
    ("sd1", "epsilon"): "sd_v1",
    ("sd2", "epsilon"): "sd_v2",
    ("sd2", "v_prediction"): "sd_v2_v",
    ("sdxl", "epsilon"): "sdxl_base_v1-0",
}


# sd-scripts' ``modelspec.architecture`` (sai_model_spec.py) for each.
_ARCHITECTURES = {
    "sd_v1": "stable-diffusion-v1",
    "sd_v2": "stable-diffusion-v2-512",
    "sd_v2_v": "stable-diffusion-v2-768-v",
    "sdxl_base_v1-0": "stable-diffusion-xl-v1-base",
}


def _prediction(models: _Models) -> str:
    return str(models.scheduler.config.prediction_type)
