"""Time of proxyd's HTTP/1 head parsers per call, in this interpreter.

The worker's CPU per request is mostly Python bytecode, so how the interpreter was built
(PGO and LTO or not, libpython shared or linked in) moves it as much as a change to the
request path does. This script times the two parsers every proxied request runs, plus
a small pure-Python loop, so that two interpreters can be compared on the same machine:

    /usr/bin/python3 -m venv /tmp/a && /tmp/a/bin/pip install -q -e .
    /tmp/a/bin/python bench/parsers.py
    .venv/bin/python bench/parsers.py

Each figure is the best of several repeats (what is least disturbed by the rest of the
machine); on a busy machine run both under ``nice -n -20``. See docs/performance.md,
"The interpreter".
"""

from __future__ import annotations

import platform
import sys
import timeit

from proxyd.protocol.http1 import RequestHeadParser, ResponseHeadParser

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
BROWSER_REQUEST = (
    b"GET /index.html?x=1 HTTP/1.1\r\nHost: example.com\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36\r\n"
    b"Accept: text/html,application/xhtml+xml\r\nAccept-Language: en-US,en;q=0.9\r\n"
    b"Accept-Encoding: gzip, deflate, br\r\nConnection: keep-alive\r\nCookie: a=b; c=d\r\n"
    b"Upgrade-Insecure-Requests: 1\r\nCache-Control: max-age=0\r\n\r\n"
)
# What the benchmark's nginx answers (bench/run.py).
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Fri, 04 Dec 2026 15:00:00 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 100\r\nConnection: keep-alive\r\n\r\n"
)


class _Slots:
    __slots__ = ("x", "y")

    def __init__(self) -> None:
        self.x = 1
        self.y = 2


def _python_loop() -> int:
    """Object creation, attribute and dict access, bytes building: the request path's mix."""
    t = 0
    for i in range(1000):
        a = _Slots()
        t += a.x + a.y
        d = {"a": i}
        t += d["a"]
        t += len((b"abc" + str(i).encode()).lower())
    return t


def best_ns(fn: object, number: int, repeat: int = 7) -> float:
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e9  # type: ignore[arg-type]


def main() -> int:
    requests = RequestHeadParser()
    responses = ResponseHeadParser()
    cases = [
        ("request head (1 header)", lambda: requests.parse(memoryview(REQUEST), {}), 100_000),
        (
            "request head (10 headers)",
            lambda: requests.parse(memoryview(BROWSER_REQUEST), {}),
            50_000,
        ),
        ("response head (5 headers)", lambda: responses.parse(memoryview(RESPONSE), {}), 100_000),
        ("python loop (1000 steps)", _python_loop, 200),
    ]
    print(f"{sys.executable} (Python {platform.python_version()})")
    for name, fn, number in cases:
        ns = best_ns(fn, number)
        print(f"  {name:28s} {ns / 1000:8.2f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
