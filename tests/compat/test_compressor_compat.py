"""The compressor filter: real Envoy and real proxyd on the same YAML.

One bootstrap with four listeners in front of one upstream
(:mod:`tests.compat.compression_upstream`, whose response each request describes):

* ``main``: three compressor filters, gzip (top-level defaults), brotli
  (``response_direction_config``, min length 100) and zstd (``choose_first``); the
  routes ``/off/`` (gzip's ``CompressorPerRoute`` disabled), ``/strip/`` (gzip's overrides
  remove ``accept-encoding``), ``/direct/`` (a direct response) and the rest;
* ``opts``: gzip with content types, ``uncompressible_response_codes``,
  ``remove_accept_encoding_header`` and ``request_direction_config``, then brotli;
* ``legacy``: gzip with the deprecated top-level fields (``content_length`` 100,
  ``disable_on_etag_header``, ``runtime_enabled``);
* ``rtoff``: gzip whose ``enabled`` flag the runtime turns off;
* ``dec``: three decompressor filters: gzip (``max_inflate_ratio`` 200), brotli (no
  ``accept-encoding`` advertised) and zstd (response direction off by its flag).

Each case goes through Envoy and proxyd; the client (``http.client``, which does not
decompress) compares status, content-encoding, vary, etag, whether there is a
content-length (and its value when the proxy did not compress), transfer-encoding,
what the upstream received (accept-encoding, content-encoding, the request body after
decoding) and the response body after decoding. The compressed bytes themselves are
not compared: zlib, brotli and zstd settings are the same, but proxyd's pieces need not
be cut where Envoy's are. Finally the ``compressor.`` and ``decompressor.`` stats of both
must be equal (but ``total_compressed_bytes`` of the compressors, which depends on where
the body was cut).
"""

from __future__ import annotations

import hashlib
import http.client
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from tests.compat.compression_upstream import CompressionUpstream, body, decode, encode
from tests.compat.envoy_runner import envoy_available
from tests.compat.pair import Pair, PortOf, run_pair

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
COMPRESSOR = "type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor"
PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.compressor.v3.CompressorPerRoute"
GZIP = "type.googleapis.com/envoy.extensions.compression.gzip.compressor.v3.Gzip"
BROTLI = "type.googleapis.com/envoy.extensions.compression.brotli.compressor.v3.Brotli"
ZSTD = "type.googleapis.com/envoy.extensions.compression.zstd.compressor.v3.Zstd"
DECOMPRESSOR = "type.googleapis.com/envoy.extensions.filters.http.decompressor.v3.Decompressor"
D_GZIP = "type.googleapis.com/envoy.extensions.compression.gzip.decompressor.v3.Gzip"
D_BROTLI = "type.googleapis.com/envoy.extensions.compression.brotli.decompressor.v3.Brotli"
D_ZSTD = "type.googleapis.com/envoy.extensions.compression.zstd.decompressor.v3.Zstd"
LISTENERS = ("main", "opts", "legacy", "rtoff", "dec")
DIRECT_BODY = "direct response text " * 10


def _filter(name: str, lib_name: str, lib_type: str, lib: dict[str, Any], **cfg: Any) -> Any:
    return {
        "name": name,
        "typed_config": {
            "@type": COMPRESSOR,
            "compressor_library": {"name": lib_name, "typed_config": {"@type": lib_type, **lib}},
            **cfg,
        },
    }


def _decompressor(name: str, lib_type: str, lib: dict[str, Any], **cfg: Any) -> Any:
    return {
        "name": name,
        "typed_config": {
            "@type": DECOMPRESSOR,
            "decompressor_library": {"name": name, "typed_config": {"@type": lib_type, **lib}},
            **cfg,
        },
    }


def _listener(name: str, filters: list[Any], routes: list[Any], prefix: str) -> Any:
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": HCM,
                            "stat_prefix": prefix,
                            "route_config": {
                                "name": name,
                                "virtual_hosts": [
                                    {"name": "all", "domains": ["*"], "routes": routes}
                                ],
                            },
                            "http_filters": [
                                *filters,
                                {
                                    "name": "envoy.filters.http.router",
                                    "typed_config": {"@type": ROUTER},
                                },
                            ],
                        },
                    }
                ]
            }
        ],
    }


