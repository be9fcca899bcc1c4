#!/usr/bin/env python3
"""A core0-style exec plugin in Python: `exec_echo.py echo '<json-args>'` prints the args as the result.

core0 ran a plugin once per call as `<path> <command> [<json-args>]` and read its stdout framed
as `20:::` / JSON / `:::`; a failure is a non-zero exit with the error text on stderr.
"""

from __future__ import annotations

import json
import sys


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        sys.stderr.write("missing command\n")
        return 1
    if argv[1] != "echo":
        sys.stderr.write(f"unknown command: {argv[1]}\n")
        return 1
    args = json.loads(argv[2]) if len(argv) > 2 else None
    sys.stdout.write("20:::\n" + json.dumps(args) + "\n:::\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
