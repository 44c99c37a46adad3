"""Fixtures shared by every test folder."""

from __future__ import annotations

import gc

import pytest

from tests.support import UpstreamServer


@pytest.fixture(autouse=True, scope="module")
def _collect_all_garbage_after_each_module():
    """A full collection, frozen objects included, after the module's own fixtures
    ended (in its last test's teardown): what a module-scoped fixture, or a thread that
    outlived its test, leaked is reported there, or at the latest at the end of the
    next module (while pytest still holds a finished fixture's value)."""
    yield
    gc.unfreeze()
    gc.collect()
    gc.freeze()


@pytest.fixture(autouse=True)
def _collect_garbage_after_each_test():
    """Run the garbage collector at the end of every test.

    An unclosed socket or file is reported (ResourceWarning, an error here) when it is
    collected; without this that can happen during some later, unrelated test. Collecting
    in each test's teardown makes the warning name the test that leaked.

    What is still alive after the collection was made by this or an earlier test, or by
    a fixture that outlives the test: it is frozen (``gc.freeze``), so the next test's
    collection looks only at what that test made. Collecting the whole heap (the suite's
    modules, pytest's items: 130,000 objects and more) took 0.05-0.2 s in each of the
    suite's thousands of teardowns, more than all unit tests together. What becomes
    garbage among the frozen objects is collected at the end of the module
    (:func:`_collect_all_garbage_after_each_module`).
    """
    yield
    gc.collect()
    gc.freeze()


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


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    """Test certificates (tests/tls_certs.py), made once per session."""
    from tests.tls_certs import make_certs

    return make_certs(tmp_path_factory.mktemp("certs"))
