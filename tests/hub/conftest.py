"""One real JupyterHub per test module: configurable-http-proxy, the teelab-kbs service (the key broker),
single-user servers spawned on demand, the simulated TEE; alice's sample dataset granted to group:analysts."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from teelab.extension.hub.demo import HubProcess


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    process = HubProcess(tmp_path_factory.mktemp("hub"))
    process.prepare()
    process.start()
    try:
        process.publish_sample()
        yield process
    finally:
        process.stop()
