"""``envoy.filters.http.csrf``: state-changing requests whose origin is not the
destination's are refused with 403 (:mod:`.config`, :mod:`.filter`)."""
