"""envoy.filters.http.set_metadata: configured values become the stream's dynamic metadata."""
