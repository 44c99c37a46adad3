"""The cache filter in proxyd alone, where Envoy cannot be compared: ``cache`` v3 with
``vary`` (Envoy 1.40 crashes on a response that varies on an allowed header), a chunked
upstream response answered from the cache with its length, and a filter before the
cache seeing the hit as it sees an upstream response."""

from __future__ import annotations

import http.client
import subprocess
from pathlib import Path
from typing import Any

from tests.compat.cache_upstream import CacheUpstream
from tests.support import (
    ProxydProcess,
    bootstrap,
    dump_yaml,
    http_listener,
    static_cluster,
    wait_for,
)

V1 = "type.googleapis.com/envoy.extensions.filters.http.cache.v3.CacheConfig"
V1_SIMPLE = (
    "type.googleapis.com/envoy.extensions.http.cache.simple_http_cache.v3.SimpleHttpCacheConfig"
)
HEADER_MUTATION = (
    "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation"
)


def _config(upstream: int) -> str:
    rc = {
        "name": "local",
        "virtual_hosts": [
            {
                "name": "all",
                "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "svc"}}],
            }
        ],
    }
    mutation = {
        "name": "mark",
        "typed_config": {
            "@type": HEADER_MUTATION,
            "mutations": {
                "response_mutations": [
                    {"append": {"header": {"key": "x-seen-by-mutation", "value": "yes"}}}
                ]
            },
        },
    }
    cache = {
        "name": "envoy.filters.http.cache",
        "typed_config": {
            "@type": V1,
            "typed_config": {"@type": V1_SIMPLE},
            "allowed_vary_headers": [{"exact": "x-variant"}],
        },
    }
    doc = bootstrap(
        [http_listener("ingress", 0, rc, [mutation, cache])], [static_cluster("svc", [upstream])]
    )
    return dump_yaml(doc)


