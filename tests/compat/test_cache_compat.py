"""The cache filter (``cache`` v3 and ``cache_v2``, simple in-memory storage): real Envoy
and real proxyd on the same YAML, against one scripted upstream
(:mod:`tests.compat.cache_upstream`, whose query string says what it answers).

Listeners: ``v1`` (``CacheConfig``), ``v2`` (``CacheV2Config``), ``opts`` (``CacheConfig``
with ``ignore_request_cache_control_header``, ``max_body_bytes: 20`` and
``key_creator_params`` leaving out host and scheme: Envoy 1.40 stores longer bodies and
keys by host and scheme all the same, and so does proxyd), ``fs1`` and ``fs2`` (the same
two filters with the file-system storages; both proxies use the same directories, but
their file names and formats differ, so neither reads the other's files). Each case is a sequence of requests to one path;
for every request the client's view (status, body, ``age`` present, the header names
and the caching header values) and what the upstream saw (how many requests reached
it, the conditional headers of the last) must be the same on both proxies. The v2
``cache.event.*`` stats are compared last.

``vary`` is not compared on ``cache`` v3: Envoy 1.40 crashes on a response whose
``vary`` names an allowed header (tests/integration/test_cache.py covers proxyd's
variants); on ``cache_v2`` such a response is not stored, on both.
"""

from __future__ import annotations

import copy
import http.client
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.compat.cache_upstream import CacheUpstream
from tests.compat.envoy_runner import envoy_available
from tests.compat.pair import Pair, run_pair
from tests.support import bootstrap, dump_yaml, http_listener, static_cluster, wait_for

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

V1 = "type.googleapis.com/envoy.extensions.filters.http.cache.v3.CacheConfig"
V1_SIMPLE = (
    "type.googleapis.com/envoy.extensions.http.cache.simple_http_cache.v3.SimpleHttpCacheConfig"
)
V2 = "type.googleapis.com/envoy.extensions.filters.http.cache_v2.v3.CacheV2Config"
V2_SIMPLE = "type.googleapis.com/envoy.extensions.http.cache_v2.simple_http_cache.v3.SimpleHttpCacheV2Config"
VARY_ALLOWED = [{"exact": "x-variant"}]


V1_FS = (
    "type.googleapis.com/envoy.extensions.http.cache.file_system_http_cache.v3"
    ".FileSystemHttpCacheConfig"
)
V2_FS = (
    "type.googleapis.com/envoy.extensions.http.cache_v2.file_system_http_cache.v3"
    ".FileSystemHttpCacheV2Config"
)


FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
# What the access log says of a cached answer: Envoy's RFCF flag and its details.
LOG_FORMAT = "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%\n"
LOGGED = ("v1", "v2", "fs2")


def _fs(type_url: str, path: Path) -> dict[str, Any]:
    return {
        "@type": type_url,
        "manager_config": {"thread_pool": {"thread_count": 1}},
        "cache_path": str(path),
    }


def config(upstream: int, cache_dir: Path) -> str:
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
    v1 = {
        "name": "envoy.filters.http.cache",
        "typed_config": {
            "@type": V1,
            "typed_config": {"@type": V1_SIMPLE},
            "allowed_vary_headers": VARY_ALLOWED,
        },
    }
    v2 = {
        "name": "envoy.filters.http.cache_v2",
        "typed_config": {
            "@type": V2,
            "typed_config": {"@type": V2_SIMPLE},
            "allowed_vary_headers": VARY_ALLOWED,
        },
    }
    opts = {
        "name": "envoy.filters.http.cache",
        "typed_config": {
            "@type": V1,
            "typed_config": {"@type": V1_SIMPLE},
            "ignore_request_cache_control_header": True,
            "max_body_bytes": 20,
            "key_creator_params": {"exclude_host": True, "exclude_scheme": True},
        },
    }
    fs1 = copy.deepcopy(v1)
    fs1["typed_config"]["typed_config"] = _fs(V1_FS, cache_dir / "fs1")
    fs2 = copy.deepcopy(v2)
    fs2["typed_config"]["typed_config"] = _fs(V2_FS, cache_dir / "fs2")

    def logged(name: str, filters: list[dict[str, Any]]) -> dict[str, Any]:
        log = {
            "name": "envoy.access_loggers.file",
            "typed_config": {
                "@type": FILE_LOG,
                "path": str(cache_dir / f"{name}.log"),
                "log_format": {"text_format_source": {"inline_string": LOG_FORMAT}},
            },
        }
        return http_listener(name, 0, rc, filters, access_log=[log])

    doc = bootstrap(
        [
            logged("v1", [v1]),
            logged("v2", [v2]),
            http_listener("opts", 0, rc, [opts]),
            http_listener("fs1", 0, rc, [fs1]),
            logged("fs2", [fs2]),
            http_listener("edge", 0, rc, [v1], use_remote_address=True),
        ],
        [static_cluster("svc", [upstream])],
    )
    return dump_yaml(doc)


