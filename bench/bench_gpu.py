"""The GPU benchmark (issue 16): the inference engine's fast path and the builtin trainer on
real-architecture checkpoints, each against a baseline measured in the same run.

- **sd15**: SD 1.5 at 512x512, 30 steps: denoising it/s and s/image, the engine (its defaults,
  then with ``SDPIPE_COMPILE``) against plain diffusers in fp16 on the same file.
- **sdxl**: SDXL base at 1024x1024, 30 steps: s/image end to end, engine against plain diffusers.
- **lora**: on a warm SD 1.5 pipeline, the time to switch to a LoRA the engine has not seen, and
  between two it has, against diffusers' load + fuse of the same file.
- **cold**: a container's cold start, S3 -> first image (the model cache empty, a fresh engine),
  against the raw S3 read of the same object, on a local S3 (moto) on 127.0.0.1.
- **train**: builtin LoRA training, SDXL at 1024, batch 1: s/step and peak GPU memory.

The checkpoints are ``sdpipe models create-random`` files (random weights: the pictures are
noise, the arithmetic is the real one). ``--smoke`` runs the same code on the CPU with the tiny
checkpoints at 64x64 and a few steps (make test runs it, so the script cannot rot).

    python bench/bench_gpu.py [--smoke] [--only sd15,sdxl,lora,cold,train] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CASES = ("sd15", "sdxl", "lora", "cold", "train")


@dataclass(frozen=True)
class Scale:
    """The sizes of one run: the real ones on a GPU, tiny ones for the smoke run."""

    smoke: bool
    device: str
    steps: int
    sd15_size: int
    sdxl_size: int
    repeats: int
    train_size: int
    train_steps: int

    @classmethod
    def choose(cls, smoke: bool) -> Scale:
        if smoke:
            return cls(True, "cpu", steps=4, sd15_size=64, sdxl_size=64, repeats=2, train_size=64, train_steps=6)
        return cls(False, "cuda", steps=30, sd15_size=512, sdxl_size=1024, repeats=5, train_size=1024, train_steps=30)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def checkpoint(workdir: Path, family: str, scale: Scale) -> tuple[Path, Path]:
    """The checkpoint file and the config folder it loads with (the shipped one for real files)."""
    from sdpipe_inference.family_configs import built_configs_dir, config_folder, config_name

    path = workdir / f"{family}.safetensors"
    if scale.smoke:
        from sdpipe_local.tiny_models import create_tiny_checkpoint

        return path, create_tiny_checkpoint(family, path, seed=1)  # type: ignore[arg-type]
    from sdpipe_local.random_models import create_random_checkpoint

    if not path.exists():
        create_random_checkpoint(family, path, dtype="fp16", seed=1)  # type: ignore[arg-type]
    return path, config_folder(config_name(family), built_configs_dir())


def spec_of(path: Path, config: Path, family: str) -> Any:
    from sdpipe_inference.engine import ModelSpec

    return ModelSpec(path.stem, f"{abs(hash(path)):064d}"[-64:], "0123456789", family, path, config)


class StepClock:
    """Timestamps of the denoising steps (synchronised, so they time the GPU's work)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.times: list[float] = []

    def __call__(self, _progress: Any = None) -> None:
        _sync(self.device)
        self.times.append(time.perf_counter())

    def its(self) -> float:
        return (len(self.times) - 1) / (self.times[-1] - self.times[0])


def _engine(scale: Scale, environ: dict[str, str] | None = None) -> Any:
    from sdpipe_inference.acceleration import Acceleration
    from sdpipe_inference.engine import Engine

    return Engine(
        device=scale.device, max_pipelines=1, acceleration=Acceleration.from_environment(scale.device, environ or {})
    )


def engine_generation(scale: Scale, spec: Any, size: int, environ: dict[str, str] | None = None) -> dict[str, float]:
    from sdpipe.contracts.inference import Txt2ImgParams

    engine = _engine(scale, environ)
    params = Txt2ImgParams(prompt="a lighthouse at dusk", steps=scale.steps, width=size, height=size, seed=1)
    engine.generate(params, spec)  # load, and (with compile) compile
    seconds, rates = [], []
    for _ in range(scale.repeats):
        clock = StepClock(scale.device)
        started = time.perf_counter()
        engine.generate(params, spec, on_step=clock)
        _sync(scale.device)
        seconds.append(time.perf_counter() - started)
        rates.append(clock.its())
    return {"s_per_image": statistics.median(seconds), "its": statistics.median(rates)}


def plain_generation(scale: Scale, spec: Any, size: int, pipeline_class: str) -> dict[str, float]:
    """diffusers as its documentation loads a single file: fp16 on the GPU, nothing else."""
    import diffusers
    import torch

    dtype = torch.float16 if scale.device == "cuda" else torch.float32
    pipe = getattr(diffusers, pipeline_class).from_single_file(
        str(spec.path), config=str(spec.config), local_files_only=True, torch_dtype=dtype
    )
    pipe.to(scale.device)
    pipe.set_progress_bar_config(disable=True)
    seconds, rates = [], []
    for attempt in range(scale.repeats + 1):
        clock = StepClock(scale.device)
        started = time.perf_counter()

        def on_end(p: Any, step: int, _t: Any, tensors: dict[str, Any], clock: StepClock = clock) -> dict[str, Any]:
            clock()
            return tensors

        pipe(
            "a lighthouse at dusk", num_inference_steps=scale.steps, width=size, height=size,
            generator=torch.Generator("cpu").manual_seed(1), callback_on_step_end=on_end,
        )  # fmt: skip
        _sync(scale.device)
        if attempt:  # the first is the warm-up
            seconds.append(time.perf_counter() - started)
            rates.append(clock.its())
    return {"s_per_image": statistics.median(seconds), "its": statistics.median(rates)}


def lora_switch(scale: Scale, spec: Any, workdir: Path) -> dict[str, float]:
    """Switching LoRAs on a warm pipeline: the engine (a LoRA loads once per pipeline, then only
    its adapter is switched on) against diffusers' load + fuse (and unfuse + unload) per switch."""
    from sdpipe_inference.engine import AddOn, AddOns
    from sdpipe_local.tiny_models import write_random_lora

    engine = _engine(scale)
    pipeline, _ = engine.cache.get(spec)
    rank = 4 if scale.smoke else 64
    files = [
        write_random_lora(
            pipeline.unet, workdir / f"lora-{i}.safetensors", base_model_version="sd_v1", seed=i, rank=rank
        )
        for i in range(3)
    ]
    add_ons = [AddOn(f.stem, f"{i:064d}", f"{i:010d}", f) for i, f in enumerate(files)]

    def timed(action: Callable[[], None]) -> float:
        _sync(scale.device)
        started = time.perf_counter()
        action()
        _sync(scale.device)
        return time.perf_counter() - started

    first = [timed(lambda a=a: engine.cache.apply(pipeline, spec, AddOns(loras=(a,)))) for a in add_ons[:2]]
    switch = [timed(lambda a=add_ons[i % 2]: engine.cache.apply(pipeline, spec, AddOns(loras=(a,)))) for i in range(6)]
    engine.cache.apply(pipeline, spec, AddOns())
    pipeline.unload_lora_weights()

    def load_and_fuse(path: Path) -> None:
        pipeline.load_lora_weights(str(path), adapter_name="fused")
        pipeline.fuse_lora()

    def unfuse() -> None:
        pipeline.unfuse_lora()
        pipeline.unload_lora_weights()

    fused = []
    for path in files:
        fused.append(timed(lambda path=path: load_and_fuse(path)))
        unfuse()
    # The hot-swap slot (what a compiled endpoint uses): every switch replaces the slot's weights.
    hot_engine = _engine(scale, {"SDPIPE_LORA_HOTSWAP": "1"})
    hot_pipeline, _ = hot_engine.cache.get(spec)
    hot_engine.cache.apply(hot_pipeline, spec, AddOns(loras=(add_ons[2],)))
    hot = [
        timed(lambda a=add_ons[i % 2]: hot_engine.cache.apply(hot_pipeline, spec, AddOns(loras=(a,)))) for i in range(6)
    ]
    return {
        "engine_first_load_s": statistics.median(first),
        "engine_switch_s": statistics.median(switch),
        "engine_hotswap_s": statistics.median(hot),
        "diffusers_load_fuse_s": statistics.median(fused),
    }


def cold_start(scale: Scale, spec: Any, workdir: Path) -> dict[str, float]:
    """S3 -> first image in a fresh container (empty model cache), and the raw read of the object."""
    import boto3
    from botocore.config import Config
    from moto.server import ThreadedMotoServer

    from sdpipe.contracts.inference import Txt2ImgParams
    from sdpipe_inference.engine import ModelSpec
    from sdpipe_inference.model_store import ModelStore

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        s3 = boto3.client("s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1",
                          aws_access_key_id="bench", aws_secret_access_key="bench",
                          config=Config(max_pool_connections=32))  # fmt: skip
        bucket = f"bench-gpu-{os.getpid()}"  # moto's backends are the process's: a name of its own
        s3.create_bucket(Bucket=bucket)
        key = f"models/Stable-diffusion/{spec.path.name}"
        s3.upload_file(str(spec.path), bucket, key)
        started = time.perf_counter()
        body = s3.get_object(Bucket=bucket, Key=key)["Body"]
        while body.read(8 << 20):
            pass
        raw = time.perf_counter() - started
        started = time.perf_counter()
        s3.download_file(bucket, key, str(workdir / "transfer-manager.safetensors"))
        transfer_manager = time.perf_counter() - started
        (workdir / "transfer-manager.safetensors").unlink()

        size = scale.sd15_size
        params = Txt2ImgParams(prompt="a lighthouse at dusk", steps=scale.steps, width=size, height=size, seed=1)
        started = time.perf_counter()
        store = ModelStore(workdir / "cold-cache", 64 << 30, s3=s3)
        local = store.file(f"s3://{bucket}/{key}", spec.sha256, ".safetensors")
        fetched = time.perf_counter() - started
        _engine(scale).generate(
            params, ModelSpec(spec.name, spec.sha256, spec.short_hash, spec.family, local, spec.config)
        )
        _sync(scale.device)
        first_image = time.perf_counter() - started
    finally:
        server.stop()
    return {"raw_read_s": raw, "transfer_manager_s": transfer_manager, "download_s": fetched,
            "first_image_s": first_image,
            "object_gib": spec.path.stat().st_size / 2**30}  # fmt: skip


def training(scale: Scale, workdir: Path) -> dict[str, float]:
    """Builtin LoRA training of SDXL at ``train_size``, batch 1: s/step and peak GPU memory."""
    sys.path.insert(0, str(ROOT / "bench"))
    from bench_training import _dataset_record, run_builtin

    from sdpipe.contracts.training import LoraConfig
    from sdpipe.logic.kohya_config import build_kohya_files
    from sdpipe_local.assets import create_tiny_dataset

    path, config = checkpoint(workdir, "sdxl", scale)
    size = scale.train_size
    concept = create_tiny_dataset(workdir / "data", concept="bench", repeats=10, count=4, size=size)
    lora = LoraConfig(
        resolution=str(size), network_dim=16, network_alpha=8, train_batch_size=1, max_train_steps=scale.train_steps,
        learning_rate=1e-4, mixed_precision="bf16", cache_latents=True, network_train_unet_only=True,
        gradient_checkpointing=not scale.smoke,
    )  # fmt: skip
    files = build_kohya_files(lora, _dataset_record(concept, 10, 4), path.name, "bench")
    setup = {
        "checkpoint": path,
        "config_folder": config,
        "config_toml": files.config_toml.replace('"/opt/ml/input/data/dataset/', f'"{concept.parent}/'),
        "dataset_toml": files.dataset_toml.replace('"/opt/ml/input/data/dataset/', f'"{concept.parent}/'),
    }
    measured = run_builtin(setup, "sdxl", scale.device, warmup=2 if scale.smoke else 5, out=workdir / "lora-out")
    return {"s_per_step": 1 / measured["steps_per_s"], "peak_gib": measured["peak_gib"]}


def _free(scale: Scale) -> None:
    gc.collect()
    if scale.device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def run(scale: Scale, only: tuple[str, ...], workdir: Path) -> dict[str, Any]:
    """Each case in turn; what one loaded is let go before the next (their peaks must not add up)."""

    def measured(case: Callable[..., dict[str, float]], *args: Any) -> dict[str, float]:
        try:
            return case(*args)
        finally:
            _free(scale)

    results: dict[str, Any] = {}
    if {"sd15", "lora", "cold"} & set(only):
        sd15 = spec_of(*checkpoint(workdir, "sd1", scale), "sd1")
    if "sd15" in only:
        results["sd15"] = {
            "plain_diffusers": measured(plain_generation, scale, sd15, scale.sd15_size, "StableDiffusionPipeline"),
            "engine": measured(engine_generation, scale, sd15, scale.sd15_size),
        }
        if not scale.smoke:  # compiling on a CPU takes minutes: the smoke run leaves it out
            compiled = {"SDPIPE_COMPILE": "1"}
            results["sd15"]["engine_compiled"] = measured(engine_generation, scale, sd15, scale.sd15_size, compiled)
    if "sdxl" in only:
        sdxl = spec_of(*checkpoint(workdir, "sdxl", scale), "sdxl")
        results["sdxl"] = {
            "plain_diffusers": measured(plain_generation, scale, sdxl, scale.sdxl_size, "StableDiffusionXLPipeline"),
            "engine": measured(engine_generation, scale, sdxl, scale.sdxl_size),
        }
    if "lora" in only:
        results["lora"] = measured(lora_switch, scale, sd15, workdir)
    if "cold" in only:
        results["cold"] = measured(cold_start, scale, sd15, workdir)
    if "train" in only:
        results["train"] = measured(training, scale, workdir)
    return results


def table(results: dict[str, Any], scale: Scale) -> str:
    rows = ["| measure | sdpipe | baseline (same run) | ratio |", "|---|---|---|---|"]
    for case, size in (("sd15", scale.sd15_size), ("sdxl", scale.sdxl_size)):
        if case not in results:
            continue
        plain = results[case]["plain_diffusers"]
        for variant in ("engine", "engine_compiled"):
            if variant not in results[case]:
                continue
            mine = results[case][variant]
            label = f"{case} {size}², {scale.steps} steps" + (", compiled" if variant == "engine_compiled" else "")
            rows.append(f"| {label}: it/s | {mine['its']:.2f} | {plain['its']:.2f} (plain diffusers) | "
                        f"{mine['its'] / plain['its']:.2f}x |")  # fmt: skip
            rows.append(f"| {label}: s/image | {mine['s_per_image']:.3f} | {plain['s_per_image']:.3f} | "
                        f"{plain['s_per_image'] / mine['s_per_image']:.2f}x faster |")  # fmt: skip
    if "lora" in results:
        lora = results["lora"]
        fused = lora["diffusers_load_fuse_s"]
        rows.append(f"| LoRA switch (both loaded) | {lora['engine_switch_s']:.3f} s | {fused:.3f} s (load + fuse) | "
                    f"{fused / lora['engine_switch_s']:.1f}x faster |")  # fmt: skip
        rows.append(f"| LoRA hot-swap (the compiled path's slot) | {lora['engine_hotswap_s']:.3f} s | {fused:.3f} s "
                    f"(load + fuse) | {fused / lora['engine_hotswap_s']:.1f}x faster |")  # fmt: skip
        rows.append(f"| LoRA first use | {lora['engine_first_load_s']:.3f} s | {fused:.3f} s (load + fuse) | "
                    f"{fused / lora['engine_first_load_s']:.1f}x faster |")  # fmt: skip
    if "cold" in results:
        cold = results["cold"]
        rows.append(f"| cold start, S3 -> first image ({cold['object_gib']:.2f} GiB) | {cold['first_image_s']:.2f} s "
                    f"(download {cold['download_s']:.2f} s; boto3's download_file "
                    f"{cold['transfer_manager_s']:.2f} s) | {cold['raw_read_s']:.2f} s (raw S3 read) | "
                    f"{cold['first_image_s'] / cold['raw_read_s']:.2f}x the read |")  # fmt: skip
    if "train" in results:
        train = results["train"]
        rows.append(f"| builtin LoRA training, SDXL {scale.train_size}², batch 1 | {train['s_per_step']:.3f} s/step, "
                    f"{train['peak_gib']:.1f} GiB peak | | |")  # fmt: skip
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", default=os.environ.get("SMOKE") == "1")
    parser.add_argument("--only", default=",".join(CASES))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "gpu-results.json")
    parser.add_argument("--workdir", type=Path, help="where the checkpoints are written (kept: reruns reuse them)")
    args = parser.parse_args(argv)
    scale = Scale.choose(args.smoke)
    if not scale.smoke:
        import torch

        if not torch.cuda.is_available():
            parser.error("no CUDA device: run with --smoke (SMOKE=1) on a machine without a GPU")
    only = tuple(case for case in args.only.split(",") if case)
    unknown = set(only) - set(CASES)
    if unknown:
        parser.error(f"unknown cases {sorted(unknown)}: {', '.join(CASES)}")
    _quiet()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as temporary:
        workdir = args.workdir or Path(temporary)
        workdir.mkdir(parents=True, exist_ok=True)
        results = run(scale, only, workdir)
    results["machine"] = {"platform": platform.platform(), "smoke": scale.smoke, "device": _device_name(scale),
                          "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results, scale))
    print(f"\n{results['machine']['device']}, {results['machine']['seconds']} s; JSON in {args.out}")
    return results


def _quiet() -> None:
    """Keep the output to the results: diffusers' notes on every LoRA load, the local S3's request log."""
    import logging

    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)


def _device_name(scale: Scale) -> str:
    if scale.device.startswith("cuda"):
        import torch

        return str(torch.cuda.get_device_name())
    return platform.processor() or "cpu"


if __name__ == "__main__":
    main()
