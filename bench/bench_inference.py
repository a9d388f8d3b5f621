"""Inference benchmarks on the local stack with the tiny SD1.x checkpoint.

(a) pipeline overhead: publish on the requests topic → ``job.succeeded`` on the events topic,
    minus the time the endpoint spent in ``/invocations`` (reported by the server), over N
    sequential requests: p50 and p95.
(b) endpoint overhead: ``InferenceService.invoke`` (payload validation, model lookup, seeds, PNG
    encoding with infotext, base64) against a bare diffusers pipeline call with the same model and
    parameters, in the same process, alternating: ratio of medians.
(c) switching: two cached checkpoints alternating, and LoRAs switching on one checkpoint, against
    a cold load of the checkpoint (and of the LoRA).

    python bench/bench_inference.py [--requests 100] [--repeats 30]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PARAMS = {"prompt": "a red fox in snow", "steps": 4, "width": 64, "height": 64, "seed": 42, "sampler_name": "Euler"}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def pipeline_overhead(workdir: Path, requests: int, endpoint_threads: int | None = None) -> dict[str, Any]:
    from sdpipe.adapters.clients import clients
    from sdpipe_client.client import Sdpipe
    from sdpipe_client.stack import StackOutputs
    from sdpipe_local.assets import drop_checkpoint
    from sdpipe_local.demo import wait_for_models
    from sdpipe_local.events_listener import EventsListener
    from sdpipe_local.stack import LocalStack
    from sdpipe_local.tiny_models import create_tiny_checkpoint

    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "bench-sd1.safetensors"
    create_tiny_checkpoint("sd1", path, seed=7)
    with LocalStack(ROOT / "template.yaml", state_dir=workdir / "state") as stack:
        os.environ.update(stack.environment())
        clients.reset()
        key = "models/Stable-diffusion/bench-sd1.safetensors"
        drop_checkpoint(stack.client("s3"), stack.outputs["AssetsBucketName"], path, key)
        wait_for_models(stack, [key])
        client = Sdpipe(StackOutputs(stack.outputs))
        # On AWS the endpoint has its own machine; here it shares 2 vCPUs with moto and the
        # functions. One torch thread leaves a core to the pipeline, as separate hardware would.
        threads = {"OMP_NUM_THREADS": "1"} if endpoint_threads == 1 else {}
        client.wait(client.deploy_endpoint("bench", environment=threads, min_instances=1), timeout_s=300)
        listener = EventsListener(stack, stack.outputs["EventsTopicArn"], {"type": ["job.succeeded", "job.failed"]})
        client.wait(client.submit("txt2img", PARAMS | {"model": "bench-sd1"}))  # warm: model load, workers
        listener.drain()
        totals, invocations = [], []
        for _ in range(requests):
            started = time.perf_counter()
            job_id = client.submit("txt2img", PARAMS | {"model": "bench-sd1"}, request_id=f"bench-{uuid.uuid4().hex}")
            event = None
            while event is None:  # a long poll: it answers as soon as the event is on the queue
                events = listener.drain(wait_s=1)
                event = next((e for e in events if e.get("job_id") == job_id), None)
            totals.append((time.perf_counter() - started) * 1000)
            if event["type"] != "job.succeeded":
                raise RuntimeError(f"benchmark job failed: {event['error']}")
            invocations.append(float(event["outputs"]["invocation_ms"]))
        overheads = [t - i for t, i in zip(totals, invocations, strict=True)]
    return {
        "requests": requests,
        "overhead_ms_p50": round(percentile(overheads, 50), 1),
        "overhead_ms_p95": round(percentile(overheads, 95), 1),
        "total_ms_p50": round(percentile(totals, 50), 1),
        "invocation_ms_p50": round(percentile(invocations, 50), 1),
    }


def endpoint_overhead(workdir: Path, repeats: int) -> dict[str, Any]:
    import hashlib

    import torch

    from sdpipe_inference.engine import Engine
    from sdpipe_inference.model_store import ModelStore
    from sdpipe_inference.server import InferenceService
    from sdpipe_local.tiny_models import config_folder_for, create_tiny_checkpoint, load_tiny_checkpoint

    path = workdir / "endpoint-sd1.safetensors"
    create_tiny_checkpoint("sd1", path, seed=7)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    service = InferenceService(Engine(max_pipelines=2), ModelStore(workdir / "cache", 1 << 30), None)
    model = {"name": "endpoint-sd1", "sha256": sha, "short_hash": sha[:10], "family": "sd1", "uri": str(path)}
    model["config_uri"] = str(config_folder_for(path))
    body = json.dumps({"job_id": "bench", "kind": "txt2img", "params": PARAMS, "model": model}).encode()
    bare = load_tiny_checkpoint(path)
    from diffusers import EulerDiscreteScheduler

    bare.scheduler = EulerDiscreteScheduler.from_config(bare.scheduler.config)

    def run_bare() -> None:
        generator = torch.Generator("cpu").manual_seed(42)
        bare(PARAMS["prompt"], num_inference_steps=4, width=64, height=64, guidance_scale=7.0, generator=generator)

    def run_service() -> None:
        status, payload = service.invoke(body)
        assert status == 200, payload

    for warm in (run_bare, run_service, run_bare, run_service):
        warm()
    bare_ms, service_ms = [], []
    for _ in range(repeats):
        for runner, into in ((run_bare, bare_ms), (run_service, service_ms)):
            started = time.perf_counter()
            runner()
            into.append((time.perf_counter() - started) * 1000)
    return {
        "repeats": repeats,
        "bare_ms_median": round(statistics.median(bare_ms), 2),
        "endpoint_ms_median": round(statistics.median(service_ms), 2),
        "ratio": round(statistics.median(service_ms) / statistics.median(bare_ms), 3),
    }


def switching(workdir: Path, repeats: int) -> dict[str, Any]:
    import hashlib

    from sdpipe.contracts.inference import Txt2ImgParams
    from sdpipe_inference.engine import AddOn, AddOns, Engine, ModelSpec
    from sdpipe_local.tiny_models import config_folder_for, create_tiny_checkpoint, create_tiny_lora

    specs = []
    for seed in (1, 2):
        path = workdir / f"switch-{seed}.safetensors"
        create_tiny_checkpoint("sd1", path, seed=seed)
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        specs.append(ModelSpec(path.stem, sha, sha[:10], "sd1", path, config_folder_for(path)))
    loras = []
    for seed in (3, 4):
        path = create_tiny_lora("sd1", workdir / f"lora-{seed}.safetensors", seed=seed)
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        loras.append(AddOn(path.stem, sha, sha[:10], path, 0.8))
    params = Txt2ImgParams.model_validate(PARAMS)

    def timed(engine: Engine, spec: ModelSpec, add_ons: AddOns | None = None) -> float:
        started = time.perf_counter()
        engine.generate(params, spec, add_ons)
        return (time.perf_counter() - started) * 1000

    cold = [timed(Engine(max_pipelines=2), specs[i % 2]) for i in range(max(3, repeats // 5))]
    warm_engine = Engine(max_pipelines=2)
    for spec in specs:
        timed(warm_engine, spec)
    checkpoints = [timed(warm_engine, specs[i % 2]) for i in range(repeats)]
    cold_lora = []
    for i in range(max(3, repeats // 5)):
        engine = Engine(max_pipelines=2)
        timed(engine, specs[0])
        cold_lora.append(timed(engine, specs[0], AddOns(loras=(loras[i % 2],))))
    for lora in loras:
        timed(warm_engine, specs[0], AddOns(loras=(lora,)))
    choices = [AddOns(loras=(loras[0],)), AddOns(loras=(loras[1],)), AddOns(), AddOns(loras=tuple(loras))]
    lora_switch = [timed(warm_engine, specs[0], choices[i % len(choices)]) for i in range(repeats)]
    return {
        "cold_checkpoint_ms_median": round(statistics.median(cold), 1),
        "cached_checkpoint_switch_ms_median": round(statistics.median(checkpoints), 1),
        "checkpoint_speedup": round(statistics.median(cold) / statistics.median(checkpoints), 1),
        "first_lora_load_ms_median": round(statistics.median(cold_lora), 1),
        "cached_lora_switch_ms_median": round(statistics.median(lora_switch), 1),
        "lora_speedup": round(statistics.median(cold_lora) / statistics.median(lora_switch), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--only", choices=["a", "b", "c"])
    args = parser.parse_args()
    results: dict[str, Any] = {"machine": f"{platform.machine()} {os.cpu_count()} CPUs", "date": time.strftime("%F")}
    with tempfile.TemporaryDirectory(prefix="sdpipe-bench-") as folder:
        workdir = Path(folder)
        if args.only in (None, "b"):
            results["endpoint_overhead"] = endpoint_overhead(workdir, args.repeats)
        if args.only in (None, "c"):
            results["switching"] = switching(workdir, args.repeats)
        if args.only in (None, "a"):
            results["pipeline_overhead"] = pipeline_overhead(workdir / "shared", args.requests)
            results["pipeline_overhead_endpoint_1_thread"] = pipeline_overhead(
                workdir / "one-thread", args.requests, endpoint_threads=1
            )
    print(json.dumps(results, indent=2))
    for section, values in results.items():
        if isinstance(values, dict):
            print(f"\n{section}")
            for name, value in values.items():
                print(f"  {name:36} {value}")


if __name__ == "__main__":
    main()
