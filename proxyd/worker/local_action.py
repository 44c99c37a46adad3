"""Answering a request on a redirect or direct_response route (the router's own reply).

The status, body and location come from :class:`proxyd.protocol.redirect.LocalAction`;
this sends them through the stream's sink (the filter chain's encoders when the route
has filters), counts ``http.<stat_prefix>.rq_direct_response`` as Envoy's router does
for both kinds, and marks the stream's details ``direct_response``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from proxyd.protocol.redirect import LocalAction
    from proxyd.worker.plan import ListenerPlan
    from proxyd.worker.stream import Stream


async def answer_locally(stream: Stream, plan: ListenerPlan, action: LocalAction) -> None:
    h = stream.head
    assert h is not None
    plan.http_stats.rq_direct_response += 1
    stream.details = "direct_response"
    extra = b""
    if action.with_location:
        path = h.path
        if action.rewrites_path:
            # Envoy rewrites :path itself before it builds the location, and keeps the
            # old one in x-envoy-original-path (the access log shows both).
            h.headers["x-envoy-original-path"] = path
            path = h.path = action.rewritten_path(path)
        xfp = plan.scheme if plan.overwrite_xfp or not h.xfp else h.xfp.decode("latin-1")
        location = action.location(h.host, path, xfp)
        extra = b"location: " + location.encode("latin-1", "replace") + b"\r\n"
    await stream.sink.send_local_reply(action.status, action.body, extra)
