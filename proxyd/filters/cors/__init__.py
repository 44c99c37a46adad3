"""``envoy.filters.http.cors``: preflights answered here, simple requests' responses
given the Access-Control headers of the route's CORS policy (:mod:`.config`, :mod:`.filter`)."""
