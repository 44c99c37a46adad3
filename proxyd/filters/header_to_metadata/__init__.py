"""envoy.filters.http.header_to_metadata: request headers (or cookies) → dynamic metadata."""
