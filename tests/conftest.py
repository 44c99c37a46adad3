"""Fixtures shared by every test folder."""

from __future__ import annotations

import pytest

from tests.support import UpstreamServer


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
