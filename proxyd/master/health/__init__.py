"""Active health checking in the master (Envoy's ``health_checks``).

``state`` is the sans-IO state machine (thresholds, intervals), ``probes`` the sans-IO
request and answer handling (HTTP, TCP), ``checker`` the trio tasks that run them and
tell the master when a host's health changes.
"""
