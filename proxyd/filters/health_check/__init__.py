"""``envoy.filters.http.health_check``: health check requests answered by the proxy
itself, or passed through with a cached answer (:mod:`.config`, :mod:`.filter`)."""
