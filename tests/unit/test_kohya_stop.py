"""Stopping a kohya training stops all of sd-scripts, not just `accelerate launch`.

`accelerate launch` runs the trainer as a child and forwards no signal, so a stand-in launcher
here does the same: it starts a "trainer" child and waits. The trainer writes its pid, and on
SIGINT finishes what it is writing (a LoRA file being saved) before it exits.
"""

from __future__ import annotations

import os
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from sdpipe_training.kohya import run_in_own_group
from tests.helpers import wait_until

LAUNCHER = """
import subprocess, sys
child = subprocess.Popen([sys.executable, sys.argv[1], sys.argv[2]])
child.wait()  # like accelerate's simple launcher: no signal handling, no forwarding
"""
TRAINER = """
import os, signal, sys, time
out = sys.argv[1]
if os.environ.get("IGNORE_SIGINT"):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
if os.environ.get("STRAGGLER"):
    import subprocess
    straggler = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    open(os.path.join(out, "straggler.pid"), "w").write(str(straggler.pid))
open(os.path.join(out, "trainer.pid"), "w").write(str(os.getpid()))
print("epoch 1/10", flush=True)
if os.environ.get("STRAGGLER"):
    sys.exit(0)  # finishes, leaving its child behind
try:
    while True:
        time.sleep(0.05)
except KeyboardInterrupt:
    time.sleep(0.3)  # a save in progress completes
    open(os.path.join(out, "saved.safetensors"), "w").write("lora")
    raise
"""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def wait_for(path: Path, timeout: float = 20) -> int:
    deadline = time.monotonic() + timeout
    while not path.exists() or not path.read_text():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)
    return int(path.read_text())


@pytest.fixture
def scripts(tmp_path: Path) -> tuple[list[str], Path]:
    (tmp_path / "launcher.py").write_text(textwrap.dedent(LAUNCHER))
    (tmp_path / "trainer.py").write_text(textwrap.dedent(TRAINER))
    out = tmp_path / "out"
    out.mkdir()
    return [sys.executable, str(tmp_path / "launcher.py"), str(tmp_path / "trainer.py"), str(out)], out


def run_in_thread(command: list[str], stop: threading.Event, grace: float) -> tuple[threading.Thread, dict]:
    result: dict = {}
    lines: list[str] = []
    result["lines"] = lines

    def target() -> None:
        result["code"] = run_in_own_group(command, stop, lines.append, grace_seconds=grace)

    thread = threading.Thread(target=target)
    thread.start()
    return thread, result


def test_a_stop_interrupts_the_trainer_behind_the_launcher_and_lets_it_finish_saving(scripts):
    command, out = scripts
    stop = threading.Event()
    thread, result = run_in_thread(command, stop, grace=20)
    trainer = wait_for(out / "trainer.pid")
    stop.set()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert not alive(trainer)
    assert (out / "saved.safetensors").read_text() == "lora"
    assert "epoch 1/10\n" in result["lines"]


def test_a_trainer_that_ignores_the_interrupt_is_killed_after_the_grace_period(scripts, monkeypatch):
    monkeypatch.setenv("IGNORE_SIGINT", "1")
    command, out = scripts
    stop = threading.Event()
    thread, _result = run_in_thread(command, stop, grace=0.5)
    trainer = wait_for(out / "trainer.pid")
    stop.set()
    thread.join(timeout=30)
    assert not thread.is_alive()
    # SIGKILL is delivered asynchronously: the process is gone a moment after the group is killed.
    wait_until(lambda: not alive(trainer), 5, every=0.05, what="the trainer dying")
    assert not (out / "saved.safetensors").exists()


def test_nothing_of_the_group_outlives_a_run_that_ends_on_its_own(scripts, monkeypatch):
    monkeypatch.setenv("STRAGGLER", "1")
    command, out = scripts
    thread, result = run_in_thread(command, threading.Event(), grace=5)
    thread.join(timeout=30)
    assert result["code"] == 0
    straggler = wait_for(out / "straggler.pid")
    wait_until(lambda: not alive(straggler), 5, every=0.05, what="the straggler dying")
    assert os.getpgid(os.getpid()) != straggler  # (the group killed was the run's own, not ours)
