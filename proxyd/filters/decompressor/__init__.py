"""``envoy.filters.http.decompressor``: gzip, brotli or zstd bodies decompressed as they
stream, in requests and responses (:mod:`.config`, :mod:`.filter`)."""
