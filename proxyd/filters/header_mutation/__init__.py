"""``envoy.filters.http.header_mutation``: request and response header edits, applied
with the route's own header mutations (:mod:`.config`, :mod:`.filter`)."""