def _get(port: int, path: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        return {
            "status": r.status,
            "body": r.read().decode(),
            "headers": {k.lower(): v for k, v in r.getheaders()},
        }
    finally:
        conn.close()


def test_vary_chunked_and_filters_before_the_cache(tmp_path: Path) -> None:
    with CacheUpstream() as up, ProxydProcess(tmp_path, _config(up.port), concurrency=1) as p:
        port = p.listener_port("ingress")

        # vary on an allowed header: one stored response per value (none is a value too).
        path = "/vary?cc=max-age=60&vary=x-variant"
        bodies = [
            _get(port, path, {"x-variant": v} if v else {})["body"]
            for v in ("a", "a", "b", "b", "", "", "a")
        ]
        assert up.count(path) == 3
        assert bodies[0] == bodies[1] == bodies[6] and "/vary a" in bodies[0]
        assert bodies[2] == bodies[3] and "/vary b" in bodies[2]
        assert bodies[4] == bodies[5] and bodies[4] not in (bodies[0], bodies[2])

        # vary on a header that is not allowed: never stored.
        path = "/vary-other?cc=max-age=60&vary=x-other"
        _get(port, path)
        _get(port, path)
        assert up.count(path) == 2

        # A chunked response is stored whole and answered with its length.
        path = "/chunked?cc=max-age=60&chunked=1&body=0123456789abcdef"
        miss = _get(port, path)
        hit = _get(port, path)
        assert up.count(path) == 1
        assert miss["body"] == hit["body"] == "0123456789abcdef"
        assert "transfer-encoding" in miss["headers"]
        assert (
            hit["headers"]["content-length"] == "16" and "transfer-encoding" not in hit["headers"]
        )
        assert hit["headers"]["age"] == "0"

        # The filter before the cache sees the hit as it saw the upstream's response.
        assert miss["headers"]["x-seen-by-mutation"] == "yes"
        assert hit["headers"]["x-seen-by-mutation"] == "yes"
        assert hit["headers"]["server"] == miss["headers"]["server"]

        # A hit over HTTP/2 (curl, prior knowledge): the same response, and a HEAD gets
        # the head only.
        url = f"http://127.0.0.1:{port}{path}"
        out = subprocess.run(
            ["curl", "-s", "-i", "--http2-prior-knowledge", url],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
        assert out.startswith("HTTP/2 200") and out.endswith("0123456789abcdef")
        assert "\nage: " in out and "\ncontent-length: 16" in out
        out = subprocess.run(
            ["curl", "-s", "-I", "--http2-prior-knowledge", url],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
        assert out.startswith("HTTP/2 200") and "\nage: " in out and "0123" not in out
        assert up.count(path) == 1


V2 = "type.googleapis.com/envoy.extensions.filters.http.cache_v2.v3.CacheV2Config"
V2_FS = (
    "type.googleapis.com/envoy.extensions.http.cache_v2.file_system_http_cache.v3"
    ".FileSystemHttpCacheV2Config"
)


def _fs_config(upstream: int, path: Path, **limits: Any) -> str:
    rc = {
        "name": "local",
        "virtual_hosts": [
            {
                "name": "all",
                "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "svc"}}],
            }
        ],
    }
    cache = {
        "name": "envoy.filters.http.cache_v2",
        "typed_config": {
            "@type": V2,
            "typed_config": {
                "@type": V2_FS,
                "manager_config": {"thread_pool": {"thread_count": 2}},
                "cache_path": str(path),
                **limits,
            },
        },
    }
    doc = bootstrap([http_listener("ingress", 0, rc, [cache])], [static_cluster("svc", [upstream])])
    return dump_yaml(doc)


def _workdir(path: Path) -> Path:
    path.mkdir()
    return path


def _files(path: Path) -> list[Path]:
    return [p for p in path.iterdir() if p.name.startswith("cache-")]


def test_file_cache_outlives_a_restart_and_is_shared_by_workers(tmp_path: Path) -> None:
    folder = tmp_path / "files"
    folder.mkdir()
    path = "/kept?cc=max-age=600"
    # The host is part of the key: the same one on both runs (their ports differ).
    host = {"host": "files.example"}
    with CacheUpstream() as up:
        config = _fs_config(up.port, folder)
        with ProxydProcess(_workdir(tmp_path / "a"), config, concurrency=2) as p:
            port = p.listener_port("ingress")
            first = _get(port, path, host)
            # Each request on its own connection: the kernel spreads them over both
            # workers, and every one reads the file the first one wrote.
            for _ in range(8):
                again = _get(port, path, host)
                assert again["body"] == first["body"] and "age" in again["headers"]
            assert up.count(path) == 1
        assert len(_files(folder)) == 1
        with ProxydProcess(_workdir(tmp_path / "b"), config, concurrency=1) as p:
            hit = _get(p.listener_port("ingress"), path, host)
        assert hit["body"] == first["body"] and up.count(path) == 1


def test_file_cache_evicts_the_least_recently_used(tmp_path: Path) -> None:
    folder = tmp_path / "files"
    folder.mkdir()
    with CacheUpstream() as up:
        config = _fs_config(up.port, folder, max_cache_entry_count=2)
        with ProxydProcess(_workdir(tmp_path / "p"), config, concurrency=1) as p:
            port = p.listener_port("ingress")
            a, b, c = ("/a?cc=max-age=600", "/b?cc=max-age=600", "/c?cc=max-age=600")
            _get(port, a)
            _get(port, b)
            _get(port, a)  # a hit: a is now the more recently used
            assert up.count(a) == 1
            _get(port, c)  # a third file: b, the least recently used, goes
            assert len(_files(folder)) == 2
            _get(port, a)
            _get(port, c)
            _get(port, b)
            assert (up.count(a), up.count(b), up.count(c)) == (1, 2, 1)


def test_file_cache_without_its_directory(tmp_path: Path) -> None:
    """A missing cache_path: every lookup fails (lookup_error) and nothing is stored,
    as in Envoy 1.40."""
    with CacheUpstream() as up:
        config = _fs_config(up.port, tmp_path / "missing")
        with ProxydProcess(_workdir(tmp_path / "p"), config, concurrency=1) as p:
            port = p.listener_port("ingress")
            path = "/x?cc=max-age=600"
            assert _get(port, path)["status"] == 200
            assert _get(port, path)["status"] == 200
            assert up.count(path) == 2
            name = (
                "cache.event.cache_label.envoy_extensions_http_cache_v2_file_system_http_cache"
                ".event_type.lookup_error"
            )
            wait_for(lambda: p.stats().get(name) == 2, timeout=5)
        assert not (tmp_path / "missing").exists()