def config(port: int) -> str:
    up = {"route": {"cluster": "up"}}
    main_routes = [
        {
            "match": {"prefix": "/off/"},
            **up,
            "typed_per_filter_config": {"gz": {"@type": PER_ROUTE, "disabled": True}},
        },
        {
            "match": {"prefix": "/strip/"},
            **up,
            "typed_per_filter_config": {
                "gz": {
                    "@type": PER_ROUTE,
                    "overrides": {
                        "response_direction_config": {"remove_accept_encoding_header": True}
                    },
                }
            },
        },
        {
            "match": {"prefix": "/direct/"},
            "direct_response": {"status": 200, "body": {"inline_string": DIRECT_BODY}},
        },
        {"match": {"prefix": "/empty/"}, "direct_response": {"status": 503}},
        {"match": {"prefix": "/"}, **up},
    ]
    main = _listener(
        "main",
        [
            _filter("gz", "text_gzip", GZIP, {"compression_level": "BEST_SPEED"}),
            _filter(
                "brot",
                "text_br",
                BROTLI,
                {"quality": 4},
                response_direction_config={"common_config": {"min_content_length": 100}},
            ),
            _filter("zs", "text_zstd", ZSTD, {"compression_level": 5}, choose_first=True),
        ],
        main_routes,
        "main",
    )
    opts = _listener(
        "opts",
        [
            _filter(
                "gz",
                "opts_gzip",
                GZIP,
                {"memory_level": 9, "window_bits": 15, "compression_strategy": "FILTERED"},
                response_direction_config={
                    "common_config": {"content_type": ["application/json", "text/html"]},
                    "uncompressible_response_codes": [201],
                    "remove_accept_encoding_header": True,
                },
                request_direction_config={"common_config": {"min_content_length": 50}},
            ),
            _filter("brot", "opts_br", BROTLI, {}),
        ],
        [{"match": {"prefix": "/"}, **up}],
        "opts",
    )
    legacy = _listener(
        "legacy",
        [
            _filter(
                "gz",
                "legacy_gzip",
                GZIP,
                {},
                content_length=100,
                disable_on_etag_header=True,
                runtime_enabled={"default_value": True, "runtime_key": "comp.legacy"},
            )
        ],
        [
            {
                # A request with x-no-route matches no route: Envoy's 404 local reply.
                "match": {
                    "prefix": "/",
                    "headers": [
                        {"name": "x-no-route", "present_match": True, "invert_match": True}
                    ],
                },
                **up,
            }
        ],
        "legacy",
    )
    rtoff = _listener(
        "rtoff",
        [
            _filter(
                "gz",
                "off_gzip",
                GZIP,
                {},
                response_direction_config={
                    "common_config": {"enabled": {"default_value": True, "runtime_key": "comp.off"}}
                },
            )
        ],
        [{"match": {"prefix": "/"}, **up}],
        "rtoff",
    )
    dec = _listener(
        "dec",
        [
            _decompressor("dgz", D_GZIP, {"window_bits": 15, "max_inflate_ratio": 200}),
            _decompressor(
                "dbr",
                D_BROTLI,
                {},
                request_direction_config={"advertise_accept_encoding": False},
            ),
            _decompressor(
                "dzs",
                D_ZSTD,
                {"chunk_size": 8192},
                response_direction_config={
                    "common_config": {"enabled": {"default_value": False, "runtime_key": "x.y"}}
                },
            ),
        ],
        [{"match": {"prefix": "/"}, **up}],
        "dec",
    )
    doc = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "layered_runtime": {
            "layers": [{"name": "static", "static_layer": {"comp": {"off": False}}}]
        },
        "static_resources": {
            "listeners": [main, opts, legacy, rtoff, dec],
            "clusters": [
                {
                    "name": "up",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": "up",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": "127.0.0.1",
                                                    "port_value": port,
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                }
            ],
        },
    }
    return yaml.safe_dump(doc, sort_keys=False)


@dataclass(frozen=True)
class Case:
    listener: str = "main"
    path: str = "/x"
    headers: tuple[tuple[str, str], ...] = ()
    method: str = "GET"
    request_body: bytes | None = None


def _case(ae: str | None, listener: str = "main", path: str = "/x", **resp: str) -> Case:
    h = [("accept-encoding", ae)] if ae is not None else []
    h += [(f"x-{k.replace('_', '-')}", v) for k, v in resp.items()]
    return Case(listener, path, tuple(h))


