"""One warm Lambda execution environment: imports the handler once, then serves invocations.

Started by ``lambda_runtime`` with exactly the function's environment. Requests and responses are
JSON lines on the socket whose descriptor is ``argv[1]``, so the handler's own prints and logs
(stdout/stderr) never mix with the protocol.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import socket
import sys
import time
import traceback
from typing import Any

from sdpipe_local.chaos import install_worker_faults


class LambdaContext:
    """The attributes and method of the context object Lambda passes to Python handlers."""

    def __init__(self, request_id: str, deadline_ms: int) -> None:
        name = os.environ["AWS_LAMBDA_FUNCTION_NAME"]
        self.function_name = name
        self.function_version = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        self.invoked_function_arn = os.environ.get("SDPIPE_FUNCTION_ARN", name)
        self.memory_limit_in_mb = int(os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128"))
        self.aws_request_id = request_id
        self.log_group_name = os.environ.get("AWS_LAMBDA_LOG_GROUP_NAME", f"/aws/lambda/{name}")
        self.log_stream_name = os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME", "local")
        self.identity = None
        self.client_context = None
        self._deadline_ms = deadline_ms

    def get_remaining_time_in_millis(self) -> int:
        return max(0, self._deadline_ms - int(time.time() * 1000))


def _error(exc: BaseException) -> dict[str, Any]:
    return {
        "errorType": type(exc).__name__,
        "errorMessage": str(exc),
        "stackTrace": traceback.format_exception(exc)[-20:],
    }


def _peak_rss_mb() -> int:
    # VmHWM belongs to this address space; ru_maxrss would carry the parent's peak across exec.
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def _report(request_id: str, duration_ms: float) -> None:
    """Lambda's REPORT line, so handler logs read like CloudWatch's (benchmarks parse it too)."""
    max_memory_mb = _peak_rss_mb()
    memory_size = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "?")
    print(
        f"REPORT RequestId: {request_id}\tDuration: {duration_ms:.2f} ms\t"
        f"Memory Size: {memory_size} MB\tMax Memory Used: {max_memory_mb} MB",
        flush=True,
    )


def main() -> None:
    fd, handler_spec = int(sys.argv[1]), sys.argv[2]
    paths = [p for p in os.environ.pop("SDPIPE_CODE_PATHS", "").split(os.pathsep) if p]
    sys.path[:0] = paths
    if paths:
        os.chdir(paths[0])
    channel = socket.socket(fileno=fd)
    reader, writer = channel.makefile("rb"), channel.makefile("wb")

    handler = None
    init_error: dict[str, Any] | None = None
    module_name, _, function_name = handler_spec.rpartition(".")
    install_worker_faults("start")  # fault injection (sdpipe_local.chaos): only when asked for
    try:
        handler = getattr(importlib.import_module(module_name), function_name)
    except BaseException as exc:  # reported on every invocation, as Lambda reports init errors
        init_error = _error(exc) | {"errorType": f"Runtime.ImportModuleError: {type(exc).__name__}"}
        traceback.print_exc()
    install_worker_faults("ready")
    writer.write(b'{"ready": true}\n')
    writer.flush()

    for line in reader:
        request = json.loads(line)
        response: dict[str, Any]
        if init_error is not None or handler is None:
            response = {"ok": False, "error": init_error}
        else:
            context = LambdaContext(request["request_id"], request["deadline_ms"])
            started = time.perf_counter()
            try:
                result = handler(request["event"], context)
                response = {"ok": True, "result": result}
            except Exception as exc:
                traceback.print_exc()
                response = {"ok": False, "error": _error(exc)}
            _report(request["request_id"], (time.perf_counter() - started) * 1000)
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            encoded = json.dumps(response, default=str)
        except (TypeError, ValueError) as exc:
            encoded = json.dumps({"ok": False, "error": _error(exc)})
        writer.write(encoded.encode() + b"\n")
        writer.flush()


if __name__ == "__main__":
    main()
