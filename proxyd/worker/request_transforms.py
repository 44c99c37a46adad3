"""The connection manager's request and response transforms, compiled per listener.

A listener whose connection manager sets none of these fields has no
:class:`Transforms` (``ListenerPlan.transforms`` is None) and its requests never
enter this module. Otherwise :meth:`Transforms.on_request` runs on each request head
before routing, in Envoy's order (``ConnectionManagerImpl::ActiveStream::decodeHeaders``):

1. request header names with ``_`` (``common_http_protocol_options.
   headers_with_underscores_action``): rejected with 400 (the connection closes) or
   dropped; counted in ``requests_rejected_with_underscores_in_headers`` /
   ``dropped_headers_with_underscores``;
2. the path (:mod:`proxyd.protocol.path_normalize`): escaped slashes, ``normalize_path``,
   ``merge_slashes``; a path that cannot be normalised (or, with
   ``REJECT_REQUEST``, has escaped slashes) gets 400, ``UNESCAPE_AND_REDIRECT`` a 307
   to the unescaped path (400 for a gRPC request), counted in
   ``downstream_rq_failed_path_normalization`` and
   ``downstream_rq_redirected_with_normalized_path``;
3. the Host port (``strip_matching_host_port``, ``strip_any_host_port``), before
   routing sees the Host;
4. ``add_user_agent``: ``x-envoy-downstream-service-cluster`` and ``-node`` from the
   bootstrap's node, ``user-agent`` (the node's cluster) when the request has none or
   an empty one;
5. ``via`` appended to the request's ``via`` header.

``skip_xff_append``, ``preserve_external_request_id`` and
``scheme_header_transformation.scheme_to_overwrite`` (the ``x-forwarded-proto`` every
request gets) are knobs of the request header policy
(:class:`~proxyd.protocol.http1_headers.RequestHeaderPolicy`).

Response edits (``via``, ``server_header_transformation`` other than ``OVERWRITE``,
``always_set_request_id_in_response``) are made by :class:`ResponseEdits`, a sink
around the connection that edits each response head (from the upstream or a local
reply) on its way out, as Envoy's ``mutateResponseHeaders`` and server header step do.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from proxyd.protocol.path_normalize import EscapedSlashes, PathAction, PathNormalizer
from proxyd.worker.stream import DownstreamReset

if TYPE_CHECKING:
    from proxyd.epoch import HcmTransforms
    from proxyd.protocol.http1 import RequestHead, ResponseHead
    from proxyd.worker.plan import ListenerPlan
    from proxyd.worker.stats import NamedStats
    from proxyd.worker.stream import Connection, DownstreamSink, Stream


class Transforms:
    """One listener's transforms (made by :func:`compile_transforms`)."""

    __slots__ = (
        "path",
        "strip",
        "via",
        "underscores",
        "server_mode",
        "server",
        "request_id_in_response",
        "response_edits",
        "stats",
        "plan",
        "user_agent",
        "node_lines",
    )

    def __init__(self, t: HcmTransforms, plan: ListenerPlan, stats: NamedStats) -> None:
        normalizer = PathNormalizer(
            EscapedSlashes(t.escaped_slashes), t.normalize_path, t.merge_slashes
        )
        self.path = normalizer if normalizer else None
        self.strip = t.strip_host_port
        self.via = t.via.encode("latin-1")
        self.underscores = t.headers_with_underscores
        self.server_mode = t.server_header_transformation
        self.server = plan.server
        self.request_id_in_response = t.always_set_request_id_in_response
        self.stats = stats
        self.plan = plan
        if self.via:
            plan.request_wanted[b"via"] = "via"
            plan.response_wanted[b"via"] = "via"
        if self.server_mode != "OVERWRITE":
            # The connection adds no server line; ResponseEdits decides per response.
            plan.server = b""
            plan.response_wanted[b"server"] = "server"
        # A reply to a request that could not be parsed: Envoy's response steps apply.
        plan.reject_headers = (b"" if self.server_mode == "PASS_THROUGH" else self.server) + (
            b"via: " + self.via + b"\r\n" if self.via else b""
        )
        plan.policy.skip_xff_append = t.skip_xff_append
        plan.policy.preserve_external_request_id = t.preserve_external_request_id
        if t.internal_address_config:
            plan.policy.internal = InternalAddresses(t.internal_cidrs, t.internal_unix_sockets)
        if t.scheme:
            plan.policy.forced_xfp = b"x-forwarded-proto: " + t.scheme.encode() + b"\r\n"
        # add_user_agent: the node's cluster (set_node) for user-agent, and the lines
        # naming the downstream service.
        self.user_agent: bytes | None = None
        self.node_lines = b""
        if t.add_user_agent:
            self.user_agent = b""
            plan.request_wanted[b"user-agent"] = "user-agent"
        self.response_edits = bool(
            self.via or self.server_mode != "OVERWRITE" or self.request_id_in_response
        )

    def set_node(self, node_id: str, node_cluster: str) -> None:
        """The bootstrap's node (add_user_agent), from the epoch."""
        if self.user_agent is None:
            return
        cluster = node_cluster.encode("latin-1")
        self.user_agent = cluster
        self.node_lines = b"x-envoy-downstream-service-cluster: " + cluster + b"\r\n"
        if node_id:
            self.node_lines += (
                b"x-envoy-downstream-service-node: " + node_id.encode("latin-1") + b"\r\n"
            )

    def on_request(
        self, stream: Stream, plan: ListenerPlan, conn: Connection
    ) -> Awaitable[bool] | None:
        """Edit the request head before routing; a reply to await instead of routing
        when the request is answered here."""
        h = stream.head
        assert h is not None
        edits: ResponseEdits | None = None
        if self.response_edits:
            edits = ResponseEdits(stream.sink, stream, self)
            stream.sink = edits
        if self.underscores != "ALLOW":
            reply = self._underscores(stream, h)
            if reply is not None:
                return reply
        if self.path is not None and h.path[:1] == "/" and h.method != "CONNECT":
            path, action = self.path.apply(h.path)
            if action is PathAction.REJECT or (
                action is PathAction.REDIRECT
                and h.headers.get("content-type", "").startswith("application/grpc")
            ):
                self.stats.inc("downstream_rq_failed_path_normalization")
                return _reply(stream, 400, "", b"", "path_normalization_failed")
            if action is PathAction.REDIRECT:
                self.stats.inc("downstream_rq_redirected_with_normalized_path")
                location = b"location: " + path.encode("latin-1") + b"\r\n"
                return _reply(stream, 307, "", location, "path_normalization_failed")
            if path != h.path:
                _set_path(h, path)
        if self.strip and h.method != "CONNECT":
            host = strip_port(h.host, self.strip, conn)
            if host is not None:
                _set_host(h, host)
        if self.user_agent is not None:
            h.remove.append(b"x-envoy-downstream-service-cluster")
            h.remove.append(b"x-envoy-downstream-service-node")
            _add_request_line(stream, self.node_lines)
            if not h.headers.get("user-agent"):
                h.remove.append(b"user-agent")
                _add_request_line(stream, b"user-agent: " + self.user_agent + b"\r\n")
                h.headers["user-agent"] = self.user_agent.decode("latin-1")
        if self.via:
            old = h.headers.get("via")
            h.remove.append(b"via")
            value = self.via if not old else old.encode("latin-1") + b", " + self.via
            _add_request_line(stream, b"via: " + value + b"\r\n")
        if edits is not None:
            edits.mutated = True
        return None

    def _underscores(self, stream: Stream, h: RequestHead) -> Awaitable[bool] | None:
        raw = h.raw
        names = [
            line.split(b":", 1)[0]
            for line in raw[raw.find(b"\r\n") + 2 : -4].split(b"\r\n")
            if b"_" in line.split(b":", 1)[0]
        ]
        if not names:
            return None
        if self.underscores == "REJECT_REQUEST":
            self.stats.inc("requests_rejected_with_underscores_in_headers")
            return _reply(stream, 400, "Bad Request", b"", "unexpected_underscore")
        for name in names:
            h.remove.append(name)
            h.headers.pop(name.decode("latin-1"), None)
            self.stats.inc("dropped_headers_with_underscores")
        return None


