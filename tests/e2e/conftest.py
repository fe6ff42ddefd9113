"""Fixtures of the console browser tests (tests/e2e/test_console_*.py), shared by their modules."""

from tests.e2e.console_browser import browser, console_mesh  # noqa: F401
