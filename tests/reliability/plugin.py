"""pytest hooks of the reliability suite (registered by tests/reliability/conftest.py).

- `ledger`: the session's `Ledger`; tests count their checks into it.
- A test marked `@pytest.mark.reliability(category, group)` that fails without having
  recorded a failed item of that category (e.g. its fixture broke, or it died before its
  first check) is counted as one failed item, so a crash never shrinks N silently.
- At the end the items go to the JSON file named by $RISKMESH_RELIABILITY_REPORT (read
  by `python -m services.reliability`), and the summary table is printed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.reliability.ledger import REPORT_ENV, Ledger, summarise, table

LEDGER_KEY = pytest.StashKey[Ledger]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "reliability(category, group): a reliability check counted in the summary")
    config.stash[LEDGER_KEY] = Ledger()


@pytest.fixture(scope="session")
def ledger(pytestconfig: pytest.Config) -> Ledger:
    return pytestconfig.stash[LEDGER_KEY]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    item.config.stash[LEDGER_KEY].current_test = item.nodeid
    yield
    item.config.stash[LEDGER_KEY].current_test = ""


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    marker = item.get_closest_marker("reliability")
    if marker is None or not report.failed:
        return
    category, group = marker.args
    ledger = item.config.stash[LEDGER_KEY]
    if not any(i.test == item.nodeid and i.category == category and not i.ok for i in ledger.items):
        reason = str(call.excinfo.value) if call.excinfo else report.when
        ledger.record(
            category, group, f"{item.name} ({report.when})", False, f"the test failed before its check: {reason}"
        )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    path = os.environ.get(REPORT_ENV)
    if path:
        session.config.stash[LEDGER_KEY].dump(Path(path))


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:  # type: ignore[no-untyped-def]
    ledger = config.stash[LEDGER_KEY]
    items = ledger.items
    if (items or ledger.notes) and not os.environ.get(REPORT_ENV):  # the runner prints it itself, last
        terminalreporter.section("reliability")
        terminalreporter.write_line(table(items, ledger.notes))
        terminalreporter.write_line(summarise(items).last_line())
