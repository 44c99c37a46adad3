"""Access logs of real Envoy and of a real proxyd on one config, compared field by field.

One bootstrap (``CONFIG``) carries many loggers at once: file loggers with text and
JSON formats (``omit_empty_values`` too), each access-log filter kind, a stdout logger,
a listener-level connection log, and a second listener with
``flush_access_log_on_new_request``. Envoy and then proxyd (``--concurrency 2``) run on
that very text with the same upstreams, the same requests are sent to each (each on its
own connection, with a known x-request-id, so the runtime filter's sample is
deterministic), both are stopped (which flushes every log), and the lines are compared:

* each HCM log line holds ``name=value`` fields separated by ``|``; lines are matched
  by request id, and every field must be equal, except the timing fields (``TIMING``),
  which must only have the same shape;
* which requests a filtered log kept must be the same set;
* JSON lines must be equal objects once their timing keys are checked for type;
* listener lines (no request id) are compared as a sorted list of their fields without
  the timing and sent-bytes fields.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.compat.envoy_runner import EnvoyRunner, envoy_available
from tests.support import ProxydProcess, UpstreamServer, free_port

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

# The fields of the text logs: deterministic ones first, then TIMING (shape only).
FIELDS = (
    "REQ(:METHOD)", "REQ(X-ENVOY-ORIGINAL-PATH?:PATH)", "REQ(:PATH):6", "PATH(NQ)",
    "PATH(WQ:PATH)", "PROTOCOL", "RESPONSE_CODE", "RESPONSE_FLAGS", "RESPONSE_FLAGS_LONG",
    "BYTES_RECEIVED", "BYTES_SENT", "UPSTREAM_HOST", "UPSTREAM_CLUSTER", "ROUTE_NAME",
    "REQ(X-REQUEST-ID)", "STREAM_ID", "REQ(:AUTHORITY)", "REQ(HOST)", "REQ(USER-AGENT):5",
    "REQ(X-MISSING)", "REQ(X-EMPTY)", "REQ(X-MISSING?X-ALT)", "RESP(X-UPSTREAM-NAME)",
    "RESP(:STATUS)", "RESP(CONTENT-TYPE)", "RESP(SERVER)", "RESP(CONTENT-LENGTH)", "REQ(:SCHEME)", "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT",
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT", "DOWNSTREAM_LOCAL_ADDRESS",
    "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT", "DOWNSTREAM_LOCAL_PORT", "UPSTREAM_PROTOCOL",
    "UPSTREAM_CLUSTER_RAW", "UPSTREAM_HOST_NAME",
    "UPSTREAM_HOST_NAME_WITHOUT_PORT", "UPSTREAM_REMOTE_ADDRESS", "UPSTREAM_REMOTE_PORT",
    "LISTENER_NAME", "ACCESS_LOG_TYPE", "QUERY_PARAMS", "QUERY_PARAM(a)", "QUERY_PARAM(b):2",
    "GRPC_STATUS", "GRPC_STATUS(SNAKE_STRING)", "GRPC_STATUS(NUMBER)", "GRPC_STATUS_NUMBER",
    "TRACE_ID", "SPAN_ID", "REQUESTED_SERVER_NAME", "DOWNSTREAM_TLS_VERSION",
    "CONNECTION_TERMINATION_DETAILS", "VIRTUAL_CLUSTER_NAME", "FILTER_CHAIN_NAME",
    "CUSTOM_FLAGS", "HOSTNAME", "ENVIRONMENT(PROXYD_COMPAT_ENV)",
    "ENVIRONMENT(PROXYD_COMPAT_ENV):3", "ENVIRONMENT(PROXYD_COMPAT_NONE)",
    "START_TIME(%Y)", "START_TIME(%Y-%m-%d)", "RESPONSE_CODE_DETAILS",
    "UPSTREAM_TRANSPORT_FAILURE_REASON",
    "UPSTREAM_REMOTE_ADDRESS_ENDPOINT_ID",
    "DOWNSTREAM_LOCAL_ADDRESS_ENDPOINT_ID",
    "DOWNSTREAM_DIRECT_LOCAL_ADDRESS_ENDPOINT_ID",
    "DOWNSTREAM_TRANSPORT_FAILURE_REASON",
    "UPSTREAM_REQUEST_ATTEMPT_COUNT", "UPSTREAM_HOSTS_ATTEMPTED",
    "UPSTREAM_HOSTS_ATTEMPTED_WITHOUT_PORT", "UPSTREAM_HOST_NAMES_ATTEMPTED",
    "UPSTREAM_HOST_NAMES_ATTEMPTED_WITHOUT_PORT",
)  # fmt: skip
TIMING = (
    "START_TIME", "START_TIME(%s.%3f)", "START_TIME(%E3S)", "EMIT_TIME", "DURATION",
    "RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)", "DOWNSTREAM_REMOTE_PORT", "UNIQUE_ID",
    "START_TIME_LOCAL",
)  # fmt: skip
# Where proxyd differs from Envoy, and says so in docs/configuration.md: a refused
# upstream connection's transport failure reason (Envoy: "delayed_connect_error:_
# Connection_refused", also in its local reply body and so in BYTES_SENT).
KNOWN = {
    (path, field)
    for path in ("/dead", "/retrydead")
    for field in (
        "RESPONSE_CODE_DETAILS", "BYTES_SENT", "RESP(CONTENT-LENGTH)",
        "UPSTREAM_TRANSPORT_FAILURE_REASON",
    )
}  # fmt: skip

SHAPES = {
    "START_TIME": r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z",
    "START_TIME(%s.%3f)": r"\d{10}\.\d{3}",
    "START_TIME(%E3S)": r"\d\d\.\d{3}",
    "EMIT_TIME": r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z",
    "DURATION": r"\d+",
    "RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)": r"\d+|-",
    "DOWNSTREAM_REMOTE_PORT": r"\d+",
    "UNIQUE_ID": r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
    "START_TIME_LOCAL": r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}([+-]\d{4}|Z)?",
}

# Each field is "label=value", the label being the operator without its "%" signs.
LABELS = {f.replace("%", ""): f for f in FIELDS + TIMING}
TEXT = "|".join(f"{label}=%{f}%" for label, f in LABELS.items()) + "\n"
SHORT = "%REQ(X-REQUEST-ID)% %RESPONSE_CODE% %RESPONSE_FLAGS% %ACCESS_LOG_TYPE% %UPSTREAM_HOST%\n"
JSON_FORMAT = {
    "id": "%REQ(X-REQUEST-ID)%",
    "code": "%RESPONSE_CODE%",
    "bytes": {"in": "%BYTES_RECEIVED%", "out": "%BYTES_SENT%", "up": "%UPSTREAM_HOST%"},
    "missing": "%REQ(X-MISSING)%",
    "empty": "%REQ(X-EMPTY)%",
    "mixed": "code=%RESPONSE_CODE% flags=%RESPONSE_FLAGS% m=%REQ(X-MISSING)%",
    "list": ["%PROTOCOL%", "literal", 7],
    "literal": 5,
    "flag": True,
    "start": "%START_TIME(%Y)%",
    "duration": "%DURATION%",
    "grpc": "%GRPC_STATUS_NUMBER%",
    "grpc_num": "%GRPC_STATUS(NUMBER)%",
    "grpc_name": "%GRPC_STATUS%",
    "ports": {"local": "%DOWNSTREAM_LOCAL_PORT%", "upstream": "%UPSTREAM_REMOTE_PORT%"},
    "ua": "%REQ(USER-AGENT):3%",
    "flags_long": "%RESPONSE_FLAGS_LONG%",
    "details": "%RESPONSE_CODE_DETAILS%",
    "route": "%ROUTE_NAME%",
    "service_time": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
}
TIMING_KEYS = {"duration": int, "service_time": (str, type(None))}


def _file_log(path: str, fmt: dict, flt: dict | None = None) -> dict:
    entry: dict = {
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": path,
            "log_format": fmt,
        },
    }
    if flt is not None:
        entry["filter"] = flt
    return entry


def _cmp(op: str, value: int) -> dict:
    return {"comparison": {"op": op, "value": {"default_value": value, "runtime_key": "k.none"}}}


# name -> (filter, format); the filtered logs use SHORT.
FILTERS: dict[str, dict] = {
    "status_ge_400": {"status_code_filter": _cmp("GE", 400)},
    "status_eq_200": {"status_code_filter": _cmp("EQ", 200)},
    "status_le_299": {"status_code_filter": _cmp("LE", 299)},
    "duration_ge_0": {"duration_filter": _cmp("GE", 0)},
    "not_health_check": {"not_health_check_filter": {}},
    "traceable": {"traceable_filter": {}},
    "runtime_50": {
        "runtime_filter": {
            "runtime_key": "access_log.sample",
            "percent_sampled": {"numerator": 50, "denominator": "HUNDRED"},
        }
    },
    "runtime_30_of_10000": {
        "runtime_filter": {
            "runtime_key": "access_log.sample2",
            "percent_sampled": {"numerator": 3000, "denominator": "TEN_THOUSAND"},
        }
    },
    "and": {
        "and_filter": {
            "filters": [
                {"status_code_filter": _cmp("GE", 200)},
                {"header_filter": {"header": {"name": "x-log", "present_match": True}}},
            ]
        }
    },
    "or": {
        "or_filter": {
            "filters": [
                {"response_flag_filter": {"flags": ["NR"]}},
                {"header_filter": {"header": {"name": "x-log", "string_match": {"exact": "2"}}}},
            ]
        }
    },
    "any_flag": {"response_flag_filter": {}},
    "flags_uf_nr": {"response_flag_filter": {"flags": ["UF", "NR"]}},
    "header_method": {
        "header_filter": {"header": {"name": ":method", "string_match": {"exact": "POST"}}}
    },
    "grpc_unavailable": {"grpc_status_filter": {"statuses": ["UNAVAILABLE", "UNIMPLEMENTED"]}},
    "grpc_not_unknown": {"grpc_status_filter": {"statuses": ["UNKNOWN"], "exclude": True}},
    "log_type_end": {"log_type_filter": {"types": ["DownstreamEnd"]}},
}


FAST_BACK_OFF = {"retry_back_off": {"base_interval": "0.001s", "max_interval": "0.002s"}}


def make_config(
    ports: tuple[int, int, int], admin: int, upstream: int, dead: int, logdir: str
) -> str:
    port, port2, port3 = ports

    def path(name: str) -> str:
        return f"{logdir}/{name}.log"

    logs = [
        _file_log(path("text"), {"text_format_source": {"inline_string": TEXT}}),
        _file_log(path("json"), {"json_format": JSON_FORMAT}),
        _file_log(path("json_omit"), {"json_format": JSON_FORMAT, "omit_empty_values": True}),
        _file_log(
            path("text_omit"),
            {"text_format_source": {"inline_string": SHORT + ""}, "omit_empty_values": True},
        ),
        {
            "name": "envoy.access_loggers.stdout",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
                "log_format": {
                    "text_format_source": {"inline_string": "STDOUT " + SHORT},
                },
            },
        },
        {
            "name": "envoy.access_loggers.stderr",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog",
                "log_format": {
                    "json_format": {"stderr": "%REQ(X-REQUEST-ID)%", "code": "%RESPONSE_CODE%"}
                },
            },
        },
        *(
            _file_log(path(f"f_{name}"), {"text_format_source": {"inline_string": SHORT}}, flt)
            for name, flt in FILTERS.items()
        ),
    ]
    router = {
        "name": "envoy.filters.http.router",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
        },
    }
    routes = [
        {"name": "r_dead", "match": {"prefix": "/dead"}, "route": {"cluster": "dead"}},
        {"name": "r_up", "match": {"prefix": "/a"}, "route": {"cluster": "up"}},
        {"match": {"prefix": "/status"}, "route": {"cluster": "up"}},
        {"match": {"prefix": "/delay"}, "route": {"cluster": "up"}},
        {"match": {"prefix": "/dns"}, "route": {"cluster": "dns"}},
        # Retried requests: each attempt's host is logged.
        {
            "match": {"prefix": "/retry503"},
            "route": {
                "cluster": "up",
                "prefix_rewrite": "/status/503",
                "retry_policy": {"retry_on": "5xx", "num_retries": 2, **FAST_BACK_OFF},
            },
        },
        {
            "match": {"prefix": "/retrydead"},
            "route": {
                "cluster": "dead",
                "retry_policy": {"retry_on": "connect-failure", "num_retries": 1, **FAST_BACK_OFF},
            },
        },
        {
            "match": {"prefix": "/retrydns"},
            "route": {
                "cluster": "dns",
                "prefix_rewrite": "/status/503",
                "retry_policy": {"retry_on": "5xx", "num_retries": 1, **FAST_BACK_OFF},
            },
        },
        {
            "match": {"prefix": "/retryok"},
            "route": {"cluster": "up", "retry_policy": {"retry_on": "5xx", **FAST_BACK_OFF}},
        },
    ]

    def hcm(stat: str, access_log: list, extra: dict) -> dict:
        return {
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network."
                "http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": stat,
                "route_config": {
                    "name": "local",
                    "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}],
                },
                "http_filters": [router],
                "access_log": access_log,
                **extra,
            },
        }

    def address(p: int) -> dict:
        return {"socket_address": {"address": "127.0.0.1", "port_value": p}}

    conn_log = "%LISTENER_NAME%|%ACCESS_LOG_TYPE%|%RESPONSE_CODE%|%PROTOCOL%|%BYTES_RECEIVED%|%DOWNSTREAM_LOCAL_ADDRESS%|%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%|%UPSTREAM_HOST%|%REQ(:PATH)%|%ROUTE_NAME%|%BYTES_SENT%|%DURATION%|%START_TIME%\n"  # noqa: E501
    boot = {
        "admin": {"address": address(admin)},
        "static_resources": {
            "listeners": [
                {
                    "name": "main",
                    "address": address(port),
                    "access_log": [
                        _file_log(
                            path("listener"), {"text_format_source": {"inline_string": conn_log}}
                        )
                    ],
                    "filter_chains": [{"filters": [hcm("main", logs, {})]}],
                },
                {
                    "name": "second",
                    "address": address(port2),
                    "filter_chains": [
                        {
                            "filters": [
                                hcm(
                                    "second",
                                    [
                                        _file_log(
                                            path("start"),
                                            {"text_format_source": {"inline_string": SHORT}},
                                        )
                                    ],
                                    {
                                        "access_log_options": {
                                            "flush_access_log_on_new_request": True
                                        }
                                    },
                                )
                            ]
                        }
                    ],
                },
                {
                    "name": "periodic",
                    "address": address(port3),
                    "filter_chains": [
                        {
                            "filters": [
                                hcm(
                                    "periodic",
                                    [
                                        _file_log(
                                            path("periodic"),
                                            {"text_format_source": {"inline_string": SHORT}},
                                        )
                                    ],
                                    {"access_log_options": {"access_log_flush_interval": "0.1s"}},
                                )
                            ]
                        }
                    ],
                },
            ],
            "clusters": [
                {
                    "name": name,
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": name,
                        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address(p)}}]}],
                    },
                }
                for name, p in (("up", upstream), ("dead", dead))
            ]
            + [
                {
                    "name": "dns",
                    "type": "STRICT_DNS",
                    "dns_lookup_family": "V4_ONLY",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": "dns",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": "localhost",
                                                    "port_value": upstream,
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
    return yaml.safe_dump(boot, sort_keys=False)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    rid: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    port: int = 1  # 1: the main listener, 2: the second, 3: periodic


def _rid(n: int) -> str:
    # The first 8 hex digits are the runtime filter's sample: spread them.
    return f"{(n * 2654435761) % (1 << 32):08x}-0000-4000-8000-{n:012d}"


def requests() -> list[Request]:
    base: list[Request] = [
        Request(
            "GET", "/a/one?a=1&b=22", _rid(1), (("user-agent", "compat-agent"), ("x-empty", ""))
        ),
        Request("GET", "/a/two", _rid(2), (("x-log", "1"), ("x-alt", "alt"))),
        Request("POST", "/a/three", _rid(3), (("x-log", "2"),), b"hello"),
        Request("GET", "/zzz", _rid(4)),
        Request("GET", "/dead", _rid(5)),
        Request("POST", "/a/grpc", _rid(6), (("content-type", "application/grpc"),), b"\0\0\0\0\0"),
        Request("GET", "/status/503", _rid(7), (("content-type", "application/grpc+proto"),)),
        Request("GET", "/status/404", _rid(8), (("content-type", "application/grpc"),)),
        Request("HEAD", "/a/head", _rid(9)),
        Request("GET", "/a/orig", _rid(10), (("x-envoy-original-path", "/original?q=1"),)),
        Request("GET", "/a/xff", _rid(11), (("x-forwarded-for", "10.1.2.3"),)),
        Request("GET", "/a/second", _rid(12), port=2),
        Request("GET", "/zzz/second", _rid(13), port=2),
        Request("DELETE", "/status/500", _rid(14), (("x-log", "3"),)),
        Request("GET", "/dns/name", _rid(17)),  # UPSTREAM_HOST_NAME: the DNS name
        Request("GET", "/retry503", _rid(18)),  # three attempts, each logged
        Request("GET", "/retrydead", _rid(19)),
        Request("GET", "/retryok/a", _rid(20)),
        Request("GET", "/retrydns", _rid(21)),  # UPSTREAM_HOST_NAMES_ATTEMPTED: DNS names
        # In flight for 600 ms: the 100 ms flush interval logs it while it lasts.
        Request("GET", "/delay/600/slow", _rid(15), port=3),
        Request("GET", "/a/fast", _rid(16), port=3),
    ]
    more = [Request("GET", f"/a/many/{n}?a={n}", _rid(100 + n)) for n in range(40)]
    return base + more


def send(req: Request, ports: tuple[int, int, int]) -> int:
    port = ports[req.port - 1]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest(req.method, req.path, skip_accept_encoding=True)
        conn.putheader("x-request-id", req.rid)
        for name, value in req.headers:
            conn.putheader(name, value)
        if req.body or req.method == "POST":
            conn.putheader("content-length", str(len(req.body)))
        conn.endheaders(req.body or None)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


@dataclass
class Run:
    logs: dict[str, list[str]]
    stdout: list[str]
    statuses: list[int]
    stderr: list[str]


def _read_logs(logdir: Path) -> dict[str, list[str]]:
    return {p.stem: p.read_text().splitlines() for p in sorted(logdir.glob("*.log"))}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Run]]:
    up = UpstreamServer("up").start()
    env_var = {"PROXYD_COMPAT_ENV": "environment-value"}
    import os

    os.environ.update(env_var)
    try:
        ports = (free_port(), free_port(), free_port())
        admin, dead = free_port(), free_port()
        out: dict[str, Run] = {}
        reqs = requests()
        for who in ("envoy", "proxyd"):
            logdir = tmp_path_factory.mktemp(f"logs-{who}")
            text = make_config(ports, admin, up.port, dead, str(logdir))
            if who == "envoy":
                with EnvoyRunner(text) as envoy:
                    statuses = [send(r, ports) for r in reqs]
                    envoy._stop()  # flushes the logs
                    stdout = envoy.log_text().splitlines()
            else:
                with ProxydProcess(tmp_path_factory.mktemp("proxyd"), text, admin, 2) as p:
                    statuses = [send(r, ports) for r in reqs]
                    p.stop()
                    stdout = p.log_path.read_text(errors="replace").splitlines()
            out[who] = Run(
                _read_logs(logdir),
                [s for s in stdout if s.startswith("STDOUT ")],
                statuses,
                [s for s in stdout if s.startswith('{"code":') and '"stderr":' in s],
            )
        yield out
    finally:
        up.stop()
        for k in env_var:
            os.environ.pop(k, None)


def _parse_text(line: str) -> dict[str, str]:
    fields = {}
    for part in line.split("|"):
        label, _, value = part.partition("=")
        fields[LABELS.get(label, label)] = value
    return fields


def _by_id(lines: list[str]) -> dict[str, dict[str, str]]:
    out = {}
    for line in lines:
        f = _parse_text(line)
        out[f["REQ(X-REQUEST-ID)"]] = f
    return out


def test_same_statuses(runs: dict[str, Run]) -> None:
    assert runs["proxyd"].statuses == runs["envoy"].statuses


def test_text_log_fields_agree(runs: dict[str, Run]) -> None:
    envoy = _by_id(runs["envoy"].logs["text"])
    ours = _by_id(runs["proxyd"].logs["text"])
    assert set(ours) == set(envoy)
    paths = {r.rid: r.path for r in requests()}
    diffs = []
    for rid, e in envoy.items():
        o = ours[rid]
        for name in FIELDS:
            if (paths[rid], name) in KNOWN:
                continue
            if o.get(name) != e.get(name):
                diffs.append((paths[rid], name, e.get(name), o.get(name)))
        for name in TIMING:
            for side, value in (("envoy", e.get(name)), ("proxyd", o.get(name))):
                assert value is not None and re.fullmatch(SHAPES[name], value), (
                    side, paths[rid], name, value,
                )  # fmt: skip
    assert not diffs, "\n".join(f"{p} {n}: envoy={e!r} proxyd={o!r}" for p, n, e, o in diffs)


def test_known_divergences_are_what_the_docs_say(runs: dict[str, Run]) -> None:
    dead = _by_id(runs["proxyd"].logs["text"])[_rid(5)]
    assert dead["RESPONSE_CODE_DETAILS"] == (
        "upstream_reset_before_response_started{remote_connection_failure}"
    )
    assert dead["UPSTREAM_TRANSPORT_FAILURE_REASON"] == "-"


@pytest.mark.parametrize("name", ["json", "json_omit"])
def test_json_logs_agree(runs: dict[str, Run], name: str) -> None:
    def load(lines: list[str]) -> dict[str, dict]:
        out = {}
        for line in lines:
            obj = json.loads(line)
            for key, kind in TIMING_KEYS.items():
                value = obj.pop(key, None)  # absent with omit_empty_values
                assert value is None or isinstance(value, kind), (key, value)
            out[obj.get("id")] = obj
        return out

    envoy = load(runs["envoy"].logs[name])
    ours = load(runs["proxyd"].logs[name])
    assert set(ours) == set(envoy)
    for rid, e in envoy.items():
        if rid in (_rid(5), _rid(19)):  # a refused connection's reply body (see KNOWN)
            e["bytes"].pop("out")
            ours[rid]["bytes"].pop("out")
            e.pop("details", None)
            ours[rid].pop("details", None)
        assert ours[rid] == e, rid
    # The JSON text itself: keys sorted, compact, one object per line.
    one = runs["proxyd"].logs[name][0]
    assert one == json.dumps(json.loads(one), sort_keys=True, separators=(",", ":"))


def _ids(lines: list[str]) -> list[str]:
    return sorted(line.split(" ")[0] for line in lines)


@pytest.mark.parametrize("name", sorted(FILTERS))
def test_filtered_logs_keep_the_same_requests(runs: dict[str, Run], name: str) -> None:
    envoy = runs["envoy"].logs.get(f"f_{name}", [])
    ours = runs["proxyd"].logs.get(f"f_{name}", [])
    assert sorted(ours) == sorted(envoy)
    assert _ids(ours) == _ids(envoy)


def test_the_filters_were_exercised(runs: dict[str, Run]) -> None:
    """Each filter kept some lines and dropped others (so the comparison means
    something), except traceable (nothing is traced) and the always-true ones."""
    logs = runs["envoy"].logs
    total = len([r for r in requests() if r.port == 1])
    for name in FILTERS:
        n = len(logs.get(f"f_{name}", []))
        if name == "traceable":
            assert n == 0
        elif name in ("not_health_check", "duration_ge_0", "log_type_end"):
            assert n == total
        else:
            assert 0 < n < total, name


def test_omit_empty_text_and_stdout(runs: dict[str, Run]) -> None:
    assert sorted(runs["proxyd"].logs["text_omit"]) == sorted(runs["envoy"].logs["text_omit"])
    assert sorted(runs["proxyd"].stdout) == sorted(runs["envoy"].stdout)
    assert len(runs["proxyd"].stdout) == len([r for r in requests() if r.port == 1])
    # stderr (JSON lines, beside proxyd's own events and Envoy's own log there).
    assert sorted(runs["proxyd"].stderr) == sorted(runs["envoy"].stderr)
    assert len(runs["proxyd"].stderr) == len(runs["proxyd"].stdout)


def test_listener_connection_logs_agree(runs: dict[str, Run]) -> None:
    def rows(lines: list[str]) -> list[tuple[str, ...]]:
        out = []
        for line in lines:
            parts = line.split("|")
            assert re.fullmatch(r"\d+", parts[10]) and re.fullmatch(r"\d+", parts[11])
            out.append(tuple(parts[:10]))
        return sorted(out)

    envoy = rows(runs["envoy"].logs["listener"])
    ours = rows(runs["proxyd"].logs["listener"])
    # Envoy saw the EnvoyRunner's readiness probes on the admin port only, so the
    # listener's connections are the requests' connections on both.
    assert ours == envoy
    assert len(ours) == len([r for r in requests() if r.port == 1])


def test_log_on_new_request_agrees(runs: dict[str, Run]) -> None:
    assert sorted(runs["proxyd"].logs["start"]) == sorted(runs["envoy"].logs["start"])
    types = sorted(line.split(" ")[3] for line in runs["proxyd"].logs["start"])
    assert types == ["DownstreamEnd", "DownstreamEnd", "DownstreamStart", "DownstreamStart"]


def test_listener_sockets_are_free_again() -> None:
    # The fixture's listeners are gone: nothing is left bound (a sanity check that the
    # processes stopped, so the next module can bind its own ports).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))


def test_periodic_logs_agree_in_shape(runs: dict[str, Run]) -> None:
    for who in ("envoy", "proxyd"):
        lines = [line.split(" ") for line in runs[who].logs["periodic"]]
        slow = [f for f in lines if f[0] == _rid(15)]
        periodic = [f for f in slow if f[3] == "DownstreamPeriodic"]
        end = [f for f in slow if f[3] == "DownstreamEnd"]
        assert len(periodic) >= 1, (who, lines)
        # 0 until the response head went out, then its status.
        assert all(f[1] in ("0", "200") and f[4] != "-" for f in periodic), (who, periodic)
        assert periodic[0][1] == "0", (who, periodic)
        assert len(end) == 1 and end[0][1] == "200", (who, slow)
        fast = [f for f in lines if f[0] == _rid(16)]
        assert [f[3] for f in fast] == ["DownstreamEnd"], (who, fast)
    ends = {
        who: sorted(x for x in runs[who].logs["periodic"] if "DownstreamEnd" in x)
        for who in ("envoy", "proxyd")
    }
    assert ends["proxyd"] == ends["envoy"]


# -- the format corpus against Envoy's own validation --------------------------------------

FORMATS = Path(__file__).resolve().parents[1] / "unit" / "access_log_formats"


def _validate(tmp_path: Path, log_format: dict) -> tuple[int, str]:
    import subprocess

    from tests.compat.envoy_runner import ENVOY_BINARY

    boot = yaml.safe_load(make_config((10001, 10002, 10003), 10004, 10005, 10006, str(tmp_path)))
    boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
        "access_log"
    ] = [_file_log(str(tmp_path / "x.log"), log_format)]
    cfg = tmp_path / "validate.yaml"
    cfg.write_text(yaml.safe_dump(boot))
    res = subprocess.run(
        [ENVOY_BINARY, "--mode", "validate", "-c", str(cfg), "--log-level", "critical"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return res.returncode, res.stdout + res.stderr


def test_envoy_accepts_every_operator_of_the_list(tmp_path: Path) -> None:
    ops = [
        line
        for line in (FORMATS / "envoy-1.40-operators.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    rc, out = _validate(tmp_path, {"text_format_source": {"inline_string": " ".join(ops)}})
    assert rc == 0, out


BAD = sorted(p for p in FORMATS.iterdir() if p.suffix in (".format", ".json"))


@pytest.mark.parametrize("case", BAD, ids=[p.stem for p in BAD])
def test_envoy_refuses_the_bad_formats_proxyd_refuses_for_envoys_reasons(
    tmp_path: Path, case: Path
) -> None:
    expect = case.with_suffix(".expect").read_text().strip()
    if case.suffix == ".json":
        log_format: dict = {"json_format": json.loads(case.read_text())}
    else:
        log_format = {"text_format_source": {"inline_string": case.read_text()}}
    rc, out = _validate(tmp_path, log_format)
    if "not supported by proxyd" in expect:
        assert rc == 0, out  # a feature proxyd lacks: Envoy takes it
    else:
        assert rc != 0, out
        assert expect.split(":")[0].split("'")[0].strip() in out, out


def test_upstream_host_name_of_a_dns_endpoint(runs: dict[str, Run]) -> None:
    for who in ("envoy", "proxyd"):
        line = _by_id(runs[who].logs["text"])[_rid(17)]
        assert line["RESPONSE_CODE"] == "200", who
        assert (line["UPSTREAM_HOST_NAME"], line["UPSTREAM_HOST_NAME_WITHOUT_PORT"]) == (
            "localhost",
            "localhost",
        ), who


def test_upstream_host_names_attempted_of_a_dns_endpoint(runs: dict[str, Run]) -> None:
    for who in ("envoy", "proxyd"):
        line = _by_id(runs[who].logs["text"])[_rid(21)]
        assert line["UPSTREAM_REQUEST_ATTEMPT_COUNT"] == "2", who
        names = (
            line["UPSTREAM_HOST_NAMES_ATTEMPTED"],
            line["UPSTREAM_HOST_NAMES_ATTEMPTED_WITHOUT_PORT"],
        )
        assert names == ("localhost", "localhost"), (who, names)
        assert line["UPSTREAM_HOSTS_ATTEMPTED"].startswith("127.0.0.1:"), who
