"""RetryPolicy (route and virtual host) → epoch RetryPolicy.

A route's ``route.retry_policy`` replaces its virtual host's whole (Envoy does not merge
them). A virtual host's ``include_request_attempt_count`` applies to its routes with or
without a retry policy. retry_on conditions Envoy has and proxyd does not implement are
refused by name; names Envoy does not know are ignored, as Envoy ignores them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from proxyd.config.matchers import header_match
from proxyd.config.proto import join, unpack
from proxyd.config.values import seconds, wrapped_or
from proxyd.epoch import RetryPolicy, Route
from proxyd.errors import ConfigError
from proxyd.protocol.retry import DEFAULT_BASE_INTERVAL_MS, NOT_IMPLEMENTED, parse_retry_on


def retry_policy(rp: Any, path: str, file: str, attempt_count: bool) -> RetryPolicy:
    _bits, unknown = parse_retry_on(rp.retry_on)
    for name in unknown:
        # A name Envoy does not know it ignores (so does proxyd); one it implements and
        # proxyd does not is refused.
        if name in NOT_IMPLEMENTED:
            raise ConfigError(
                file, join(path, "retry_on"), f"retry_on '{name}' is not supported by proxyd"
            )
    base_ms = DEFAULT_BASE_INTERVAL_MS
    max_ms = 0
    if rp.HasField("retry_back_off"):
        bo = rp.retry_back_off
        here = join(path, "retry_back_off")
        if not bo.HasField("base_interval"):
            raise ConfigError(file, join(here, "base_interval"), "base_interval is required")
        base_ms = int(seconds(bo.base_interval) * 1000)
        if base_ms < 1:
            raise ConfigError(
                file, join(here, "base_interval"), "base_interval must be at least 1ms"
            )
        if bo.HasField("max_interval"):
            max_ms = int(seconds(bo.max_interval) * 1000)
            if max_ms < base_ms:
                raise ConfigError(
                    file,
                    join(here, "max_interval"),
                    "max_interval must be greater than or equal to the base_interval",
                )
    codes = tuple(int(c) for c in rp.retriable_status_codes)
    # Each predicate is envoy.retry_host_predicates.previous_hosts (the allow-list took
    # no other type); one without a typed_config Envoy cannot resolve.
    for i, pred in enumerate(rp.retry_host_predicate):
        if not pred.HasField("typed_config"):
            raise ConfigError(
                file,
                f"{join(path, 'retry_host_predicate')}[{i}]",
                f"Didn't find a registered implementation for '{pred.name}' with type URL: ''",
            )
    avoid_previous = len(rp.retry_host_predicate) > 0
    update_frequency = 0
    if rp.HasField("retry_priority"):
        here = join(path, "retry_priority")
        prio = rp.retry_priority
        config = unpack(prio.typed_config) if prio.HasField("typed_config") else None
        if config is None:
            raise ConfigError(
                file,
                here,
                f"Didn't find a registered implementation for '{prio.name}' with type URL: ''",
            )
        update_frequency = config.update_frequency
        if update_frequency <= 0:
            # Envoy's proto says gt 0 (checked only when a retry uses it).
            raise ConfigError(
                file,
                join(here, "typed_config.update_frequency"),
                "value must be greater than 0",
            )
    reset_headers: tuple[tuple[str, str], ...] = ()
    reset_max_ms = 300_000
    if rp.HasField("rate_limited_retry_back_off"):
        rl = rp.rate_limited_retry_back_off
        here = join(path, "rate_limited_retry_back_off")
        reset_headers = tuple(
            (h.name.lower(), "UNIX_TIMESTAMP" if h.format == 1 else "SECONDS")
            for h in rl.reset_headers
        )
        if rl.HasField("max_interval"):
            reset_max_ms = int(seconds(rl.max_interval) * 1000)
            if reset_max_ms < 1:
                raise ConfigError(
                    file, join(here, "max_interval"), "max_interval must be at least 1ms"
                )
    return RetryPolicy(
        retriable_headers=tuple(
            header_match(h, f"{join(path, 'retriable_headers')}[{i}]", file)
            for i, h in enumerate(rp.retriable_headers)
        ),
        retriable_request_headers=tuple(
            header_match(h, f"{join(path, 'retriable_request_headers')}[{i}]", file)
            for i, h in enumerate(rp.retriable_request_headers)
        ),
        reset_headers=reset_headers,
        reset_max_interval_ms=reset_max_ms,
        avoid_previous_hosts=avoid_previous,
        # Envoy: "if unspecified, this will default to retrying once".
        host_selection_retry_max_attempts=rp.host_selection_retry_max_attempts or 1,
        retry_on=rp.retry_on,
        num_retries=wrapped_or(rp, "num_retries", 1),
        per_try_timeout_s=seconds(rp.per_try_timeout) if rp.HasField("per_try_timeout") else 0.0,
        per_try_idle_timeout_s=(
            seconds(rp.per_try_idle_timeout) if rp.HasField("per_try_idle_timeout") else 0.0
        ),
        base_interval_ms=base_ms,
        max_interval_ms=max_ms or base_ms * 10,
        retriable_status_codes=codes,
        include_attempt_count=attempt_count,
        priority_update_frequency=update_frequency,
    )


def with_retry_policies(
    vh: Any, path: str, sources: list[tuple[Any, str]], routes: tuple[Route, ...], file: str
) -> tuple[Route, ...]:
    """The virtual host's routes with their retry policy (the route's or the virtual
    host's) resolved onto them; ``sources`` is each route's message and config path
    (its place in ``routes``, or in the virtual host's matcher)."""
    attempt_count = bool(vh.include_request_attempt_count)
    vh_policy = None
    if vh.HasField("retry_policy"):
        vh_policy = retry_policy(vh.retry_policy, join(path, "retry_policy"), file, attempt_count)
    elif attempt_count:
        vh_policy = RetryPolicy(retry_on="", include_attempt_count=True)
    vh_hedge = vh.hedge_policy.hedge_on_per_try_timeout if vh.HasField("hedge_policy") else False
    out = []
    for (r, route_path), route in zip(sources, routes, strict=True):
        if r.WhichOneof("action") != "route":
            out.append(route)
            continue
        policy = vh_policy
        if r.route.HasField("retry_policy"):
            here = join(route_path, "route.retry_policy")
            policy = retry_policy(r.route.retry_policy, here, file, attempt_count)
        # Envoy: the route's hedge_policy, when it has one, else the virtual host's.
        hedge = vh_hedge
        if r.route.HasField("hedge_policy"):
            hedge = r.route.hedge_policy.hedge_on_per_try_timeout
        if policy is not None and hedge:
            if policy.per_try_idle_timeout_s:
                raise ConfigError(
                    file,
                    join(route_path, "route.hedge_policy")
                    if r.route.HasField("hedge_policy")
                    else join(path, "hedge_policy"),
                    "hedge_on_per_try_timeout with a per_try_idle_timeout is not supported "
                    "by proxyd",
                )
            policy = dataclasses.replace(policy, hedge_on_per_try_timeout=True)
        if policy is not None:
            route = _replace_retry(route, policy)
        out.append(route)
    return tuple(out)


def _replace_retry(route: Route, policy: RetryPolicy) -> Route:
    return dataclasses.replace(route, retry=policy)
