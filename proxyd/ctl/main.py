"""``proxyctl``: talk to a running proxyd master over its control socket.

    proxyctl [--control-socket PATH] status [--json]
    proxyctl [--control-socket PATH] reload [--dry-run [--config FILE] [--json]]
    proxyctl [--control-socket PATH] hot-restart [--config FILE] [--timeout S]
    proxyctl [--control-socket PATH] explain [--listener NAME|PORT] [--source-ip IP] [--json] METHOD URL [-H 'Name: value']...
    proxyctl [--control-socket PATH] stop [--fast]

``explain`` asks the master how the running epoch would serve a request, without
sending it: the listener, each virtual host and route tried and why it matched or not,
the route taken (rewrites, header edits, timeouts, retry policy), the HTTP filters, the
clusters and hosts (:mod:`proxyd.master.explain`, :mod:`proxyd.ctl.explain`).

``reload --dry-run`` checks the config file (the running one, or ``--config FILE``) the
way a reload would and prints what the reload would change, changing nothing
(:mod:`proxyd.master.dry_run`); ``--json`` prints the master's document as it is.

Exit codes: 0 done (a dry run: the config is valid); 1 the master refused (an invalid
config on reload, dry run or hot restart:
the message says which file, field and why; a config a worker refused: which worker
and why; a new master that crashed or timed out);
2 no master to talk to, or a bad command line.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import sys
from collections.abc import Sequence
from typing import Any

from proxyd import ipc
from proxyd.ctl.explain import format_explain
from proxyd.master.control import default_control_socket
from proxyd.protocol.epoch_diff import format_diff, show
from proxyd.protocol.epoch_summary import format_counts

EXIT_OK, EXIT_REFUSED, EXIT_UNREACHABLE = 0, 1, 2


class Unreachable(Exception):
    """No master answers on the control socket."""


def request(path: str, command: str, args: dict[str, Any] | None = None, timeout: float = 120.0) -> ipc.ControlReply:  # fmt: skip
    """Send one ControlRequest and wait for its reply (blocking; sans-IO framing)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except FileNotFoundError:
            raise Unreachable(f"no control socket at {path}: is proxyd running? (see --control-socket)") from None  # fmt: skip
        except ConnectionRefusedError:
            raise Unreachable(f"nothing listens on {path}: proxyd is not running (a stale socket file?)") from None  # fmt: skip
        except PermissionError:
            raise Unreachable(f"permission denied on {path}: run proxyctl as the user running proxyd") from None  # fmt: skip
        except OSError as exc:
            raise Unreachable(f"cannot connect to {path}: {exc.strerror or exc}") from None
        sock.sendall(ipc.encode(ipc.ControlRequest(command, args or {})))
        decoder = ipc.FrameDecoder()
        while True:
            msg = decoder.next_message()
            if msg is not None:
                if not isinstance(msg, ipc.ControlReply):
                    raise ipc.IpcError(f"unexpected answer {type(msg).__name__}")
                return msg
            try:
                data = sock.recv(65536)
            except TimeoutError:
                raise Unreachable(f"proxyd did not answer on {path} within {timeout:g} s") from None
            if not data:
                raise Unreachable(f"proxyd closed the control connection on {path} without answering")  # fmt: skip
            decoder.feed(data)
    finally:
        sock.close()


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _duration(seconds: float) -> str:
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return f"{d}d{h:02d}h{m:02d}m"
    if h:
        return f"{h}h{m:02d}m{s:02d}s"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"


def format_status(status: dict[str, Any]) -> str:
    """A readable table of the master and its workers."""
    lines = [
        f"proxyd master  pid {status['pid']}  state {status.get('state', '?')}  "
        f"epoch {status['epoch']}  uptime {_duration(status['uptime_s'])}  "
        f"concurrency {status['concurrency']}  restart epoch {status.get('restart_epoch', 0)}",
        f"config         {status['config']}",
        "",
    ]
    header = ("WORKER", "PID", "EPOCH", "RSS", "CPU%", "STARTED", "RESTARTS")
    rows = [header]
    for w in status["workers"]:
        started = (
            datetime.datetime.fromtimestamp(w["started_at"]).strftime("%Y-%m-%d %H:%M:%S")
            if w.get("started_at")
            else "-"
        )
        rows.append(
            (
                str(w["id"]),
                str(w["pid"]) if w["pid"] else "(down)",
                str(w["epoch"]),
                _size(w["rss"]),
                f"{w['cpu_percent']:.1f}",
                started,
                str(w.get("restarts", 0)),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for r in rows:
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip())
    for w in status["workers"]:
        refusal = w.get("last_refusal")
        if refusal:
            lines.append(f"worker {w['id']} refused epoch {refusal['epoch']}: {refusal['reason']}")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="proxyctl", description="Control a running proxyd.")
    parser.add_argument(
        "--control-socket", metavar="PATH", default=None,
        help=f"the master's control socket (default: {default_control_socket()})",
    )  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    status = sub.add_parser("status", help="the master, its epoch and its workers")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    reload = sub.add_parser("reload", help="re-read the configuration; an invalid one changes nothing")  # fmt: skip
    reload.add_argument(
        "--dry-run", action="store_true",
        help="check the configuration as a reload would and print what it would change; change nothing",
    )  # fmt: skip
    reload.add_argument("--config", metavar="FILE", default=None, help="with --dry-run: check FILE instead of the running config file")  # fmt: skip
    reload.add_argument("--json", action="store_true", help="with --dry-run: print a JSON document")  # fmt: skip
    hot = sub.add_parser(
        "hot-restart",
        help="start a new master from the installed proxyd, hand it the sockets, drain the old one",
    )
    hot.add_argument("--config", metavar="FILE", default=None, help="the new master's config (default: the running one's)")  # fmt: skip
    hot.add_argument(
        "--timeout", type=float, default=None, metavar="S",
        help="give up (and keep the old master serving) when the new one has not taken over by then (default: 60)",
    )  # fmt: skip
    explain = sub.add_parser("explain", help="how the running config would route a request (nothing is sent)")  # fmt: skip
    explain.add_argument("method", metavar="METHOD")
    explain.add_argument("url", metavar="URL", help="http://host[:port]/path?query, or /path with -H 'Host: ...'")  # fmt: skip
    explain.add_argument("-H", "--header", action="append", default=[], metavar="'Name: value'", help="a request header (repeatable)")  # fmt: skip
    explain.add_argument("--listener", default="", metavar="NAME|PORT", help="the listener (default: the only one, or the URL's port)")  # fmt: skip
    explain.add_argument("--source-ip", default="", metavar="IP", help="the client's address (for source_ip hash policies)")  # fmt: skip
    explain.add_argument("--json", action="store_true", help="print the JSON document")
    stop = sub.add_parser("stop", help="graceful stop (workers drain first)")
    stop.add_argument("--fast", action="store_true", help="stop at once, without draining")
    return parser


