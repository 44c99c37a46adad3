"""The name ``ps`` and ``top`` show for a process (``/proc/<pid>/comm``).

The master calls ``set_process_name("proxyd-master")``; a worker calls it with
``"proxyd-worker"``. Linux keeps at most 15 bytes; elsewhere this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

PR_SET_NAME = 15


def set_process_name(name: str) -> bool:
    """Set this process's comm name; True when the kernel accepted it."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return False  # no libc to call: the name stays "python3", nothing else changes
    buf = ctypes.create_string_buffer(name.encode()[:15])
    return libc.prctl(PR_SET_NAME, buf, 0, 0, 0) == 0