CASES: dict[str, Case] = {
    # Accept-Encoding negotiation among gzip, br, zstd (zstd has choose_first).
    "ae_gzip": _case("gzip"),
    "ae_br": _case("br"),
    "ae_zstd": _case("zstd"),
    "ae_gzip_br": _case("gzip, br"),
    "ae_br_preferred": _case("br;q=0.9, gzip;q=0.8"),
    "ae_gzip_zstd_tie_choose_first": _case("gzip, zstd"),
    "ae_zstd_lower_q": _case("gzip;q=0.9, zstd;q=0.5"),
    "ae_wildcard": _case("*"),
    "ae_wildcard_minus_gzip": _case("*;q=0.5, gzip;q=0"),
    "ae_wildcard_then_identity": _case("*, identity"),
    "ae_gzip_wildcard_tie": _case("gzip;q=0.5, *;q=0.5"),
    "ae_identity": _case("identity"),
    "ae_identity_preferred": _case("identity;q=0.5, gzip;q=0.4"),
    "ae_identity_q0_only": _case("identity;q=0"),
    "ae_empty": _case(""),
    "ae_commas": _case(" , ,"),
    "ae_unknown": _case("deflate"),
    "ae_absent": _case(None),
    "ae_bad_q_skipped": _case("gzip;q=abc, br"),
    "ae_upper_case": _case("GZIP"),
    "ae_q0": _case("gzip;q=0"),
    "ae_spaces": _case("  gzip ; q=0.5 "),
    "ae_q_upper": _case("br;Q=0.2, gzip;q=0.1"),
    "ae_other_param": _case("gzip;level=1;q=0, br;q=0.5"),
    "ae_tiny_q": _case("gzip;q=1e-50, br;q=0.001"),
    "ae_negative_q": _case("gzip;q=-1, br;q=0.5"),
    "ae_repeated_header": Case(
        headers=(("accept-encoding", "identity;q=0.1"), ("accept-encoding", "br"))
    ),
    # The response decides whether it can be compressed.
    "size_29_too_small": _case("gzip", size="29"),
    "size_30": _case("gzip", size="30"),
    "size_0": _case("gzip", size="0"),
    "br_size_99_too_small": _case("br", size="99"),
    "br_size_100": _case("br", size="100"),
    "chunked_big": _case("gzip", size="50000", chunks="7"),
    "chunked_small_no_length": _case("gzip", size="10", chunks="1"),
    "chunked_br": _case("br", size="20000", chunks="3"),
    "chunked_zstd": _case("zstd", size="20000", chunks="4"),
    "large_length": _case("gzip", size="300000"),
    "type_octet_stream": _case("gzip", type="application/octet-stream"),
    "type_with_params": _case("gzip", type="text/html; charset=utf-8"),
    "type_upper_case": _case("gzip", type="TEXT/HTML"),
    "type_absent": _case("gzip", type="-"),
    "type_json": _case("gzip", type="application/json"),
    "type_grpc_web": _case("gzip", type="application/grpc-web"),
    "no_transform": _case("gzip", h_cache_control="no-transform"),
    "no_transform_in_list": _case("gzip", h_cache_control="public, No-Transform"),
    "cache_control_other": _case("gzip", h_cache_control="max-age=60"),
    "etag_strong_removed": _case("gzip", h_etag='"abc123"'),
    "etag_weak_kept": _case("gzip", h_etag='W/"abc123"'),
    "etag_short": _case("gzip", h_etag='""'),
    "etag_one_char": _case("gzip", h_etag="x"),
    "etag_lower_weak": _case("gzip", h_etag='w/"abc"'),
    "etag_weak_prefix_only": _case("gzip", h_etag="W/"),
    "already_gzip": _case("gzip", encode="gzip"),
    "already_br_asked_gzip": _case("gzip", encode="br"),
    "content_encoding_identity": _case("gzip", h_content_encoding="identity"),
    "vary_existing": _case("gzip", h_vary="Origin"),
    "vary_has_token": _case("gzip", h_vary="Origin, Accept-Encoding"),
    "vary_lower_token": _case("gzip", h_vary="accept-encoding"),
    "vary_not_accepted": _case("deflate", h_vary="Origin"),
    "status_404": _case("gzip", status="404"),
    "status_500_small": _case("gzip", status="500", size="10"),
    "status_204": _case("gzip", status="204"),
    "status_304": _case("gzip", status="304"),
    "head": Case(method="HEAD", headers=(("accept-encoding", "gzip"),)),
    "no_accept_small": _case(None, size="5"),
    # Per-route configs.
    "route_off_gzip": _case("gzip", path="/off/x"),
    "route_off_br": _case("br", path="/off/x"),
    "route_off_gzip_or_br": _case("gzip;q=0.5, br;q=0.4", path="/off/x"),
    "route_strip": _case("gzip", path="/strip/x"),
    "route_strip_absent": _case(None, path="/strip/x"),
    "direct_response": _case("gzip", path="/direct/x"),
    "direct_response_plain": _case(None, path="/direct/x"),
    "direct_response_no_body": _case("gzip", path="/empty/x"),
    # opts: content types, uncompressible codes, request direction, brotli second.
    "opts_json": _case("gzip", "opts", type="application/json"),
    "opts_text_plain_br": _case("gzip, br", "opts"),
    "opts_html_br_first": _case("br, gzip", "opts", type="text/html"),
    "opts_status_201": _case("gzip", "opts", status="201", type="application/json"),
    "opts_status_202": _case("gzip", "opts", status="202", type="application/json"),
    "opts_ae_removed": _case("gzip", "opts", type="application/json", size="5"),
    "opts_post_compressed": Case(
        "opts",
        "/p",
        (
            ("content-type", "text/plain"),
            ("accept-encoding", "gzip"),
            ("x-type", "application/json"),
        ),
        "POST",
        body(5000),
    ),
    "opts_post_small": Case("opts", "/p", (("content-type", "text/plain"),), "POST", body(20)),
    "opts_post_type_any": Case(
        "opts", "/p", (("content-type", "application/octet-stream"),), "POST", body(3000)
    ),
    "opts_post_encoded": Case(
        "opts",
        "/p",
        (("content-type", "text/plain"), ("content-encoding", "br")),
        "POST",
        b"not really brotli",
    ),
    "opts_post_chunked": Case(
        "opts",
        "/p",
        (("content-type", "text/plain"), ("transfer-encoding", "chunked")),
        "POST",
        body(70000),
    ),
    "opts_get_no_body": Case("opts", "/p", (("content-type", "text/plain"),)),
    # legacy top-level fields.
    "legacy_small": _case("gzip", "legacy", size="99"),
    "legacy_big": _case("gzip", "legacy", size="100"),
    "legacy_etag": _case("gzip", "legacy", h_etag='W/"x"'),
    "legacy_chunked": _case("gzip", "legacy", chunks="2"),
    "legacy_no_route_404": _case("gzip", "legacy", no_route="1"),
    # runtime flag off.
    "rtoff_gzip": _case("gzip", "rtoff"),
    "rtoff_absent": _case(None, "rtoff"),
    # The decompressor filters (gzip, br without advertising, zstd for requests only).
    "dec_gzip": _case(None, "dec", encode="gzip"),
    "dec_gzip_chunked": _case(None, "dec", encode="gzip", chunks="3", size="40000"),
    "dec_br": _case("br;q=0.5, gzip;q=0.3", "dec", encode="br"),
    "dec_zstd_response_off": _case("zstd", "dec", encode="zstd"),
    "dec_upper_label": _case(None, "dec", encode="gzip", encode_label="GZIP"),
    "dec_two_codings": _case(None, "dec", encode="gzip", encode_label="gzip, identity"),
    "dec_second_coding": _case(None, "dec", encode="gzip", encode_label="identity, gzip"),
    "dec_no_transform": _case(None, "dec", encode="gzip", h_cache_control="no-transform"),
    "dec_plain": _case("gzip;q=0.2, deflate", "dec"),
    "dec_head": Case("dec", "/x", (("x-encode", "gzip"),), "HEAD"),
    "dec_request_gzip": Case(
        "dec",
        "/p",
        (("content-encoding", "gzip"),),
        "POST",
        encode(body(3000), "gzip"),
    ),
    "dec_request_br": Case(
        "dec", "/p", (("content-encoding", "br"),), "POST", encode(body(9000), "br")
    ),
    "dec_request_zstd": Case(
        "dec", "/p", (("content-encoding", "zstd"),), "POST", encode(body(9000), "zstd")
    ),
    "dec_request_chunked": Case(
        "dec",
        "/p",
        (("content-encoding", "gzip"), ("transfer-encoding", "chunked")),
        "POST",
        encode(body(90000), "gzip"),
    ),
    "dec_request_no_transform": Case(
        "dec",
        "/p",
        (("content-encoding", "gzip"), ("cache-control", "no-transform")),
        "POST",
        encode(body(3000), "gzip"),
    ),
    "dec_request_bad_data": Case(
        "dec", "/p", (("content-encoding", "gzip"),), "POST", b"this is not gzip at all"
    ),
}

