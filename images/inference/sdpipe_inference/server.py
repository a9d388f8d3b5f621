"""SageMaker's inference contract: ``GET /ping`` and ``POST /invocations`` on port 8080.

The invocation body is the job's ``input.json``: which model (registered name, hashes, where the
file is) and the AUTOMATIC1111 payload. The response is A1111's API response: base64 PNGs that
carry the ``parameters`` chunk, the parameters, and ``info`` as a JSON string. A bad request
answers 400 with an error code and a message naming the field; SageMaker's asynchronous
inference then reports the job on its error topic.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from sdpipe.contracts.events import Event
from sdpipe.contracts.inference import (
    Img2ImgParams,
    InvocationInput,
    ModelFile,
    StopRequest,
    Txt2ImgParams,
    stop_request_key,
)
from sdpipe.errors import SdpipeError
from sdpipe_inference.acceleration import compile_cache_dir, warm_up
from sdpipe_inference.engine import AddOn, AddOns, Engine, GenerationResult, ModelSpec, StepProgress
from sdpipe_inference.family_configs import built_configs_dir, choice_from_ldm_yaml, config_folder, config_name
from sdpipe_inference.model_store import ModelStore
from sdpipe_inference.progress import JobRef, ProgressReporter
from sdpipe_inference.stopping import StopWatch

logger = logging.getLogger("sdpipe.inference")
MAX_BODY = 64 * 1024 * 1024


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        location = ".".join(str(p) for p in error["loc"])
        parts.append(f"{location}: {error['msg']}" if location else error["msg"])
    return "; ".join(parts)


@dataclass(frozen=True)
class JobChannel:
    """What the container says and hears about the job it generates: ``job.progress`` out on the
    events topic (its previews in the assets bucket), the job's stop request in."""

    publish: Callable[[Event], None]
    put: Callable[[str, bytes, str], str] | None = None  # key, data, content type -> its URI
    read_stop: Callable[[str], StopRequest | None] | None = None

    @classmethod
    def from_environment(cls) -> JobChannel | None:
        topic = os.environ.get("SDPIPE_EVENTS_TOPIC_ARN")
        if not topic:
            return None
        from sdpipe.adapters.events import EventPublisher
        from sdpipe.adapters.object_store import ObjectStore

        bucket = os.environ.get("SDPIPE_ASSETS_BUCKET")
        if not bucket:
            return cls(EventPublisher(topic).publish)
        store = ObjectStore(bucket)

        def put(key: str, data: bytes, content_type: str) -> str:
            store.put_bytes(key, data, content_type)
            return store.uri(key)

        def read_stop(job_id: str) -> StopRequest | None:
            try:
                return StopRequest.model_validate_json(store.get_bytes(stop_request_key(job_id), 64 * 1024))
            except FileNotFoundError:
                return None

        return cls(EventPublisher(topic).publish, put, read_stop)


