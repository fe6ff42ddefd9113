"""`python -m services.reliability [pytest args]`: run the reliability suite, print the
summary table and, as the very last line, the reliability line. Exit 0 only when
pytest passed and every count is complete with no leak."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import pytest

from services.reliability.ledger import REPORT_ENV, Ledger, summarise, table

SUITE = Path("tests/reliability")
# Long parts, in the order they must run: the recorded leak study first, the scan last.
LONG_MODULES = (
    "suite_1_leak_study.py",
    "suite_2_refusals.py",
    "suite_3_bad_input.py",
    "suite_4_faults.py",
    "suite_5_load.py",
    "suite_6_leak_scan.py",
)


def main(argv: list[str]) -> int:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="riskmesh-reliability-") as tmp:
        report = Path(tmp) / "ledger.json"
        os.environ[REPORT_ENV] = str(report)
        # Files, not the directory: pytest would not collect a named file again under a named directory.
        targets = [*(str(p) for p in sorted(SUITE.glob("test_*.py"))), *(str(SUITE / m) for m in LONG_MODULES)]
        code = pytest.main(["-q", "-p", "no:cacheprovider", *targets, *argv])
        ledger = Ledger.load(report) if report.exists() else Ledger()
    items = ledger.items
    summary = summarise(items)
    print()
    print(f"reliability suite: pytest exit {int(code)}, wall {time.monotonic() - started:.0f} s")
    print(table(items, ledger.notes))
    print(summary.last_line())
    return 0 if code == 0 and summary.clean else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