Step = tuple[str, dict[str, str]]  # (method, request headers)
GET: Step = ("GET", {})
HEAD: Step = ("HEAD", {})

# name → (query of the path, the requests); every case runs on v1 and v2 unless named
# for one listener.
STALE = "cc=max-age=5&date=-10"
CASES: dict[str, tuple[str, list[Step]]] = {
    "fresh_hit": ("cc=max-age=60", [GET, GET, HEAD]),
    "head_miss_not_stored": ("cc=max-age=60", [HEAD, GET, HEAD, GET]),
    "stale_etag_304": (STALE + "&etag=%22e1%22&revalidate=304", [GET, GET, GET]),
    "stale_last_modified_304": (STALE + "&lm=-100&revalidate=304", [GET, GET]),
    "stale_replaced_by_200": (STALE + "&etag=%22e3%22", [GET, GET, GET]),
    "stale_no_validator": (STALE, [GET, GET]),
    "stale_head": (STALE + "&revalidate=304", [GET, HEAD, GET]),
    "no_store": ("cc=no-store", [GET, GET]),
    "private": ("cc=private", [GET, GET]),
    "private_with_max_age": ("cc=max-age=60,private", [GET, GET]),
    "private_field": ('cc=private="x",max-age=60', [GET, GET]),
    "no_cache_response": ("cc=no-cache", [GET, GET]),
    "no_cache_with_max_age": ("cc=max-age=60,no-cache&revalidate=304", [GET, GET, GET]),
    "public_only": ("cc=public", [GET, GET]),
    "s_maxage": ("cc=s-maxage=60", [GET, GET]),
    "s_maxage_over_max_age": ("cc=max-age=60,s-maxage=0&date=-2", [GET, GET]),
    "must_revalidate_fresh": ("cc=max-age=60,must-revalidate", [GET, GET]),
    "max_age_zero_now": ("cc=max-age=0&date=5", [GET, GET]),
    "max_age_zero_past": ("cc=max-age=0&date=-2", [GET, GET]),
    "bad_max_age": ("cc=max-age=abc", [GET, GET]),
    "no_store_with_max_age": ("cc=max-age=60,no-store", [GET, GET]),
    "expires_future": ("expires=60", [GET, GET]),
    "expires_past": ("expires=-5", [GET, GET]),
    "expires_without_date": ("expires=60&date=none", [GET, GET]),
    "no_freshness": ("status=200", [GET, GET]),
    "age_from_date": ("cc=max-age=60&date=-7", [GET, GET]),
    "date_in_future": ("cc=max-age=60&date=30", [GET, GET]),
    "request_no_cache": ("cc=max-age=60", [GET, ("GET", {"cache-control": "no-cache"}), GET]),
    "request_pragma": ("cc=max-age=60", [GET, ("GET", {"pragma": "no-cache"}), GET]),
    "request_max_age_0": ("cc=max-age=60&date=-3", [GET, ("GET", {"cache-control": "max-age=0"})]),
    "request_max_age_big": (
        "cc=max-age=60&date=-3",
        [GET, ("GET", {"cache-control": "max-age=100"})],
    ),
    "request_min_fresh": (
        "cc=max-age=60&date=-3",
        [GET, ("GET", {"cache-control": "min-fresh=58"})],
    ),
    "request_min_fresh_ok": (
        "cc=max-age=60&date=-3",
        [GET, ("GET", {"cache-control": "min-fresh=5"})],
    ),
    "request_max_stale": (STALE, [GET, ("GET", {"cache-control": "max-stale=100"})]),
    "request_max_stale_short": (STALE, [GET, ("GET", {"cache-control": "max-stale=1"})]),
    "request_max_stale_any": (STALE, [GET, ("GET", {"cache-control": "max-stale"})]),
    "request_max_stale_must_revalidate": (
        "cc=max-age=5,must-revalidate&date=-10",
        [GET, ("GET", {"cache-control": "max-stale=100"})],
    ),
    "request_only_if_cached_miss": (
        "cc=max-age=60",
        [("GET", {"cache-control": "only-if-cached"})],
    ),
    "request_pragma_with_cache_control": (
        "cc=max-age=60",
        [GET, ("GET", {"pragma": "no-cache", "cache-control": "max-age=100"})],
    ),
    "request_no_store_hit": ("cc=max-age=60", [GET, ("GET", {"cache-control": "no-store"})]),
    "request_no_store_miss": (
        "cc=max-age=60",
        [("GET", {"cache-control": "no-store"}), GET, GET, GET],
    ),
    "authorization": ("cc=max-age=60", [GET, ("GET", {"authorization": "Basic eA=="})]),
    "if_none_match": ("cc=max-age=60&etag=%22e5%22", [GET, ("GET", {"if-none-match": '"e5"'})]),
    "if_modified_since": (
        "cc=max-age=60",
        [GET, ("GET", {"if-modified-since": "Fri, 04 Dec 2026 20:45:55 GMT"})],
    ),
    "post_then_get": ("cc=max-age=60", [GET, ("POST", {}), GET]),
    "range_hit": ("cc=max-age=60&body=0123456789abcdef", [GET, ("GET", {"range": "bytes=2-5"})]),
    "range_suffix": ("cc=max-age=60&body=0123456789abcdef", [GET, ("GET", {"range": "bytes=-4"})]),
    "range_open": ("cc=max-age=60&body=0123456789abcdef", [GET, ("GET", {"range": "bytes=10-"})]),
    "range_whole": (
        "cc=max-age=60&body=0123456789abcdef",
        [GET, ("GET", {"range": "bytes=0-100"})],
    ),
    "range_unsatisfiable": (
        "cc=max-age=60&body=0123456789abcdef",
        [GET, ("GET", {"range": "bytes=50-60"})],
    ),
    "range_many": (
        "cc=max-age=60&body=0123456789abcdef",
        [GET, ("GET", {"range": "bytes=0-1,4-5"})],
    ),
    "host_in_key": (
        "cc=max-age=60",
        [
            ("GET", {"host": "a.example"}),
            ("GET", {"host": "b.example"}),
            ("GET", {"host": "a.example"}),
        ],
    ),
    "scheme_in_key": (
        "cc=max-age=60",
        [GET, ("GET", {"x-forwarded-proto": "https"}), ("GET", {"x-forwarded-proto": "https"})],
    ),
    "upstream_age": ("cc=max-age=600&age=100", [GET, GET]),
    "upstream_age_over_date": ("cc=max-age=600&age=100&date=-10", [GET, GET]),
    "upstream_age_stale": ("cc=max-age=60&age=100", [GET, GET]),
    "upstream_age_not_a_number": ("cc=max-age=600&age=abc", [GET, GET]),
    "upstream_age_uncacheable": ("cc=no-store&age=7", [GET, GET]),
    "upstream_age_304": (STALE + "&age=3&etag=%22x%22&revalidate=304", [GET, GET]),
    "vary_disallowed": ("cc=max-age=60&vary=x-other", [GET, GET]),
    "vary_star": ("cc=max-age=60&vary=*", [GET, GET]),
}
for status in (203, 204, 301, 302, 404, 410, 500, 501):
    CASES[f"status_{status}"] = (f"cc=max-age=60&status={status}", [GET, GET])

