"""``proxyd``: the command line, in Envoy's terms.

``proxyd -c FILE`` loads an Envoy v3 bootstrap and runs the master with its workers;
``--mode validate`` only loads and checks the configuration, as ``envoy --mode validate``
does, prints Envoy's ``configuration '<path>' OK`` line and then a summary of what the
config contains (:mod:`proxyd.protocol.epoch_summary`), or with ``--json`` one JSON
document instead. Exit codes: 0 clean stop or valid config; 1 invalid config or a start/run error;
2 bad command line.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from proxyd import __version__
from proxyd.errors import ConfigError
from proxyd.log import FORMATS, LEVELS, configure, default_format
from proxyd.master.control import default_control_socket


def _int_at_least(minimum: int):
    """An argparse type: an integer no smaller than ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
        return value

    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="proxyd",
        description="An edge and service proxy that runs Envoy v3 bootstrap configuration.",
        epilog=(
            "Signals: SIGTERM drains and exits 0; SIGINT, SIGQUIT or a second SIGTERM stop "
            "at once; SIGHUP reloads the configuration; SIGUSR2 hot-restarts (a new master "
            "takes the sockets over). The control socket is what proxyctl talks to."
        ),
        # Exact option names only: a hot restart rewrites the command line by name.
        allow_abbrev=False,
    )
    parser.add_argument("-c", "--config", "--config-path", dest="config", required=True, metavar="FILE", help="Envoy v3 bootstrap, YAML or JSON")  # fmt: skip
    parser.add_argument(
        "--concurrency", type=_int_at_least(1), default=os.cpu_count() or 1, metavar="N",
        help="number of worker processes (default: the number of CPUs, %(default)s here)",
    )  # fmt: skip
    parser.add_argument(
        "--mode", choices=("serve", "validate"), default="serve",
        help="serve (default), or validate: check the configuration and exit",
    )  # fmt: skip
    parser.add_argument(
        "--json", action="store_true",
        help="with --mode validate: print one JSON document (valid, config, error or summary)",
    )  # fmt: skip
    parser.add_argument(
        "--control-socket", metavar="PATH", default=None,
        help=(
            "control socket for proxyctl (default: $PROXYD_CONTROL_SOCKET, else "
            "/run/proxyd/control.sock when /run/proxyd is writable, else "
            f"/tmp/proxyd-<uid>/control.sock; here: {default_control_socket().replace('%', '%%')})"
        ),
    )  # fmt: skip
    parser.add_argument("-l", "--log-level", choices=LEVELS, default="info", help="default: info")
    parser.add_argument(
        "--log-format", choices=FORMATS, default=None,
        help="json or console (default: console when stderr is a terminal, else json)",
    )  # fmt: skip
    parser.add_argument(
        "--drain-time-s", type=_seconds, default=600.0, metavar="S",
        help="how long in-flight requests get to finish on SIGTERM (default: 600, as Envoy)",
    )  # fmt: skip
    parser.add_argument(
        "--parent-shutdown-time-s", type=_seconds, default=900.0, metavar="S",
        help=(
            "after a hot restart, when the new master tells the old one to exit whatever "
            "is left (default: 900, as Envoy)"
        ),
    )  # fmt: skip
    parser.add_argument(
        "--restart-epoch", type=_int_at_least(0), default=0, metavar="N",
        help="0 for a first start; set (with --hot-restart-socket) by the master that starts a hot restart",
    )  # fmt: skip
    parser.add_argument(
        "--hot-restart-socket", metavar="PATH", default="",
        help="the old master's hot-restart socket (set by the master that starts a hot restart)",
    )  # fmt: skip
    parser.add_argument(
        "--worker-heartbeat-timeout-s", type=_positive_seconds, default=10.0, metavar="S",
        help="a worker silent this long is killed and replaced (default: 10)",
    )  # fmt: skip
    parser.add_argument(
        "--worker-rss-limit-mb", type=_int_at_least(0), default=0, metavar="MB",
        help=(
            "a worker whose resident memory is above this is replaced gracefully: a new "
            "worker starts on the same sockets, then the old one drains (default: 0, no limit)"
        ),
    )  # fmt: skip
    parser.add_argument(
        "--admin-address-path", metavar="FILE", default="",
        help=(
            "write the admin address, once bound, to FILE as Envoy does (\"127.0.0.1:9901\", "
            "no newline): with port_value 0 this is how to learn the port"
        ),
    )  # fmt: skip
    parser.add_argument("--version", action="version", version=f"proxyd {__version__}")
    return parser


