"""The API emulator the tests of its HTTP surface share: pods ready only on command, object
durations 50x faster. Test modules that need other timings define their own `kube`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes import client

from sidecar.sim.kube import KubeEmulator


@pytest.fixture
def kube() -> Iterator[KubeEmulator]:
    with KubeEmulator(ready_after=None, time_scale=0.02) as emulator:
        yield emulator


@pytest.fixture
def api(kube: KubeEmulator) -> Iterator[client.ApiClient]:
    with kube.api_client() as api_client:
        yield api_client
