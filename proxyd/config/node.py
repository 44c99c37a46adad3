"""The bootstrap's ``node``: the identity proxyd sends in every xDS request.

Envoy sends the bootstrap's Node as written (id, cluster, metadata, locality,
dynamic_parameters, client_features, extensions), with ``user_agent_name`` set to
"envoy" when the file leaves it empty and ``user_agent_build_version`` always replaced
by its own build (so a ``user_agent_version`` in the file is dropped), and the
extensions it has compiled in appended.

proxyd sends the same fields as written, and fills what the file leaves empty:
``user_agent_name`` "proxyd" and ``user_agent_build_version`` proxyd's version (with
``metadata`` ``build.type`` and ``revision.status`` as Envoy's). Unlike Envoy it keeps a
``user_agent_version`` or ``user_agent_build_version`` the file sets, so a control plane
that selects on the client version (sovereign does) can be told one; and it adds no
``extensions`` of its own (the file's are sent as they are).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from envoy.config.core.v3 import base_pb2
from google.protobuf import json_format

from proxyd import __version__

USER_AGENT_NAME = "proxyd"


@dataclass(frozen=True)
class Node:
    """The bootstrap's node identity; ``wire`` is the Node message proxyd sends, as
    serialized protobuf (b"": one with ``id`` and ``cluster`` only and the defaults)."""

    id: str = ""
    cluster: str = ""
    wire: bytes = b""

    def message(self) -> base_pb2.Node:
        node = base_pb2.Node()
        if self.wire:
            node.ParseFromString(self.wire)
        else:
            node.id, node.cluster = self.id, self.cluster
            fill_defaults(node)
        return node

    def as_json(self) -> dict[str, Any]:
        """The node as /server_info shows it (proto field names)."""
        return json_format.MessageToDict(self.message(), preserving_proto_field_name=True)


def build_version() -> base_pb2.BuildVersion:
    parts = [int(p) if p.isdigit() else 0 for p in __version__.split(".")[:3]]
    major, minor, patch = (parts + [0, 0, 0])[:3]
    version = base_pb2.BuildVersion()
    version.version.major_number, version.version.minor_number = major, minor
    version.version.patch = patch
    version.metadata.update({"revision.status": "Clean", "build.type": "RELEASE"})
    return version


def fill_defaults(node: base_pb2.Node) -> None:
    if not node.user_agent_name:
        node.user_agent_name = USER_AGENT_NAME
    if node.WhichOneof("user_agent_version_type") is None:
        node.user_agent_build_version.CopyFrom(build_version())


def compile_node(bootstrap: Any) -> Node:
    node = base_pb2.Node()
    node.CopyFrom(bootstrap.node)
    fill_defaults(node)
    return Node(id=node.id, cluster=node.cluster, wire=node.SerializeToString(deterministic=True))
