"""``FieldOps.pair_bits`` (random bits from the pairwise PRSS keys) and the three-party PRSS zero sharing,
with three real party processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from services.bench.local_run import _free_ports

PARTY = """
import json, sys
import numpy as np
from services.lasso.mpc.runtime import create_runtime
from services.lasso.mpc.secure_ops import FieldOps

pid, ports = int(sys.argv[1]), [int(p) for p in sys.argv[2].split(",")]
mpc = create_runtime(pid, [("127.0.0.1", port) for port in ports])

async def main():
    await mpc.start()
    ops = FieldOps(mpc, mpc.SecInt(18))
    bits = await ops.pair_bits(4000)
    from_two = await ops._open(bits, 1)  # t + 1 shares
    from_three = await ops._open(bits, 2)  # all three: equal only if the shares lie on one line
    squares = await ops.output_product(bits * bits, [0, 1, 2])  # degree 2, re-randomised by _prss_zero
    await mpc.shutdown()
    same = np.array_equal(from_two, from_three) and np.array_equal(squares, from_two)
    return [int(v) for v in from_two], bool(same)

print(json.dumps(mpc.run(main())))
"""


def test_pair_bits_are_consistent_uniform_bits() -> None:
    ports = ",".join(str(p) for p in _free_ports(3))
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    procs = [
        subprocess.Popen([sys.executable, "-c", PARTY, str(i), ports], stdout=subprocess.PIPE, text=True, env=env)
        for i in range(3)
    ]
    results = [json.loads(proc.communicate(timeout=120)[0].strip().splitlines()[-1]) for proc in procs]
    bits = results[0][0]
    assert all(r[0] == bits for r in results)  # every party opens the same bits
    assert all(r[1] for r in results)  # degree-1 sharings; b² opened from a degree-2 product is b
    assert set(bits) == {0, 1}
    assert 0.45 < sum(bits) / len(bits) < 0.55  # 4,000 uniform bits: 6 standard deviations