class InferenceService:
    def __init__(
        self, engine: Engine, store: ModelStore, configs_dir: Path | None, channel: JobChannel | None = None
    ) -> None:
        self.engine = engine
        self.store = store
        self.configs_dir = configs_dir
        self.channel = channel

    def invoke(self, body: bytes) -> tuple[int, dict[str, Any]]:
        started = time.perf_counter()
        try:
            request = InvocationInput.model_validate_json(body)
        except ValidationError as exc:
            return 400, {"error": {"code": "VALIDATION_ERROR", "message": _validation_message(exc)}}
        try:
            params_cls = Txt2ImgParams if request.kind == "txt2img" else Img2ImgParams
            try:
                params = params_cls.model_validate(self._inline_images(request.params))
            except ValidationError as exc:
                return 400, {"error": {"code": "VALIDATION_ERROR", "message": _validation_message(exc)}}
            spec = self._spec(request.model)
            add_ons = AddOns(
                loras=tuple(self._add_on(lora, lora.weight) for lora in request.loras),
                embeddings=tuple(self._add_on(embedding) for embedding in request.embeddings),
                vae=self._add_on(request.vae) if request.vae else None,
                controlnets=tuple(self._add_on(controlnet) for controlnet in request.controlnets),
            )
            result = self._generate(request, params, spec, add_ons)
        except SdpipeError as exc:
            return 400 if exc.code == "VALIDATION_ERROR" else 424, {"error": exc.to_error()}
        images = [base64.b64encode(png).decode() for png in result.pngs()]
        # How long the endpoint worked on it (model loading included): the rest is pipeline overhead.
        elapsed_ms = round((time.perf_counter() - started) * 1000, 2)
        info = result.info | {"job_id": request.job_id, "warnings": params.warnings(), "invocation_ms": elapsed_ms}
        return 200, {"images": images, "parameters": request.params, "info": json.dumps(info)}

    def _generate(
        self, request: InvocationInput, params: Txt2ImgParams | Img2ImgParams, spec: ModelSpec, add_ons: AddOns
    ) -> GenerationResult:
        """Generate, telling the job's progress and stopping between steps if the job ends."""
        channel = self.channel
        if channel is None or request.job_id is None:
            return self.engine.generate(params, spec, add_ons)
        job = JobRef(request.job_id, request.kind, request.request_id, request.context, spec.family,
                     params.batch_size, params.n_iter)  # fmt: skip
        reporter = ProgressReporter(job, channel.publish, channel.put)
        watch = StopWatch(job.job_id, channel.read_stop) if channel.read_stop else None
        with watch or contextlib.nullcontext():

            def on_step(progress: StepProgress) -> None:
                if watch is not None:
                    watch(progress)  # raises at the step boundary once the job has ended
                reporter(progress)

            try:
                return self.engine.generate(params, spec, add_ons, on_step=on_step)
            finally:
                reporter.close()

    def _inline_images(self, params: dict[str, Any]) -> dict[str, Any]:
        """``s3://`` images in the payload, fetched and given to the engine as base64."""
        resolved = dict(params)
        if isinstance(params.get("init_images"), list):
            resolved["init_images"] = [self._image(v) for v in params["init_images"]]
        if isinstance(params.get("mask"), str):
            resolved["mask"] = self._image(params["mask"])
        scripts = params.get("alwayson_scripts")
        controlnet = scripts.get("controlnet") if isinstance(scripts, dict) else None
        if isinstance(scripts, dict) and isinstance(controlnet, dict) and isinstance(controlnet.get("args"), list):
            units = [self._unit_images(unit) for unit in controlnet["args"]]
            resolved["alwayson_scripts"] = scripts | {"controlnet": controlnet | {"args": units}}
        return resolved

    def _unit_images(self, unit: Any) -> Any:
        """A ControlNet unit with its ``s3://`` image (plain, or the extension's image/mask pair) fetched."""
        if not isinstance(unit, dict):
            return unit  # the contract names the bad unit
        fetched = dict(unit)
        for field in ("image", "input_image"):
            value = fetched.get(field)
            if isinstance(value, dict):
                fetched[field] = value | {"image": self._image(value.get("image"))}
            elif value is not None:
                fetched[field] = self._image(value)
        return fetched

    def _image(self, value: Any) -> Any:
        if isinstance(value, str) and value.startswith("s3://"):
            return base64.b64encode(self.store.read(value, MAX_BODY)).decode()
        return value

    def _add_on(self, model: ModelFile, weight: float = 1.0) -> AddOn:
        return AddOn(model.name, model.sha256, model.short_hash, self._local_file(model), weight)

    def _local_file(self, model: ModelFile) -> Path:
        return self.store.file(model.uri, model.sha256, ".safetensors" if model.uri.endswith(".safetensors") else "")

    def _spec(self, model: ModelFile) -> ModelSpec:
        path = self._local_file(model)
        if model.config_uri:  # the checkpoint's own <name>.config/ overrides the shipped one
            config = self.store.folder(model.config_uri, model.sha256)
        else:
            variant, prediction = model.variant, model.prediction
            if model.original_config_uri:  # an A1111 <name>.yaml beside it says what the weights are
                variant, prediction = choice_from_ldm_yaml(
                    self.store.read(model.original_config_uri, 1 << 20).decode(errors="replace")
                )
            name = config_name(model.family, variant, prediction)
            config = config_folder(name, self.configs_dir or built_configs_dir())
        return ModelSpec(model.name, model.sha256, model.short_hash, model.family, path, config)


