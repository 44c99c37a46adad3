"""``python -m proxyd.worker --ipc-fd N --worker-id I``: one worker process.

The master starts it with one end of a socketpair as fd N; everything else (listening
sockets, epochs, drain and stop) arrives over that channel, see
:mod:`proxyd.worker.process`. Exit codes: 0 done, 3 cannot start, 1 anything else.

The worker logs at the level and in the format the master chose (passed in the
environment, see :func:`proxyd.log.configure_from_env`) and names itself
``proxyd-worker`` for ``ps`` and ``top``.
"""

from __future__ import annotations

import argparse
import signal
import sys

import trio

from proxyd.cx_limit import SharedConnectionCount
from proxyd.ipc import Channel
from proxyd.log import configure_from_env, set_process_name
from proxyd.worker.process import EXIT_CANNOT_START, Worker


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m proxyd.worker")
    parser.add_argument("--ipc-fd", type=int, required=True)
    parser.add_argument("--worker-id", type=int, required=True)
    # The global downstream connection count (proxyd.cx_limit): the shared file, the
    # cell this process writes, and how many cells it has.
    parser.add_argument("--cx-limit-fd", type=int, default=-1)
    parser.add_argument("--cx-limit-cell", type=int, default=-1)
    parser.add_argument("--cx-limit-cells", type=int, default=0)
    args = parser.parse_args(argv)
    configure_from_env()
    set_process_name("proxyd-worker")
    # Ctrl-C in a terminal reaches the whole process group; the master decides how the
    # workers stop (Drain or Stop), so the worker does not die on its own SIGINT.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    async def run() -> int:
        try:
            channel = Channel.from_fd(args.ipc_fd)
        except OSError as exc:
            print(f"proxyd worker: bad --ipc-fd {args.ipc_fd}: {exc}", file=sys.stderr)
            return EXIT_CANNOT_START
        counts = None
        if args.cx_limit_fd >= 0 and args.cx_limit_cell > 0:
            try:
                counts = SharedConnectionCount(
                    args.cx_limit_fd, args.cx_limit_cell, args.cx_limit_cells
                )
            except (OSError, ValueError) as exc:
                print(
                    f"proxyd worker: bad --cx-limit-fd {args.cx_limit_fd}: {exc}", file=sys.stderr
                )
                return EXIT_CANNOT_START
        return await Worker(channel, args.worker_id, counts).run()

    return trio.run(run)


if __name__ == "__main__":
    sys.exit(main())
