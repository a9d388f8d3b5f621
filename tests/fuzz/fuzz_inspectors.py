"""Coverage-guided fuzzing of the three intake inspectors (atheris/libFuzzer).

    python -m tests.fuzz.fuzz_inspectors pickle|safetensors|url [libFuzzer flags, e.g. -max_total_time=60]

Each target holds the inspector's invariant: it returns a result or raises the project's own
rejection (``InvalidPickle``/``UnsafePickle``, ``InvalidSafetensors``, ``UrlRejected``); any
other exception is a crash libFuzzer reports with the input that caused it. Bounded time and
memory are held by libFuzzer's ``-timeout`` and ``-rss_limit_mb`` (set by ``make fuzz``). The
pickle target starts from the project's corpus (``tests/adversarial/corpus.py``).
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from sdpipe.errors import InvalidPickle, InvalidSafetensors, UnsafePickle, UrlRejected
    from sdpipe.inspect.pickle_scan import PickleLimits
    from sdpipe.inspect.safetensors_header import parse_header
    from sdpipe.inspect.torch_archive import scan_torch_file
    from sdpipe.logic.url_policy import UrlPolicy, check_url, embedded_ipv4, forbidden_reason, literal_address

_LIMITS = PickleLimits(max_bytes=4 * 1024 * 1024, max_opcodes=200_000, max_memo=50_000, max_stack=50_000)
_POLICY = UrlPolicy(allowed_networks=(ipaddress.ip_network("::/0"),))


def fuzz_pickle(data: bytes) -> None:
    with contextlib.suppress(InvalidPickle, UnsafePickle):
        scan_torch_file(io.BytesIO(data), len(data), _LIMITS)


def fuzz_safetensors(data: bytes) -> None:
    def read_range(start: int, length: int) -> bytes:
        if start + length > 8 + 64 * 1024:
            raise AssertionError(f"read past the cap: {start}+{length}")
        return data[start : start + length]

    with contextlib.suppress(InvalidSafetensors):
        parse_header(read_range, len(data), 64 * 1024)


def fuzz_url(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    text = provider.ConsumeUnicodeNoSurrogates(300)
    try:
        target = check_url(text, _POLICY)
    except UrlRejected:
        target = None
    if target is not None and not target.host.isascii():
        raise AssertionError(f"a non-ASCII host passed: {target.host!r}")
    address = literal_address(text[:60])
    if address is not None:
        forbidden_reason(address, _POLICY)
    if len(data) >= 16:
        six = ipaddress.IPv6Address(int.from_bytes(data[:16], "big"))
        if forbidden_reason(six, _POLICY) is None:
            for embedded in embedded_ipv4(six):
                if forbidden_reason(embedded, _POLICY) is not None:
                    raise AssertionError(f"{six} is allowed but carries {embedded}")


TARGETS = {"pickle": fuzz_pickle, "safetensors": fuzz_safetensors, "url": fuzz_url}


def _seed_folder(target: str) -> list[str]:
    """Seed inputs: the adversarial corpus for pickles (written to a temporary folder)."""
    if target != "pickle":
        return []
    from tests.adversarial.corpus import malformed, malicious

    folder = Path(tempfile.mkdtemp(prefix="sdpipe-fuzz-seeds-"))
    for sample in malicious() + malformed():
        if len(sample.data) < 1_000_000:
            (folder / sample.name).write_bytes(sample.data)
    return [str(folder)]


def main() -> None:
    target = sys.argv[1]
    flags = [arg for arg in sys.argv[2:] if arg.startswith("-")]
    atheris.Setup([sys.argv[0], *flags, *_seed_folder(target)], TARGETS[target])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