def make_handler(service: InferenceService) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            logger.info("%s %s", self.address_string(), format % args)

        def _reply(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/ping":
                self._reply(200, {"status": "healthy", "device": service.engine.device})
            else:
                self._reply(404, {"error": {"code": "NOT_FOUND", "message": self.path}})

        def do_POST(self) -> None:
            if self.path != "/invocations":
                self._reply(404, {"error": {"code": "NOT_FOUND", "message": self.path}})
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self._reply(413, {"error": {"code": "VALIDATION_ERROR", "message": f"body over {MAX_BODY} bytes"}})
                return
            try:
                status, payload = service.invoke(self.rfile.read(length))
            except Exception as exc:  # the job fails with the cause instead of a hung connection
                logger.exception("invocation failed")
                status, payload = (
                    500,
                    {"error": {"code": "INFERENCE_FAILED", "message": f"{type(exc).__name__}: {exc}"}},
                )
            self._reply(status, payload)

    return Handler


class _Server(ThreadingHTTPServer):
    # Requests run on non-daemon threads, so server_close() after a SIGTERM waits for the
    # generation in progress instead of dropping it half-way.
    daemon_threads = False


def serve(port: int, service: InferenceService, host: str = "0.0.0.0") -> ThreadingHTTPServer:  # noqa: S104 - container port
    return _Server((host, port), make_handler(service))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="sdpipe inference server (SageMaker contract)")
    # SageMaker starts a hosting container as `docker run IMAGE serve`: the word is appended to
    # the ENTRYPOINT. Run by hand, the server needs no argument.
    parser.add_argument("command", nargs="?", choices=["serve"], help="what SageMaker passes to hosting containers")
    parser.add_argument("--port", type=int, default=int(os.environ.get("SAGEMAKER_BIND_TO_PORT", "8080")))
    parser.add_argument("--host", default=os.environ.get("SDPIPE_BIND_HOST", "0.0.0.0"))  # noqa: S104
    parser.add_argument(
        "--cache-dir", type=Path, default=Path(os.environ.get("SDPIPE_MODEL_CACHE", "/var/cache/sdpipe-models"))
    )
    parser.add_argument("--cache-gib", type=float, default=float(os.environ.get("SDPIPE_MODEL_CACHE_GIB", "40")))
    # Where the shipped family configs are assembled with their tokenizers (the image builds them).
    parser.add_argument("--configs-dir", type=Path, default=os.environ.get("SDPIPE_CONFIGS_DIR"))
    parser.add_argument("--max-pipelines", type=int, default=int(os.environ.get("SDPIPE_MAX_PIPELINES", "2")))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    engine = Engine(max_pipelines=args.max_pipelines)
    if engine.acceleration.compile:
        compile_cache_dir(args.cache_dir)  # on the instance's volume: kept when the container restarts
        # Before the port opens: SageMaker routes nothing to a container until /ping answers.
        warm_up(engine.acceleration, args.configs_dir or built_configs_dir())
    service = InferenceService(
        engine, ModelStore(args.cache_dir, int(args.cache_gib * 2**30)), args.configs_dir,
        JobChannel.from_environment(),
    )  # fmt: skip
    server = serve(args.port, service, args.host)
    stop_on_sigterm(server)
    logger.info("serving on %s:%d (device %s)", args.host, args.port, service.engine.device)
    server.serve_forever()
    server.server_close()
    logger.info("stopped")


def stop_on_sigterm(server: ThreadingHTTPServer) -> None:
    """SageMaker stops a container with SIGTERM. As PID 1 in a container Python has no default
    handler for it (the kernel does not kill PID 1 with an unhandled signal), so without one the
    container runs until SIGKILL. Stop serving instead: the running request finishes first."""

    def on_sigterm(signum: int, _frame: Any) -> None:
        logger.info("signal %d: stopping", signum)
        # shutdown() waits for serve_forever() to return, which runs on this (the main) thread.
        threading.Thread(target=server.shutdown, name="shutdown", daemon=True).start()

    signal.signal(signal.SIGTERM, on_sigterm)


if __name__ == "__main__":
    main()