# Two cache-control lines: read as one. Envoy 1.40 with a cache filter also sends them
# to the client joined in one line (the filter makes cache-control one of Envoy's inline
# headers); proxyd passes them as they came, so only what reached the upstream and
# whether the answer came from the cache are compared.
TWO_LINES: dict[str, tuple[str, list[Step]]] = {
    "two_cache_control_lines": ("cc=max-age=60&cc2=no-store", [GET, GET]),
    "two_cache_control_lines_stored": ("cc=public&cc2=max-age=60", [GET, GET]),
}

# Cases only on the listeners they name. A range request that misses: cache v3 sends it
# upstream as it is and stores nothing; cache_v2 fetches the whole response, stores it
# and answers the range (proxyd does what v3 does on both: docs/configuration.md).
V1_ONLY: dict[str, tuple[str, list[Step]]] = {
    "range_miss": ("cc=max-age=60&body=0123456789abcdef", [("GET", {"range": "bytes=2-5"}), GET]),
}
V2_ONLY: dict[str, tuple[str, list[Step]]] = {
    "vary_allowed": (
        "cc=max-age=60&vary=x-variant",
        [("GET", {"x-variant": "a"}), ("GET", {"x-variant": "a"}), ("GET", {"x-variant": "b"})],
    ),
}
OPTS: dict[str, tuple[str, list[Step]]] = {
    "ignored_request_no_cache": ("cc=max-age=60", [GET, ("GET", {"cache-control": "no-cache"})]),
    "ignored_request_no_store": ("cc=max-age=60", [("GET", {"cache-control": "no-store"}), GET]),
    "ignored_pragma": ("cc=max-age=60", [GET, ("GET", {"pragma": "no-cache"})]),
    # Envoy 1.40 stores a response longer than max_body_bytes all the same.
    "body_at_limit": ("cc=max-age=60&body=01234567890123456789", [GET, GET]),
    "body_over_limit": ("cc=max-age=60&body=012345678901234567890", [GET, GET]),
    "scheme_left_out": ("cc=max-age=60", [GET, ("GET", {"x-forwarded-proto": "https"})]),
    "host_left_out": (
        "cc=max-age=60",
        [("GET", {"host": "a.example"}), ("GET", {"host": "b.example"})],
    ),
}

