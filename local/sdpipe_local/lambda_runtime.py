"""Run Lambda functions locally the way Lambda does.

Each function gets its own pool of warm worker processes (execution environments). A worker runs
the real handler with exactly the environment the template gives the function, plus the
variables the Lambda runtime itself sets, and the temporary credentials of the function's own
execution role (so IAM decides what it may do, as in AWS). One invocation at a time per worker; the template's
timeout is enforced by killing the worker, which is then replaced (a cold start, as in Lambda).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from sdpipe_local.credentials import LAMBDA, RoleSessions

logger = logging.getLogger(__name__)

_READY_TIMEOUT_S = 60


@dataclass(frozen=True)
class FunctionSpec:
    logical_id: str
    name: str
    arn: str
    handler: str
    code_paths: list[str]
    environment: dict[str, str]
    timeout_s: int
    memory_mb: int
    role_arn: str
    max_concurrency: int = 4


@dataclass(frozen=True)
class InvocationResult:
    payload: Any
    function_error: str | None = None  # "Unhandled" when the handler raised or timed out

    @property
    def ok(self) -> bool:
        return self.function_error is None


@dataclass
class _Worker:
    process: subprocess.Popen[bytes]
    channel: socket.socket
    reader: IO[bytes]
    writer: IO[bytes]

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        for closable in (self.reader, self.writer, self.channel):
            with contextlib.suppress(OSError):
                closable.close()


@dataclass
class FunctionPool:
    spec: FunctionSpec
    base_environment: dict[str, str]
    log_path: Path
    sessions: RoleSessions
    # The fault injector's hooks, when one is armed: extra variables for each new worker, and
    # a fault for each invocation (given the function and the worker's pid; returns its cancel).
    worker_environment: Callable[[], dict[str, str]] | None = None
    invocation_fault: Callable[[str, int], Callable[[], None]] | None = None
    _idle: list[_Worker] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _slots: threading.Semaphore | None = None
    _closed: bool = False

    def __post_init__(self) -> None:
        self._slots = threading.Semaphore(self.spec.max_concurrency)

    def environment(self) -> dict[str, str]:
        spec = self.spec
        env = dict(self.base_environment)
        env.update(spec.environment)
        # What Lambda gives every execution environment: its execution role's temporary credentials.
        env.update(self.sessions.credentials(spec.role_arn, LAMBDA, spec.name).environment())
        env.update(
            {
                "AWS_LAMBDA_FUNCTION_NAME": spec.name,
                "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_mb),
                "AWS_LAMBDA_FUNCTION_TIMEOUT": str(spec.timeout_s),
                "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{spec.name}",
                "AWS_LAMBDA_LOG_STREAM_NAME": "local",
                "AWS_EXECUTION_ENV": "AWS_Lambda_python3.12",
                "LAMBDA_TASK_ROOT": spec.code_paths[0] if spec.code_paths else "",
                # What `sam local` sets too: Powertools then keeps X-Ray off (no daemon here).
                "AWS_SAM_LOCAL": "true",
                "SDPIPE_FUNCTION_ARN": spec.arn,
                "SDPIPE_CODE_PATHS": os.pathsep.join(spec.code_paths),
            }
        )
        return env

    def _start_worker(self) -> _Worker:
        parent, child = socket.socketpair()
        log = self.log_path.open("ab")
        environment = self.environment()
        if self.worker_environment is not None:
            environment |= self.worker_environment()
        process = subprocess.Popen(
            [sys.executable, "-m", "sdpipe_local.lambda_worker", str(child.fileno()), self.spec.handler],
            env=environment,
            pass_fds=[child.fileno()],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        child.close()
        log.close()
        worker = _Worker(process, parent, parent.makefile("rb"), parent.makefile("wb"))
        parent.settimeout(_READY_TIMEOUT_S)
        try:
            ready = worker.reader.readline()
        except (TimeoutError, OSError):
            ready = b""
        if not ready:
            worker.kill()
            raise RuntimeError(f"worker for {self.spec.logical_id} exited during start-up; see {self.log_path}")
        return worker

    def prewarm(self) -> None:
        worker = self._start_worker()
        with self._lock:
            self._idle.append(worker)

    def invoke(self, event: Any, request_id: str | None = None) -> InvocationResult:
        assert self._slots is not None
        with self._slots:
            if self._closed:
                raise RuntimeError(f"function {self.spec.name} is shut down")
            with self._lock:
                worker = self._idle.pop() if self._idle else None
            if worker is None or not worker.alive():
                try:
                    worker = self._start_worker()
                except RuntimeError as exc:  # Lambda reports a failed init as the invocation's error
                    logger.warning("%s: %s", self.spec.logical_id, exc)
                    return InvocationResult({"errorType": "Runtime.ExitError", "errorMessage": str(exc)}, "Unhandled")
            request_id = request_id or str(uuid.uuid4())
            fault = self.invocation_fault
            call_off = fault(self.spec.logical_id, worker.process.pid) if fault is not None else None
            try:
                return self._run(worker, event, request_id)
            finally:
                if call_off is not None:
                    call_off()

    def _run(self, worker: _Worker, event: Any, request_id: str) -> InvocationResult:
        deadline_ms = int(time.time() * 1000) + self.spec.timeout_s * 1000
        request = {"event": event, "request_id": request_id, "deadline_ms": deadline_ms}
        timed_out = False
        try:
            worker.channel.settimeout(self.spec.timeout_s + 1)
            worker.writer.write(json.dumps(request).encode() + b"\n")
            worker.writer.flush()
            line = worker.reader.readline()
        except TimeoutError:
            line, timed_out = b"", True
        except OSError:
            line = b""
        if not line:  # the worker died (end of stream) or ran out of time
            worker.kill()
            message = (
                f"Task timed out after {self.spec.timeout_s:.2f} seconds"
                if timed_out
                else "Runtime exited unexpectedly (the worker process died)"
            )
            logger.warning("%s: %s", self.spec.logical_id, message)
            return InvocationResult(
                {"errorType": "Sandbox.Timedout" if timed_out else "Runtime.ExitError", "errorMessage": message},
                "Unhandled",
            )
        with self._lock:
            if self._closed:
                worker.kill()
            else:
                self._idle.append(worker)
        response = json.loads(line)
        if response.get("ok"):
            return InvocationResult(response.get("result"))
        return InvocationResult(response.get("error"), "Unhandled")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.kill()


class LambdaRuntime:
    """All functions of the stack, addressable by name, ARN or logical id."""

    def __init__(self, base_environment: dict[str, str], log_dir: Path, sessions: RoleSessions) -> None:
        self._base_environment = base_environment
        self._log_dir = log_dir
        self._sessions = sessions
        self._pools: dict[str, FunctionPool] = {}
        self._aliases: dict[str, str] = {}
        self._counting = threading.Lock()
        self._running = 0

    def add(self, spec: FunctionSpec) -> None:
        self._log_dir.mkdir(parents=True, exist_ok=True)
        pool = FunctionPool(spec, self._base_environment, self._log_dir / f"{spec.logical_id}.log", self._sessions)
        self._pools[spec.name] = pool
        for alias in (spec.arn, spec.logical_id, f"{spec.arn}:$LATEST"):
            self._aliases[alias] = spec.name

    def resolve(self, name_or_arn: str) -> FunctionPool | None:
        name = self._aliases.get(name_or_arn, name_or_arn)
        if name not in self._pools and ":function:" in name:
            name = name.split(":function:", 1)[1].split(":", 1)[0]
        return self._pools.get(name)

    def specs(self) -> list[FunctionSpec]:
        return [pool.spec for pool in self._pools.values()]

    def invoke(self, name_or_arn: str, event: Any) -> InvocationResult:
        pool = self.resolve(name_or_arn)
        if pool is None:
            raise KeyError(name_or_arn)
        with self._counting:
            self._running += 1
        try:
            return pool.invoke(event)
        finally:
            with self._counting:
                self._running -= 1

    @property
    def running(self) -> int:
        """Invocations in progress, of every function."""
        with self._counting:
            return self._running

    def arm_faults(
        self,
        worker_environment: Callable[[], dict[str, str]],
        invocation_fault: Callable[[str, int], Callable[[], None]],
    ) -> None:
        """Faults from now on: variables for every new worker, a fault for every invocation."""
        for pool in self._pools.values():
            pool.worker_environment = worker_environment
            pool.invocation_fault = invocation_fault

    def prewarm(self) -> None:
        threads = [threading.Thread(target=pool.prewarm, daemon=True) for pool in self._pools.values()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
