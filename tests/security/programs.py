"""MPC programs for the malicious-peer tests (tests/e2e/test_malicious_peer.py).

`honest` is services.testkit.transport_check (MPyC's scalar input and output) followed
by a field stage on riskmesh's own operations (secure_ops: a multiplication with
truncation, a resharing, MPyC's array comparison and an output to the owners), whose
opened values are added to the result. The stage starts, after reporting
PHASE_ITERATIONS, with one all-to-all `transfer`, so every party's server is in that
phase before any party can send a message of the stage.

`attacker` is `honest` with this party's messages tampered once the stage has begun, in
runs named `attack-<attack>-…`; in any other run it is honest, so the same server also
takes part in studies that must succeed. It runs in a real lasso server with a valid
certificate: what it sends goes through its server's Exchange streams to the others.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from riskmesh.v1 import common_pb2, lasso_pb2
from services.lasso.core import wire
from services.lasso.core.parties import HELPER_PID
from services.lasso.mpc.secure_ops import FieldOps
from services.lasso.worker.program import ProgramError, RunContext
from services.testkit import transport_check
from tests.security import payloads

CANARY_ENV = "RISKMESH_TEST_CANARY"
FRAC = 16
A = (1.5, -2.25, 3.0)
B = (2.0, 4.0, -0.5)
FLOOD_MESSAGE_BYTES = 1024
FLOOD_MESSAGES = 5000  # past the worker's cap of 4096 messages ahead per peer

Tamper = Callable[[bytes], bytes]


def _wrong_width(data: bytes) -> bytes:
    values = wire.loads(data)
    return wire.encode_ints([v & 0xFFFFFFFFFFFFFFFF for v in values.reshape(-1)], 8)


def _out_of_range(data: bytes) -> bytes:
    _, width, shape, _ = wire.parse_header(data)
    return wire.encode_ints([(1 << (8 * width)) - 1] * math.prod(shape), width)


def tampering(attack: str) -> Tamper:
    """What the attacker sends instead of a message of the field stage."""
    canary = Path(os.environ.get(CANARY_ENV, "/nonexistent/canary"))
    attacks: dict[str, Tamper] = {
        "canary": lambda data: payloads.canary_pickle(canary),
        "dtypeoob": lambda data: payloads.dtype_out_of_bounds(),
        "dtypeobject": lambda data: payloads.dtype_fake_object(),
        "picklebillion": lambda data: payloads.pickled_billion_elements(),
        "billion": lambda data: payloads.billion_elements(),
        "truncated": lambda data: data[: len(data) - 5],
        "oversized": lambda data: data + bytes(64),
        "wrongwidth": _wrong_width,
        "outofrange": _out_of_range,
    }
    return attacks[attack]


def _flood(mpc: Any) -> None:
    """Messages for rounds far ahead, to every peer: more than the worker may buffer."""
    rng = random.Random(5)
    message = wire.dumps(bytes(FLOOD_MESSAGE_BYTES))
    for peer in mpc.parties:
        if peer.pid != mpc.pid:
            for _ in range(FLOOD_MESSAGES):
                peer.protocol.send(rng.getrandbits(62) | 1 << 62, message)


async def field_stage(mpc: Any, context: RunContext, on_start: Callable[[], None] = lambda: None) -> list[float]:
    """(a·b, [a·b < 0]) per element, opened to the two owners (empty at the helper)."""
    context.report(common_pb2.PHASE_ITERATIONS, 0, 1)
    await mpc.transfer(b"field stage")
    on_start()
    ops = FieldOps(mpc, mpc.SecFxp(64, FRAC))
    product = await ops.mul(ops.fixed(A, FRAC), ops.fixed(B, FRAC), FRAC, 2 * FRAC + 8)
    product = await ops.reduce(product * 1 % ops.p)  # a resharing (degree t stays t)
    below = await ops.less_than_zero(product, FRAC + 8)
    opened = await ops.output(product, [0, 1])
    signs = await ops.output(below, [0, 1])
    context.report(common_pb2.PHASE_ITERATIONS, 1, 1)
    if opened is None or signs is None:
        return []
    return [*ops.to_float(opened, FRAC), *(float(s) for s in signs)]


def field_names() -> list[str]:
    return [*(f"product:{i}" for i in range(len(A))), *(f"negative:{i}" for i in range(len(A)))]


async def _run(mpc: Any, context: RunContext, on_start: Callable[[], None] = lambda: None) -> lasso_pb2.ModelResult:
    result = await transport_check.run(mpc, context)
    values = await field_stage(mpc, context, on_start)
    if context.pid != HELPER_PID:
        result.coefficients.extend(
            lasso_pb2.Coefficient(feature=name, value=v) for name, v in zip(field_names(), values, strict=False)
        )
    return result


async def honest(mpc: Any, context: RunContext) -> lasso_pb2.ModelResult:
    return await _run(mpc, context)


async def attacker(mpc: Any, context: RunContext) -> lasso_pb2.ModelResult:
    if not context.run_id.startswith("attack-"):
        return await _run(mpc, context)
    attack = context.run_id.split("-")[1]
    send = mpc._send_message

    def tampered(peer: int, data: bytes) -> None:
        send(peer, tamper(data))

    def start() -> None:
        if attack == "flood":
            _flood(mpc)
        else:
            mpc._send_message = tampered  # every later message of this party

    if attack != "flood":
        tamper = tampering(attack)
    await _run(mpc, context, start)
    raise ProgramError("the attacked parties should have ended the run")
