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

What the parties send each other is never pickled: ``install_wire_format`` gives MPyC's
runtime module services.lasso.core.wire in place of ``pickle`` (``transfer`` and the
array paths of ``input``, ``output`` and ``_reshare``) and makes the field classes'
``to_bytes``/``from_bytes`` (the scalar paths) write the same format and check it. MPyC's
code is unchanged; only those names are rebound, in the process that builds the runtime.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, Sequence
from types import ModuleType, SimpleNamespace
from typing import Any, TypeVar

from services.lasso.core import wire

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
    install_wire_format(sys.modules["mpyc.runtime"], sys.modules["mpyc.finfields"])
    return runtime


def _field_to_bytes(cls: Any, values: Any) -> bytes:
    return wire.encode_ints(values, cls.byte_length)


def _field_from_bytes(cls: Any, data: bytes) -> list[int]:
    return wire.decode_values(data, cls.order)


def install_wire_format(runtime_module: ModuleType, finfields_module: ModuleType) -> None:
    """Make MPyC marshal every message between parties with services.lasso.core.wire (idempotent)."""
    runtime_module.pickle = SimpleNamespace(dumps=wire.dumps, loads=wire.loads)  # type: ignore[attr-defined]
    element = finfields_module.FiniteFieldElement
    element.to_bytes = classmethod(_field_to_bytes)
    element.from_bytes = classmethod(_field_from_bytes)


Result = TypeVar("Result")


async def run_fit(mpc: Any, fit: Callable[[], Awaitable[Result]]) -> Result:
    """Start the runtime (``mpc.start``, which a transport may replace), await ``fit()``, shut down.

    On failure the peer connections are closed instead of the shutdown barrier, which would wait
    for peers that may never come: every party's ``run_party`` is this.
    """
    await mpc.start()
    try:
        result = await fit()
    except BaseException:
        for peer in mpc.parties:
            if peer.pid != mpc.pid and peer.protocol is not None:
                peer.protocol.close_connection()
        raise
    await mpc.shutdown()
    return result
