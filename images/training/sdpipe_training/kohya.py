"""The kohya engine: kohya-ss/sd-scripts' ``train_network.py`` / ``sdxl_train_network.py``.

sd-scripts is installed in the image at a pinned commit (see the Dockerfile); the entrypoint runs
it through ``accelerate launch`` with the job's config file, which names the dataset config.

Stopping: ``accelerate launch`` waits on its child and forwards no signal, so sd-scripts runs in a
process group of its own and a stop signals the whole group. SIGINT first: Python raises
KeyboardInterrupt between bytecodes, so a LoRA file being written (one safetensors call) is
finished before the trainer exits, and what it saved at earlier epochs stays in /opt/ml/model.
Whatever is still running after the grace period is killed, within SageMaker's 120 s.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import IO

# The sd-scripts commit the image installs; the generated configs are tested against its options.
SD_SCRIPTS_COMMIT = "48d368fa557731ad0488c07304dfeba8c07910eb"
SCRIPTS = {"sd1": "train_network.py", "sd2": "train_network.py", "sdxl": "sdxl_train_network.py"}
# SageMaker kills the container 120 s after its SIGTERM; leave time to upload /opt/ml/model.
STOP_GRACE_SECONDS = 90.0


# The last line of a Python traceback ("RuntimeError: Error(s) in loading state_dict...", a bare
# "AssertionError") or a line logged at ERROR: how sd-scripts says why it stopped.
_ERROR_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*(?:Error|Exception)(?::\s.*)?|(?:\S+\s+)?ERROR\s.*)$")
# A failed run's reason, as SageMaker's FailureReason carries it (1024 characters at most).
REASON_CHARS = 900


class KohyaLog:
    """What a failed run's reason needs from sd-scripts' output: the first error it reported (with
    the indented lines that continue it, such as the size mismatches under a state_dict error) and
    the last lines. The last lines alone are accelerate's traceback of its child's exit status."""

    def __init__(self, tail_lines: int = 20, continuation_lines: int = 3) -> None:
        self.tail: deque[str] = deque(maxlen=tail_lines)
        self.first_error: list[str] = []
        self._continuation_lines = continuation_lines
        self._continuing = False

    def add(self, line: str) -> None:
        text = line.rstrip()
        self.tail.append(text)
        if not self.first_error:
            if _ERROR_LINE.match(text):
                self.first_error, self._continuing = [text], True
        elif self._continuing:
            extends = text[:1].isspace() and len(self.first_error) <= self._continuation_lines
            if extends:
                self.first_error.append(text.strip())
            self._continuing = extends

    def reason(self, code: int) -> str:
        head = f"sd-scripts exited with status {code}: "
        if self.first_error:
            head += " ".join(self.first_error)[: REASON_CHARS // 2] + " | last log lines: "
        room = max(0, REASON_CHARS - len(head))
        return head + " | ".join(self.tail)[-room:]


def sd_scripts_dir() -> Path:
    return Path(os.environ.get("SD_SCRIPTS_DIR", "/opt/sd-scripts"))


def sd_scripts_venv() -> Path:
    """sd-scripts pins its own diffusers/transformers, so it lives in a virtualenv of its own."""
    return Path(os.environ.get("SD_SCRIPTS_VENV", "/opt/sd-scripts/venv"))


def kohya_command(
    family: str,
    config_file: Path,
    mixed_precision: str,
    scripts_dir: Path | None = None,
    venv: Path | None = None,
) -> list[str]:
    """The command line that trains with ``config_file`` (which also names the dataset config)."""
    return [
        str((venv or sd_scripts_venv()) / "bin" / "accelerate"), "launch",
        "--num_processes", "1",
        "--num_machines", "1",
        "--num_cpu_threads_per_process", "2",
        "--mixed_precision", mixed_precision,
        "--dynamo_backend", "no",
        str((scripts_dir or sd_scripts_dir()) / SCRIPTS[family]),
        "--config_file", str(config_file),
    ]  # fmt: skip


def run_in_own_group(
    command: list[str],
    stop: threading.Event,
    on_line: Callable[[str], None],
    grace_seconds: float = STOP_GRACE_SECONDS,
) -> int:
    """Run ``command`` in a new process group, passing each output line to ``on_line``.

    When ``stop`` is set the group is interrupted (SIGINT) and given ``grace_seconds`` to exit,
    the trainer included (the launcher tends to exit first); what is left then is killed. However
    the run ends, nothing of the group outlives this call: stragglers such as data loader workers
    would keep the output pipe open and the container running."""
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    ) as process:
        group = process.pid  # a new session's leader: its pid is the group id
        assert process.stdout is not None
        reader = threading.Thread(target=_forward, args=(process.stdout, on_line), name="kohya-log", daemon=True)
        interrupt = _Interrupt(group, stop, grace_seconds)
        reader.start()
        interrupt.start()
        try:
            code = process.wait()
        finally:
            interrupt.leader_exited.set()
            if interrupt.sent_at is not None:
                _wait_until_gone(group, interrupt.sent_at + grace_seconds)
            _signal_group(group, signal.SIGKILL)
        reader.join(timeout=10)
    return code


class _Interrupt(threading.Thread):
    """SIGINT to the group once ``stop`` is set; SIGKILL if the launcher is still there after the grace."""

    def __init__(self, group: int, stop: threading.Event, grace_seconds: float) -> None:
        super().__init__(name="kohya-stop", daemon=True)
        self.group, self.stop, self.grace_seconds = group, stop, grace_seconds
        self.leader_exited = threading.Event()
        self.sent_at: float | None = None

    def run(self) -> None:
        while not self.stop.wait(0.2):
            if self.leader_exited.is_set():
                return
        self.sent_at = time.monotonic()
        _signal_group(self.group, signal.SIGINT)
        if not self.leader_exited.wait(self.grace_seconds):
            _signal_group(self.group, signal.SIGKILL)


def _forward(stream: IO[str], on_line: Callable[[str], None]) -> None:
    for line in stream:
        on_line(line)


def _wait_until_gone(group: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        if os.getpid() == 1:  # PID 1 in a container: the group's orphans are ours to reap
            _reap_children()
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)


def _reap_children() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] != 0:
            pass


def _signal_group(group: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, signum)
