"""Fixed-width rows in an unnamed temporary file: appended in order, read back by position.

The helper keeps an upload's ciphertexts here rather than in memory (a million rows of
3072-bit ciphertexts are ~770 MB as bytes, more as Python ints), holding only the tags
to match; masking then reads the matched rows back in the permuted order. The file is
created unlinked in the state directory (`<state_dir>/spool`, mode 0700), so it goes
away with the process or `close()` and is never visible under a name. It holds
ciphertexts only — what the helper receives anyway; the page cache, not the process,
holds what is hot.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path


class RowSpool:
    """Rows of `row_bytes` bytes each, numbered from 0 in the order appended."""

    def __init__(self, directory: Path, row_bytes: int) -> None:
        if row_bytes < 1:
            raise ValueError("a spooled row needs at least one byte")
        directory = Path(directory)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._file = tempfile.TemporaryFile(dir=directory)
        self._fd = self._file.fileno()
        self.row_bytes = row_bytes
        self.rows = 0

    def append(self, data: bytes) -> None:
        """Append whole rows (their bytes concatenated)."""
        if len(data) % self.row_bytes:
            raise ValueError("spooled data must be whole rows")
        offset = self.rows * self.row_bytes
        view = memoryview(data)
        while view:
            written = os.pwrite(self._fd, view, offset)
            view, offset = view[written:], offset + written
        self.rows += len(data) // self.row_bytes

    def read(self, positions: Iterable[int]) -> list[bytes]:
        """The rows at `positions`, in that order."""
        out = []
        for position in positions:
            if not 0 <= position < self.rows:
                raise IndexError("no such spooled row")
            row = os.pread(self._fd, self.row_bytes, int(position) * self.row_bytes)
            if len(row) != self.row_bytes:
                raise OSError("the spool file is shorter than its rows")
            out.append(row)
        return out

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> RowSpool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
