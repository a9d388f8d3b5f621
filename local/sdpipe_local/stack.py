"""Start and stop the whole local stack: endpoint, resources, Lambda workers, pollers."""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import threading
import time
import urllib.request
import warnings
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

import boto3
from botocore.config import Config

from sdpipe_local.lambda_runtime import LambdaRuntime
from sdpipe_local.provision import ProvisionedStack, Provisioner
from sdpipe_local.sagemaker import LocalSageMaker
from sdpipe_local.schedules import Scheduler
from sdpipe_local.server import LocalAwsServer
from sdpipe_local.sqs_event_source import SqsPoller
from sdpipe_local.template import samconfig_parameters, translate

logger = logging.getLogger(__name__)

REGION = "us-east-1"
ACCOUNT_ID = "123456789012"  # moto's default account
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
STATE_FILE = "stack.json"


def client_environment(endpoint_url: str) -> dict[str, str]:
    """What a process needs to talk to the local stack with boto3 or the AWS CLI."""
    return {
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        **CREDENTIALS,
    }


class LocalStack:
    # moto's backends are global to the process: stacks running at once in one process share them
    # (so they need different stack names), and the last one to stop resets them.
    _running: ClassVar[int] = 0
    _running_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self,
        template_path: Path | str = "template.yaml",
        *,
        port: int = 0,
        stack_name: str = "sdpipe",
        parameter_overrides: dict[str, str] | None = None,
        state_dir: Path | str | None = None,
    ) -> None:
        self.template_path = Path(template_path).resolve()
        self.stack_name = stack_name
        self._port = port
        self._overrides = {**samconfig_parameters(self.template_path.parent), **(parameter_overrides or {})}
        self.state_dir = Path(state_dir) if state_dir else Path(tempfile.mkdtemp(prefix="sdpipe-local-"))
        self.runtime: LambdaRuntime | None = None
        self.sagemaker: LocalSageMaker | None = None
        self.scheduler: Scheduler | None = None
        self.server: LocalAwsServer | None = None
        self.provisioned: ProvisionedStack | None = None
        self._pollers: list[SqsPoller] = []
        self._previous_moto_port: str | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> LocalStack:
        started = time.monotonic()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        base_environment = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "TZ": "UTC",
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        self.runtime = LambdaRuntime(base_environment, self.state_dir / "logs")
        # Containers get what Lambdas get: the local endpoint and credentials, nothing else.
        self.sagemaker = LocalSageMaker(self.client, base_environment, self.state_dir, REGION, ACCOUNT_ID)
        self.server = LocalAwsServer(self.runtime, self.sagemaker, self._port)
        # moto's Step Functions interpreter calls the other services on this port (process-wide:
        # a second stack in the same process takes it over until it stops, then gives it back).
        self._previous_moto_port = os.environ.get("MOTO_PORT")
        os.environ["MOTO_PORT"] = str(self.server.port)
        self.server.start()
        with LocalStack._running_lock:
            LocalStack._running += 1
        base_environment.update(client_environment(self.server.url))
        self._configure_moto()

        template = translate(
            self.template_path,
            self._overrides,
            {
                "AWS::Region": REGION,
                "AWS::AccountId": ACCOUNT_ID,
                "AWS::Partition": "aws",
                "AWS::StackName": self.stack_name,
            },
        )
        self.provisioned = Provisioner(template, self.client, self.stack_name, REGION, ACCOUNT_ID).run()
        self._publish_outputs()
        for spec in self.provisioned.functions:
            self.runtime.add(spec)
        self.runtime.prewarm()
        self.scheduler = Scheduler(self.provisioned.schedules, self.runtime, self.client, REGION, ACCOUNT_ID)
        self.scheduler.start()
        sqs = self.client("sqs")
        for mapping in self.provisioned.sqs_mappings:
            if mapping.enabled:
                poller = SqsPoller(mapping, self.runtime, sqs, REGION)
                poller.start()
                self._pollers.append(poller)
        self._write_state()
        logger.info("local stack up in %.1fs on %s", time.monotonic() - started, self.endpoint_url)
        return self

    def stop(self) -> None:
        if self.scheduler is not None:
            self.scheduler.stop()
        for poller in self._pollers:
            poller.stop()
        self._pollers.clear()
        if self.runtime is not None:
            self.runtime.close()
        if self.sagemaker is not None:
            self.sagemaker.close()
        if self.server is not None:
            with LocalStack._running_lock:
                LocalStack._running -= 1
                last = LocalStack._running == 0
            if last:
                self._moto_api("reset", {})
            self.server.stop()
            self.server = None
            if self._previous_moto_port is None:
                os.environ.pop("MOTO_PORT", None)
            else:
                os.environ["MOTO_PORT"] = self._previous_moto_port
        state = self.state_dir / STATE_FILE
        if state.exists():
            state.unlink()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ access
    @property
    def endpoint_url(self) -> str:
        assert self.server is not None, "start() the stack first"
        return self.server.url

    @property
    def outputs(self) -> dict[str, str]:
        assert self.provisioned is not None, "start() the stack first"
        return dict(self.provisioned.outputs)

    def environment(self) -> dict[str, str]:
        return client_environment(self.endpoint_url)

    def client_credentials(self) -> dict[str, str]:
        """Keyword arguments for boto3.client/resource: region and the local credentials."""
        return {
            "region_name": REGION,
            "aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        }

    def client(self, service: str) -> Any:
        config = Config(retries={"mode": "standard", "max_attempts": 3})
        return boto3.client(service, endpoint_url=self.endpoint_url, config=config, **self.client_credentials())  # type: ignore[call-overload]

    def resource(self, service: str) -> Any:
        return boto3.resource(service, endpoint_url=self.endpoint_url, **self.client_credentials())  # type: ignore[call-overload]

    # ------------------------------------------------------------------ internals
    def _configure_moto(self) -> None:
        self._moto_api("config", {"stepfunctions": {"execute_state_machine": True}})

    def _moto_api(self, path: str, body: dict[str, Any]) -> None:
        request = urllib.request.Request(
            f"{self.endpoint_url}/moto-api/{path}",
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30):
            pass

    def _publish_outputs(self) -> None:
        """A stack record whose Outputs are the template's, for `aws cloudformation describe-stacks`."""
        assert self.provisioned is not None
        shim = {
            "AWSTemplateFormatVersion": "2010-09-09",
            "Description": f"sdpipe local stack from {self.template_path.name}",
            "Resources": {"LocalStackMarker": {"Type": "AWS::CloudFormation::WaitConditionHandle"}},
            "Outputs": {
                name: {
                    "Value": value,
                    **({"Description": d} if (d := self.provisioned.output_descriptions.get(name)) else {}),
                }
                for name, value in self.provisioned.outputs.items()
            },
        }
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*WaitConditionHandle.*")
            self.client("cloudformation").create_stack(StackName=self.stack_name, TemplateBody=json.dumps(shim))

    def _write_state(self) -> None:
        state = {
            "endpoint_url": self.endpoint_url,
            "stack_name": self.stack_name,
            "pid": os.getpid(),
            "outputs": self.outputs,
            "environment": self.environment(),
            "logs": str(self.state_dir / "logs"),
            "python": sys.executable,
        }
        (self.state_dir / STATE_FILE).write_text(json.dumps(state, indent=2))
