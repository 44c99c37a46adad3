"""``envoy.filters.http.jwt_authn``: verify JSON Web Tokens against the providers' JWKS
(:mod:`.config` on the master, :mod:`.jwks` and :mod:`.token` sans-IO, :mod:`.filter`
on the worker)."""
