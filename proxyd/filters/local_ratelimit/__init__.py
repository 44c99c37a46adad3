"""``envoy.filters.http.local_ratelimit``: a token bucket per filter config (the HCM's,
or a route's), answering 429 once it is empty (:mod:`.config`, :mod:`.filter`)."""
