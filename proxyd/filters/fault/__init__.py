"""``envoy.filters.http.fault``: injected delays and aborts, by percentage or by the
client's ``x-envoy-fault-*`` headers (:mod:`.config`, :mod:`.filter`)."""
