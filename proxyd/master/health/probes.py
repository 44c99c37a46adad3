"""What a health check sends and how its answer is judged: bytes in, Results out.

No sockets here (``checker.py`` moves the bytes):

* :func:`http_request` builds the HTTP/1.1 request Envoy's HTTP checker sends
  (``GET <path>``, ``Host`` = the configured host or the cluster name,
  ``User-Agent: Envoy/HC``, then ``request_headers_to_add``);
* :class:`HttpResponseReader` reads the answer with httptools and judges its status
  against ``expected_statuses`` / ``retriable_statuses``;
* :func:`tcp_match` is Envoy's TcpHealthCheckMatcher: every ``receive`` payload must be
  found in the bytes read so far, each after the previous one.
"""

from __future__ import annotations

from collections.abc import Sequence

import httptools

from proxyd.epoch import HealthCheck, StatusRange
from proxyd.master.health.state import Result

USER_AGENT = "Envoy/HC"


def add_header(headers: list[tuple[str, str]], name: str, value: str, action: str) -> None:
    """Envoy's HeaderValueOption.append_action on a list of (lower-case name, value)."""
    present = any(n == name for n, _v in headers)
    if action == "ADD_IF_ABSENT":
        if not present:
            headers.append((name, value))
        return
    if action in ("OVERWRITE_IF_EXISTS_OR_ADD", "OVERWRITE_IF_EXISTS"):
        if not present and action == "OVERWRITE_IF_EXISTS":
            return
        at = next((i for i, (n, _v) in enumerate(headers) if n == name), len(headers))
        headers[:] = [h for h in headers if h[0] != name]
        headers.insert(min(at, len(headers)), (name, value))
        return
    headers.append((name, value))  # APPEND_IF_EXISTS_OR_ADD


def http_request(hc: HealthCheck, cluster_name: str) -> bytes:
    """The request line and head of one HTTP health check."""
    headers: list[tuple[str, str]] = [
        ("host", hc.http_host or cluster_name),
        ("user-agent", USER_AGENT),
    ]
    for h in hc.http_headers:
        add_header(headers, h.name, h.value, h.action)
    lines = [f"GET {hc.http_path} HTTP/1.1"]
    lines.extend(f"{n}: {v}" for n, v in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _in_ranges(status: int, ranges: Sequence[StatusRange]) -> bool:
    return any(r.start <= status < r.end for r in ranges)


def judge_status(hc: HealthCheck, status: int) -> Result:
    if _in_ranges(status, hc.expected_statuses):
        return Result.SUCCESS
    if _in_ranges(status, hc.retriable_statuses):
        return Result.RETRIABLE_FAILURE
    return Result.ACTIVE_FAILURE


class HttpResponseReader:
    """Reads one HTTP/1.1 response; :attr:`result` is set once it is judged.

    ``feed(b"")`` means the peer closed: a response whose body runs to the close is
    complete then; anything less is a network failure.
    """

    def __init__(self, hc: HealthCheck) -> None:
        self.hc = hc
        self.result: Result | None = None
        self.keep_alive = False
        self._headers_done = False
        self._complete = False
        self._parser = httptools.HttpResponseParser(self)

    # httptools callbacks
    def on_headers_complete(self) -> None:
        self._headers_done = True

    def on_message_complete(self) -> None:
        self._complete = True
        self.keep_alive = self._parser.should_keep_alive()

    def feed(self, data: bytes | bytearray) -> Result | None:
        """Bytes from the host (``b""`` at EOF); the result once there is one."""
        if self.result is not None:
            return self.result
        if not data:
            if self._headers_done:
                self.keep_alive = False
                self.result = judge_status(self.hc, self._parser.get_status_code())
            else:
                self.result = Result.NETWORK_FAILURE
            return self.result
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._complete = True
        except httptools.HttpParserError:
            if not self._complete:
                self.result = Result.NETWORK_FAILURE  # Envoy resets the stream: a network failure
                return self.result
            self.keep_alive = False  # bytes after the response: do not reuse
        if self._complete:
            self.result = judge_status(self.hc, self._parser.get_status_code())
        return self.result


def tcp_match(expected: Sequence[bytes], buffer: bytes) -> bool:
    """Envoy's TcpHealthCheckMatcher::match: each payload found after the previous one."""
    start = 0
    for segment in expected:
        at = buffer.find(segment, start)
        if at < 0:
            return False
        start = at + len(segment)
    return True
