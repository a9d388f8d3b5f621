"""Run every corpus sample through real loaders (run it as a subprocess: it executes payloads).

Prints one JSON line per sample: whether ``torch.load(weights_only=False)`` ran the payload (the
marker file appeared) and whether ``torch.load(weights_only=True)`` loads it. Files are loaded
from a path, as tools do (torch's legacy tar reader only runs on real files).
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import torch

from tests.adversarial.corpus import everything


def main(folder: Path) -> None:
    warnings.simplefilter("ignore")
    marker = folder / "marker"
    for index, sample in enumerate(everything(str(marker))):
        path = folder / f"{index}-{sample.name}"
        path.write_bytes(sample.data)
        marker.unlink(missing_ok=True)
        unsafe_error = safe_error = None
        try:
            torch.load(path, weights_only=False)
        except Exception as exc:
            unsafe_error = f"{type(exc).__name__}: {str(exc)[:120]}"
        ran = marker.exists()
        try:
            torch.load(path, weights_only=True)
            loads = True
        except Exception as exc:
            loads, safe_error = False, f"{type(exc).__name__}: {str(exc)[:120]}"
        record = {"name": sample.name, "kind": sample.kind, "ran_payload": ran, "weights_only_loads": loads}
        print(json.dumps(record | {"unsafe_error": unsafe_error, "safe_error": safe_error}), flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
