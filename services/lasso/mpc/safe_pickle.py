"""Only plain data may be unpickled from a peer's MPyC messages.

MPyC 0.11 serialises numpy arrays (in `input`, `output`, `_reshare`) and the objects of
`transfer` with `pickle`, and unpickles what arrives from the other parties. Peers are
authenticated (mTLS, party id bound to the certificate) and assumed semi-honest, but an
unrestricted `pickle.loads` would still let a compromised peer run code in our worker.
So the worker gives MPyC's runtime module a `pickle` whose `loads` resolves no global
except numpy's array and dtype reconstruction; ints, bytes, str, lists, tuples and dicts
need no globals at all. Anything else is refused with an error naming the global (never
data), which ends the run. MPyC's code is untouched: only its module's `pickle` name
is rebound, in the worker process.
"""

from __future__ import annotations

import io
import pickle
from types import ModuleType, SimpleNamespace
from typing import Any

ALLOWED_GLOBALS = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
    }
)


class PeerDataRefused(pickle.UnpicklingError):
    """A peer sent a pickle that needs a global outside ALLOWED_GLOBALS (the message names it)."""


class _PlainDataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise PeerDataRefused(f"refused to unpickle {module}.{name} from an MPC peer")


def loads(data: bytes) -> Any:
    """`pickle.loads` for peer data: numpy arrays and builtin containers only."""
    return _PlainDataUnpickler(io.BytesIO(data)).load()


def restrict(runtime_module: ModuleType) -> None:
    """Make MPyC's runtime module unpickle peer data with `loads` (pickling is unchanged)."""
    runtime_module.pickle = SimpleNamespace(dumps=pickle.dumps, loads=loads)  # type: ignore[attr-defined]