async def _reply(stream: Stream, status: int, body: str, extra: bytes, details: str) -> bool:
    """A local reply made before routing. After a 400 the connection closes, after a
    307 it stays open (as Envoy 1.40 does)."""
    stream.details = details
    if status == 400:
        stream.close_connection = True
    try:
        await stream.sink.send_local_reply(status, body, extra)
    except DownstreamReset:
        return False
    return True


def _set_path(h: RequestHead, path: str) -> None:
    raw = h.raw
    h.path = path
    h.raw = (
        h.method.encode("ascii") + b" " + path.encode("latin-1") + raw[raw.find(b" HTTP/1.1\r\n") :]
    )


def _set_host(h: RequestHead, host: str) -> None:
    raw = h.raw
    start = raw.find(b"\r\n") + 2  # the host line comes first (RequestHeadParser)
    end = raw.find(b"\r\n", start)
    h.host = host
    h.raw = raw[:start] + b"host: " + host.encode("latin-1") + raw[end:]


def strip_port(host: str, mode: str, conn: Connection) -> str | None:
    """``host`` without its port (Envoy's ``HeaderUtility::stripPortFromHost``), or None
    to leave it: no port, a port that is not a number, or (``matching``) a port other
    than the listener's."""
    colon = host.rfind(":")
    if colon < 0 or host.rfind("]") > colon:
        return None
    port = host[colon + 1 :]
    if not port.isdigit() or len(port) > 10 or int(port) > 0xFFFFFFFF:
        return None
    if mode == "matching":
        local = conn.local_address()
        if int(port) != int(local.rsplit(":", 1)[1]):
            return None
    return host[:colon]


