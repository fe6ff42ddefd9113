"""One party of the TNO side of `riskmesh bench --compare-tno`.

Run ONLY by the scratch venv's Python (`.riskmesh/tno-venv/bin/python <this file>
<config.json> <role>`), which holds the public TNO packages; riskmesh never imports
this file (nor any TNO package). Three of these processes run the predecessor's
pipeline the way the packages' own examples do:

1. `tno.mpc.protocols.secure_inner_join`: `DatabaseOwner` ("alice" = insurer,
   "bob" = hospital) and `Helper` ("henri") over `tno.mpc.communication` HTTP pools on
   localhost, Paillier 2048-bit (`Paillier.from_security_parameter(key_length=2048,
   precision=8)`, as in the package README). Each owner ends with an additive
   2-sharing of the joined table (TNO `FixedPoint` values).
2. `tno.mpc.mpyc.secure_learning.Lasso` (gradient descent, the package's only solver
   for it) — or, with `"model": "logistic"` in the config, `Logistic` (gradient descent,
   L1 penalty, approximated exponentiation — SecureML's piecewise-linear sigmoid; the
   exact one did not finish at 1,000 rows in 20 minutes here; the target mapped from
   0/1 to the package's −1/+1 labels inside MPC) — in MPyC 0.10 with three parties over
   MPyC's own TCP on localhost: the two owners input their shares (each rounded to
   MPyC's fixed point, 2^-32), the sum is the joined table; `compute_coef_mpc` returns
   the coefficients, revealed to all three parties (the package has no receivers option).

Each owner prints one JSON line: wall-clock marks (Unix seconds) of process start,
join done and coefficients revealed, and the coefficients (intercept first, as the
package returns them).
"""

from __future__ import annotations

import asyncio
import csv
import json
import sys
import time
from typing import Any

FRACTION_BITS = 32


def read_owner(path: str) -> tuple[list[str], list[str], list[list[float]]]:
    """(column names, identifiers, rows of floats) of an owner's input CSV."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        ids: list[str] = []
        rows: list[list[float]] = []
        for record in reader:
            ids.append(record[0])
            rows.append([float(v) for v in record[1:]])
    return header[1:], ids, rows


async def run_join(role: str, config: dict[str, Any]) -> Any:
    import numpy as np
    from tno.mpc.communication import Pool
    from tno.mpc.encryption_schemes.paillier import Paillier
    from tno.mpc.protocols.secure_inner_join import DatabaseOwner, Helper

    ports: dict[str, int] = config["join_ports"]
    pool = Pool()
    pool.add_http_server(port=ports[role], addr="127.0.0.1")
    for name, port in ports.items():
        if name != role:
            pool.add_http_client(name, "127.0.0.1", port=port)
    if role == "henri":
        helper = Helper(data_parties=("alice", "bob"), identifier=role, pool=pool)
        await helper.run_protocol()
        helper.shutdown_received_schemes()
        await pool.shutdown()
        return None
    names, ids, rows = read_owner(config["inputs"][role])
    paillier = Paillier.from_security_parameter(key_length=config["paillier_bits"], precision=config["precision"])
    owner = DatabaseOwner(
        data_parties=("alice", "bob"),
        identifier=role,
        paillier_scheme=paillier,
        identifiers=np.array([[i] for i in ids], dtype=str),
        data=np.array(rows, dtype=object),
        feature_names=tuple(names),
        pool=pool,
    )
    await owner.run_protocol()
    shares = owner.shares
    feature_names = owner.feature_names
    owner.shutdown_received_schemes()
    paillier.shut_down()
    await pool.shutdown()
    return shares, feature_names


def run_lasso(role: str, config: dict[str, Any], joined: Any) -> list[float]:
    pid = ("alice", "bob", "henri").index(role)
    # MPyC reads its options from sys.argv when its runtime module is imported.
    sys.argv = [sys.argv[0], "-M3", f"-I{pid}", "-B", str(config["mpc_base_port"]), "--no-log"]
    asyncio.set_event_loop(asyncio.new_event_loop())  # MPyC 0.10 builds its runtime on the current loop
    from mpyc.runtime import mpc
    from tno.mpc.mpyc.secure_learning import Lasso, Logistic, SolverTypes
    from tno.mpc.mpyc.secure_learning.models.secure_logistic import ExponentiationTypes
    from tno.mpc.mpyc.secure_learning.models.secure_model import PenaltyTypes

    secfxp = mpc.SecFxp(l=64, f=FRACTION_BITS)
    field = secfxp.field

    def encode(share: Any) -> Any:
        """A TNO FixedPoint share (value / 10^precision) as MPyC's fixed point, rounded."""
        scale = 10 ** int(share.precision)
        return field((2 * int(share.value) * (1 << FRACTION_BITS) + scale) // (2 * scale))

    async def fit() -> list[float]:
        await mpc.start()
        shape = (len(joined[0]), len(joined[0][0])) if pid == 0 else None
        rows, cols = await mpc.transfer(shape, senders=0)
        target = config["target_index"]
        count = rows * cols
        own = [secfxp(encode(v), integral=False) for row in joined[0] for v in row] if pid < 2 else None
        blank = [secfxp(None, integral=False) for _ in range(count)]
        part_a = mpc.input(own if pid == 0 else blank, senders=0)
        part_b = mpc.input(own if pid == 1 else blank, senders=1)
        table = mpc.vector_add(part_a, part_b)
        x = [[table[i * cols + j] for j in range(cols) if j != target] for i in range(rows)]
        y = [table[i * cols + target] for i in range(rows)]
        model: Any
        if config.get("model", "lasso") == "logistic":
            y = [2 * v - 1 for v in y]  # the package's labels are −1/+1
            model = Logistic(
                solver_type=SolverTypes.GD,
                exponentiation=ExponentiationTypes.APPROX,
                penalty=PenaltyTypes.L1,
                alpha=config["alpha"],
            )
        else:
            model = Lasso(solver_type=SolverTypes.GD, alpha=config["alpha"])
        coefficients = await model.compute_coef_mpc(
            x, y, tolerance=config["tolerance"], nr_maxiters=config["max_iterations"]
        )
        await mpc.shutdown()
        return [float(c) for c in coefficients]

    return mpc.run(fit())


def main() -> int:
    started = time.time()
    config = json.loads(open(sys.argv[1]).read())
    role = sys.argv[2]
    joined = asyncio.run(run_join(role, config))
    join_done = time.time()
    feature_names = list(joined[1]) if joined is not None else []
    coefficients = run_lasso(role, config, joined)
    revealed = time.time()
    print(
        json.dumps(
            {
                "role": role,
                "started": started,
                "join_done": join_done,
                "revealed": revealed,
                "joined": len(joined[0]) if joined is not None else None,
                "columns": feature_names,
                "coefficients": coefficients,
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