def format_dry_run(doc: dict[str, Any]) -> str:
    """A valid dry run's document for people: the validate line, then what a reload
    would change (one line per object, one indented line per changed value)."""
    lines = [f"configuration '{doc['config']}' OK"]
    changes = format_diff(doc["diff"])
    bootstrap = doc.get("bootstrap") or []
    if bootstrap:
        changes.append("~ bootstrap (outside static_resources)")
        changes += [f"    {c['field']}: {show(c['old'])} -> {show(c['new'])}" for c in bootstrap]
    if changes:
        lines.append(f"a reload would change (running epoch {doc['epoch']}; nothing was changed):")
        lines += [f"  {line}" for line in changes]
    else:
        lines.append(f"a reload would change nothing (running epoch {doc['epoch']})")
    lines.append(f"after the reload: {format_counts(doc['counts'])}")
    return "\n".join(lines) + "\n"


def _dry_run_output(args: argparse.Namespace, reply: ipc.ControlReply) -> int:
    doc = dict(reply.result)
    if not doc:  # a master that does not know the command, or another failure
        doc = {"valid": False, "config": args.config or "", "error": reply.error}
    if args.json:
        sys.stdout.write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    elif reply.ok:
        for warning in doc.get("warnings", ()):
            print(f"proxyctl: warning: {warning}", file=sys.stderr)
        sys.stdout.write(format_dry_run(doc))
    else:
        print(f"proxyctl: reload --dry-run: {reply.error}", file=sys.stderr)
    return EXIT_OK if reply.ok else EXIT_REFUSED


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    path = args.control_socket or default_control_socket()
    call_args: dict[str, Any] = {"fast": True} if getattr(args, "fast", False) else {}
    command = args.command
    if command == "reload" and not args.dry_run and (args.config or args.json):
        parser.error("reload: --config and --json go with --dry-run (a reload re-reads the running config file)")  # fmt: skip
    if command == "reload" and args.dry_run:
        command = "reload-dry-run"
    if command in ("hot-restart", "reload-dry-run") and args.config:
        call_args["config"] = os.path.abspath(args.config)
    if command == "explain":
        call_args = {"method": args.method, "url": args.url, "headers": list(args.header), "listener": args.listener, "source_ip": args.source_ip}  # fmt: skip
    if command == "hot-restart" and args.timeout:
        call_args["timeout_s"] = args.timeout
    try:
        reply = request(path, command, call_args, timeout=360.0 if command == "hot-restart" else 120.0)  # fmt: skip
    except Unreachable as exc:
        print(f"proxyctl: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except ipc.IpcError as exc:
        print(f"proxyctl: bad answer from proxyd: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if command == "reload-dry-run":
        return _dry_run_output(args, reply)
    if not reply.ok:
        print(f"proxyctl: {args.command} failed: {reply.error}", file=sys.stderr)
        return EXIT_REFUSED
    result = reply.result
    if args.command == "status":
        sys.stdout.write(
            json.dumps(result, indent=2) + "\n" if args.json else format_status(result)
        )
    elif args.command == "reload":
        print(f"reloaded: epoch {result['epoch']}")
    elif args.command == "hot-restart":
        print(
            f"hot restart: new master pid {result['pid']} (restart epoch {result['restart_epoch']}); "
            f"old master pid {result['old_pid']} drains for up to {result['drain_time_s']:g} s"
        )
    elif args.command == "explain":
        sys.stdout.write(
            json.dumps(result, indent=2) + "\n" if args.json else format_explain(result)
        )
    elif args.command == "stop":
        print(f"stopping proxyd (pid {result['pid']}, {'graceful' if result.get('graceful') else 'fast'})")  # fmt: skip
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
