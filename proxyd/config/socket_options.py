"""core.v3.SocketOption → epoch :class:`~proxyd.epoch.SocketOption` (a listener's
``socket_options``; the master sets them on the listening sockets)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from proxyd.config.proto import join
from proxyd.config.values import enum_name
from proxyd.epoch import SocketOption
from proxyd.errors import ConfigError


def socket_options(options: Sequence[Any], path: str, file: str) -> tuple[SocketOption, ...]:
    out = []
    for i, opt in enumerate(options):
        here = f"{path}[{i}]"
        which = opt.WhichOneof("value")
        if which is None:
            # Envoy: "SocketOption: one of int_value, buf_value must be set".
            raise ConfigError(file, here, "one of int_value or buf_value is required")
        if opt.HasField("type") and opt.type.HasField("datagram"):
            # A datagram option does not apply to a TCP listener (Envoy skips it too).
            continue
        out.append(
            SocketOption(
                level=opt.level,
                name=opt.name,
                int_value=opt.int_value if which == "int_value" else 0,
                buf_value=opt.buf_value if which == "buf_value" else b"",
                is_buf=which == "buf_value",
                state=enum_name(opt, "state"),
            )
        )
        if not -(2**31) <= opt.int_value < 2**31:
            raise ConfigError(file, join(here, "int_value"), "must fit a C int (setsockopt)")
    return tuple(out)
