"""Active health checking in the master (Envoy's ``health_checks``).

``state`` is the sans-IO state machine (thresholds, intervals), ``probes`` the sans-IO
request and answer handling (HTTP, TCP), ``grpc_check`` the same for gRPC
(grpc.health.v1), ``checker`` the trio tasks that run them and tell the master when a
host's health changes.
"""
