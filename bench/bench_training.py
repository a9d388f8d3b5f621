"""LoRA training benchmarks (CPU here; the same script measures a GPU with ``--device cuda``).

(a) steps per second of the builtin engine (``sdpipe_training.builtin.train``) against a bare
    diffusers + peft loop doing the same steps (same checkpoint, dataset, LoRA targets, rank,
    batch, optimizer, cached latents) in the same run, alternating, median of ``--repeats``.
    Steps are timed from the ``--warmup``-th to the last, load and save excluded. Also the peak
    GPU memory of each (``--device cuda``).
(b) time from publishing ``train_lora`` to the job RUNNING on the local stack, against the
    baseline of a ``fetch_model`` request (the same SNS -> SQS -> Lambda -> Step Functions path,
    without SageMaker) reaching RUNNING on the same stack.

    python bench/bench_training.py [--only a|b] [--family sd1|sdxl] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _dataset_record(concept_folder: Path, repeats: int, count: int) -> Any:
    from sdpipe.contracts.datasets import Concept, DatasetRecord, DatasetStatus

    now = datetime.now(UTC)
    return DatasetRecord(
        name="bench",
        prefix="datasets/bench/",
        status=DatasetStatus.REGISTERED,
        concepts=[Concept(folder=concept_folder.name, concept="bench", repeats=repeats, images=count, captions=count)],
        images=count,
        steps_per_epoch_at_batch_1=repeats * count,
        marker_version="v",
        registered_at=now,
        updated_at=now,
    )


def prepare(workdir: Path, family: str, resolution: int, steps: int, batch: int) -> dict[str, Any]:
    from sdpipe.contracts.training import LoraConfig
    from sdpipe.logic.kohya_config import build_kohya_files
    from sdpipe_local.assets import create_tiny_dataset
    from sdpipe_local.tiny_models import config_folder_for, create_tiny_checkpoint

    checkpoint = workdir / f"tiny-{family}.safetensors"
    create_tiny_checkpoint(family, checkpoint, seed=0)  # type: ignore[arg-type]
    concept = create_tiny_dataset(workdir / "data", concept="bench", repeats=10, count=8, size=resolution)
    config = LoraConfig(
        resolution=str(resolution), network_dim=16, network_alpha=8, train_batch_size=batch, max_train_steps=steps,
        learning_rate=1e-4, mixed_precision="bf16", cache_latents=True, network_train_unet_only=True,
    )  # fmt: skip
    files = build_kohya_files(config, _dataset_record(concept, 10, 8), checkpoint.name, "bench")
    return {
        "checkpoint": checkpoint,
        "config_folder": config_folder_for(checkpoint),
        "config_toml": files.config_toml.replace('"/opt/ml/input/data/dataset/', f'"{concept.parent}/'),
        "dataset_toml": files.dataset_toml.replace('"/opt/ml/input/data/dataset/', f'"{concept.parent}/'),
    }


def run_builtin(setup: dict[str, Any], family: str, device: str, warmup: int, out: Path) -> dict[str, float]:
    import tomllib

    import torch

    from sdpipe_training import builtin
    from sdpipe_training.builtin import BaseModel, TrainingRun, train
    from sdpipe_training.dataset import DatasetConfig
    from sdpipe_training.entrypoint import flatten

    builtin._LOG_INTERVAL_S = 0.0  # a line per step, for per-step timestamps (a .item() per step)
    times: dict[int, float] = {}

    def log(line: str) -> None:
        if line.startswith("step="):
            times[int(line.split("=", 1)[1].split("/", 1)[0])] = time.perf_counter()

    options = flatten(tomllib.loads(setup["config_toml"]))
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    run = TrainingRun(
        family=family,
        base=BaseModel(path=setup["checkpoint"], config=setup["config_folder"]),
        options=options,
        dataset=DatasetConfig.from_toml(setup["dataset_toml"]),
        output_dir=out,
        log=log,
        device=device,
    )
    train(run)
    last = max(times)
    return {
        "steps_per_s": (last - warmup) / (times[last] - times[warmup]),
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0.0,
    }


def run_bare(
    setup: dict[str, Any], family: str, device: str, *, warmup: int, steps: int, batch: int
) -> dict[str, float]:
    """The loop of diffusers' train_text_to_image_lora example, reduced to what the engine does."""
    import math
    import random

    import torch
    import torch.nn.functional as F  # noqa: N812
    from diffusers import DDPMScheduler

    from sdpipe_training.dataset import DatasetConfig, load_pixels

    dataset = DatasetConfig.from_toml(setup["dataset_toml"])
    pipe, dtype = _bare_pipeline(setup, family, device)
    params = [p for p in pipe.unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    with torch.no_grad():
        latents = [
            pipe.vae.encode(load_pixels(e.image, dataset.size).unsqueeze(0).to(device)).latent_dist.sample()
            * pipe.vae.config.scaling_factor
            for e in dataset.examples
        ]
    rng = random.Random(0)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    order: list[int] = []
    times: dict[int, float] = {}
    autocast = torch.autocast(device, dtype=dtype, enabled=device == "cuda")
    for step in range(1, steps + 1):
        if len(order) < batch:
            order += dataset.epoch(rng)
        indexes, order = order[:batch], order[batch:]
        x0 = torch.cat([latents[i] for i in indexes])
        noise = torch.randn_like(x0)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],), device=device)
        noisy = scheduler.add_noise(x0, noise, t)
        hidden, extra = _bare_conditioning(pipe, family, [dataset.examples[i].caption for i in indexes], dataset.size,
                                           device)  # fmt: skip
        with autocast:
            prediction = pipe.unet(noisy.to(dtype), t, hidden, added_cond_kwargs=extra, return_dict=False)[0]
        loss = F.mse_loss(prediction.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # the engine logs the loss each step in this benchmark too
        times[step] = time.perf_counter()
    assert math.isfinite(loss.item())
    return {
        "steps_per_s": (steps - warmup) / (times[steps] - times[warmup]),
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0.0,
    }


def _bare_pipeline(setup: dict[str, Any], family: str, device: str) -> tuple[Any, Any]:
    """The single-file pipeline, frozen, with a LoRA adapter on the UNet's attention."""
    import torch
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    pipe = cls.from_single_file(
        str(setup["checkpoint"]), config=str(setup["config_folder"]), local_files_only=True, torch_dtype=torch.float32
    )
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    for module in (pipe.unet, pipe.vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None)):
        if module is not None:
            module.requires_grad_(False)
    pipe.unet.to(device, dtype=dtype)
    pipe.vae.to(device)
    pipe.text_encoder.to(device, dtype=dtype)
    if family == "sdxl":
        pipe.text_encoder_2.to(device, dtype=dtype)
    pipe.unet.add_adapter(LoraConfig(r=16, lora_alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    cast_training_params(pipe.unet, dtype=torch.float32)
    return pipe, dtype


def _bare_conditioning(
    pipe: Any, family: str, captions: list[str], size: tuple[int, int], device: str
) -> tuple[Any, dict[str, Any] | None]:
    """The text conditioning of one batch (SDXL: both encoders' penultimate layers and size ids)."""
    import torch

    width, height = size
    with torch.no_grad():
        ids = pipe.tokenizer(captions, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(device)  # fmt: skip
        if family != "sdxl":
            return pipe.text_encoder(ids)[0], None
        out1 = pipe.text_encoder(ids, output_hidden_states=True)
        ids2 = pipe.tokenizer_2(captions, padding="max_length", max_length=pipe.tokenizer_2.model_max_length,
                                truncation=True, return_tensors="pt").input_ids.to(device)  # fmt: skip
        out2 = pipe.text_encoder_2(ids2, output_hidden_states=True)
        hidden = torch.cat([out1.hidden_states[-2], out2.hidden_states[-2]], dim=-1)
        ids_t = torch.tensor([[height, width, 0, 0, height, width]] * len(captions), device=device)
        return hidden, {"text_embeds": out2[0], "time_ids": ids_t.to(hidden.dtype)}


def bench_engine(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sdpipe-bench-train-") as folder:
        workdir = Path(folder)
        setup = prepare(workdir, args.family, args.resolution, args.steps, args.batch)
        engine, bare = [], []
        for index in range(args.repeats):
            out = workdir / f"out-{index}"
            engine.append(run_builtin(setup, args.family, args.device, args.warmup, out))
            bare.append(
                run_bare(setup, args.family, args.device, warmup=args.warmup, steps=args.steps, batch=args.batch)
            )
            print(json.dumps({"run": index, "engine": engine[-1], "bare": bare[-1]}), flush=True)
    engine_rate = statistics.median(r["steps_per_s"] for r in engine)
    bare_rate = statistics.median(r["steps_per_s"] for r in bare)
    return {
        "family": args.family,
        "resolution": args.resolution,
        "batch": args.batch,
        "device": args.device,
        "engine_steps_per_s": engine_rate,
        "bare_steps_per_s": bare_rate,
        "ratio": engine_rate / bare_rate,
        "engine_s_per_step": 1 / engine_rate,
        "engine_peak_gib": max(r["peak_gib"] for r in engine),
        "bare_peak_gib": max(r["peak_gib"] for r in bare),
    }


def bench_publish_to_running(repeats: int) -> dict[str, Any]:
    from sdpipe.adapters.clients import clients
    from sdpipe_client.client import Sdpipe
    from sdpipe_client.datasets import Datasets, plan_dataset
    from sdpipe_client.stack import StackOutputs
    from sdpipe_local.assets import create_tiny_dataset, drop_checkpoint
    from sdpipe_local.file_server import FileServer
    from sdpipe_local.stack import LocalStack
    from sdpipe_local.tiny_models import create_tiny_checkpoint, create_tiny_lora

    def until_running(client: Sdpipe, job_id: str, started: float) -> float:
        while True:
            job = client.find_job(job_id) or {}
            if job.get("status") in ("RUNNING", "SUCCEEDED", "FAILED"):
                assert job["status"] != "FAILED", job.get("error")
                return time.perf_counter() - started
            time.sleep(0.02)

    with tempfile.TemporaryDirectory(prefix="sdpipe-bench-publish-") as folder:
        workdir = Path(folder)
        with LocalStack(
            str(ROOT / "template.yaml"),
            state_dir=workdir / "state",
            parameter_overrides={"FetchAllowedNetworks": "127.0.0.1/32"},
        ) as stack:
            os.environ.update(stack.environment())
            clients.reset()
            client = Sdpipe(StackOutputs(stack.outputs))
            create_tiny_checkpoint("sd1", workdir / "bench-sd1.safetensors", seed=0)
            drop_checkpoint(stack.client("s3"), stack.outputs["AssetsBucketName"], workdir / "bench-sd1.safetensors",
                            "models/Stable-diffusion/bench-sd1.safetensors")  # fmt: skip
            concept = create_tiny_dataset(workdir / "data", count=4)
            Datasets(client).upload(plan_dataset(concept, "bench"))
            site = workdir / "site"
            site.mkdir()
            create_tiny_lora("sd1", site / "bench-lora.safetensors")
            time.sleep(3)  # the checkpoint registers
            training, fetching = [], []
            with FileServer(site) as server:
                for index in range(repeats):
                    started = time.perf_counter()
                    job_id = client.submit("train_lora", {
                        "base_model": "bench-sd1", "dataset": "bench", "family": "sd1",
                        "config": {"resolution": 64, "max_train_steps": 2,
                                   "output_name": f"bench-{uuid.uuid4().hex[:8]}"},
                    })  # fmt: skip
                    training.append(until_running(client, job_id, started))
                    client.wait(job_id, timeout_s=300)
                    started = time.perf_counter()
                    job_id = client.submit("fetch_model", {
                        "url": server.url("/files/bench-lora.safetensors"), "type": "lora",
                        "name": f"bench-{index}-{uuid.uuid4().hex[:6]}.safetensors",
                    })  # fmt: skip
                    fetching.append(until_running(client, job_id, started))
                    client.wait(job_id, timeout_s=300)
                    print(json.dumps({"run": index, "train_lora_s": training[-1], "fetch_model_s": fetching[-1]}),
                          flush=True)  # fmt: skip
    train_p50, fetch_p50 = statistics.median(training), statistics.median(fetching)
    return {"train_lora_to_running_p50_s": train_p50, "fetch_model_to_running_p50_s": fetch_p50,
            "ratio": train_p50 / fetch_p50, "repeats": repeats}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["a", "b"])
    parser.add_argument("--family", choices=["sd1", "sdxl"], default="sd1")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    machine = f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs, Python {sys.version.split()[0]}"
    results: dict[str, Any] = {"machine": machine, "date": datetime.now(UTC).date().isoformat()}
    if args.only in (None, "a"):
        results["engine"] = bench_engine(args)
        engine = results["engine"]
        print(
            f"(a) tiny {engine['family']} {engine['resolution']}px batch {engine['batch']} on "
            f"{engine['device']}: builtin {engine['engine_steps_per_s']:.2f} steps/s, bare loop "
            f"{engine['bare_steps_per_s']:.2f} steps/s, ratio {engine['ratio']:.2f}x"
        )
    if args.only in (None, "b"):
        results["publish"] = bench_publish_to_running(args.repeats)
        publish = results["publish"]
        print(
            f"(b) train_lora publish -> RUNNING p50 {publish['train_lora_to_running_p50_s']:.2f}s; fetch_model "
            f"publish -> RUNNING p50 {publish['fetch_model_to_running_p50_s']:.2f}s; ratio {publish['ratio']:.1f}x"
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
