"""``envoy.filters.http.compressor``: response (and request) bodies compressed with gzip,
brotli or zstd as they stream, chosen by ``Accept-Encoding`` (:mod:`.config`,
:mod:`.negotiation`, :mod:`.filter`)."""
