"""``envoy.filters.http.ext_authz``: the external authorization filter."""