# The file-system storages: the rules are the same, so a few cases show that they are
# applied. Envoy writes a file after the response went out, on its file thread: where a
# step stores a response (the indices here), the next request waits for the new file.
FS_STORES: dict[str, tuple[int, ...]] = {
    "fresh_hit": (0,),
    "head_miss_not_stored": (1,),
    "stale_etag_304": (0,),
    "stale_replaced_by_200": (0,),
    "no_store": (),
    "no_cache_with_max_age": (0,),
    "age_from_date": (0,),
    "range_hit": (0,),
    "host_in_key": (0, 1),
    "status_404": (0,),
    "status_500": (),
}
FS_CASES = {name: CASES[name] for name in FS_STORES}

# An edge listener (use_remote_address): the connection manager has replaced a client's
# x-forwarded-proto with the connection's scheme before the cache reads it.
EDGE: dict[str, tuple[str, list[Step]]] = {
    "client_scheme_ignored": (
        "cc=max-age=60",
        [GET, ("GET", {"x-forwarded-proto": "https"}), ("GET", {"x-forwarded-proto": "http"})],
    ),
}

COMPARED = ("cache-control", "etag", "content-range", "content-length", "x-upstream-count", "vary")


def request(port: int, method: str, path: str, headers: dict[str, str]) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, headers=headers)
        r = conn.getresponse()
        body = r.read()
        names = sorted({k.lower() for k, _ in r.getheaders()})
        got: dict[str, Any] = {
            "status": r.status,
            "reason": r.reason,
            "body": body.decode("latin-1"),
            "names": names,
            "values": sorted((k.lower(), v) for k, v in r.getheaders() if k.lower() in COMPARED),
        }
        age = r.getheader("age")
        if age is not None:
            # An age from the clock may be a second more on one side (the two proxies
            # run at different times): only its presence is compared (exact ones are
            # checked below). Large ones come from the upstream's age line.
            if not age.isdigit():
                got["age"] = age  # the upstream's own line, passed on
            else:
                got["age"] = int(age) if int(age) >= 50 else "clock"
                got["exact_age"] = int(age)
        return got
    finally:
        conn.close()


def _files(folder: Path) -> int:
    return sum(1 for p in folder.iterdir() if p.name.startswith("cache-"))