COMPARED = ("content-encoding", "vary", "etag", "transfer-encoding", "content-type")
UPSTREAM_SAW = (
    "x-got-accept-encoding",
    "x-got-content-encoding",
    "x-got-content-length",
    "x-got-te",
    "x-got-body",
)


def _send(port: int, case: Case) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.putrequest(case.method, case.path, skip_accept_encoding=True)
        conn.putheader("host", "front.example")
        chunked = False
        for name, value in case.headers:
            conn.putheader(name, value)
            chunked = chunked or (name == "transfer-encoding")
        data = case.request_body
        if data is not None and not chunked:
            conn.putheader("content-length", str(len(data)))
        conn.endheaders()
        if data is not None:
            if chunked:
                for i in range(0, len(data), 20000):
                    piece = data[i : i + 20000]
                    conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
                conn.send(b"0\r\n\r\n")
            else:
                conn.send(data)
        r = conn.getresponse()
        raw = r.read()
        headers = {k.lower(): v for k, v in r.getheaders()}
        got: dict[str, Any] = {"status": r.status}
        got.update({k: headers.get(k) for k in COMPARED})
        got.update({k: headers.get(k) for k in UPSTREAM_SAW})
        # A body the proxy compressed has a length of its own; else compare the value.
        from_upstream = any(k in ("x-encode", "x-h-content-encoding") for k, _ in case.headers)
        coding = None if from_upstream else headers.get("content-encoding")
        length = headers.get("content-length")
        if coding is not None and length is not None:
            length = "present"
        got["content-length"] = length
        got["body"] = hashlib.sha256(decode(raw, coding)).hexdigest()
        return got
    finally:
        conn.close()


