"""Why a downstream connection's deadline is set, for the worker's watchdog.

A connection has one deadline at a time (``DownstreamConnection.deadline``, monotonic
seconds, ``INF`` for none) and its kind. The watchdog (``Worker._watchdog``) scans the
open connections a few times a second and, for one past its deadline, records the kind
in ``expired`` and wakes its waits; the code that was waiting turns the kind into
Envoy's answer.
"""

from __future__ import annotations

import math

INF = math.inf

IDLE = 1  # waiting for the next request: idle_timeout (close quietly)
HEADERS = 2  # reading a head: request_headers_timeout / request_timeout (408)
REQUEST = 3  # reading a request body: request_timeout / stream_idle_timeout (408)
ROUTE = 4  # waiting for the upstream: the route timeout (504, or a reset)
STREAM_IDLE = 5  # nothing moved for stream_idle_timeout (408, or a reset)

# How often the watchdog looks: a timeout fires up to this late.
WATCHDOG_TICK_S = 0.05
