"""``sdpipe sync``: a WebUI ``models/`` folder into the stack, each file once (by sha256).

Three steps the CLI shows progress for: ``plan`` hashes every local model file (with the hash
cache) and compares it with the registered models of its type; ``upload`` sends the files the
stack does not hold; ``settle`` waits for each upload's registration and names the rejected ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdpipe.errors import SdpipeError
from sdpipe.layout import MODEL_FOLDERS
from sdpipe_client.client import JobFailed, Sdpipe
from sdpipe_client.transfer import HashCache, LocalModel, Uploader, UploadResult, webui_models


@dataclass(frozen=True)
class Planned:
    model: LocalModel
    sha256: str
    registered_as: dict[str, Any] | None = None  # the ACTIVE model with the same type and hash


@dataclass
class SyncPlan:
    todo: list[Planned] = field(default_factory=list)
    skipped: list[Planned] = field(default_factory=list)

    @property
    def bytes_to_send(self) -> int:
        return sum(p.model.size for p in self.todo)


@dataclass
class FolderSync:
    client: Sdpipe
    cache: HashCache = field(default_factory=HashCache)

    def local_models(self, folder: Path) -> list[LocalModel]:
        found = list(webui_models(folder))
        if not found:
            raise SdpipeError(
                f"{folder} holds no model files in WebUI folders ({', '.join(sorted(MODEL_FOLDERS))})",
                code="NOTHING_TO_SYNC",
            )
        return found

    def plan(self, found: list[LocalModel], hashed: Callable[[int], None]) -> SyncPlan:
        """Hash each file (``hashed`` gets the bytes read) and sort it into to-do and registered."""
        registered = {
            (str(item.get("type")), str(item.get("sha256"))): item
            for item in self.client.list_models()
            if item.get("status") == "ACTIVE"
        }
        plan = SyncPlan()
        for model in found:
            sha256 = self.cache.sha256(model.path, hashed)
            same = registered.get((model.type.value, sha256))
            (plan.skipped if same else plan.todo).append(Planned(model, sha256, same))
        return plan

    def upload(
        self, plan: SyncPlan, concurrency: int, sent: Callable[[int], None]
    ) -> list[tuple[Planned, UploadResult]]:
        """Send each file the stack does not hold (``sent`` gets the bytes as they go)."""
        uploader = Uploader(self.client, concurrency=concurrency)
        results = []
        for planned in plan.todo:
            model = planned.model
            result = uploader.upload(
                model.path, model.type, name=model.relative_name, sha256=planned.sha256, overwrite=True, progress=sent
            )
            results.append((planned, result))
        return results

    def settle(self, results: list[tuple[Planned, UploadResult]]) -> list[str]:
        """Wait for each upload's registration; what was rejected, and why."""
        failures = []
        for planned, result in results:
            try:
                self.client.wait(result.job_id, timeout_s=1800, poll_s=0.5)
            except JobFailed as exc:
                failures.append(f"{planned.model.relative_name}: {exc.message}")
        return failures