def _pick(stats: dict[str, int]) -> dict[str, int]:
    """The compression filters' stats, less the compressors' ``total_compressed_bytes``:
    compressed sizes depend on where the body was cut into pieces (each is flushed)."""
    return {
        name: value
        for name, value in stats.items()
        if ".decompressor." in name
        or (".compressor." in name and not name.endswith("total_compressed_bytes"))
    }


def _play(port_of: PortOf) -> dict[str, dict[str, Any]]:
    return {name: _send(port_of(c.listener), c) for name, c in CASES.items()}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    with CompressionUpstream() as up:
        yield run_pair(config(up.port), tmp_path_factory.mktemp("compressor"), _play, _pick)


@pytest.mark.parametrize("name", list(CASES))
def test_compresses_like_envoy(results: Pair, name: str) -> None:
    assert results.proxyd.replies[name] == results.envoy.replies[name]


def test_compressor_stats_like_envoy(results: Pair) -> None:
    assert results.proxyd.stats == results.envoy.stats


def test_envoy_behaves_as_the_cases_say(results: Pair) -> None:
    """The facts the cases were written from, checked on Envoy itself."""
    e = results.envoy.replies
    plain = hashlib.sha256(body(1000)).hexdigest()
    assert e["ae_gzip"]["content-encoding"] == "gzip" and e["ae_gzip"]["body"] == plain
    assert e["ae_gzip"]["vary"] == "Accept-Encoding" and e["ae_gzip"]["content-length"] is None
    assert e["ae_br"]["content-encoding"] == "br" and e["ae_br"]["body"] == plain
    assert e["ae_zstd"]["content-encoding"] == "zstd" and e["ae_zstd"]["body"] == plain
    assert e["ae_gzip_zstd_tie_choose_first"]["content-encoding"] == "zstd"
    assert e["ae_wildcard"]["content-encoding"] == "gzip"
    assert e["ae_identity"]["content-encoding"] is None
    assert e["ae_identity"]["vary"] == "Accept-Encoding"  # compressible: Vary all the same
    assert e["size_29_too_small"]["vary"] is None
    assert e["etag_strong_removed"]["etag"] is None
    assert e["etag_weak_kept"]["etag"] == 'W/"abc123"'
    assert e["no_transform"]["content-encoding"] is None
    assert e["route_off_gzip"]["content-encoding"] is None
    assert e["route_off_br"]["content-encoding"] == "br"
    assert e["route_strip"]["x-got-accept-encoding"] == "-"
    assert e["ae_gzip"]["x-got-accept-encoding"] == "gzip"
    assert e["opts_post_compressed"]["x-got-content-encoding"] == "gzip"
    assert e["opts_post_compressed"]["x-got-body"] == hashlib.sha256(body(5000)).hexdigest()
    assert e["rtoff_gzip"]["content-encoding"] is None
    assert e["chunked_big"]["body"] == hashlib.sha256(body(50000)).hexdigest()
    # A local reply without a body has no content-length when the filters see it: it is
    # compressible (so it varies) but has nothing to compress.
    assert e["legacy_no_route_404"]["status"] == 404
    assert e["legacy_no_route_404"]["vary"] == "Accept-Encoding"
    assert e["direct_response_no_body"]["vary"] == "Accept-Encoding"
    assert e["direct_response"]["content-encoding"] == "gzip"
    assert e["direct_response"]["transfer-encoding"] == "chunked"
