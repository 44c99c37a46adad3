"""access_log entries of the HCM and of the listener → the epoch's AccessLog: loggers,
format sources, filters, options, and what is refused with its path."""

from __future__ import annotations

import json
from pathlib import Path

from tests.unit.test_config_parse import HCM, LOG_T, base, hcm, load, reject

STDOUT_T = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
STDERR_T = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog"
LISTENER = "static_resources.listeners[0]"


def stdout(log_format: dict | None = None, **entry: object) -> dict:
    cfg: dict = {"@type": STDOUT_T}
    if log_format is not None:
        cfg["log_format"] = log_format
    return {"name": "envoy.access_loggers.stdout", "typed_config": cfg, **entry}


def test_stdout_and_stderr_loggers() -> None:
    d = base()
    hcm(d)["access_log"] = [
        stdout(),
        {"name": "envoy.access_loggers.stderr", "typed_config": {"@type": STDERR_T}},
    ]
    logs = load(d).epoch_template.listeners[0].hcm.access_logs
    assert [(a.sink, a.path, a.format, a.writer_key) for a in logs] == [
        ("stdout", "", "", "stdout:"),
        ("stderr", "", "", "stderr:"),
    ]


def test_text_format_sources(tmp_path: Path) -> None:
    fmt_file = tmp_path / "format.txt"
    fmt_file.write_text("%RESPONSE_CODE% from a file\n")
    d = base()
    hcm(d)["access_log"] = [
        stdout({"text_format_source": {"filename": str(fmt_file)}}),
        stdout({"text_format_source": {"inline_bytes": "JVBST1RPQ09MJQo="}}),  # %PROTOCOL%\n
        stdout({"text_format": "%DURATION%\n", "omit_empty_values": True}),
        stdout({"json_format": {"a": "%PROTOCOL%"}, "content_type": "application/json"}),
    ]
    logs = load(d).epoch_template.listeners[0].hcm.access_logs
    assert [a.format for a in logs[:3]] == [
        "%RESPONSE_CODE% from a file\n",
        "%PROTOCOL%\n",
        "%DURATION%\n",
    ]
    assert logs[2].omit_empty_values
    assert json.loads(logs[3].json_format) == {"a": "%PROTOCOL%"}


def test_a_missing_format_file_is_named() -> None:
    d = base()
    hcm(d)["access_log"] = [stdout({"text_format_source": {"filename": "/nonexistent/f"}})]
    err = reject(d)
    assert err.path == f"{HCM}.access_log[0].typed_config.log_format.text_format_source.filename"
    assert "/nonexistent/f" in err.reason


def test_bad_operators_are_refused_with_their_path() -> None:
    d = base()
    hcm(d)["access_log"] = [stdout({"json_format": {"a": {"b": "%FILTER_STATE(x)%"}}})]
    err = reject(d)
    assert err.path == f"{HCM}.access_log[0].typed_config.log_format.json_format"
    assert "%FILTER_STATE% is not supported by proxyd" in err.reason
    d = base()
    d["static_resources"]["listeners"][0]["access_log"] = [
        {"name": "f", "typed_config": {"@type": LOG_T, "path": "/dev/null", "format": "%NOPE%"}}
    ]
    err = reject(d)
    assert err.path == f"{LISTENER}.access_log[0].typed_config.format"
    assert err.reason == "Not supported field in StreamInfo: NOPE"


def test_filters_compile_to_the_epoch() -> None:
    d = base()
    flt = {
        "and_filter": {
            "filters": [
                {"not_health_check_filter": {}},
                {"grpc_status_filter": {"statuses": ["UNAVAILABLE", "OK"], "exclude": True}},
                {"log_type_filter": {"types": ["DownstreamEnd", "DownstreamPeriodic"]}},
                {"header_filter": {"header": {"name": "X-Debug", "present_match": True}}},
                {"duration_filter": {"comparison": {"op": "LE", "value": {"default_value": 9, "runtime_key": "d"}}}},
                {"runtime_filter": {"runtime_key": "r", "percent_sampled": {"numerator": 5, "denominator": "MILLION"}, "use_independent_randomness": True}},
            ]
        }
    }  # fmt: skip
    hcm(d)["access_log"] = [stdout(filter=flt)]
    f = load(d).epoch_template.listeners[0].hcm.access_logs[0].filter
    assert f is not None and f.kind == "and"
    kinds = [(c.kind, c.op, c.value, c.codes, c.names, c.exclude, c.denominator, c.independent)
             for c in f.children]  # fmt: skip
    assert kinds == [
        ("not_health_check", "", 0, (), (), False, 100, False),
        ("grpc_status", "", 0, (14, 0), (), True, 100, False),
        ("log_type", "", 0, (), ("DownstreamEnd", "DownstreamPeriodic"), False, 100, False),
        ("header", "", 0, (), (), False, 100, False),
        ("duration", "LE", 9, (), (), False, 100, False),
        ("runtime", "", 5, (), (), False, 1_000_000, True),
    ]
    assert f.children[3].header is not None and f.children[3].header.name == "x-debug"


def test_refused_filters_and_options_are_named() -> None:
    d = base()
    hcm(d)["access_log"] = [stdout(filter={"metadata_filter": {}})]
    assert reject(d).path == f"{HCM}.access_log[0].filter.metadata_filter"
    d = base()
    hcm(d)["access_log_options"] = {"flush_log_on_tunnel_successfully_established": True}
    err = reject(d)
    assert err.path == f"{HCM}.access_log_options.flush_log_on_tunnel_successfully_established"
    d = base()
    hcm(d)["access_log"] = [
        stdout({"text_format": "x", "formatters": [{"name": "envoy.formatter.req_without_query",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.formatter.req_without_query.v3.ReqWithoutQuery"}}]})
    ]  # fmt: skip
    err = reject(d)
    assert "access log formatter" in err.reason and "not supported by proxyd" in err.reason


def test_access_log_options() -> None:
    d = base()
    hcm(d)["access_log_options"] = {
        "access_log_flush_interval": "2.5s",
        "flush_access_log_on_new_request": True,
    }
    h = load(d).epoch_template.listeners[0].hcm
    assert (h.access_log_flush_interval_s, h.flush_access_log_on_new_request) == (2.5, True)
    d = base()
    hcm(d)["access_log_flush_interval"] = "3s"  # deprecated: the same field
    assert load(d).epoch_template.listeners[0].hcm.access_log_flush_interval_s == 3.0