def _positive_seconds(text: str) -> float:
    value = _seconds(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {value}")
    return value


def validate(path: str, as_json: bool = False) -> int:
    """Load the config and check its epoch as a worker would compile it: what serving
    would refuse, validate refuses. Prints Envoy's OK line and a summary (or with
    ``as_json`` one JSON document: ``valid``, ``config``, then ``error``, or
    ``warnings``, ``summary`` and ``dynamic``)."""
    import json

    from proxyd.config import load
    from proxyd.protocol.epoch_check import EpochRejected, check_epoch
    from proxyd.protocol.epoch_diff import plain
    from proxyd.protocol.epoch_summary import format_summary, summarize

    doc: dict[str, object] = {"valid": False, "config": path}
    try:
        loaded = load(path)
        check_epoch(loaded.epoch_template)
    except ConfigError as exc:
        doc["error"] = str(exc)
    except EpochRejected as exc:
        doc["error"] = f"{path}: {exc}"
    else:
        dynamic = loaded.dynamic
        doc.update(
            valid=True,
            warnings=list(loaded.deprecations),
            summary=summarize(loaded.epoch_template),
            # Where listeners and clusters also come from (None: the file only).
            dynamic={"lds": plain(dynamic.lds), "cds": plain(dynamic.cds), "ads": plain(dynamic.ads)},
        )  # fmt: skip
    if as_json:
        print(json.dumps(doc, indent=2, ensure_ascii=False))
    elif not doc["valid"]:
        print(f"proxyd: {doc['error']}", file=sys.stderr)
    else:
        print(f"configuration '{path}' OK")
        lines = format_summary(summarize(loaded.epoch_template))
        for kind, source in (("listeners", dynamic.lds), ("clusters", dynamic.cds)):
            if source is not None:
                where = source.path or source.cluster
                lines.append(f"{kind} also come from xDS ({source.kind}{' ' + where if where else ''})")  # fmt: skip
        print("\n".join(lines))
    return 0 if doc["valid"] else 1


def serve(args: argparse.Namespace, argv: Sequence[str]) -> int:
    import trio

    from proxyd.log import set_process_name
    from proxyd.master.master import Master, MasterOptions

    fmt = args.log_format or default_format()
    configure(args.log_level, fmt)
    set_process_name("proxyd-master")
    options = MasterOptions(
        config_path=args.config,
        concurrency=args.concurrency,
        control_socket=args.control_socket or default_control_socket(),
        drain_time_s=args.drain_time_s,
        log_level=args.log_level,
        log_format=fmt,
        argv=tuple(argv),
        parent_shutdown_time_s=args.parent_shutdown_time_s,
        restart_epoch=args.restart_epoch,
        hot_restart_socket=args.hot_restart_socket,
        worker_heartbeat_timeout_s=args.worker_heartbeat_timeout_s,
        worker_rss_limit_mb=args.worker_rss_limit_mb,
        admin_address_path=args.admin_address_path,
    )
    master = Master(options)
    code = trio.run(master.run)
    if code != 0 and master.error:
        print(f"proxyd: error: {master.error}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if bool(args.restart_epoch) != bool(args.hot_restart_socket):
        parser.error(
            "--restart-epoch N (N > 0) and --hot-restart-socket go together; they are set by "
            "the master that starts a hot restart (proxyctl hot-restart, SIGUSR2)"
        )
    if args.json and args.mode != "validate":
        parser.error("--json goes with --mode validate")
    if args.mode == "validate":
        # Deprecated fields are logged as warnings (stderr), as Envoy logs them.
        configure(args.log_level, args.log_format or default_format())
        return validate(args.config, as_json=args.json)
    return serve(args, argv)


if __name__ == "__main__":
    sys.exit(main())
