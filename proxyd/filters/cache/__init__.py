"""``envoy.filters.http.cache`` and ``envoy.filters.http.cache_v2``: an HTTP cache of
upstream responses in each worker's memory, with RFC 9111's rules as Envoy applies them
(:mod:`.config`, :mod:`.rules`, :mod:`.store`, :mod:`.filter`)."""
