"""The helper's ciphertext spool: rows appended in order, read back by position, no name on disk."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.join.spool import RowSpool


def test_rows_come_back_by_position(tmp_path: Path) -> None:
    rows = [os.urandom(12) for _ in range(50)]
    with RowSpool(tmp_path / "spool", 12) as spool:
        spool.append(b"".join(rows[:7]))
        spool.append(b"")
        spool.append(b"".join(rows[7:]))
        assert spool.rows == 50
        positions = [49, 0, 7, 7, 23]
        assert spool.read(positions) == [rows[p] for p in positions]
        assert spool.read([]) == []
        with pytest.raises(IndexError):
            spool.read([50])
        with pytest.raises(ValueError):
            spool.append(b"x" * 13)  # not whole rows
        assert spool.rows == 50


def test_the_file_has_no_name_and_the_directory_is_private(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    spool = RowSpool(directory, 4)
    spool.append(b"abcd" * 3)
    assert list(directory.iterdir()) == []  # unlinked at creation
    assert directory.stat().st_mode & 0o777 == 0o700
    spool.close()
    with pytest.raises(ValueError):
        RowSpool(directory, 0)
