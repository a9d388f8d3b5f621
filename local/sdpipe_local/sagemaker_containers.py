"""The containers behind local SageMaker endpoints: started as SageMaker starts them, one local
process per instance.

The image's ENTRYPOINT (read from its Dockerfile, ``sdpipe_local.images``) with ``serve``
appended, on a free port (``SAGEMAKER_BIND_TO_PORT``), with the Dockerfile's ENV, the model's
container environment and the execution role's credentials. A container is up once ``/ping``
answers; one that exits first fails with the end of its log as the reason. Stopping a container
is SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdpipe_local.credentials import SAGEMAKER, RoleNotAssumable, RoleSessions
from sdpipe_local.images import ImageError, ImageResolver

_STARTUP_TIMEOUT_S = 600


def now() -> float:
    return time.time()


@dataclass
class Endpoint:
    """A local endpoint: its status as DescribeEndpoint reports it and the container serving it."""

    name: str
    arn: str
    config_name: str
    role_arn: str = ""
    status: str = "Creating"
    failure_reason: str | None = None
    created: float = field(default_factory=now)
    modified: float = field(default_factory=now)
    process: subprocess.Popen[bytes] | None = None
    port: int = 0
    log_path: Path | None = None
    executor: ThreadPoolExecutor | None = None
    # Held while a crashed container is replaced; invocations read the port under it.
    restarting: threading.Lock = field(default_factory=threading.Lock)
    restarts: int = 0

    def serve_from(self, container: Container) -> None:
        self.process, self.port, self.log_path = container.process, container.port, container.log_path

    def signal_stop(self) -> None:
        """SIGTERM the container, as SageMaker does; ``stop`` then waits for it."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()

    def stop(self) -> None:
        self.signal_stop()
        if self.process is not None:
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)


@dataclass
class Container:
    process: subprocess.Popen[bytes] | None
    port: int
    log_path: Path
    # Runs the endpoint's asynchronous invocations, MaxConcurrentInvocationsPerInstance at a time.
    executor: ThreadPoolExecutor
    error: str | None = None

    def failed(self, reason: str) -> Container:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.error = reason
        return self


@dataclass
class ContainerLauncher:
    environment: dict[str, str]  # without credentials: containers get their role's
    state_dir: Path
    sessions: RoleSessions
    images: ImageResolver

    def launch(self, name: str, model: dict[str, Any], concurrency: int) -> Container:
        """Start ``model``'s container (a CreateModel body) for endpoint ``name`` as a local
        process and wait for its ``/ping``; the container's ``error`` says why it did not start."""
        executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix=f"ep-{name}")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        container = model.get("PrimaryContainer") or (model.get("Containers") or [{}])[0]
        role = str(model.get("ExecutionRoleArn", ""))
        folder = self.state_dir / "endpoints" / name
        folder.mkdir(parents=True, exist_ok=True)
        log_path = folder / "container.log"
        try:
            image = self.images.resolve(str(container.get("Image", "")), role)
            command = image.command("serve")
            credentials = self.sessions.credentials(role, SAGEMAKER, name)
        except (ImageError, RoleNotAssumable) as exc:
            return Container(None, port, log_path, executor).failed(f"the container could not be started: {exc}")
        env = dict(self.environment) | image.container_environment(folder / "root")
        env |= {k: str(v) for k, v in container.get("Environment", {}).items()}
        # SageMaker tells a container its port this way; locally each endpoint needs its own.
        env |= {"SAGEMAKER_BIND_TO_PORT": str(port), "SDPIPE_BIND_HOST": "127.0.0.1"}
        env |= credentials.environment()
        with log_path.open("ab") as log:
            process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return _wait_healthy(Container(process, port, log_path, executor))


def _wait_healthy(started: Container) -> Container:
    assert started.process is not None
    deadline = now() + _STARTUP_TIMEOUT_S
    while True:
        if started.process.poll() is not None:
            tail = started.log_path.read_text(errors="replace").strip().splitlines()[-5:]
            return started.failed("the container exited during start-up: " + " | ".join(tail))
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{started.port}/ping", timeout=2) as response:
                if response.status == 200:
                    return started
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if now() > deadline:
            return started.failed("the container did not pass its /ping health check in time")
        time.sleep(0.2)


def exit_status(process: subprocess.Popen[bytes] | None) -> int | None:
    """The container's exit status if it has died (given a moment to be reaped), else None."""
    if process is None:
        return None
    try:
        return process.wait(timeout=2)
    except subprocess.TimeoutExpired:
        return None
