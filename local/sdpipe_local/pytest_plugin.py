"""pytest fixtures that start the embedded local stack (``pytest_plugins = ["sdpipe_local.pytest_plugin"]``).

``sdpipe_stack`` is session-scoped and runs ``template.yaml`` from the directory pytest runs in
(or ``SDPIPE_TEMPLATE``); it is the same stack ``sdpipe local up`` starts. ``sdpipe_chaos_stack``
(module-scoped) is a second stack with the fault injector armed from ``SDPIPE_CHAOS_SEED``
(default 1913), the event lease and the sweep period at ``CHAOS_LEASE_SECONDS``, and the client
environment of the test process pointed at it while it runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from sdpipe_local.chaos import ChaosConfig, chaos_parameters
from sdpipe_local.stack import LocalStack

CHAOS_LEASE_SECONDS = 5  # the event lease and the sweep period of the chaos stack
CHAOS_STACK_PARAMETERS = chaos_parameters(CHAOS_LEASE_SECONDS) | {
    "FetchAllowedNetworks": "127.0.0.1/32",  # the scenario fetches from a local file server
    "DefaultTrainingEngine": "builtin",
}


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


@pytest.fixture(scope="module")
def sdpipe_chaos_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    from sdpipe.adapters.clients import clients

    template = Path(os.environ.get("SDPIPE_TEMPLATE", "template.yaml"))
    overrides = CHAOS_STACK_PARAMETERS
    seed = int(os.environ.get("SDPIPE_CHAOS_SEED", "1913"))
    patch = pytest.MonkeyPatch()
    with LocalStack(
        template,
        stack_name="sdpipe-chaos",
        state_dir=tmp_path_factory.mktemp("chaos-stack"),
        parameter_overrides=overrides,
        chaos=ChaosConfig(seed=seed),
    ) as stack:
        for name, value in stack.environment().items():
            patch.setenv(name, value)
        clients.reset()
        try:
            yield stack
        finally:
            patch.undo()
            clients.reset()
