"""Keep the shared parts of the workflows in step: every Lambda task's retry of transient errors is
``statemachines/fragments/transient_retry.json``, written into each ``*.asl.json`` by this tool.

ASL has no includes, and SAM's DefinitionSubstitutions replace strings, not JSON, so the
fragment is copied in: edit the fragment, run ``make asl``, commit both. A unit test fails when a
file and the fragment disagree.

    python -m tools.asl          # rewrite the files
    python -m tools.asl --check  # exit 1 naming the files that are out of step
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MACHINES = ROOT / "statemachines"
TRANSIENT_RETRY = MACHINES / "fragments" / "transient_retry.json"
# A retrier is the transient one when it names Lambda's own service errors.
_MARKER = "Lambda.ServiceException"


def transient_retry() -> dict[str, Any]:
    fragment: dict[str, Any] = json.loads(TRANSIENT_RETRY.read_text())
    return fragment


def lambda_tasks(states: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every Task invoking Lambda, nested Map and Parallel states included."""
    for state in states.values():
        if state["Type"] == "Task" and state.get("Resource") == "arn:aws:states:::lambda:invoke":
            yield state
        if state["Type"] == "Map":
            yield from lambda_tasks((state.get("ItemProcessor") or state["Iterator"])["States"])
        if state["Type"] == "Parallel":
            for branch in state["Branches"]:
                yield from lambda_tasks(branch["States"])


def synced(text: str) -> str:
    """The definition with the fragment in every Lambda task: its transient retrier replaced, or
    appended when the task has none."""
    definition = json.loads(text)
    fragment = transient_retry()
    for task in lambda_tasks(definition["States"]):
        retries = task.setdefault("Retry", [])
        positions = [i for i, rule in enumerate(retries) if _MARKER in rule["ErrorEquals"]]
        if positions:
            retries[positions[0]] = fragment
        else:
            retries.append(fragment)
    return json.dumps(definition, indent=2) + "\n"


def out_of_step() -> list[Path]:
    return [path for path in sorted(MACHINES.glob("*.asl.json")) if synced(path.read_text()) != path.read_text()]


def main(argv: list[str]) -> int:
    stale = out_of_step()
    if "--check" in argv:
        for path in stale:
            print(f"{path.relative_to(ROOT)} differs from {TRANSIENT_RETRY.relative_to(ROOT)}; run make asl")
        return 1 if stale else 0
    for path in stale:
        path.write_text(synced(path.read_text()))
        print(f"updated {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
