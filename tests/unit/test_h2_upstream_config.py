"""HTTP/2 to upstreams as proxyd loads it: explicit_http_config.http2_protocol_options
(and the deprecated cluster field), use_downstream_protocol_config, auto_config
(refused: on plaintext with Envoy's words), ALPN of TLS clusters, and what routes to
an HTTP/2 cluster may not have (hedging, a shadow to it)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxyd.config import compile_bootstrap
from proxyd.errors import ConfigError

BASE: dict[str, Any] = yaml.safe_load(
    (Path(__file__).parent / "config_corpus" / "good-full.yaml").read_text()
)
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
OPTS = f"static_resources.clusters[0].typed_extension_protocol_options[{HTTP_OPTIONS!r}]"
TLS_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
VH0 = (
    "static_resources.listeners[0].filter_chains[0].filters[0].typed_config."
    "route_config.virtual_hosts[0]"
)


def with_protocol(**protocol: Any) -> dict[str, Any]:
    """good-full.yaml with cluster ``api``'s protocol options replaced."""
    d = copy.deepcopy(BASE)
    c = d["static_resources"]["clusters"][0]
    c["typed_extension_protocol_options"] = {
        HTTP_OPTIONS: {"@type": f"type.googleapis.com/{HTTP_OPTIONS}", **protocol}
    }
    return d


def api(d: dict[str, Any]) -> Any:
    return compile_bootstrap(d, "conf.yaml").epoch_template.clusters[0]


def reject(d: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        compile_bootstrap(d, "conf.yaml")
    return info.value


def routes(d: dict[str, Any]) -> list[dict[str, Any]]:
    hcm = d["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    return hcm["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]


def test_explicit_http2_and_the_deprecated_field() -> None:
    c = api(with_protocol(explicit_http_config={"http2_protocol_options": {}}))
    assert (c.http2, c.http2_downstream) == (True, False)
    d = copy.deepcopy(BASE)
    cluster = d["static_resources"]["clusters"][0]
    del cluster["typed_extension_protocol_options"]
    cluster["http2_protocol_options"] = {}
    assert api(d).http2


def test_use_downstream_protocol_config() -> None:
    both = {"http_protocol_options": {}, "http2_protocol_options": {}}
    c = api(with_protocol(use_downstream_protocol_config=both))
    assert (c.http2, c.http2_downstream) == (False, True)
    c = api(with_protocol(use_downstream_protocol_config={"http_protocol_options": {}}))
    assert (c.http2, c.http2_downstream) == (False, False)  # HTTP/1.1 whatever the client


def test_auto_config_needs_tls_and_offers_h2_and_http11() -> None:
    err = reject(with_protocol(auto_config={"http2_protocol_options": {}}))
    assert err.path == f"{OPTS}.auto_config"
    assert "ALPN configured for cluster api which has a non-ALPN transport socket" in str(err)
    d = with_protocol(auto_config={"http2_protocol_options": {}})
    d["static_resources"]["clusters"][0]["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {"@type": TLS_TYPE},
    }
    c = api(d)
    assert c.alpn_auto and c.http2_downstream and not c.http2
    assert c.tls is not None and c.tls.alpn == ("h2", "http/1.1")


def test_tls_http2_cluster_offers_h2() -> None:
    d = with_protocol(explicit_http_config={"http2_protocol_options": {}})
    d["static_resources"]["clusters"][0]["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {"@type": TLS_TYPE},
    }
    assert api(d).tls.alpn == ("h2",)
    ctx = d["static_resources"]["clusters"][0]["transport_socket"]["typed_config"]
    ctx["common_tls_context"] = {"alpn_protocols": ["http/1.1"]}
    err = reject(d)
    assert "on a cluster that speaks h2 is not supported by proxyd" in str(err)


def test_retries_hedging_and_shadows_to_http2_clusters() -> None:
    d = with_protocol(explicit_http_config={"http2_protocol_options": {}})
    routes(d)[0]["route"]["retry_policy"] = {"retry_on": "refused-stream"}
    assert api(d).http2  # retries run on HTTP/2 streams
    routes(d)[0]["route"]["hedge_policy"] = {"hedge_on_per_try_timeout": True}
    err = reject(d)
    assert err.path == f"{VH0}.routes[0].route.retry_policy"
    assert "hedge_on_per_try_timeout on a route to the HTTP/2 cluster 'api'" in str(err)
    both = {"http_protocol_options": {}, "http2_protocol_options": {}}
    d = with_protocol(use_downstream_protocol_config=both)
    vh = d["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    vh["typed_config"]["route_config"]["virtual_hosts"][0]["retry_policy"] = {"retry_on": "5xx"}
    err = reject(d)
    assert "use_downstream_protocol_config or auto_config cluster 'api' is not supported by proxyd" in str(err)
    d = with_protocol(explicit_http_config={"http2_protocol_options": {}})
    routes(d)[2]["route"]["request_mirror_policies"] = [{"cluster": "api"}]
    err = reject(d)
    assert err.path == f"{VH0}.routes[2].route.request_mirror_policies[0].cluster"
    assert "a shadow to the HTTP/2 cluster 'api' is not supported by proxyd" in str(err)
