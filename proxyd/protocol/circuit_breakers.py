"""Envoy's circuit breaker arithmetic, with no I/O: limits per worker and the retry limit.

Envoy's thresholds (``CircuitBreakers.Thresholds``) count per proxy process. proxyd's
workers share nothing at run time, so each enforces its share, ``ceil(limit /
workers)``, of every count limit. A retry budget is a percentage of the worker's own
active and pending requests, so only its floor (``min_retry_concurrency``) is split.
"""

from __future__ import annotations

import math


def per_worker(limit: int, workers: int) -> int:
    """One worker's share of a proxy-wide count limit (0 stays 0)."""
    return math.ceil(limit / max(workers, 1))


def retry_limit(
    max_retries: int,
    budget_percent: float,
    min_retry_concurrency: int,
    active: int,
    pending: int,
) -> int:
    """How many retries may be outstanding at once.

    Without a retry budget (``budget_percent`` < 0) it is ``max_retries``. With one, as
    Envoy's ``RetryBudgetImpl::max()``: ``budget_percent`` of the active plus pending
    requests, truncated, but never below ``min_retry_concurrency``.
    """
    if budget_percent < 0:
        return max_retries
    return max(int(budget_percent / 100.0 * (active + pending)), min_retry_concurrency)
