"""structlog set-up shared by the master and the workers, and their process names.

Logs go to stderr, one event per line: JSON objects in production, structlog's console
renderer for a person at a terminal. The master passes its choice to the workers it
starts through the environment (:data:`LEVEL_ENV`, :data:`FORMAT_ENV`), so a worker calls
:func:`configure_from_env` and logs exactly like its master.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
from typing import Any

import structlog

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("json", "console")

LEVEL_ENV = "PROXYD_LOG_LEVEL"
FORMAT_ENV = "PROXYD_LOG_FORMAT"


def default_format() -> str:
    """console when a person is watching (stderr is a terminal), json otherwise."""
    try:
        return "console" if sys.stderr.isatty() else "json"
    except (AttributeError, ValueError):  # stderr replaced or closed
        return "json"


def configure(level: str = "info", fmt: str | None = None) -> None:
    """Route structlog events of ``level`` and above to stderr in ``fmt``.

    ``fmt`` is "json" or "console"; None picks :func:`default_format`. Also exports the
    choice in the environment so child processes (workers) inherit it.
    """
    level = level.lower()
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, not {level!r}")
    fmt = fmt or default_format()
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    os.environ[LEVEL_ENV] = level
    os.environ[FORMAT_ENV] = fmt

    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if fmt == "json":
        processors += [
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(sort_keys=False),
        ]
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        # One write() per event, newline included (print() writes the newline apart):
        # the master and its workers share stderr, and two workers' lines written in
        # pieces come out spliced together.
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def configure_from_env() -> None:
    """What a child process calls: the level and format its parent chose."""
    level = os.environ.get(LEVEL_ENV, "info")
    fmt = os.environ.get(FORMAT_ENV) or None
    if level not in LEVELS:
        level = "info"
    if fmt not in FORMATS:
        fmt = None
    configure(level, fmt)


def get_logger(name: str, **bound: Any) -> Any:
    """A structlog logger carrying ``component=name`` and any ``bound`` values.

    Lazy: safe to create at import time, before :func:`configure` runs.
    """
    return structlog.get_logger(component=name, **bound)


# -- the name ``ps`` and ``top`` show (``/proc/<pid>/comm``) ------------------------------

PR_SET_NAME = 15


def set_process_name(name: str) -> bool:
    """Set this process's comm name ("proxyd-master", "proxyd-worker"); True when the
    kernel accepted it. Linux keeps at most 15 bytes; elsewhere this does nothing."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return False  # no libc to call: the name stays "python3", nothing else changes
    buf = ctypes.create_string_buffer(name.encode()[:15])
    return libc.prctl(PR_SET_NAME, buf, 0, 0, 0) == 0
