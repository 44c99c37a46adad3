"""Route retry policies: one bootstrap and its request cases, shared by the proxyd
integration test (tests/integration/test_retries.py) and the comparison with real Envoy
(tests/compat/test_retries_compat.py).

Listener ``ingress`` (use_remote_address false) routes by the ``x-case`` header to routes
with one retry policy each, in front of the scripted upstream
(:mod:`tests.integration.scripted_upstream`) as cluster ``svc``, or of a port nobody
listens on as cluster ``dead``. The virtual host ``vh.example`` has a virtual-host retry
policy and include_request_attempt_count; one of its routes has its own policy. The
listener ``edge`` (use_remote_address true) has the same routes, and so has ``small``
(per_connection_buffer_limit_bytes 1024), and ``internal`` (use_remote_address true and
internal_address_config: a loopback client is internal). A request's
x-envoy-* retry headers count on the internal listener only (see the cases).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tests.integration.test_proxy_errors import exchange

BACKOFF = "retry_back_off: {base_interval: 0.001s, max_interval: 0.002s}"


def _route(case: str, policy: str, cluster: str = "svc", extra: str = "") -> str:
    pol = f", retry_policy: {{{policy}, {BACKOFF}}}" if policy else ""
    return f"""
              - match: {{prefix: /, headers: [{{name: x-case, string_match: {{exact: {case}}}}}]}}
                route: {{cluster: {cluster}{pol}{extra}}}"""


ROUTES = "".join(
    [
        _route("5xx", "retry_on: 5xx, num_retries: 2"),
        _route("default-retries", "retry_on: 5xx"),
        _route("gateway", "retry_on: gateway-error, num_retries: 3"),
        _route("reset", "retry_on: reset, num_retries: 2"),
        _route("connect", "retry_on: connect-failure, num_retries: 2", cluster="dead"),
        _route("connect-5xx", "retry_on: 5xx, num_retries: 1", cluster="dead"),
        _route("4xx", "retry_on: retriable-4xx, num_retries: 2"),
        _route(
            "codes",
            "retry_on: retriable-status-codes, retriable_status_codes: [418, 429], num_retries: 2",
        ),
        _route("refused", "retry_on: refused-stream, num_retries: 2"),
        _route("none", ""),
        _route(
            "pertry", "retry_on: 5xx, num_retries: 1, per_try_timeout: 0.5s", extra=", timeout: 5s"
        ),
        _route(
            "pertry-last",
            "retry_on: reset, num_retries: 1, per_try_timeout: 0.3s",
            extra=", timeout: 5s",
        ),
        _route("overflow", "retry_on: 5xx, num_retries: 3", cluster="tight"),
        _route("mixed", "retry_on: 'connect-failure,retriable-4xx,gateway-error', num_retries: 4"),
        _route(
            "hdrs",
            "retry_on: retriable-headers, num_retries: 2, "
            "retriable_headers: [{name: x-retry, string_match: {exact: 'yes'}}, "
            "{name: x-also, present_match: true}]",
        ),
        _route(
            "reqhdrs",
            "retry_on: 5xx, num_retries: 2, "
            "retriable_request_headers: [{name: x-allow-retry, present_match: true}]",
        ),
        _route("ratelimited", "retry_on: envoy-ratelimited, num_retries: 2"),
        _route(
            "rlbackoff",
            "retry_on: 5xx, num_retries: 2, rate_limited_retry_back_off: {reset_headers: "
            "[{name: retry-after}, {name: x-reset, format: UNIX_TIMESTAMP}], max_interval: 2s}",
            # (no route timeout: x-envoy-expected-rq-timeout-ms would carry the jitter)
            extra=", timeout: 0s",
        ),
    ]
)


def retries_config(
    ingress: int, edge: int, small: int, internal: int, admin: int, upstream: int, dead: int
) -> str:
    def listener(
        name: str, port: int, use_remote: bool, extra: str = "", hcm_extra: str = ""
    ) -> str:
        return f"""
  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}{extra}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}_http
          use_remote_address: {str(use_remote).lower()}{hcm_extra}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
          route_config:
            name: local
            virtual_hosts:
            - name: vh
              domains: [vh.example]
              include_request_attempt_count: true
              retry_policy: {{retry_on: 5xx, num_retries: 1, {BACKOFF}}}
              routes:
              - match: {{prefix: /own}}
                route: {{cluster: svc, retry_policy: {{retry_on: retriable-4xx, num_retries: 2, {BACKOFF}}}}}
              - match: {{prefix: /}}
                route: {{cluster: svc}}
            - name: all
              domains: ["*"]
              routes:{ROUTES}"""

    listeners = (
        listener("ingress", ingress, False)
        + listener("edge", edge, True)
        + listener("small", small, False, "\n    per_connection_buffer_limit_bytes: 1024")
        + listener(
            "internal",
            internal,
            True,
            hcm_extra="\n          internal_address_config: "
            "{cidr_ranges: [{address_prefix: 127.0.0.0, prefix_len: 8}]}",
        )
    )
    return f"""
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  listeners:{listeners}
  clusters:
  - name: svc
    connect_timeout: 1s
    type: STATIC
    load_assignment:
      cluster_name: svc
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}
  - name: tight
    connect_timeout: 1s
    type: STATIC
    circuit_breakers: {{thresholds: [{{max_retries: 0}}]}}
    load_assignment:
      cluster_name: tight
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}
  - name: dead
    connect_timeout: 1s
    type: STATIC
    load_assignment:
      cluster_name: dead
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {dead}}}}}}}
"""


@dataclass(frozen=True)
class Case:
    name: str
    case: str  # the x-case header (route)
    script: str  # the upstream's x-script
    expect_status: int
    expect_attempts: int  # requests the upstream saw
    listener: str = "ingress"
    host: str = "x"
    path: str = "/"
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""


CASES = [
    Case("5xx-then-ok", "5xx", "503,500,200", 200, 3),
    Case("5xx-limit", "5xx", "503", 503, 3),
    Case("5xx-not-4xx", "5xx", "404", 404, 1),
    Case("default-one-retry", "default-retries", "500", 500, 2),
    Case("gateway-502-504-ok", "gateway", "502,504,200", 200, 3),
    Case("gateway-not-500", "gateway", "500", 500, 1),
    Case("reset-then-ok", "reset", "reset,200", 200, 2),
    Case("reset-limit", "reset", "reset", 503, 3),
    Case("reset-not-503", "reset", "503", 503, 1),
    Case("connect-failure", "connect", "200", 503, 0),
    Case("connect-by-5xx", "connect-5xx", "200", 503, 0),
    Case("4xx-409", "4xx", "409,409,200", 200, 3),
    Case("4xx-not-400", "4xx", "400", 400, 1),
    Case("codes-418-429", "codes", "418,429,200", 200, 3),
    Case("codes-not-500", "codes", "500", 500, 1),
    Case("refused-stream-http1", "refused", "503", 503, 1),
    Case("no-policy", "none", "503", 503, 1),
    Case("pertry-then-ok", "pertry", "hang,200", 200, 2),
    Case("pertry-last-504", "pertry-last", "hang", 504, 2),
    # The cluster's max_retries is 0: the retry overflows, the client gets the 503.
    Case("breaker-overflow", "overflow", "503,200", 503, 1),
    Case("mixed-409-503", "mixed", "409,503,500", 500, 3),
    # retriable-headers: any response whose headers match one of retriable_headers.
    Case("hdrs-then-ok", "hdrs", "503+x-retry=yes,200", 200, 2),
    Case("hdrs-present", "hdrs", "404+x-also=1,200", 200, 2),
    Case("hdrs-no-match", "hdrs", "503+x-retry=no", 503, 1),
    Case("hdrs-on-a-200", "hdrs", "200+x-retry=yes,200", 200, 2),
    Case("hdrs-limit", "hdrs", "500+x-retry=yes", 500, 3),
    # retriable_request_headers: a request matching none is never retried.
    Case("reqhdrs-allowed", "reqhdrs", "503,200", 200, 2, headers=(("x-allow-retry", "1"),)),
    Case("reqhdrs-not-allowed", "reqhdrs", "503,200", 503, 1),
    Case("ratelimited-then-ok", "ratelimited", "429+x-envoy-ratelimited=true,200", 200, 2),
    Case("ratelimited-no-header", "ratelimited", "429,200", 429, 1),
    # rate_limited_retry_back_off: a reset header within max_interval sets the wait (a
    # second here); one over it, or not a number, is passed over (the usual back-off).
    Case("ratelimit-reset-1s", "rlbackoff", "503+retry-after=1,200", 200, 2),
    Case("ratelimit-reset-too-long", "rlbackoff", "503+retry-after=9,503+x-reset=abc,200", 200, 3),
    # Envoy 1.40 acts on a request's x-envoy-retry-on, x-envoy-max-retries and
    # x-envoy-upstream-rq-per-try-timeout-ms only when the request is internal, which
    # takes an internal_address_config: on these listeners it ignores them (and so
    # does proxyd, which has no internal_address_config).
    Case(
        "header-retry-on-ignored", "none", "503,200", 503, 1, headers=(("x-envoy-retry-on", "5xx"),)
    ),
    Case(
        "header-max-retries-ignored", "5xx", "503", 503, 3, headers=(("x-envoy-max-retries", "5"),)
    ),
    Case(
        "header-per-try-ignored",
        "pertry",
        "200",
        200,
        1,
        headers=(("x-envoy-upstream-rq-per-try-timeout-ms", "100"),),
    ),
    Case(
        "edge-ignores-header",
        "5xx",
        "503",
        503,
        3,
        listener="edge",
        headers=(("x-envoy-max-retries", "0"),),
    ),
    # With internal_address_config a loopback client without x-forwarded-for is
    # internal: Envoy acts on its retry headers.
    Case(
        "internal-retry-on",
        "none",
        "503,200",
        200,
        2,
        listener="internal",
        headers=(("x-envoy-retry-on", "5xx"),),
    ),
    Case(
        "internal-max-retries",
        "5xx",
        "503",
        503,
        4,
        listener="internal",
        headers=(("x-envoy-max-retries", "3"),),
    ),
    Case(
        "internal-per-try",
        "5xx",
        "hang,200",
        200,
        2,
        listener="internal",
        headers=(("x-envoy-upstream-rq-per-try-timeout-ms", "300"),),
    ),
    Case("post-body-replayed", "5xx", "503,200", 200, 2, body=b"hello body " * 90),
    # Over the listener's buffer limit (1 KiB) the body is not kept: no retry.
    Case("body-over-limit", "5xx", "503,200", 503, 1, listener="small", body=b"x" * 4000),
    Case("vh-policy-attempt-count", "", "503,200", 200, 2, host="vh.example"),
    Case("route-over-vh-policy", "", "503,200", 503, 1, host="vh.example", path="/own"),
    Case("route-own-4xx", "", "409,200", 200, 2, host="vh.example", path="/own"),
]


@dataclass
class Outcome:
    status: int
    body: bytes
    attempt: str | None  # x-attempt of the answer
    attempts: int  # requests the upstream saw
    attempt_counts: list[str | None] = field(default_factory=list)
    expected_timeouts: list[str | None] = field(default_factory=list)
    bodies_ok: bool = True


def play(case: Case, ports: dict[str, int], upstream: Any, tag: str) -> Outcome:
    key = f"{tag}-{case.name}"
    lines = [
        f"{'POST' if case.body else 'GET'} {case.path} HTTP/1.1",
        f"Host: {case.host}",
        f"x-key: {key}",
        f"x-script: {case.script}",
    ]
    if case.case:
        lines.append(f"x-case: {case.case}")
    lines += [f"{k}: {v}" for k, v in case.headers]
    if case.body:
        lines.append(f"content-length: {len(case.body)}")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode() + case.body
    reply = exchange(ports[case.listener], request, check_closed=False)
    with upstream.lock:
        seen = list(upstream.seen.get(key, []))
    return Outcome(
        status=reply.status,
        body=reply.body if reply.status < 500 or reply.header("x-attempt") else b"",
        attempt=reply.header("x-attempt"),
        attempts=len(seen),
        attempt_counts=[h.get("x-envoy-attempt-count") for h, _ in seen],
        expected_timeouts=[h.get("x-envoy-expected-rq-timeout-ms") for h, _ in seen],
        bodies_ok=all(b == case.body for _, b in seen),
    )


RETRY_STATS = (
    "upstream_rq_retry",
    "upstream_rq_retry_success",
    "upstream_rq_retry_overflow",
    "upstream_rq_retry_limit_exceeded",
    "upstream_rq_per_try_timeout",
    "upstream_rq_total",
    "retry_or_shadow_abandoned",
    "upstream_rq_retry_backoff_exponential",
    "upstream_rq_retry_backoff_ratelimited",
)


def retry_stats(stats: dict[str, int]) -> dict[str, int]:
    return {
        f"{c}.{s}": stats.get(f"cluster.{c}.{s}", 0)
        for c in ("svc", "dead", "tight")
        for s in RETRY_STATS
    }
