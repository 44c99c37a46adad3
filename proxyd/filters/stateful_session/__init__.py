"""``envoy.filters.http.stateful_session``: sticky sessions. A request that names an
upstream host (in a cookie or a header) goes to that host when the cluster has it and
may use it; the response names the host that served it (:mod:`.config`, :mod:`.filter`,
:mod:`.session`, and :mod:`.override`, the router's host selection hook)."""
