"""`sdpipe upload`, `sdpipe sync` and `sdpipe fetch` as a user runs them, against the local stack."""

from __future__ import annotations

import hashlib
import json
import uuid

import pytest
from click.testing import CliRunner

from sdpipe_client.cli import main
from sdpipe_local.file_server import FileServer
from tests.integration.helpers import big_lora, open_uploads


@pytest.fixture
def cli(aws_env, stack, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def invoke(*args: str) -> str:
        result = CliRunner().invoke(main, ["--stack", stack.stack_name, *args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.stdout if args[0] != "sync" else result.output  # sync's skip lines are on stderr

    return invoke


def last_json(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


def test_upload_command_registers_the_file(cli, tmp_path):
    path = tmp_path / f"cli-{uuid.uuid4().hex[:6]}.safetensors"
    path.write_bytes(big_lora(9))
    # --name as the model is listed: the file keeps its extension.
    result = last_json(cli("upload", str(path), "--type", "lora", "--name", f"cli/{path.stem}"))
    assert result["status"] == "SUCCEEDED"
    assert result["model"]["name"] == f"cli/{path.stem}" and result["model"]["source"] == "upload"
    assert result["model"]["s3_key"] == f"models/Lora/cli/{path.name}"
    assert result["model"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_upload_refuses_a_name_with_another_extension_before_sending_anything(stack, aws_env, tmp_path):
    path = tmp_path / "mine.safetensors"
    path.write_bytes(big_lora(1))
    result = CliRunner().invoke(main, ["--stack", stack.stack_name, "upload", str(path), "--type", "lora",
                                       "--name", "mine.ckpt"])  # fmt: skip
    assert result.exit_code != 0
    assert "'mine.ckpt' ends in .ckpt but the source 'mine.safetensors' is a .safetensors file" in result.output


def test_sync_uploads_a_webui_folder_once(cli, tmp_path, stack):
    webui = tmp_path / "stable-diffusion-webui"
    tag = uuid.uuid4().hex[:6]
    (webui / "models" / "Lora" / "styles").mkdir(parents=True)
    (webui / "models" / "Lora" / "styles" / f"ink-{tag}.safetensors").write_bytes(big_lora(2, seed=7))
    (webui / "models" / "Lora" / "styles" / f"ink-{tag}.png").write_bytes(b"preview, not a model")
    (webui / "models" / "Lora" / f"pencil-{tag}.safetensors").write_bytes(big_lora(1, seed=8))
    (webui / "models" / "VAE-approx").mkdir()
    (webui / "models" / "VAE-approx" / "model.pt").write_bytes(b"not a WebUI model folder we sync")
    output = cli("sync", str(webui))
    assert "2 uploaded, 0 already registered, 0 rejected" in output
    keys = {f"models/Lora/styles/ink-{tag}.safetensors", f"models/Lora/pencil-{tag}.safetensors"}
    listed = stack.client("s3").list_objects_v2(Bucket=stack.outputs["AssetsBucketName"], Prefix="models/Lora/")
    assert keys <= {o["Key"] for o in listed["Contents"]}
    assert not keys & set(open_uploads(stack))
    again = cli("sync", str(webui / "models"))
    assert "0 uploaded, 2 already registered" in again and f"styles/ink-{tag}.safetensors" in again


def test_fetch_command_follows_the_job(cli, tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "remote.safetensors").write_bytes(big_lora(1, seed=9))
    name = f"remote-{uuid.uuid4().hex[:6]}"  # the extension comes from the URL
    with FileServer(tmp_path / "site") as server:
        result = last_json(cli("fetch", server.url("/files/remote.safetensors"), "--type", "lora", "--name", name))
    assert result["status"] == "SUCCEEDED" and result["model"]["s3_key"] == f"models/Lora/{name}.safetensors"
    assert result["model"]["name"] == name