def play_listener(
    up: CacheUpstream,
    port: int,
    listener: str,
    cases: dict[str, tuple[str, list[Step]]],
    folder: Path | None = None,
) -> dict[str, Any]:
    """``folder``: the listener's cache directory, whose new files (FS_STORES) are
    waited for."""
    out: dict[str, Any] = {}
    for name, (query, steps) in cases.items():
        path = f"/{listener}/{name}?{query}"
        seen = []
        for i, (method, headers) in enumerate(steps):
            before = _files(folder) if folder is not None else 0
            got = request(port, method, path, headers)
            if folder is not None and i in FS_STORES[name]:
                wait_for(lambda n=before: _files(folder) > n, timeout=5)
            last = up.last(path)
            got["upstream"] = up.count(path)
            got["conditional"] = sorted(
                (k, v if k == "if-none-match" else "present")
                for k, v in last.items()
                if k.startswith("if-")
            )
            seen.append(got)
        out[f"{listener}:{name}"] = seen
    return out


def play_all(up: CacheUpstream, port_of: Any, cache_dir: Path) -> dict[str, Any]:
    up.clear()
    for name in LOGGED:
        (cache_dir / f"{name}.log").write_text("")
    out: dict[str, Any] = {}
    out.update(play_listener(up, port_of("v1"), "v1", {**CASES, **V1_ONLY, **TWO_LINES}))
    out.update(play_listener(up, port_of("v2"), "v2", {**CASES, **V2_ONLY}))
    out.update(play_listener(up, port_of("opts"), "opts", OPTS))
    out.update(play_listener(up, port_of("edge"), "edge", EDGE))
    out.update(play_listener(up, port_of("fs1"), "fs1", FS_CASES, cache_dir / "fs1"))
    out.update(play_listener(up, port_of("fs2"), "fs2", FS_CASES, cache_dir / "fs2"))
    for name in LOGGED:
        sent = sum(len(steps) for key, steps in out.items() if key.startswith(f"{name}:"))
        log = cache_dir / f"{name}.log"
        wait_for(lambda log=log, n=sent: len(log.read_text().splitlines()) >= n, timeout=10)
        out[f"log:{name}"] = log.read_text().splitlines()
    for name in ("v1", "v2"):  # after the logs were read: its lines come in any order
        out.update(play_herd(up, port_of(name), name))
    return out


HERD = {"herd": "cc=max-age=60&delay=0.3", "herd_uncacheable": "cc=no-store&delay=0.3"}
HERD_SIZE = 4


def _fetch_into(got: list[dict[str, Any]], port: int, path: str) -> None:
    got.append(request(port, "GET", path, {}))


def play_herd(up: CacheUpstream, port: int, listener: str) -> dict[str, Any]:
    """Concurrent misses of one key: cache_v2 sends one request upstream and answers
    the others from its response; cache v3 sends them all."""
    out: dict[str, Any] = {}
    for name, query in HERD.items():
        path = f"/{listener}/{name}?{query}"
        got: list[dict[str, Any]] = []
        threads = [
            threading.Thread(target=_fetch_into, args=(got, port, path)) for _ in range(HERD_SIZE)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        out[f"{listener}:{name}"] = [
            {
                "upstream": up.count(path),
                "bodies": sorted(g["body"] for g in got),
                "from_cache": sorted("age" in g for g in got),
            }
        ]
    return out


def cache_stats(stats: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in stats.items() if k.startswith("cache.event.cache_label.")}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    cache_dir = tmp_path_factory.mktemp("cache-files")
    for sub in ("fs1", "fs2"):
        (cache_dir / sub).mkdir()
    with CacheUpstream() as up:
        yield run_pair(
            config(up.port, cache_dir),
            tmp_path_factory.mktemp("cache"),
            lambda port_of: play_all(up, port_of, cache_dir),
            cache_stats,
        )


ALL_NAMES = (
    [f"v1:{n}" for n in {**CASES, **V1_ONLY}]
    + [f"v2:{n}" for n in {**CASES, **V2_ONLY}]
    + [f"opts:{n}" for n in OPTS]
    + [f"edge:{n}" for n in EDGE]
    + [f"fs2:{n}" for n in FS_CASES]
)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_proxyd_answers_like_envoy(results: Pair, name: str) -> None:
    assert _comparable(results.proxyd.replies[name]) == _comparable(results.envoy.replies[name])


def _comparable(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in step.items() if k != "exact_age"} for step in steps]


