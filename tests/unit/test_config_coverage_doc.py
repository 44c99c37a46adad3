"""docs/config-coverage.md says what the coverage tree and the translation do, field by field."""

from __future__ import annotations

import re

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2

from proxyd.config import coverage_doc

REGENERATE = "regenerate it with: make config-regen"


def rows(text: str, section: str) -> dict[str, str]:
    """field name -> its 'proxyd' column, in one section of the page."""
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    out = {}
    for line in body.splitlines():
        m = re.match(r"^\| `(\w+)` \| [^|]+ \| ([^|]+) \|", line)
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def test_the_page_is_up_to_date() -> None:
    assert coverage_doc.DOC.read_text() == coverage_doc.render(), REGENERATE


def test_every_field_of_the_four_messages_has_a_row_that_follows_the_tree() -> None:
    text = coverage_doc.DOC.read_text()
    for title, desc, spec, _where in coverage_doc.SECTIONS:
        assert isinstance(spec, dict)
        table = rows(text, title)
        assert sorted(table) == sorted(f.name for f in desc.fields), title
        for name, status in table.items():
            assert status.startswith("supported") == (name in spec), (title, name, status)


def test_a_deprecated_field_is_translated_only_where_the_translation_moves_it() -> None:
    listener = listener_pb2.Listener.DESCRIPTOR.fields_by_name
    cluster = cluster_pb2.Cluster.DESCRIPTOR.fields_by_name
    assert coverage_doc._translated(listener["reuse_port"])
    assert coverage_doc._translated(cluster["http2_protocol_options"])
    assert not coverage_doc._translated(cluster["track_timeout_budgets"])
    assert not coverage_doc._translated(cluster["protocol_selection"])
    table = rows(coverage_doc.DOC.read_text(), "Listener")
    assert table["reuse_port"] == "deprecated, translated"
    assert table["deprecated_v1"].startswith("refused")
