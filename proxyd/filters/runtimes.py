"""The worker side of every HTTP filter: its factory, by proto type name.

The type names are the config modules' ``TYPE`` (``proxyd.filters.compilers``), written
out here so that the worker never imports a config module (they import protobuf)."""

from __future__ import annotations

from proxyd.filters.api import FactoryMaker
from proxyd.filters.buffer.filter import Factory as BufferFactory
from proxyd.filters.cache.filter import Factory as CacheFactory
from proxyd.filters.composite.filter import Factory as CompositeFactory
from proxyd.filters.compressor.filter import Factory as CompressorFactory
from proxyd.filters.cors.filter import Factory as CorsFactory
from proxyd.filters.csrf.filter import Factory as CsrfFactory
from proxyd.filters.decompressor.filter import Factory as DecompressorFactory
from proxyd.filters.ext_authz.filter import Factory as ExtAuthzFactory
from proxyd.filters.fault.filter import Factory as FaultFactory
from proxyd.filters.grpc_web.filter import Factory as GrpcWebFactory
from proxyd.filters.header_mutation.filter import Factory as HeaderMutationFactory
from proxyd.filters.header_to_metadata.filter import Factory as HeaderToMetadataFactory
from proxyd.filters.health_check.filter import Factory as HealthCheckFactory
from proxyd.filters.jwt_authn.filter import Factory as JwtAuthnFactory
from proxyd.filters.local_ratelimit.filter import Factory as LocalRateLimitFactory
from proxyd.filters.rbac.filter import Factory as RbacFactory
from proxyd.filters.set_metadata.filter import Factory as SetMetadataFactory
from proxyd.filters.stateful_session.filter import Factory as StatefulSessionFactory

FACTORIES: dict[str, FactoryMaker] = {
    "envoy.extensions.filters.http.buffer.v3.Buffer": BufferFactory,
    "envoy.extensions.filters.http.cache.v3.CacheConfig": CacheFactory,
    "envoy.extensions.filters.http.cache_v2.v3.CacheV2Config": CacheFactory,
    "envoy.extensions.filters.http.composite.v3.Composite": CompositeFactory,
    "envoy.extensions.filters.http.compressor.v3.Compressor": CompressorFactory,
    "envoy.extensions.filters.http.decompressor.v3.Decompressor": DecompressorFactory,
    "envoy.extensions.filters.http.cors.v3.Cors": CorsFactory,
    "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz": ExtAuthzFactory,
    "envoy.extensions.filters.http.csrf.v3.CsrfPolicy": CsrfFactory,
    "envoy.extensions.filters.http.fault.v3.HTTPFault": FaultFactory,
    "envoy.extensions.filters.http.grpc_web.v3.GrpcWeb": GrpcWebFactory,
    "envoy.extensions.filters.http.header_mutation.v3.HeaderMutation": HeaderMutationFactory,
    "envoy.extensions.filters.http.header_to_metadata.v3.Config": HeaderToMetadataFactory,
    "envoy.extensions.filters.http.health_check.v3.HealthCheck": HealthCheckFactory,
    "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication": JwtAuthnFactory,
    "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit": LocalRateLimitFactory,
    "envoy.extensions.filters.http.rbac.v3.RBAC": RbacFactory,
    "envoy.extensions.filters.http.set_metadata.v3.Config": SetMetadataFactory,
    "envoy.extensions.filters.http.stateful_session.v3.StatefulSession": StatefulSessionFactory,
}
