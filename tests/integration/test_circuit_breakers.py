"""Circuit breaker overflow through a real proxyd: Envoy's 503 with x-envoy-overloaded."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from tests.integration.master_fixtures import get
from tests.support import ProxydProcess, UpstreamServer, free_port, http_config

MAX_REQUESTS_1 = """    circuit_breakers:
      thresholds:
      - priority: DEFAULT
        max_requests: 1"""


def test_max_requests_overflow(tmp_path: Path) -> None:
    with UpstreamServer("a") as up:
        listen, admin = free_port(), free_port()
        config = http_config(listen, admin, {"a": [up.port]}, cluster_extra=MAX_REQUESTS_1)
        with ProxydProcess(tmp_path, config, admin, concurrency=1) as p:
            results: list[tuple[int, dict[str, str], bytes]] = []

            def slow() -> None:
                results.append(get(listen, "/delay/1000"))

            first = threading.Thread(target=slow)
            first.start()
            time.sleep(0.3)  # the first request is in flight upstream
            status, headers, body = get(listen, "/delay/1000")
            first.join()
            assert results[0][0] == 200
            assert status == 503
            assert headers["x-envoy-overloaded"] == "true"
            assert (
                body == b"upstream connect error or disconnect/reset before headers. "
                b"reset reason: overflow"
            )
            stats = p.stats()
            assert stats["cluster.a.upstream_rq_active_overflow"] == 1
            assert stats["cluster.a.upstream_rq_503"] == 1
            # The breaker closes again once the first request is done.
            assert get(listen, "/")[0] == 200
