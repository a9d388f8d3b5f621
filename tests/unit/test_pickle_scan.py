import io
import os
import pickle
import subprocess
import zipfile

import pytest
import torch

from sdpipe.errors import InvalidPickle, UnsafePickle
from sdpipe.inspect.pickle_scan import PickleLimits
from sdpipe.inspect.torch_archive import scan_torch_file

CAP = 64 * 1024 * 1024


def scan(data: bytes, cap: int = CAP):
    return scan_torch_file(io.BytesIO(data), len(data), PickleLimits(max_bytes=cap))


def torch_zip(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def torch_legacy(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, _use_new_zipfile_serialization=False)
    return buffer.getvalue()


class Exploit:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def state_dict():
    return {
        "state_dict": {
            "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2, 4, 3, 3),
            "cond_stage_model.transformer.x": torch.ones(2),
        }
    }


def test_torch_zip_checkpoint_is_accepted_and_its_names_are_seen():
    found = scan(torch_zip(state_dict()))
    assert "model.diffusion_model.input_blocks.0.0.weight" in found.strings
    assert "torch._utils._rebuild_tensor_v2" in found.globals


def test_legacy_torch_format_is_accepted():
    found = scan(torch_legacy(state_dict()))
    assert found.pickles == 5
    assert "cond_stage_model.transformer.x" in found.strings


@pytest.mark.parametrize(
    ("payload", "global_name"),
    [
        (Exploit(os.system, "echo pwned"), "posix.system"),
        (Exploit(eval, "1+1"), "builtins.eval"),
        (Exploit(subprocess.Popen, ["true"]), "subprocess.Popen"),
    ],
)
@pytest.mark.parametrize("protocol", [2, 4])
def test_malicious_globals_are_rejected_by_name(payload, global_name, protocol):
    data = pickle.dumps({"state_dict": {"w": 1}, "x": payload}, protocol=protocol)
    with pytest.raises(UnsafePickle, match=global_name.replace(".", r"\.")):
        scan(data)


def test_malicious_global_inside_a_torch_zip_is_rejected():
    data = torch_zip({"w": torch.zeros(1), "x": Exploit(os.system, "id")})
    with pytest.raises(UnsafePickle, match="system"):
        scan(data)


def test_stack_global_built_from_memo_is_resolved():
    # Protocol 4 memoises strings and STACK_GLOBAL reads them back: still checked.
    data = pickle.dumps([Exploit(os.system, "a"), Exploit(os.system, "b")], protocol=4)
    with pytest.raises(UnsafePickle, match="system"):
        scan(data)


def test_garbage_is_an_invalid_pickle():
    with pytest.raises(InvalidPickle):
        scan(b"\x80\x04\x95garbage that is not a pickle")


def test_zip_without_data_pkl_is_not_a_checkpoint():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/readme.txt", "hi")
    with pytest.raises(InvalidPickle, match=r"data\.pkl"):
        scan(buffer.getvalue())


def test_scan_cap_is_enforced():
    data = pickle.dumps({"k": "x" * 10_000}, protocol=2)
    with pytest.raises(InvalidPickle, match="scan limit"):
        scan(data, 1000)


def test_zip64_archives_are_read_both_as_torch_and_as_zipfile_write_them():
    # torch always writes a zip64 end record; Python's zipfile writes one past 65535 entries.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"w": 1}, protocol=2))
        for index in range(66_000):
            archive.writestr(f"archive/data/{index}", b"")
    assert b"PK\x06\x07" in buffer.getvalue()
    assert scan(buffer.getvalue()).pickles == 1
