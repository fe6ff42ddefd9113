"""Build an MPyC runtime from an explicit argument list, never from ``sys.argv``.

MPyC parses ``sys.argv`` when ``mpyc`` is first imported (logging, event loop
policy) and again when ``mpyc.runtime`` is imported (it builds a process-wide
runtime in ``mpyc.runtime.mpc``). Importing it inside a server would therefore
pick up the server's own command line. ``create_runtime`` swaps ``sys.argv``
for the duration of the import and of ``mpyc.runtime.setup()``, so the runtime
only sees the options given here. Use one runtime (one MPC run) per process,
e.g. a worker subprocess per run: MPyC keeps module-level state.

Options chosen for three parties on few cores (see services/lasso/REGRESSION.md):
statistical security ``-K 40`` (as the join's σ), PRSS on (MPyC default; the
protocol relies on it), no worker threads. Barriers and the throttler are not
used by the protocol, so nothing busy-waits while a party waits for the others.
Set ``OPENBLAS_NUM_THREADS=1`` (and friends: ``services.mesh.process.SINGLE_THREAD_ENV``)
before numpy is imported in a party process: the three parties already share the cores.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

#: Statistical security parameter (bits) of every masked opening.
SEC_PARAM = 40

def runtime_arguments(pid: int, parties: Sequence[tuple[str, int]], *, log: bool = False) -> list[str]:
    """MPyC's command-line options for party ``pid`` of the given (host, port) list."""
    if not 0 <= pid < len(parties):
        raise ValueError("party id out of range")
    args = ["-I", str(pid), "-K", str(SEC_PARAM)]
    if len(parties) == 1:
        args += ["-M", "1"]
    else:
        for host, port in parties:
            args += ["-P", f"{host}:{port}"]
    if not log:
        args.append("--no-log")
    return args


def create_runtime(pid: int, parties: Sequence[tuple[str, int]], *, log: bool = False) -> Any:
    """A fresh ``mpyc.runtime.Runtime`` for party ``pid`` (not started).

    ``parties`` lists (host, port) per party id; with one party the runtime
    computes in-process. Start it with ``await rt.start()`` (MPyC's TCP) or
    replace ``rt.start`` for another transport, inside a coroutine run by
    ``rt.run(...)``.
    """
    saved = sys.argv
    sys.argv = [saved[0] if saved else "riskmesh-lasso", *runtime_arguments(pid, parties, log=log)]
    try:
        already = "mpyc.runtime" in sys.modules
        import mpyc.runtime  # noqa: PLC0415  (import on purpose: it parses sys.argv)

        runtime = mpyc.runtime.setup() if already else mpyc.runtime.mpc
    finally:
        sys.argv = saved
    return runtime
