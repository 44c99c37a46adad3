"""``remote_jwks``: a provider's JWKS fetched through a cluster and kept, per worker,
for ``cache_duration`` (Envoy's default: 10 minutes).

Like Envoy without ``async_fetch``, the keys are fetched when a token first needs them
and again when a token needs them after they expired; a fetch that fails (no
response within ``http_uri.timeout``, a status other than 200, a body that is not a
usable JWKS) fails that token with ``Jwks remote fetch is failed`` and is not cached,
so the next token tries again. The cache lives in the worker process, keyed by the
cluster, URI and duration, so the routes and epochs of a worker share it (Envoy's is
per filter config and thread: a reload that keeps the provider keeps its keys here)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from proxyd.filters.api import StatsScope
from proxyd.filters.jwt_authn.jwks import JwksError, Key, parse_jwks

FETCH_FAILED = "Jwks remote fetch is failed"
HttpGet = Callable[..., Awaitable[tuple[int, bytes]]]

# (cluster, authority, path, cache seconds) → (keys, when they expire: monotonic s).
_CACHE: dict[tuple[str, str, str, float], tuple[tuple[Key, ...], float]] = {}


class RemoteJwks:
    __slots__ = ("cluster", "authority", "path", "timeout_s", "cache_s", "retry", "key")

    def __init__(self, remote: dict[str, Any]) -> None:
        self.cluster: str = remote["cluster"]
        self.authority: str = remote["authority"]
        self.path: str = remote["path"]
        self.timeout_s: float = remote["timeout_s"]
        self.cache_s: float = remote["cache_s"]
        # retry_policy: (retries, base back-off s, max back-off s), or None.
        self.retry = tuple(remote["retry"]) if remote.get("retry") else None
        self.key = (self.cluster, self.authority, self.path, self.cache_s)

    async def keys(self, http_get: HttpGet | None, stats: StatsScope) -> tuple[Key, ...] | None:
        """The cached keys, else freshly fetched ones; None when the fetch failed."""
        now = time.monotonic()
        hit = _CACHE.get(self.key)
        if hit is not None and hit[1] > now:
            return hit[0]
        keys: tuple[Key, ...] | None = None
        if http_get is not None:
            try:
                status, body = await http_get(
                    self.cluster, self.authority, self.path, self.timeout_s, self.retry
                )
                if status == 200:
                    keys = parse_jwks(body.decode("utf-8", "replace"))
            except JwksError:
                keys = None
            except Exception:  # the fetch failed (proxyd.worker.cluster_fetch.FetchError)
                keys = None
        if keys is None:
            stats.inc("jwt_authn.jwks_fetch_failed")
            return None
        stats.inc("jwt_authn.jwks_fetch_success")
        _CACHE[self.key] = (keys, time.monotonic() + self.cache_s)
        return keys
