"""What `sam build` produces is what Lambda will run: every function imports under python3.12 with
only its own folder, the built layer and the runtime's kind of SDK on the path; the layer carries
no SDK of its own and ships bytecode (``make build`` builds both; ``make test`` runs it first)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / ".aws-sam" / "build"
RUNTIME_SDK = ROOT / ".aws-sam" / "runtime-sdk"
LAYER = BUILD / "CommonLayer" / "python"
# What the python3.12 runtime has at /var/runtime; nothing in the layer may shadow it.
RUNTIME_PACKAGES = ("boto3", "botocore", "s3transfer", "urllib3", "dateutil", "jmespath")


def _python312() -> str | None:
    pyenv = subprocess.run(["pyenv", "root"], capture_output=True, text=True, check=False) if _has("pyenv") else None
    if pyenv is not None and pyenv.returncode == 0:
        found = sorted(Path(pyenv.stdout.strip(), "versions").glob("3.12*/bin/python3.12"))
        if found:
            return str(found[-1])
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        candidate = Path(folder, "python3.12")
        if candidate.is_file() and "/shims" not in folder:
            return str(candidate)
    return None


def _has(program: str) -> bool:
    return any(Path(folder, program).is_file() for folder in os.environ.get("PATH", "").split(os.pathsep))


PYTHON312 = _python312()
if not (BUILD / "template.yaml").is_file() or PYTHON312 is None or not RUNTIME_SDK.is_dir():
    if os.environ.get("CI") == "true":
        raise AssertionError("CI must run `make build` (sam build needs python3.12) before these tests")
    pytest.skip("no sam build here (make build needs python3.12)", allow_module_level=True)


def built_functions() -> dict[str, dict]:
    template = yaml.load((BUILD / "template.yaml").read_text(), Loader=_Loader)
    return {
        name: resource["Properties"]
        for name, resource in template["Resources"].items()
        if resource["Type"] == "AWS::Serverless::Function"
    }


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_multi_constructor("!", lambda loader, suffix, node: None)


def lambda_environment(function: str) -> dict[str, str]:
    """Roughly what the python3.12 runtime sets before it imports the handler's module."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "en_US.UTF-8",
        "TZ": ":UTC",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EXECUTION_ENV": "AWS_Lambda_python3.12",
        "AWS_LAMBDA_FUNCTION_NAME": f"sdpipe-{function}",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "512",
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "LAMBDA_TASK_ROOT": str(BUILD / function),
        "POWERTOOLS_SERVICE_NAME": "sdpipe",
        "POWERTOOLS_METRICS_NAMESPACE": "sdpipe",
    }


IMPORT = """
import sys
sys.path[:0] = {paths!r}
import app
handler = getattr(app, {handler!r})
assert callable(handler)
print(sorted(m.split(".")[0] for m in sys.modules if m.split(".")[0] in {runtime!r}))
"""


@pytest.mark.parametrize("function", sorted(built_functions()))
def test_each_built_function_imports_with_only_its_folder_the_layer_and_the_runtime_sdk(function):
    properties = built_functions()[function]
    module, handler = properties["Handler"].rsplit(".", 1)
    assert module == "app"
    paths = [str(BUILD / function), str(LAYER), str(RUNTIME_SDK)]
    # -S: none of this interpreter's own site-packages, as in Lambda.
    code = IMPORT.format(paths=paths, handler=handler, runtime=list(RUNTIME_PACKAGES))
    result = subprocess.run(
        [PYTHON312, "-S", "-c", code], env=lambda_environment(function), capture_output=True, text=True, timeout=120,
        cwd=BUILD / function, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]


def test_the_layer_carries_no_sdk_of_its_own():
    present = [name for name in RUNTIME_PACKAGES if (LAYER / name).exists() or (LAYER / f"{name}.py").exists()]
    assert present == []
    assert not list(LAYER.glob("boto*-*.dist-info"))


def test_the_layer_ships_bytecode_that_needs_no_source_timestamps():
    """/opt is read-only in Lambda: without .pyc every cold start compiles the layer again; and
    the zip does not keep exact mtimes, so the bytecode is of the unchecked-hash kind."""
    sources = [p for p in LAYER.rglob("*.py") if "__pycache__" not in p.parts]
    assert len(sources) > 100
    missing, checked = [], []
    for source in sources:
        compiled = Path(importlib.util.cache_from_source(str(source)).replace("cpython-311", "cpython-312"))
        if not compiled.is_file():
            missing.append(source)
            continue
        flags = int.from_bytes(compiled.read_bytes()[4:8], "little")
        if flags != 0b01:  # hash-based, not checked against the source
            checked.append(source)
    assert missing == [] and checked == []


def test_the_layer_pins_what_ci_tests_with():
    pins = {}
    for line in (ROOT / "layers/common/requirements.txt").read_text().splitlines():
        if match := re.match(r"^([A-Za-z0-9_.-]+)==(\S+)$", line.strip()):
            pins[match.group(1).lower()] = match.group(2)
    installed = {name: importlib.metadata.version(name) for name in pins}
    assert installed == pins
    dists = [p.name.removesuffix(".dist-info").rsplit("-", 1) for p in LAYER.glob("*.dist-info")]
    layer = {name.lower().replace("_", "-"): version for name, version in dists}
    assert {k.replace("_", "-"): v for k, v in pins.items()} == layer


def test_the_built_template_is_the_source_template_with_built_artefacts():
    built = built_functions()
    source = json.loads(json.dumps(yaml.load((ROOT / "template.yaml").read_text(), Loader=_Loader)))
    assert set(built) == {n for n, r in source["Resources"].items() if r["Type"] == "AWS::Serverless::Function"}
    assert all(props["CodeUri"] == name for name, props in built.items())
