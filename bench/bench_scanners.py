"""The registration scanner beside picklescan and modelscan on the project's own corpus.

    .venv/bin/python bench/bench_scanners.py

Every file of ``tests/adversarial/corpus.py`` (each malicious one proven to run its payload
under ``torch.load(weights_only=False)``, each benign one to load with ``weights_only=True``) is
written to a temporary folder with its name and given to each scanner the way a user would run
it: sdpipe's ``scan_torch_file`` (now, and as it was at 419237f before issue 14), picklescan's
``scan_file_path`` and modelscan's ``ModelScan().scan``. Counted per scanner: malicious files
flagged, malformed files flagged, benign files flagged (false positives), and crashes or scan
errors (a file the tool could not judge). Printed as the Markdown table in bench/RESULTS.md.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sdpipe.errors import InvalidPickle, UnsafePickle  # noqa: E402
from sdpipe.inspect.pickle_scan import PickleLimits  # noqa: E402
from sdpipe.inspect.torch_archive import scan_torch_file  # noqa: E402
from tests.adversarial.corpus import Sample, everything  # noqa: E402

BEFORE = "419237f"
Verdict = str  # "flagged" | "passed" | "error"


def sdpipe_now(path: Path) -> Verdict:
    data = path.read_bytes()
    try:
        scan_torch_file(io.BytesIO(data), len(data), PickleLimits())
    except (InvalidPickle, UnsafePickle):
        return "flagged"
    except Exception:
        return "error"
    return "passed"


def sdpipe_before() -> Callable[[Path], Verdict]:
    source = subprocess.run(
        ["git", "show", f"{BEFORE}:layers/common/sdpipe/inspect/pickle_scan.py"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    folder = Path(tempfile.mkdtemp())
    (folder / "old_pickle_scan.py").write_text(source)
    spec = importlib.util.spec_from_file_location("old_pickle_scan", folder / "old_pickle_scan.py")
    assert spec is not None and spec.loader is not None
    old = importlib.util.module_from_spec(spec)
    sys.modules["old_pickle_scan"] = old  # dataclasses look their module up
    spec.loader.exec_module(old)
    cap = 256 * 1024 * 1024

    def scan(path: Path) -> Verdict:
        data = path.read_bytes()
        try:
            if data[:4] == old.ZIP_MAGIC:
                old.scan_torch_zip(io.BytesIO(data), cap)
            elif data[:1] == b"\x80":
                old.scan_pickle_stream(io.BytesIO(data), cap)
            else:
                return "flagged"  # registration refused anything else as not a pickle
        except (InvalidPickle, UnsafePickle):
            return "flagged"
        except Exception:
            return "error"
        return "passed"

    return scan


def picklescan(path: Path) -> Verdict:
    from picklescan.scanner import scan_file_path

    try:
        result = scan_file_path(str(path))
    except Exception:
        return "error"
    if result.infected_files:
        return "flagged"
    return "error" if result.scan_err else "passed"


def modelscan(path: Path) -> Verdict:
    from modelscan.modelscan import ModelScan

    try:
        result = ModelScan().scan(str(path))
    except Exception:
        return "error"
    if result.get("issues"):
        return "flagged"
    scanned = result.get("summary", {}).get("scanned", {}).get("total_scanned", 0)
    return "error" if result.get("errors") or not scanned else "passed"


def main() -> None:
    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)
    samples = everything()
    folder = Path(tempfile.mkdtemp(prefix="sdpipe-scanners-"))
    paths: list[tuple[Sample, Path]] = []
    for index, sample in enumerate(samples):
        path = folder / f"{index:03d}-{sample.name}"
        path.write_bytes(sample.data)
        paths.append((sample, path))
    scanners: dict[str, Callable[[Path], Verdict]] = {
        "sdpipe (this issue)": sdpipe_now,
        f"sdpipe before ({BEFORE})": sdpipe_before(),
        "picklescan 1.0.5": picklescan,
        "modelscan 0.8.8": modelscan,
    }
    counts = {kind: sum(s.kind == kind for s in samples) for kind in ("malicious", "malformed", "benign")}
    print(f"corpus: {counts['malicious']} malicious, {counts['malformed']} malformed, {counts['benign']} benign\n")
    print("| Scanner | malicious flagged | malformed flagged | benign flagged (false positives) | errors/crashes |")
    print("|---|---|---|---|---|")
    missed: dict[str, list[str]] = {}
    for name, scanner in scanners.items():
        verdicts = [(sample, scanner(path)) for sample, path in paths]
        flagged = {kind: sum(s.kind == kind and v == "flagged" for s, v in verdicts) for kind in counts}
        errors = sum(v == "error" for _s, v in verdicts)
        missed[name] = [s.name for s, v in verdicts if s.kind == "malicious" and v != "flagged"]
        print(
            f"| {name} | {flagged['malicious']}/{counts['malicious']} | {flagged['malformed']}/{counts['malformed']} "
            f"| {flagged['benign']}/{counts['benign']} | {errors} |"
        )
    print()
    for name, names in missed.items():
        print(f"- {name} misses: {', '.join(names) or 'none'}")


if __name__ == "__main__":
    main()
