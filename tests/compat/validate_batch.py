"""Run ``proxyd --mode validate -c FILE`` for many files in one process.

``python -m tests.compat.validate_batch [--cwd DIR] FILE...`` prints one JSON object per
file (``--cwd``: the folder relative file names in the configs, certificates and keys,
are read from, as Envoy is run in it):
``{"file": ..., "rc": ..., "stdout": ..., "stderr": ...}``, what the command would have
exited with and printed (its log lines, deprecation warnings included, are on stderr).
One process for all files keeps a compat run short: proxyd's start-up (protobuf
imports) costs about a second, the validation itself a few milliseconds.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys

from proxyd.cli import main as proxyd_main


def validate(path: str) -> dict[str, object]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = proxyd_main(["--mode", "validate", "-c", path, "--log-format", "json"])
    return {"file": path, "rc": rc, "stdout": out.getvalue(), "stderr": err.getvalue()}


def main(args: list[str]) -> int:
    where = "."
    if args[:1] == ["--cwd"]:
        where, args = args[1], args[2:]
    paths = [os.path.abspath(p) for p in args]
    with contextlib.chdir(where):
        for path in paths:
            print(json.dumps(validate(path)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
