"""RFC 9111's rules as Envoy's cache filter applies them: no I/O, plain values.

* a request may be served from the cache when it is a GET or HEAD with a host, no
  ``authorization`` and none of ``if-none-match``, ``if-modified-since``, ``if-range``
  (those go upstream untouched);
* a response may be stored when its status is one of :data:`CACHEABLE_STATUS`, its
  ``cache-control`` has no ``no-store`` and no ``private``, and it says how long it is
  fresh: ``no-cache``, ``max-age`` / ``s-maxage``, or both ``date`` and ``expires``;
* a stored response is fresh while its age (:meth:`.store.Entry.age`) is at most its
  lifetime (``s-maxage``, else ``max-age``, else ``expires`` − ``date``); ``no-cache``
  makes every use a validation. A request's ``no-cache`` (or ``pragma: no-cache`` with no
  ``cache-control``) validates too, its ``max-age`` / ``min-fresh`` tighten freshness and
  its ``max-stale`` loosens it (not past ``must-revalidate``);
* a ``cache-control`` directive whose value does not parse counts as absent.
"""

from __future__ import annotations

import email.utils
from dataclasses import dataclass

CACHEABLE_STATUS = frozenset((200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 451, 501))
CONDITIONAL = ("if-none-match", "if-modified-since", "if-range")
_SPACE = " \t"
# max-stale with no value: any staleness.
ANY_STALE = float("inf")


def directives(value: str | None) -> dict[str, str | None]:
    """A ``cache-control`` value as {lower-case directive: argument or None}; quoted
    arguments unquoted; the first occurrence of a directive wins."""
    out: dict[str, str | None] = {}
    if not value:
        return out
    i, n = 0, len(value)
    while i < n:
        while i < n and value[i] in " \t,":
            i += 1
        j = i
        while j < n and value[j] not in "=,":
            j += 1
        name = value[i:j].strip(_SPACE).lower()
        arg: str | None = None
        if j < n and value[j] == "=":
            j += 1
            while j < n and value[j] in _SPACE:
                j += 1
            if j < n and value[j] == '"':
                k = value.find('"', j + 1)
                k = n if k < 0 else k
                arg = value[j + 1 : k]
                j = value.find(",", k)
                j = n if j < 0 else j
            else:
                k = value.find(",", j)
                k = n if k < 0 else k
                arg = value[j:k].strip(_SPACE)
                j = k
        if name and name not in out:
            out[name] = arg
        i = j + 1
    return out


def seconds_arg(d: dict[str, str | None], name: str) -> int | None:
    """A delta-seconds argument, None when absent or not a number."""
    arg = d.get(name)
    if arg is None or not arg.isascii() or not arg.isdigit():
        return None
    return int(arg)


def http_time(value: str | None) -> float | None:
    """An HTTP date as a POSIX time, None when absent or not a date."""
    if not value:
        return None
    try:
        t = email.utils.parsedate_to_datetime(value)
        if t is None or t.tzinfo is None:
            return None
        return t.timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


@dataclass(frozen=True, slots=True)
class ResponseRules:
    """What a stored response's headers say about its use."""

    no_store: bool
    private: bool
    no_cache: bool
    must_revalidate: bool
    lifetime: float | None  # seconds; None: no freshness information
    date: float | None

    @property
    def storable_by_directives(self) -> bool:
        return not self.no_store and not self.private


def response_rules(
    cache_control: str | None, date: str | None, expires: str | None
) -> ResponseRules:
    d = directives(cache_control)
    date_t = http_time(date)
    lifetime: float | None = seconds_arg(d, "s-maxage")
    if lifetime is None:
        lifetime = seconds_arg(d, "max-age")
    if lifetime is None and date_t is not None and expires is not None:
        exp = http_time(expires)
        # An expires that is not a date means "already expired" (RFC 9111 §5.3).
        lifetime = (exp - date_t) if exp is not None else -1.0
    return ResponseRules(
        no_store="no-store" in d,
        private="private" in d,
        no_cache="no-cache" in d,
        must_revalidate="must-revalidate" in d or "proxy-revalidate" in d,
        lifetime=lifetime,
        date=date_t,
    )


def cacheable_response(status: int, r: ResponseRules) -> bool:
    has_freshness = r.no_cache or r.lifetime is not None
    return status in CACHEABLE_STATUS and r.storable_by_directives and has_freshness


@dataclass(frozen=True, slots=True)
class RequestRules:
    no_cache: bool
    no_store: bool
    max_age: int | None
    min_fresh: int | None
    max_stale: float | None


NO_REQUEST_RULES = RequestRules(False, False, None, None, None)


def request_rules(cache_control: str | None, pragma: str | None) -> RequestRules:
    if cache_control is None:
        if pragma is not None and "no-cache" in directives(pragma):
            return RequestRules(True, False, None, None, None)
        return NO_REQUEST_RULES
    d = directives(cache_control)
    max_stale: float | None = None
    if "max-stale" in d:
        max_stale = seconds_arg(d, "max-stale") if d["max-stale"] is not None else ANY_STALE
    return RequestRules(
        no_cache="no-cache" in d,
        no_store="no-store" in d,
        max_age=seconds_arg(d, "max-age"),
        min_fresh=seconds_arg(d, "min-fresh"),
        max_stale=max_stale,
    )


def needs_validation(r: ResponseRules, req: RequestRules, age: int) -> bool:
    """Whether a stored response of ``age`` must be validated before this request uses it."""
    if r.no_cache or req.no_cache:
        return True
    lifetime = r.lifetime if r.lifetime is not None else -1.0
    if req.max_age is not None and age > req.max_age:
        return True
    if req.min_fresh is not None and lifetime - age < req.min_fresh:
        return True
    if age <= lifetime:
        return False
    if req.max_stale is not None and not r.must_revalidate:
        return age - lifetime > req.max_stale
    return True


def byte_range(value: str | None, length: int) -> tuple[int, int] | None | bool:
    """A ``range: bytes=...`` request over a body of ``length``: (first, last) of one
    satisfiable range; True when the header asks for nothing satisfiable (416); None
    when the whole body is the answer (no header, several ranges, another unit, or a
    range that covers everything)."""
    if value is None:
        return None
    unit, _, spec = value.partition("=")
    if unit.strip(_SPACE).lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip(_SPACE).partition("-")
    if not dash:
        return None
    first, last = first.strip(_SPACE), last.strip(_SPACE)
    if not first:  # a suffix: the last N bytes
        if not last.isdigit():
            return None
        n = int(last)
        if n == 0 or length == 0:
            return True
        if n >= length:
            return None
        return (length - n, length - 1)
    if not first.isdigit() or (last and not last.isdigit()):
        return None
    a = int(first)
    b = int(last) if last else length - 1
    if b < a:
        return None
    if a >= length:
        return True
    b = min(b, length - 1)
    if a == 0 and b == length - 1:
        return None
    return (a, b)
