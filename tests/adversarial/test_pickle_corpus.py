"""The registration scanner against the project's own corpus, and the corpus against real loaders."""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sdpipe.errors import InvalidPickle, UnsafePickle
from sdpipe.inspect.pickle_scan import PickleLimits, scan_one_pickle
from sdpipe.inspect.torch_archive import scan_torch_file
from sdpipe.inspect.torch_globals import TORCH_WEIGHTS_ONLY_GLOBALS
from tests.adversarial.corpus import benign, everything, malformed, malicious

REPO = Path(__file__).resolve().parents[2]
MALICIOUS, MALFORMED, BENIGN = malicious(), malformed(), benign()


def scan(data: bytes, limits: PickleLimits | None = None):
    return scan_torch_file(io.BytesIO(data), len(data), limits or PickleLimits())


@pytest.mark.parametrize("sample", MALICIOUS + MALFORMED, ids=lambda s: s.name)
def test_every_malicious_or_malformed_file_is_rejected_with_a_reason(sample):
    with pytest.raises((InvalidPickle, UnsafePickle)) as raised:
        scan(sample.data)
    assert raised.value.message.strip()


@pytest.mark.parametrize("sample", BENIGN, ids=lambda s: s.name)
def test_every_benign_file_is_accepted(sample):
    assert scan(sample.data).pickles >= 1


def test_the_corpus_labels_are_true_for_real_loaders(tmp_path):
    """Each malicious sample really runs its payload under torch.load(weights_only=False); each
    benign one really loads with weights_only=True (in a subprocess: payloads do run there)."""
    result = subprocess.run(
        [sys.executable, "-m", "tests.adversarial.oracle", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=True,
        env=os.environ | {"PYTHONPATH": str(REPO)},
    )  # fmt: skip
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(records) == len(everything())
    for record in records:
        if record["kind"] == "malicious":
            assert record["ran_payload"], record
        if record["kind"] == "benign":
            assert record["weights_only_loads"], record


def test_the_allowlist_is_exactly_what_torchs_weights_only_loader_admits():
    from torch._weights_only_unpickler import _get_allowed_globals

    assert set(_get_allowed_globals()) == TORCH_WEIGHTS_ONLY_GLOBALS
    assert "torch.storage._load_from_bytes" not in TORCH_WEIGHTS_ONLY_GLOBALS


def test_bounds_each_reject_with_their_own_message():
    deep = b"\x80\x02" + b"]" * 10 + b"(" * 40 + b"."
    with pytest.raises(InvalidPickle, match="nests containers more than 16 deep"):
        scan(deep, PickleLimits(max_depth=16))
    many = pickle.dumps(list(range(1000)), protocol=2)
    with pytest.raises(InvalidPickle, match="more than 100 opcodes"):
        scan(many, PickleLimits(max_opcodes=100))
    memo = pickle.dumps([str(i) for i in range(1000)], protocol=2)
    with pytest.raises(InvalidPickle, match="more than 10 memo entries"):
        scan(memo, PickleLimits(max_memo=10))
    wide = b"\x80\x02" + b"N" * 1000 + b"."
    with pytest.raises(InvalidPickle, match="stack grows past 100"):
        scan(wide, PickleLimits(max_stack=100))
    with pytest.raises(InvalidPickle, match="scan limit"):
        scan(pickle.dumps("x" * 5000, protocol=2), PickleLimits(max_bytes=1000))


def test_the_memo_bomb_is_rejected_within_bounded_memory():
    import resource

    bomb = next(s for s in MALFORMED if s.name == "memo-bomb.ckpt")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(InvalidPickle, match="memo entries"):
        scan(bomb.data)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 400, f"the scan grew the process by {grown_mib:.0f} MiB"


# --------------------------------------------------------------------------- properties
# Values a state dict or a training state holds, and nothing that needs a disallowed global.
_leaves = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20),
    st.binary(max_size=20), st.complex_numbers(allow_nan=False, allow_infinity=False),
)  # fmt: skip
_values = st.recursive(
    _leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(st.text(max_size=10), inner, max_size=4),
        st.sets(st.integers(), max_size=4),
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=_values)
def test_whatever_torchs_weights_only_loader_accepts_is_accepted(value):
    from torch._weights_only_unpickler import Unpickler

    data = pickle.dumps(value, protocol=2)  # torch.save's protocol
    try:
        Unpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError:
        return  # torch refuses it (e.g. bytes() in protocol 2): no claim
    found, _top = scan_one_pickle(io.BytesIO(data), PickleLimits())
    assert found.globals <= TORCH_WEIGHTS_ONLY_GLOBALS


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=_values, protocol=st.integers(min_value=0, max_value=5))
def test_valid_pickles_of_any_protocol_are_only_ever_refused_for_a_global(value, protocol):
    data = pickle.dumps(value, protocol=protocol)
    try:
        scan_one_pickle(io.BytesIO(data), PickleLimits())
    except UnsafePickle as exc:
        assert "imports" in exc.message


class _Call:
    def __init__(self, function, args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


_disallowed = st.sampled_from([os.system, eval, exec, getattr, open, subprocess.call, pickle.loads, __import__])


@settings(max_examples=200, deadline=None)
@given(value=_values, function=_disallowed, protocol=st.integers(min_value=2, max_value=5), where=st.integers(0, 3))
def test_a_disallowed_call_anywhere_in_the_values_is_rejected(value, function, protocol, where):
    payload = _Call(function, ("x",))
    shapes = [[payload, value], {"k": value, "p": payload}, (value, [payload]), {"nested": [{"deep": payload}]}]
    data = pickle.dumps(shapes[where], protocol=protocol)
    with pytest.raises(UnsafePickle):
        scan(data)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=2000))
def test_arbitrary_bytes_are_accepted_or_rejected_never_crash(data):
    try:
        scan(b"\x80" + data)
        scan(b"PK\x03\x04" + data)
    except (InvalidPickle, UnsafePickle):
        pass


@settings(max_examples=300, deadline=None)
@given(
    sample=st.sampled_from(MALICIOUS + MALFORMED + BENIGN),
    flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), min_size=1, max_size=8),
)
def test_mutated_corpus_files_are_accepted_or_rejected_never_crash(sample, flips):
    data = bytearray(sample.data)
    for position, value in flips:
        data[position % len(data)] = value
    with contextlib.suppress(InvalidPickle, UnsafePickle):
        scan(bytes(data))
