"""pytest fixtures that start the embedded local stack (``pytest_plugins = ["sdpipe_local.pytest_plugin"]``).

``sdpipe_stack`` is session-scoped and runs ``template.yaml`` from the directory pytest runs in
(or ``SDPIPE_TEMPLATE``); it is the same stack ``sdpipe local up`` starts.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from sdpipe_local.stack import LocalStack


@pytest.fixture(scope="session")
def sdpipe_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    template = Path(os.environ.get("SDPIPE_TEMPLATE", "template.yaml"))
    # Fetch tests serve files from 127.0.0.1; the exemption is explicit, as it must be.
    overrides = {
        "FetchAllowedNetworks": "127.0.0.1/32",
        "FetchPartBytes": str(8 * 1024 * 1024),  # small parts: a 20 MiB file is a 3-item Map
        "FetchMaxBytes": str(48 * 1024 * 1024),
    }
    with LocalStack(
        template, state_dir=tmp_path_factory.mktemp("sdpipe-stack"), parameter_overrides=overrides
    ) as stack:
        yield stack
