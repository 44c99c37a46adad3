"""Fixtures shared by every test folder."""

from __future__ import annotations

import gc

import pytest

from tests.support import UpstreamServer


@pytest.fixture(autouse=True)
def _collect_garbage_after_each_test():
    """Run the garbage collector at the end of every test.

    An unclosed socket or file is reported (ResourceWarning, an error here) when it is
    collected; without this that can happen during some later, unrelated test. Collecting
    in each test's teardown makes the warning name the test that leaked.
    """
    yield
    gc.collect()


@pytest.fixture
def upstream():
    """Start named demo upstreams on free loopback ports: ``a = upstream("a")``."""
    started: list[UpstreamServer] = []

    def start(name: str) -> UpstreamServer:
        server = UpstreamServer(name).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
