"""Fixtures of the reliability suite: the ledger (tests/reliability/plugin.py), the
suite's own data and one shared three-organisation mesh of processes for the long
modules (suite_*.py, run by `make reliability`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability.harness import KnownData, Mesh, known_data
from tests.reliability.plugin import (
    ledger,
    pytest_configure,
    pytest_runtest_makereport,
    pytest_runtest_protocol,
    pytest_sessionfinish,
    pytest_terminal_summary,
)

__all__ = [
    "ledger",
    "pytest_configure",
    "pytest_runtest_makereport",
    "pytest_runtest_protocol",
    "pytest_sessionfinish",
    "pytest_terminal_summary",
]

RECORDS = 200  # rows per owner; half of them join


@pytest.fixture(scope="session")
def reliability_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("reliability")


@pytest.fixture(scope="session")
def known(reliability_root: Path) -> KnownData:
    """The data every study of the shared mesh uses: all IDs and values known to the leak scan."""
    return known_data(reliability_root / "data", RECORDS)


@pytest.fixture(scope="session")
def mesh(reliability_root: Path) -> Iterator[Mesh]:
    shared = Mesh.create(reliability_root)
    shared.start()
    yield shared
    shared.stop()


@pytest.fixture(scope="session")
def error_messages() -> list[tuple[str, str]]:
    """(where, text) of every error message the suite received; the leak scan reads them all."""
    return []


@pytest.fixture(scope="session")
def datasets(known: KnownData) -> list[KnownData]:
    """Every dataset a study of the shared mesh used; the leak scan looks for all of them."""
    return [known]
