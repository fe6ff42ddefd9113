"""A one-party MPyC runtime (``-M1``: the protocol code with threshold 0, in-process)."""

from __future__ import annotations

from typing import Any

import pytest

from services.lasso.mpc.runtime import create_runtime


@pytest.fixture(scope="session")
def mpc() -> Any:
    return create_runtime(0, [("127.0.0.1", 0)])
