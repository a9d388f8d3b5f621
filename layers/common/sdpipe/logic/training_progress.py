"""A training job's step and loss, read from the end of its log (both engines' progress lines)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

# SageMaker scrapes these from the log into the job's metrics. The builtin engine prints
# ``step=3/10 epoch=1/2 loss=0.12``; sd-scripts prints ``epoch 1/2`` as each epoch starts and a
# tqdm bar ``steps:  30%|███   | 3/10 [00:05<00:12, 1.7s/it, avr_loss=0.12]``.
METRIC_DEFINITIONS = [
    {"Name": "train:loss", "Regex": r"(?:avr_)?loss=([0-9.eE+-]+)"},
    {"Name": "train:step", "Regex": r"(?:step=|\| )(\d+)/\d+"},
    {"Name": "train:epoch", "Regex": r"epoch[= ](\d+)/\d+"},
]
_BUILTIN_PROGRESS = re.compile(r"step=(\d+)/(\d+)(?: epoch=(\d+)/(\d+))? loss=([0-9.eE+-]+|nan)")
_KOHYA_PROGRESS = re.compile(r"(\d+)/(\d+) \[[^\]]*avr_loss=([0-9.eE+-]+|nan)")
_KOHYA_EPOCH = re.compile(r"^\s*epoch (\d+)/(\d+)\s*$")


def latest_progress(lines: Iterable[str]) -> dict[str, Any] | None:
    """The last progress a log shows (``step``, ``total_steps``, ``loss``, maybe ``epoch``/``epochs``)."""
    ordered = list(lines)
    for index in range(len(ordered) - 1, -1, -1):
        line = ordered[index]
        # sd-scripts' tqdm bar rewrites itself with '\r': the last update in a line counts.
        if match := _last(_BUILTIN_PROGRESS, line):
            step, total, epoch, epochs, loss = match.groups()
        elif match := _last(_KOHYA_PROGRESS, line):
            (step, total, loss), epoch, epochs = match.groups(), *_kohya_epoch(ordered[:index])
        else:
            continue
        progress: dict[str, Any] = {"step": int(step), "total_steps": int(total), "loss": float(loss)}
        if epoch:
            progress |= {"epoch": int(epoch), "epochs": int(epochs or 0)}
        return progress
    return None


def _kohya_epoch(earlier: list[str]) -> tuple[str | None, str | None]:
    """The epoch sd-scripts last announced before a progress line (its ``epoch 2/5`` line)."""
    for line in reversed(earlier):
        for part in reversed(line.split("\r")):
            if match := _KOHYA_EPOCH.match(part):
                return match.group(1), match.group(2)
    return None, None


def _last(pattern: re.Pattern[str], line: str) -> re.Match[str] | None:
    found = None
    for found in pattern.finditer(line):  # noqa: B007 - the loop keeps the last match
        pass
    return found