def _as_v1(steps: list[dict[str, Any]], listener: str) -> list[dict[str, Any]]:
    out = []
    for step in steps:
        step = dict(step)
        step["body"] = step["body"].replace(f"/{listener}/", "/v1/")
        step["values"] = [v for v in step["values"] if v[0] != "content-length"]
        out.append(step)
    return out


@pytest.mark.parametrize("name", list(FS_CASES))
def test_file_cache_v3_like_envoys_memory_cache(results: Pair, name: str) -> None:
    """Envoy 1.40's cache v3 on its file-system storage now and then misses a response
    it has just written (a request after the file appeared still went upstream), so
    proxyd's is held to Envoy's cache v3 on the simple storage, whose rules are the
    same (and which Envoy's file storage follows when it does not miss)."""
    proxyd = _as_v1(results.proxyd.replies[f"fs1:{name}"], "fs1")
    assert _comparable(proxyd) == _comparable(_as_v1(results.envoy.replies[f"v1:{name}"], "v1"))


@pytest.mark.parametrize("name", [f"{lis}:{n}" for lis in ("v1", "v2") for n in HERD])
def test_concurrent_misses_like_envoy(results: Pair, name: str) -> None:
    assert results.proxyd.replies[name] == results.envoy.replies[name]


@pytest.mark.parametrize("name", list(TWO_LINES))
def test_two_cache_control_lines(results: Pair, name: str) -> None:
    def seen(side: Any) -> list[tuple[int, bool]]:
        return [(s["upstream"], "age" in s) for s in side.replies[f"v1:{name}"]]

    assert seen(results.proxyd) == seen(results.envoy)


@pytest.mark.parametrize("name", LOGGED)
def test_access_log_like_envoy(results: Pair, name: str) -> None:
    """Status, response flags (RFCF on an answer from the cache; on cache_v2 also on a
    response it stores) and response code details, request by request."""
    envoy = [
        # Envoy 1.40's cache v3 logs its 206 from the cache as cut short by the client
        # (which had read the whole part and closed); proxyd finishes it.
        "206 RFCF cache.response_from_cache_filter"
        if line == "206 RFCF,DC downstream_remote_disconnect"
        else line
        for line in results.envoy.replies[f"log:{name}"]
    ]
    assert results.proxyd.replies[f"log:{name}"] == envoy


def test_stats_like_envoy(results: Pair) -> None:
    assert results.envoy.stats  # cache_v2 has them
    assert results.proxyd.stats == results.envoy.stats


def test_envoy_behaves_as_the_cases_say(results: Pair) -> None:
    """The facts the cases were written from, checked on Envoy itself."""
    e = results.envoy.replies
    hit = e["v1:fresh_hit"]
    assert [s["upstream"] for s in hit] == [1, 1, 1] and "age" in hit[1] and not hit[2]["body"]
    assert [s["upstream"] for s in e["v1:stale_etag_304"]] == [1, 2, 3]
    assert e["v1:stale_etag_304"][1]["body"] == e["v1:stale_etag_304"][0]["body"]
    assert "age" not in e["v1:stale_etag_304"][1]
    assert e["v1:stale_etag_304"][1]["conditional"] == [
        ("if-modified-since", "present"),
        ("if-none-match", '"e1"'),
    ]
    assert [s["upstream"] for s in e["v1:no_store"]] == [1, 2]
    assert [s["upstream"] for s in e["v1:private"]] == [1, 2]
    assert [s["upstream"] for s in e["v1:s_maxage"]] == [1, 1]
    assert e["v1:range_hit"][1]["status"] == 206
    assert [s["upstream"] for s in e["v2:vary_allowed"]] == [1, 2, 3]


def test_age_counts_from_date(results: Pair) -> None:
    for side in (results.envoy, results.proxyd):
        second = side.replies["v1:age_from_date"][1]
        assert second["upstream"] == 1 and 7 <= second["exact_age"] <= 9
