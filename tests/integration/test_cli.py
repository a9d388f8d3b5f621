"""What a new user does: `sdpipe local up`, then the plain AWS CLI and the sdpipe CLI against it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner

from sdpipe_client.cli import main
from tests.helpers import kohya_lora, safetensors_bytes, wait_until

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def run(args: list[str], env: dict[str, str]) -> str:
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def local_up(tmp_path):
    state = tmp_path / "state"
    process = subprocess.Popen(
        [str(BIN / "sdpipe"), "local", "up", "--port", "0", "--state-dir", str(state)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: list[str] = []
    deadline = time.monotonic() + 90
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "ready" in line:
            break
    assert lines and "ready" in lines[-1], "".join(lines)
    exports = dict(line[len("export ") :].strip().split("=", 1) for line in lines if line.startswith("export "))
    yield process, exports, lines, state
    if process.poll() is None:
        process.kill()


def test_local_up_then_the_plain_aws_cli(local_up, tmp_path):
    process, exports, _lines, state = local_up
    assert exports["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")
    env = {**os.environ, **exports}
    aws = str(BIN / "aws")
    outputs = {
        o["OutputKey"]: o["OutputValue"]
        for o in json.loads(run([aws, "cloudformation", "describe-stacks", "--stack-name", "sdpipe"], env))["Stacks"][
            0
        ]["Outputs"]
    }
    cli_outputs = json.loads(run([str(BIN / "sdpipe"), "local", "outputs", "--json", "--state-dir", str(state)], env))
    assert cli_outputs == outputs

    lora = tmp_path / "my.safetensors"
    lora.write_bytes(safetensors_bytes(kohya_lora("sd1")))
    run([aws, "s3", "cp", str(lora), f"s3://{outputs['AssetsBucketName']}/models/Lora/"], env)

    def active() -> list[dict]:
        items = json.loads(run([aws, "dynamodb", "scan", "--table-name", outputs["ModelsTableName"]], env))["Items"]
        return items if items and items[0]["status"]["S"] == "ACTIVE" else []

    items = wait_until(active, 30, every=0.3, what="the model registered, seen with the AWS CLI")
    assert items[0]["name"]["S"] == "my" and items[0]["family"]["S"] == "sd1"

    listing = run([str(BIN / "sdpipe"), "models", "list", "--json"], env)
    assert [m["name"] for m in json.loads(listing)] == ["my"]
    table = run([str(BIN / "sdpipe"), "models", "list"], {**env, "COLUMNS": "200"})
    assert "my" in table and "ACTIVE" in table and items[0]["short_hash"]["S"] in table

    attributes = '{"action": {"DataType": "String", "StringValue": "txt2img"}}'
    message = '{"action": "txt2img", "params": {}}'
    topic = outputs["RequestsTopicArn"]
    published = run(
        [aws, "sns", "publish", "--topic-arn", topic, "--message", message, "--message-attributes", attributes], env
    )
    assert "MessageId" in json.loads(published)

    workers = [c.pid for c in psutil.Process(process.pid).children(recursive=True)]
    assert workers, "each function runs in its own worker process"
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) == 0
    assert not [
        pid for pid in workers if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    ]
    assert not (state / "stack.json").exists()


def test_models_list_reports_a_missing_stack_clearly(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    from sdpipe.adapters.clients import clients

    clients.reset()
    result = CliRunner().invoke(main, ["models", "list"])
    clients.reset()
    assert result.exit_code == 1
    assert "cannot read stack 'sdpipe'" in result.output and "sdpipe local up" in result.output
