"""Peer data MPyC unpickles: numpy arrays and plain containers pass, code does not."""

from __future__ import annotations

import os
import pickle
import types

import numpy as np
import pytest

from services.lasso.mpc import safe_pickle


@pytest.mark.parametrize(
    "obj",
    [
        np.array([1, 2**200, -3], dtype=object),
        np.arange(12, dtype=np.int64).reshape(3, 4),
        np.int64(7),
        [1, (2, b"x"), {"k": "v"}],
        12345678901234567890,
    ],
)
def test_plain_data_round_trips(obj):
    back = safe_pickle.loads(pickle.dumps(obj))
    if isinstance(obj, np.ndarray):
        assert back.dtype == obj.dtype and (back == obj).all()
    else:
        assert back == obj


class Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_code_is_refused_naming_the_global_only():
    with pytest.raises(pickle.UnpicklingError, match=r"refused to unpickle (posix|os)\.system"):
        safe_pickle.loads(pickle.dumps(Exploit()))


def test_restrict_rebinds_only_loads():
    module = types.ModuleType("fake_runtime")
    module.pickle = pickle
    safe_pickle.restrict(module)
    assert module.pickle.loads is safe_pickle.loads and module.pickle.dumps is pickle.dumps
