"""``envoy.filters.http.rbac``: allow or deny a request by policies of permissions and
principals, compiled into predicates once per epoch (:mod:`.config`, :mod:`.filter`)."""
