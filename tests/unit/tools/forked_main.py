"""A stand-in server `main` for tests/unit/tools/test_forked_servers.py: reports what the
forked child got (process group, environment, argv, stdin) on stdout, which is its log."""

from __future__ import annotations

import json
import os
import sys
import time


def main() -> int:
    report = {
        "pid": os.getpid(),
        "pgid": os.getpgid(0),
        "env": dict(os.environ),
        "argv": sys.argv[1:],
        "stdin": sys.stdin.read() if sys.stdin is not None else None,
    }
    print(json.dumps(report), flush=True)
    print("to stderr", file=sys.stderr, flush=True)
    if "--sleep" in sys.argv:
        time.sleep(60)
    return int(os.environ.get("EXIT_CODE", "0"))