def _add_request_line(stream: Stream, line: bytes) -> None:
    if stream.request_added is None:
        stream.request_added = []
    stream.request_added.append(line)


def _spans(raw: bytes, name: bytes) -> list[tuple[int, int]]:
    """The spans ("CRLF name: value") of every ``name`` line of a response head."""
    low = raw.lower()
    pat = b"\r\n" + name + b":"
    out = []
    i = low.find(pat)
    while i >= 0:
        j = low.find(b"\r\n", i + 2)
        out.append((i, j))
        i = low.find(pat, j)
    return out


class ResponseEdits:
    """A stream's sink around the connection's: edits each response head on its way
    out (``via``, the ``server`` header, ``x-request-id``)."""

    __slots__ = ("inner", "stream", "t", "mutated")

    def __init__(self, inner: DownstreamSink, stream: Stream, t: Transforms) -> None:
        self.inner = inner
        self.stream = stream
        self.t = t
        # The request went past the path step (Envoy's mutateRequestHeaders ran, so a
        # request id exists for a local reply).
        self.mutated = False

    # -- passed through --------------------------------------------------------------

    def take_buffered_body(self) -> list[memoryview]:
        return self.inner.take_buffered_body()

    async def recv_body(self) -> list[memoryview]:
        return await self.inner.recv_body()

    async def send_continue(self) -> None:
        await self.inner.send_continue()

    def wants_close(self) -> bool:
        return self.inner.wants_close()

    async def send_data(self, parts: list, end_stream: bool) -> None:
        await self.inner.send_data(parts, end_stream)

    async def send_trailers(self, trailers: list[tuple[bytes, bytes]]) -> None:
        send = getattr(self.inner, "send_trailers", None)
        if send is None:
            await self.inner.send_data([], True)
        else:
            await send(trailers)

    def complete(self) -> None:
        """The stream ended (the connection manager calls it on a sink it wrapped)."""

    # -- edited ----------------------------------------------------------------------

    async def send_headers(
        self, r: ResponseHead, service_ms: int, length: int, first: list, end_stream: bool
    ) -> None:
        t = self.t
        added: list[bytes] = []
        cuts = r.cuts
        if t.server_mode != "OVERWRITE":
            server = _spans(r.raw, b"server")
            if server:
                # The upstream's server header stays where it is (the parser cut it).
                r.cuts = cuts = [c for c in cuts if c not in server]
            elif t.server_mode == "APPEND_IF_ABSENT":
                added.append(t.server)
        if t.via:
            old = r.headers.get("via")
            if old is not None:
                cuts.extend(_spans(r.raw, b"via"))
            added.append(
                b"via: " + (old.encode("latin-1") + b", " if old else b"") + t.via + b"\r\n"
            )
        if t.request_id_in_response:
            rid = self._request_id()
            if rid:
                cuts.extend(_spans(r.raw, b"x-request-id"))
                added.append(b"x-request-id: " + rid.encode("latin-1") + b"\r\n")
        if added:
            cuts.sort()
            stream = self.stream
            if stream.response_added is None:
                stream.response_added = added
            else:
                stream.response_added.extend(added)
        await self.inner.send_headers(r, service_ms, length, first, end_stream)

    async def send_local_reply(
        self, status: int, body: str | bytes, extra: bytes = b"", chunked: bool = False
    ) -> None:
        t = self.t
        if t.server_mode == "APPEND_IF_ABSENT":
            extra += t.server
        if t.via:
            extra += b"via: " + t.via + b"\r\n"
        if t.request_id_in_response:
            rid = self._request_id()
            if rid:
                extra += b"x-request-id: " + rid.encode("latin-1") + b"\r\n"
        if chunked:
            await self.inner.send_local_reply(status, body, extra, chunked=True)
        else:
            await self.inner.send_local_reply(status, body, extra)

    def _request_id(self) -> str:
        """The request's x-request-id as Envoy has it when it answers: set by the
        header policy once the request went upstream; for a local reply made after
        the path step, the one Envoy's mutateRequestHeaders would have made; before
        it, the client's own (or none)."""
        stream = self.stream
        if stream.request_id:
            return stream.request_id
        h = stream.head
        if h is None:
            return ""
        rid = h.request_id.decode("latin-1")
        if not self.mutated:
            return rid
        policy = self.t.plan.policy
        if policy.generate_request_id and (
            not rid or (policy.use_remote_address and not policy.preserve_external_request_id)
        ):
            rid = policy.ids.next()[0]
        stream.request_id = rid
        return rid


# Envoy's internal addresses when internal_address_config has no cidr_ranges.
DEFAULT_INTERNAL = (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8", "::1/128", "fc00::/7",
)  # fmt: skip


class InternalAddresses:
    """internal_address_config: is a client address internal? A peer that is not an IP
    address (a Unix socket) is internal with ``unix_sockets``."""

    __slots__ = ("networks", "unix_sockets")

    def __init__(self, cidrs: tuple[str, ...], unix_sockets: bool) -> None:
        self.networks = [ipaddress.ip_network(c) for c in (cidrs or DEFAULT_INTERNAL)]
        self.unix_sockets = unix_sockets

    def __call__(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return self.unix_sockets
        return any(ip in net for net in self.networks)


def compile_transforms(plan: ListenerPlan, stats: NamedStats) -> Transforms | None:
    """The listener's transforms, or None when its connection manager sets none."""
    hcm = plan.listener.hcm
    assert hcm is not None
    t = hcm.transforms
    if t is None:
        return None
    return Transforms(t, plan, stats)
