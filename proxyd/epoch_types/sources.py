"""Epoch values of xDS sources (a module of its own: TLS contexts name SDS sources and
clusters name EDS ones, and the TLS values come before the clusters').
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ConfigSource"]


@dataclass(frozen=True, slots=True)
class ConfigSource:
    """Envoy's core.v3.ConfigSource: where the master fetches an xDS resource type.

    Only the master reads it (``proxyd.master.xds``); it rides in the epoch with the
    listener or cluster that names it."""

    # "path" (a watched file), "rest" (REST-JSON polling), "grpc" (a per-type gRPC
    # stream) or "ads" (the bootstrap's aggregated stream).
    kind: str
    path: str = ""
    # rest/grpc: the static cluster of the management server.
    cluster: str = ""
    refresh_delay_s: float = 0.0
    request_timeout_s: float = 1.0
    initial_fetch_timeout_s: float = 15.0
    node_on_first_message_only: bool = False
