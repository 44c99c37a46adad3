"""``proxyctl reload --dry-run``: a reload up to the point where it would change something.

:func:`dry_run_reload` runs the checks :meth:`Master.reload` runs, on the running config
file or on another one, and answers with what the reload would change; it binds,
publishes, opens and resolves nothing, so the epoch, the workers, the sockets and the xDS
subscriptions stay as they are. The checks, in the order a reload makes them:

1. the file is loaded by the same loader (a :class:`~proxyd.errors.ConfigError` names
   the file, the field path and the reason; deprecated fields are logged as a reload
   logs them);
2. a listener keeps its address (:meth:`Master.check_listener_addresses`);
3. the workers' compile check (:func:`~proxyd.protocol.epoch_check.check_epoch`) on the
   file's template, then on the template with what xDS delivered, as a publish checks it;
4. each new listener's address can be bound: a socket with the options the master uses
   is bound and closed at once, never listening, so no connection can reach it (a Unix
   socket path is not probed, to create no file);
5. each access-log file the running epoch does not write yet can be opened for writing,
   which only a worker finds out on a real reload (checked with ``access(2)``, creating
   nothing).

What a reload does later is not foreseen: DNS answers for new host names (the diff shows
the names), the first health checks, and a worker's refusal for another reason.

The answer (a plain dict, the ``--json`` document) is ``{"valid": true, "config",
"running_config", "epoch", "changed", "warnings", "diff", "bootstrap", "counts"}`` or
``{"valid": false, "config", "running_config", "epoch", "error"}``: see
docs/operations.md, "Dry run" under "Reload".
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from typing import Any

import trio

from proxyd.epoch import Epoch, Listener
from proxyd.errors import ConfigError
from proxyd.log import get_logger
from proxyd.master.listeners import BindError
from proxyd.master.master import Master, MasterError
from proxyd.protocol.epoch_check import EpochRejected, check_epoch
from proxyd.protocol.epoch_diff import diff_epochs, field_changes, is_empty
from proxyd.protocol.epoch_summary import summarize

log = get_logger("proxyd.master")


class DryRunRefused(Exception):
    """A check a reload would fail; the message says which and why."""


async def dry_run_reload(master: Master, path: str | None = None) -> dict[str, Any]:
    """The checks of a reload of ``path`` (default: the running config file), and the
    diff of what it would change; changes nothing."""
    from proxyd.config import load

    path = path or master.options.config_path
    doc = _document(master, path)
    try:
        loaded = await trio.to_thread.run_sync(load, path)
        async with master.epochs.lock:  # not while a reload or an xDS update is half done
            doc["epoch"] = master.epoch.number
            if master.stopping:
                raise DryRunRefused("proxyd is stopping")
            doc.update(_check_and_diff(master, loaded, path))
    except (ConfigError, EpochRejected, BindError, DryRunRefused) as exc:
        doc["error"] = str(exc)
    except Exception as exc:  # a bug in the config compiler must not kill the master
        log.exception("reload_dry_run_internal_error", config=path)
        doc["error"] = f"internal error: {exc!r}"
    log.info(
        "reload_dry_run", config=doc["config"], valid=doc["valid"], epoch=doc["epoch"],
        changed=doc.get("changed"), error=doc.get("error"),
    )  # fmt: skip
    return doc


def _document(master: Master, path: str) -> dict[str, Any]:
    return {
        "valid": False,
        "config": os.path.abspath(path),
        "running_config": os.path.abspath(master.options.config_path),
        "epoch": master.epoch.number,
    }


def _check_and_diff(master: Master, loaded: Any, path: str) -> dict[str, Any]:
    template: Epoch = loaded.epoch_template
    try:
        master.check_listener_addresses(template)
    except MasterError as exc:
        raise DryRunRefused(str(exc)) from exc
    try:
        check_epoch(template)
    except EpochRejected as exc:
        raise EpochRejected(f"{path}: {exc}") from exc
    xds = master.xds
    running = xds.preview(xds.static, xds.dynamic, xds.node)
    new = xds.preview(template, loaded.dynamic, loaded.node)
    check_epoch(new)  # what xDS delivered, with the new static resources
    for listener in new.listeners:
        if listener.name not in master.sockets:
            probe_bind(listener, offered={o.name for o in master.sockets.offered()})
    running_logs = _access_log_paths(master.epoch)
    for log_path in sorted(_access_log_paths(new) - running_logs):
        probe_access_log(log_path)
    diff = diff_epochs(running, new)
    bootstrap = _bootstrap_changes(master.loaded, loaded)
    return {
        "valid": True,
        "changed": not is_empty(diff) or bool(bootstrap),
        "warnings": list(loaded.deprecations),
        "diff": diff,
        "bootstrap": bootstrap,
        "counts": summarize(new)["counts"],
    }


def _bootstrap_changes(running: Any, new: Any) -> list[dict[str, Any]]:
    """The bootstrap's values outside ``static_resources`` that differ (admin, node,
    dynamic_resources, ...), as the file has them."""
    if running is None:
        return []
    a = {k: v for k, v in running.bootstrap_json.items() if k != "static_resources"}
    b = {k: v for k, v in new.bootstrap_json.items() if k != "static_resources"}
    return field_changes(a, b)


def _access_log_paths(epoch: Epoch) -> set[str]:
    return {
        key
        for lst in epoch.listeners
        for key in lst.access_log_keys
        if not key.endswith(":")  # "stdout:" / "stderr:" are not files
    }


def probe_bind(listener: Listener, offered: set[str]) -> None:
    """Raise BindError, as a reload would, when ``listener``'s address cannot be bound
    (bound and closed at once, never listening); a Unix socket path, port 0 and a
    listener that takes an offered socket (systemd's, by name) are not probed."""
    if listener.name in offered or listener.port == 0:
        return
    try:
        ipaddress.ip_address(listener.address)
    except ValueError:
        return  # not an IP address (a Unix socket path): binding would create a file
    family = socket.AF_INET6 if ":" in listener.address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((listener.address, listener.port))
    except OSError as exc:
        raise BindError(
            f"cannot bind listener '{listener.name}' to "
            f"{listener.address}:{listener.port}: {exc.strerror or exc}"
        ) from exc
    finally:
        sock.close()


def probe_access_log(path: str) -> None:
    """Raise DryRunRefused, in the words a worker would use, when the access-log file
    ``path`` could not be opened for appending (or created); creates nothing."""
    reason = ""
    if os.path.isdir(path):
        reason = os.strerror(errno.EISDIR)
    elif os.path.exists(path):
        if not os.access(path, os.W_OK):
            reason = os.strerror(errno.EACCES)
    else:
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            reason = os.strerror(errno.ENOENT)
        elif not os.access(parent, os.W_OK | os.X_OK):
            reason = os.strerror(errno.EACCES)
    if reason:
        raise DryRunRefused(f"access log {path!r} cannot be opened: {reason}")
