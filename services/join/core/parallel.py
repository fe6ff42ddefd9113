"""Splitting CPU-bound work over cores.

Two kinds of parallelism are used by the join core:

- threads, for ``gmpy2.powmod_base_list`` (decryption), which releases the GIL;
- processes, for the randomness pool's fixed-base products, whose many small
  multiplications hold the GIL.

Processes come from a ``forkserver`` context: a gRPC server must not be
forked (its threads and polling state do not survive ``fork``), and
``forkserver`` forks from a clean helper process instead, with the Paillier
module preloaded so workers start fast. As with ``spawn``, each worker
imports the caller's ``__main__`` module, which must therefore be guarded by
``if __name__ == "__main__"`` (console scripts are); a server names its own
module in ``preload`` so that the fork server imports it (and what it imports)
once, and each worker, forked from it, finds it imported instead of importing
it again (~0.4 s of CPU per worker). Only plain ints cross the process boundary.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

T = TypeVar("T")


def split_sizes(count: int, parts: int) -> list[int]:
    """Sizes of ``parts`` near-equal pieces of ``count`` (empty pieces dropped)."""
    parts = max(1, min(parts, count)) if count else 1
    base, extra = divmod(count, parts)
    return [base + (1 if i < extra else 0) for i in range(parts) if base or i < extra]


def chunks(items: Sequence[T], parts: int) -> list[Sequence[T]]:
    """``items`` cut into at most ``parts`` contiguous, near-equal slices, in order."""
    out: list[Sequence[T]] = []
    start = 0
    for size in split_sizes(len(items), parts):
        out.append(items[start : start + size])
        start += size
    return out


def default_workers() -> int:
    """Cores this process may use (at least 1)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def stop_executor(executor: ProcessPoolExecutor) -> None:
    """Drop queued work and end the workers now: a stopping server must not leave them
    computing a long piece, orphaned (``shutdown`` alone waits for running tasks)."""
    processes = list(getattr(executor, "_processes", {}).values())  # no public handle before 3.14
    executor.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()


def process_executor(workers: int, preload: Sequence[str] = ()) -> ProcessPoolExecutor:
    """A process pool safe to create from a gRPC server process (forkserver start method);
    `preload`: more modules for the fork server to import once (the caller's own: module docstring)."""
    context = multiprocessing.get_context("forkserver")
    # Takes effect when the fork server first starts; harmless afterwards.
    context.set_forkserver_preload(["services.join.core.paillier", *preload])
    return ProcessPoolExecutor(max_workers=workers, mp_context=context)
