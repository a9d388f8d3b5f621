"""The inference container's server on loopback, over tiny single-file checkpoints."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
import urllib.request
from urllib.error import HTTPError

import numpy as np
import pytest
from PIL import Image

from sdpipe_inference.engine import Engine
from sdpipe_inference.infotext import read_parameters
from sdpipe_inference.model_store import ModelStore
from sdpipe_inference.server import InferenceService, serve
from tests.integration.helpers import FOX_PARAMS


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    service = InferenceService(Engine(max_pipelines=2), ModelStore(tmp_path_factory.mktemp("cache"), 1 << 30), None)
    httpd = serve(0, service, host="127.0.0.1")
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", service
    httpd.shutdown()


def model_ref(path, family):
    return {
        "name": path.stem, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "short_hash": "0123456789",
        "family": family, "uri": str(path), "config_uri": str(path.with_name(path.stem + ".config")),
    }  # fmt: skip


def invoke(base, body):
    request = urllib.request.Request(
        f"{base}/invocations", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except HTTPError as error:
        return error.code, json.loads(error.read())


def pixels(b64: str) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(base64.b64decode(b64))))


FOX = FOX_PARAMS


def test_ping(server):
    base, _ = server
    with urllib.request.urlopen(f"{base}/ping", timeout=10) as response:
        assert response.status == 200


def test_txt2img_follows_a1111_seeds_and_writes_png_info(server, tiny_checkpoints):
    base, _ = server
    status, body = invoke(
        base, {"job_id": "j1", "kind": "txt2img", "params": FOX, "model": model_ref(tiny_checkpoints["sd1"], "sd1")}
    )
    assert status == 200, body
    info = json.loads(body["info"])
    assert info["all_seeds"] == [42, 43] and info["job_id"] == "j1"
    assert len(body["images"]) == 2
    text = read_parameters(base64.b64decode(body["images"][1]))
    assert text.startswith("a red fox in snow\n")
    for part in (
        "Steps: 4",
        "Sampler: Euler a",
        "CFG scale: 7",
        "Seed: 43",
        "Size: 64x64",
        "Model hash: 0123456789",
        f"Model: {tiny_checkpoints['sd1'].stem}",
    ):
        assert part in text
    again = invoke(base, {"kind": "txt2img", "params": FOX, "model": model_ref(tiny_checkpoints["sd1"], "sd1")})[1]
    assert all(np.array_equal(pixels(a), pixels(b)) for a, b in zip(body["images"], again["images"], strict=True))
    alone = invoke(
        base,
        {
            "kind": "txt2img",
            "params": FOX | {"seed": 43, "batch_size": 1},
            "model": model_ref(tiny_checkpoints["sd1"], "sd1"),
        },
    )[1]
    # The same starting noise: seed 43 alone matches image 2 of the seed-42 batch up to the float
    # rounding of a batched versus a single UNet call.
    difference = np.abs(pixels(alone["images"][0]).astype(int) - pixels(body["images"][1]).astype(int))
    assert difference.mean() < 1.0
    other = np.abs(pixels(alone["images"][0]).astype(int) - pixels(body["images"][0]).astype(int))
    assert other.mean() > 5 * max(difference.mean(), 0.1)


def test_a_cancelled_job_stops_between_steps_and_the_container_takes_the_next(server, tiny_checkpoints, monkeypatch):
    from sdpipe.contracts.inference import StopRequest
    from sdpipe_inference import stopping
    from sdpipe_inference.server import JobChannel

    base, service = server
    monkeypatch.setattr(stopping, "POLL_INTERVAL_S", 0.02)
    events: list = []
    stopped: set[str] = {"j-early"}  # cancelled while it waited in the endpoint's queue

    def publish(event) -> None:
        events.append(event)
        if event.job_id == "j-long":
            stopped.add(event.job_id)  # cancelled as soon as its first progress shows it running

    def read_stop(job_id: str) -> StopRequest | None:
        return StopRequest(status="CANCELLED", reason="enough") if job_id in stopped else None

    monkeypatch.setattr(service, "channel", JobChannel(publish, read_stop=read_stop))
    model = model_ref(tiny_checkpoints["sd1"], "sd1")
    long_job = FOX | {"steps": 150, "batch_size": 1, "n_iter": 4}
    status, body = invoke(base, {"job_id": "j-long", "kind": "txt2img", "params": long_job, "model": model})
    assert status == 424 and body["error"]["code"] == "CANCELLED", body
    message = body["error"]["message"]
    assert message.startswith("job j-long was cancelled: enough; the endpoint stopped generating it after step")
    stopped_at = int(message.split("after step ")[1].split()[0])
    assert stopped_at < 150 and "(image 1 of 4)" in message  # long before the first image's end

    status, body = invoke(base, {"job_id": "j-early", "kind": "txt2img", "params": long_job, "model": model})
    assert (status, body["error"]["code"]) == (424, "CANCELLED") and "before it started" in body["error"]["message"]
    assert {event.job_id for event in events} == {"j-long"}  # no step of j-early ran

    status, body = invoke(base, {"job_id": "j-next", "kind": "txt2img", "params": FOX | {"steps": 2}, "model": model})
    assert status == 200 and len(body["images"]) == 2  # the container is free for the next job


def test_img2img_and_sdxl(server, tiny_checkpoints):
    base, _service = server
    _, first = invoke(
        base,
        {"kind": "txt2img", "params": FOX | {"batch_size": 1}, "model": model_ref(tiny_checkpoints["sdxl"], "sdxl")},
    )
    params = {
        "prompt": "a fox",
        "init_images": [first["images"][0]],
        "denoising_strength": 0.6,
        "steps": 4,
        "width": 64,
        "height": 64,
        "seed": 1,
    }
    status, body = invoke(
        base, {"kind": "img2img", "params": params, "model": model_ref(tiny_checkpoints["sdxl"], "sdxl")}
    )
    assert status == 200, body
    assert "Denoising strength: 0.6" in read_parameters(base64.b64decode(body["images"][0]))


@pytest.mark.parametrize(
    ("kind", "params", "code", "message"),
    [
        ("txt2img", FOX | {"sampler_name": "Nope"}, "VALIDATION_ERROR", "sampler_name 'Nope'"),
        ("txt2img", FOX | {"width": 65}, "VALIDATION_ERROR", "width"),
        (
            "img2img",
            {"init_images": [base64.b64encode(b"not an image").decode()], "width": 64, "height": 64},
            "VALIDATION_ERROR",
            "init_images[0] is not an image",
        ),
        ("img2img", {"init_images": ["%%%"], "width": 64, "height": 64}, "VALIDATION_ERROR", "not valid base64"),
    ],
)
def test_bad_requests_answer_400_naming_the_problem(server, tiny_checkpoints, kind, params, code, message):  # noqa: PLR0917
    base, _ = server
    status, body = invoke(base, {"kind": kind, "params": params, "model": model_ref(tiny_checkpoints["sd1"], "sd1")})
    assert status == 400
    assert body["error"]["code"] == code and message in body["error"]["message"]


def test_a_missing_model_file_fails_clearly(server, tiny_checkpoints, tmp_path):
    base, _ = server
    ref = model_ref(tiny_checkpoints["sd1"], "sd1") | {"uri": str(tmp_path / "gone.safetensors")}
    status, body = invoke(base, {"kind": "txt2img", "params": FOX, "model": ref})
    assert status == 424 and body["error"]["code"] == "MODEL_NOT_FOUND"


def test_two_cached_checkpoints_switch_without_reloading(server, tiny_checkpoints):
    base, service = server
    for family in ("sd1", "sdxl"):
        invoke(
            base,
            {
                "kind": "txt2img",
                "params": FOX | {"batch_size": 1},
                "model": model_ref(tiny_checkpoints[family], family),
            },
        )
    loads = service.engine.cache.loads
    for family in ("sd1", "sdxl", "sd1"):
        invoke(
            base,
            {
                "kind": "txt2img",
                "params": FOX | {"batch_size": 1},
                "model": model_ref(tiny_checkpoints[family], family),
            },
        )
    assert service.engine.cache.loads == loads


def _png_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def controlnets(tmp_path_factory):
    from sdpipe_local.tiny_models import create_tiny_controlnet

    folder = tmp_path_factory.mktemp("controlnets")
    return {
        (family, layout): create_tiny_controlnet(family, folder / f"cn-{family}-{layout}.safetensors", layout=layout)
        for family in ("sd1", "sdxl")
        for layout in ("ldm", "diffusers")
    }


def _shape_image() -> str:
    from PIL import ImageDraw

    image = Image.new("RGB", (96, 64), "white")
    ImageDraw.Draw(image).ellipse((20, 10, 70, 50), fill="black")
    return _png_b64(image)


def _unit(**fields):
    return {"enabled": True, "module": "canny", "model": "cn", "image": _shape_image()} | fields


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
@pytest.mark.parametrize("layout", ["ldm", "diffusers"])
def test_controlnet_units_steer_the_picture_and_are_recorded(server, tiny_checkpoints, controlnets, family, layout):
    base, _ = server
    model = model_ref(tiny_checkpoints[family], family)
    controlnet = model_ref(controlnets[(family, layout)], family)
    params = FOX | {"batch_size": 1}
    plain = invoke(base, {"kind": "txt2img", "params": params, "model": model})[1]

    def with_units(*units):
        body = {
            "kind": "txt2img",
            "params": params | {"alwayson_scripts": {"controlnet": {"args": list(units)}}},
            "model": model,
            "controlnets": [controlnet] * len(units),
        }
        status, answer = invoke(base, body)
        assert status == 200, answer
        return answer

    steered = with_units(_unit())
    assert np.abs(pixels(steered["images"][0]).astype(int) - pixels(plain["images"][0]).astype(int)).mean() > 1
    text = read_parameters(base64.b64decode(steered["images"][0]))
    assert f'ControlNet 0: "Module: canny, Model: {controlnet["name"]} [0123456789], Weight: 1,' in text
    # Weight 0 is exactly the plain picture: the unit's residuals are scaled, nothing else changes.
    assert np.array_equal(pixels(with_units(_unit(weight=0))["images"][0]), pixels(plain["images"][0]))
    # Two units at once (a MultiControlNet), in guess mode.
    both = with_units(_unit(control_mode=2), _unit(module="invert", control_mode=2, weight=0.5))
    assert "ControlNet 1: " in read_parameters(base64.b64decode(both["images"][0]))


def test_img2img_controlnet_uses_the_init_image_without_its_own(server, tiny_checkpoints, controlnets):
    base, _ = server
    params = {
        "prompt": "a fox", "init_images": [_shape_image()], "denoising_strength": 0.7, "steps": 4,
        "width": 64, "height": 64, "seed": 3,
        "alwayson_scripts": {"controlnet": {"args": [{"module": "canny", "model": "cn"}]}},
    }  # fmt: skip
    status, body = invoke(
        base,
        {
            "kind": "img2img",
            "params": params,
            "model": model_ref(tiny_checkpoints["sd1"], "sd1"),
            "controlnets": [model_ref(controlnets[("sd1", "ldm")], "sd1")],
        },
    )
    assert status == 200, body
    assert json.loads(body["info"])["controlnet_units"][0]["module"] == "canny"


def test_a_controlnet_for_another_family_is_refused(server, tiny_checkpoints, controlnets):
    base, _ = server
    status, body = invoke(
        base,
        {
            "kind": "txt2img",
            "params": FOX | {"alwayson_scripts": {"controlnet": {"args": [_unit()]}}},
            "model": model_ref(tiny_checkpoints["sd1"], "sd1"),
            "controlnets": [model_ref(controlnets[("sdxl", "ldm")], "sdxl")],
        },
    )
    assert status == 400
    assert body["error"]["code"] == "VALIDATION_ERROR" and "does not fit model" in body["error"]["message"]


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_an_embedding_named_in_the_prompt_changes_the_picture(server, tiny_checkpoints, tmp_path, family):
    from sdpipe_local.tiny_models import create_tiny_embedding

    base, _ = server
    embedding = create_tiny_embedding(family, tmp_path / f"foxtoken-{family}.safetensors", seed=5)
    model = model_ref(tiny_checkpoints[family], family)
    params = FOX | {"batch_size": 1, "prompt": f"a red fox in snow, foxtoken-{family}"}
    plain = invoke(base, {"kind": "txt2img", "params": params, "model": model})[1]
    status, body = invoke(
        base, {"kind": "txt2img", "params": params, "model": model, "embeddings": [model_ref(embedding, family)]}
    )
    assert status == 200, body
    assert not np.array_equal(pixels(body["images"][0]), pixels(plain["images"][0]))
    assert f'TI hashes: "foxtoken-{family}: 0123456789"' in read_parameters(base64.b64decode(body["images"][0]))


def test_the_container_starts_as_sagemaker_starts_it_and_stops_on_sigterm(tmp_path):
    """`docker run IMAGE serve` appends `serve` to the ENTRYPOINT; SageMaker stops the container with
    SIGTERM, which a PID-1 Python would otherwise ignore until SIGKILL."""
    import signal
    import socket
    import subprocess
    import sys
    import time
    from pathlib import Path

    from sdpipe_local.images import parse_dockerfile

    root = Path(__file__).resolve().parents[2]
    command = parse_dockerfile(root / "images/inference/Dockerfile").command("serve")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {"PATH": str(Path(sys.executable).parent), "SAGEMAKER_BIND_TO_PORT": str(port),
           "SDPIPE_BIND_HOST": "127.0.0.1", "SDPIPE_MODEL_CACHE": str(tmp_path)}  # fmt: skip
    log = tmp_path / "container.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, log.read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as response:
                    assert json.loads(response.read())["status"] == "healthy"
                    break
            except OSError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0, log.read_text()
        assert "stopped" in log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
