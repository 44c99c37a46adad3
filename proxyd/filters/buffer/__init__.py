"""``envoy.filters.http.buffer``: the request body is buffered whole before it goes
upstream, which then receives it with a content-length (:mod:`.config`, :mod:`.filter`)."""
