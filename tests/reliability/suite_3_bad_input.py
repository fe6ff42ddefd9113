"""Bad input, fuzzed with hypothesis, at the three organisations' processes.

Every generated input is bad by construction (one defect drawn per example) and is
sent by the identity allowed to send it, so it meets the servers' own checks rather
than the authorisation table:

- gateway fields: every request type of GatewayService (client and peer RPCs) with
  invalid specs (unknown enum values, NaN/inf, out-of-range and oversized fields,
  unknown organisations), unknown, repeated or replayed study and run ids, stale
  digests, bad records for Predict, progress with unknown enum values;
- gateway bytes: raw bytes through a generic channel with the method path: corrupt,
  truncated inside a field, and fields sent with the wrong wire type; one request
  over the 64 MiB message limit;
- join and lasso streams: uploads to the helper, deliveries to an owner, the helper's
  own shares, MPC Exchange frames and RunLasso requests: no header first, chunks out of
  order or repeated, rows other than announced, partial rows, wrong widths and keys,
  a corrupt message inside the stream;
- CSV files: encodings, delimiters, empty files, huge values, NaN/inf, duplicates,
  missing and non-numeric cells, bad IDs and quoting — at the owner's encryption server
  (PrepareEncryption) and, twice, through a whole run at the gateway.

Each must end with a clear status (never INTERNAL/UNKNOWN, never a traceback, within
its deadline), a message without patient data, and the state intact: every org's
studies and runs unchanged, no shares served for a refused stream, audits verifying.
"""

from __future__ import annotations

import math
import re
import string
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor as pb_descriptor
from google.protobuf import message_factory
from google.protobuf.message import DecodeError, Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from riskmesh.v1 import common_pb2, gateway_pb2, join_pb2, join_pb2_grpc, lasso_pb2, lasso_pb2_grpc
from services.join import codec
from services.join.core.packing import SlotLayout
from services.join.core.paillier import generate_keypair, generate_pool
from services.mesh.tls import CHANNEL_OPTIONS, MeshCredentials
from services.reliability.leaks import Scanner, id_needles, value_needles
from services.reliability.ledger import Ledger
from services.study.spec import STUDY_ID, owner_columns
from services.testkit.studies import spec_for
from tests.reliability.harness import CLEAN_REJECTIONS, ORGS, TRACEBACK_MARKERS, KnownData, Mesh

pytestmark = pytest.mark.e2e

CALL_S = 15.0
BITS = 1024  # resharing accepts 1024-bit keys (tests); the layout checks are the same
FUZZ = settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
GATEWAY = gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"]
CLIENT_METHODS = (
    "GetInfo",
    "CheckPeers",
    "ProposeStudy",
    "ApproveStudy",
    "GetStudy",
    "ListStudies",
    "StartRun",
    "WatchRun",
    "GetResult",
    "CancelRun",
    "ListRuns",
    "Predict",
    "VerifyAudit",
    "ListAudit",
)
PEER_METHODS = ("PeerPropose", "PeerApprove", "PeerStartRun", "PeerProgress", "PeerCancelRun")
# Methods whose empty request is itself invalid (the others answer an empty request).
NEEDS_FIELDS = (
    "ProposeStudy",
    "ApproveStudy",
    "GetStudy",
    "StartRun",
    "WatchRun",
    "GetResult",
    "CancelRun",
    "Predict",
    "PeerPropose",
    "PeerApprove",
    "PeerStartRun",
    "PeerProgress",
    "PeerCancelRun",
)
BAD_INPUT_STUDY = "bad-input-study"
UNAPPROVED_STUDY = "unapproved-study"
NAN_CSV_STUDY = "nan-csv-study"
DUPLICATE_CSV_STUDY = "duplicate-csv-study"
NOT_HEX = "ghijklmnopqrstuvwxyz"


def request_class(method: str) -> type[Message]:
    return message_factory.GetMessageClass(GATEWAY.methods_by_name[method].input_type)


def undecodable(cls: type[Message], data: bytes) -> bool:
    try:
        cls.FromString(data)
    except DecodeError:
        return True
    return False


@dataclass
class Targets:
    """What the examples aim at: a succeeded run, a failed run, an approved study and its digest."""

    known: KnownData
    spec: common_pb2.StudySpec
    digest: str
    succeeded_run: str
    failed_run: str
    csv_dir: Path

    def __repr__(self) -> str:
        return f"Targets({self.spec.study_id})"


@pytest.fixture(scope="module")
def targets(mesh: Mesh, known: KnownData, tmp_path_factory: pytest.TempPathFactory) -> Targets:
    csv_dir = tmp_path_factory.mktemp("bad-csv")
    digest = mesh.approve_known(known, BAD_INPUT_STUDY)
    spec = spec_for(known.data, UNAPPROVED_STUDY, alphas=[0.05])
    mesh.gateway("insurer").ProposeStudy(
        gateway_pb2.ProposeStudyRequest(spec=spec, source_path=str(known.sources["insurer"])), timeout=CALL_S
    )
    finals = mesh.run_to_end(BAD_INPUT_STUDY)
    assert finals["insurer"].state == common_pb2.RUN_STATE_SUCCEEDED, finals
    nan_csv = _write(
        csv_dir / "nan.csv",
        _csv_lines(known)[:1] + [_with_cell(_csv_lines(known)[1], 2, "nan")] + _csv_lines(known)[2:],
    )
    mesh.approve(
        spec_for(known.data, NAN_CSV_STUDY, alphas=[0.05]), {"insurer": nan_csv, "hospital": known.sources["hospital"]}
    )
    failed = mesh.run_to_end(NAN_CSV_STUDY)
    assert failed["insurer"].state == common_pb2.RUN_STATE_FAILED, failed
    return Targets(
        known,
        spec_for(known.data, BAD_INPUT_STUDY, alphas=[0.05]),
        digest,
        finals["insurer"].run_id,
        failed["insurer"].run_id,
        csv_dir,
    )


@pytest.fixture(scope="module")
def leak_scanner(known: KnownData) -> Scanner:
    return Scanner(id_needles(known.patients) + value_needles(known.cells))


# --- one example ------------------------------------------------------------------------


def expect_rejection(
    mesh: Mesh,
    ledger: Ledger,
    scanner: Scanner,
    messages: list[tuple[str, str]],
    group: str,
    name: str,
    send: Callable[[], Any],
    expected: frozenset[grpc.StatusCode] = CLEAN_REJECTIONS,
    after: Callable[[], None] | None = None,
) -> None:
    """Send one bad input; count it as rejected cleanly only if every check holds."""
    with ledger.check("bad_inputs", group, name) as item:
        before = mesh.states()
        started = time.monotonic()
        try:
            send()
        except grpc.RpcError as err:
            code, details = err.code(), err.details() or ""
        else:
            raise AssertionError(f"{name}: accepted")
        elapsed = time.monotonic() - started
        messages.append((f"bad input {group}: {name}", details))
        assert code in expected, f"{name}: {code.name}: {details}"
        assert details and not any(m in details for m in TRACEBACK_MARKERS), f"{name}: unclear message {details!r}"
        assert not scanner.scan_texts([(name, details)]), f"{name}: patient data in the message {details!r}"
        after_states = mesh.states()
        assert after_states == before, f"{name}: the state changed"
        if after is not None:
            after()
        item.detail = f"{code.name} in {elapsed * 1000:.0f} ms"


# --- gateway fields --------------------------------------------------------------------------


def _text(min_size: int = 0, max_size: int = 40) -> st.SearchStrategy[str]:
    return st.text(st.characters(blacklist_categories=("Cs",)), min_size=min_size, max_size=max_size)


def _bad_study_ids() -> st.SearchStrategy[str]:
    return _text(0, 80).filter(lambda t: not STUDY_ID.fullmatch(t))


def _unknown_enum(known_values: list[int]) -> st.SearchStrategy[int]:
    return st.integers(-(2**31), 2**31 - 1).filter(lambda v: v not in known_values)


SPEC_DEFECTS: dict[str, Callable[[common_pb2.StudySpec, st.DataObject], None]] = {
    "bad study id": lambda s, d: setattr(s, "study_id", d.draw(_bad_study_ids())),
    "oversized title": lambda s, d: setattr(s, "title", "t" * d.draw(st.integers(201, 200_000))),
    "unknown role": lambda s, d: setattr(s.parties[d.draw(st.integers(0, 2))], "role", d.draw(_unknown_enum([1, 2]))),
    "unknown model kind": lambda s, d: setattr(s.model, "kind", d.draw(_unknown_enum([1, 2, 3]))),
    "alpha not finite or not positive": lambda s, d: s.model.alphas.__setitem__(
        0, d.draw(st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -1.0]) | st.floats(max_value=0.0))
    ),
    "range min above max": lambda s, d: _set_range(s, d, d.draw(st.floats(1.0, 1e6)), -1.0),
    "range not finite": lambda s, d: _set_range(s, d, -1.0, d.draw(st.sampled_from([math.nan, math.inf]))),
    "range beyond fixed point": lambda s, d: _set_range(s, d, -1.0, d.draw(st.floats(2.0**31, 1e300))),
    "feature name twice": lambda s, d: setattr(
        s.owners[1].features[0],
        "name",
        s.owners[0].features[d.draw(st.integers(0, len(s.owners[0].features) - 1))].name,
    ),
    "paillier bits": lambda s, d: setattr(
        s, "paillier_bits", d.draw(st.integers(1, 2**32 - 1).filter(lambda b: b not in (2048, 3072)))
    ),
    "min intersection 0": lambda s, d: setattr(s, "min_intersection", 0),
    "too many folds": lambda s, d: setattr(s.model, "cv_folds", d.draw(st.integers(11, 2**32 - 1))),
    "unknown organisation": lambda s, d: _stranger(s, d),
    "fourth party": lambda s, d: s.parties.add(org="helper", role=common_pb2.ROLE_HELPER),
}


def _set_range(spec: common_pb2.StudySpec, data: st.DataObject, low: float, high: float) -> None:
    column = spec.owners[data.draw(st.integers(0, 1))].features[0]
    column.min, column.max = low, high


def _stranger(spec: common_pb2.StudySpec, data: st.DataObject) -> None:
    name = data.draw(st.text(string.ascii_lowercase, min_size=3, max_size=12).filter(lambda n: n not in ORGS))
    spec.parties[2].org = name


@st.composite
def bad_specs(draw: st.DrawFn, base: common_pb2.StudySpec) -> tuple[str, common_pb2.StudySpec]:
    defect = draw(st.sampled_from(sorted(SPEC_DEFECTS)))
    spec = common_pb2.StudySpec()
    spec.CopyFrom(base)
    spec.study_id = "fuzz-study"
    SPEC_DEFECTS[defect](spec, draw(st.data()))
    return defect, spec


def _unknown_ids() -> st.SearchStrategy[str]:
    return _text(0, 60).filter(
        lambda t: (
            not t.startswith(
                ("leak-", "control-", "fault-", "bad-input", "unapproved", "nan-csv", "duplicate-csv", "load-")
            )
        )
    )


@pytest.mark.reliability("bad_inputs", "gateway fields")
@settings(FUZZ, max_examples=60)
@given(data=st.data())
def test_gateway_requests(
    mesh: Mesh,
    targets: Targets,
    ledger: Ledger,
    leak_scanner: Scanner,
    error_messages: list[tuple[str, str]],
    data: st.DataObject,
) -> None:
    """One invalid client or peer request per example, at the insurer's gateway."""
    insurer, as_hospital = mesh.gateway("insurer"), mesh.gateway("insurer", as_org="hospital", as_service="gateway")
    kind = data.draw(
        st.sampled_from(
            [
                "propose",
                "peer propose",
                "approve",
                "peer approve",
                "get study",
                "start run",
                "run ids",
                "predict",
                "peer start run",
                "peer progress",
                "peer cancel",
            ]
        )
    )
    t = targets
    if kind == "propose":
        defect, spec = data.draw(bad_specs(t.spec))

        def send():
            return insurer.ProposeStudy(
                gateway_pb2.ProposeStudyRequest(spec=spec, source_path=str(t.known.sources["insurer"])), timeout=CALL_S
            )  # noqa: E731

        name = f"ProposeStudy: {defect}"
    elif kind == "peer propose":
        defect = data.draw(st.sampled_from(["invalid spec", "digest of another spec", "repeated study id, other spec"]))
        spec = data.draw(bad_specs(t.spec))[1] if defect == "invalid spec" else common_pb2.StudySpec()
        if defect != "invalid spec":
            spec.CopyFrom(t.spec)
            spec.title = data.draw(_text(1, 30).filter(lambda x: x != t.spec.title and x.isprintable()))

        def send():
            return as_hospital.PeerPropose(
                gateway_pb2.PeerProposeRequest(
                    spec=spec, spec_digest=t.digest if defect != "invalid spec" else data.draw(_text())
                ),
                timeout=CALL_S,
            )  # noqa: E731

        name = f"PeerPropose: {defect}"
    elif kind == "approve":
        study_id, digest = data.draw(
            st.one_of(
                st.tuples(_unknown_ids(), _text()),
                st.tuples(st.just(BAD_INPUT_STUDY), _text().filter(lambda x: x != t.digest)),
            )
        )

        def send():
            return insurer.ApproveStudy(
                gateway_pb2.ApproveStudyRequest(study_id=study_id, spec_digest=digest), timeout=CALL_S
            )  # noqa: E731

        name = "ApproveStudy: unknown study or stale digest"
    elif kind == "peer approve":
        study_id, digest = data.draw(
            st.one_of(
                st.tuples(_unknown_ids(), _text()),
                st.tuples(st.just(BAD_INPUT_STUDY), _text().filter(lambda x: x != t.digest)),
            )
        )

        def send():
            return as_hospital.PeerApprove(
                gateway_pb2.PeerApproveRequest(study_id=study_id, spec_digest=digest), timeout=CALL_S
            )  # noqa: E731

        name = "PeerApprove: unknown study or stale digest"
    elif kind == "get study":
        study_id = data.draw(_unknown_ids())
        send = lambda: insurer.GetStudy(gateway_pb2.GetStudyRequest(study_id=study_id), timeout=CALL_S)  # noqa: E731
        name = "GetStudy: unknown study id"
    elif kind == "start run":
        study_id = data.draw(st.one_of(_unknown_ids(), st.just(UNAPPROVED_STUDY)))
        send = lambda: insurer.StartRun(gateway_pb2.StartRunRequest(study_id=study_id), timeout=CALL_S)  # noqa: E731
        name = "StartRun: unknown or unapproved study"
    elif kind == "run ids":
        method = data.draw(st.sampled_from(["WatchRun", "GetResult", "CancelRun", "Predict"]))
        run_id = (
            data.draw(_unknown_ids())
            if method == "WatchRun"
            else data.draw(st.one_of(_unknown_ids(), st.just(t.failed_run)))
        )
        send = lambda: _run_call(insurer, method, run_id)  # noqa: E731
        name = f"{method}: unknown run id or a run without a result / already ended"
    elif kind == "predict":
        defect, records = data.draw(bad_records(t))

        def send():
            return insurer.Predict(gateway_pb2.PredictRequest(run_id=t.succeeded_run, records=records), timeout=CALL_S)  # noqa: E731

        name = f"Predict: {defect}"
    elif kind == "peer start run":
        defect = data.draw(st.sampled_from(["replayed run id", "malformed run id", "stale digest", "unknown study"]))
        run_id = {
            "replayed run id": t.succeeded_run,
            "malformed run id": data.draw(
                _text(0, 200).filter(lambda x: not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", x))
            ),
        }.get(defect, "fuzz-run")
        study_id = data.draw(_unknown_ids()) if defect == "unknown study" else BAD_INPUT_STUDY
        digest = data.draw(_text().filter(lambda x: x != t.digest)) if defect == "stale digest" else t.digest

        def send():
            return as_hospital.PeerStartRun(
                gateway_pb2.PeerStartRunRequest(run_id=run_id, study_id=study_id, spec_digest=digest), timeout=CALL_S
            )  # noqa: E731

        name = f"PeerStartRun: {defect}"
    elif kind == "peer progress":
        defect = data.draw(
            st.sampled_from(
                ["unknown run id", "another org's progress", "unknown phase", "unknown state", "unknown error phase"]
            )
        )
        progress = common_pb2.Progress(
            run_id=t.failed_run, org="hospital", phase=common_pb2.PHASE_INPUT, state=common_pb2.RUN_STATE_RUNNING
        )
        request = gateway_pb2.PeerProgressRequest(progress=progress)
        if defect == "unknown run id":
            request.progress.run_id = data.draw(_unknown_ids())
        elif defect == "another org's progress":
            request.progress.org = data.draw(st.sampled_from(["insurer", "helper", "elsewhere"]))
        elif defect == "unknown phase":
            request.progress.phase = data.draw(_unknown_enum(list(common_pb2.Phase.values())))
        elif defect == "unknown state":
            request.progress.state = data.draw(_unknown_enum(list(common_pb2.RunState.values())))
        else:
            request.error.CopyFrom(
                common_pb2.RunError(
                    phase=data.draw(_unknown_enum(list(common_pb2.Phase.values()))), org="hospital", reason="x"
                )
            )
        send = lambda: as_hospital.PeerProgress(request, timeout=CALL_S)  # noqa: E731
        name = f"PeerProgress: {defect}"
    else:
        run_id = data.draw(_unknown_ids())

        def send():
            return as_hospital.PeerCancelRun(
                gateway_pb2.PeerCancelRunRequest(run_id=run_id, reason="fuzz"), timeout=CALL_S
            )  # noqa: E731

        name = "PeerCancelRun: unknown run id"
    expect_rejection(mesh, ledger, leak_scanner, error_messages, "gateway fields", name, send)


def _run_call(stub: Any, method: str, run_id: str) -> Any:
    if method == "WatchRun":
        return list(stub.WatchRun(gateway_pb2.WatchRunRequest(run_id=run_id), timeout=CALL_S))
    if method == "GetResult":
        return stub.GetResult(gateway_pb2.GetResultRequest(run_id=run_id), timeout=CALL_S)
    if method == "CancelRun":
        return stub.CancelRun(gateway_pb2.CancelRunRequest(run_id=run_id), timeout=CALL_S)
    return stub.Predict(
        gateway_pb2.PredictRequest(run_id=run_id, records=[gateway_pb2.Record(values={"x1": 1.0})]), timeout=CALL_S
    )


@st.composite
def bad_records(draw: st.DrawFn, t: Targets) -> tuple[str, list[gateway_pb2.Record]]:
    names = [c.name for o in t.spec.owners for c in o.features]
    good = {n: draw(st.floats(-10, 10)) for n in names}
    defect = draw(st.sampled_from(["missing feature", "unknown feature", "not finite"]))
    record = dict(good)
    if defect == "missing feature":
        del record[draw(st.sampled_from(names))]
    elif defect == "unknown feature":
        record[draw(_text(1, 20).filter(lambda n: n not in names))] = 1.0
    else:
        record[draw(st.sampled_from(names))] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    return defect, [gateway_pb2.Record(values=good)] * draw(st.integers(0, 3)) + [gateway_pb2.Record(values=record)]


# --- gateway bytes ------------------------------------------------------------------------------


def _raw_call(mesh: Mesh, method: str, payload: bytes) -> Any:
    org, identity = (
        ("insurer", ("hospital", "gateway")) if method in PEER_METHODS else ("insurer", ("insurer", "client"))
    )
    channel = mesh.channel(identity, (org, "gateway"))
    path = f"/riskmesh.v1.GatewayService/{method}"
    if method == "WatchRun":
        return list(channel.unary_stream(path)(payload, timeout=CALL_S))
    return channel.unary_unary(path)(payload, timeout=CALL_S)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


WIRE_TYPE = {
    pb_descriptor.FieldDescriptor.TYPE_STRING: 2,
    pb_descriptor.FieldDescriptor.TYPE_BYTES: 2,
    pb_descriptor.FieldDescriptor.TYPE_MESSAGE: 2,
    pb_descriptor.FieldDescriptor.TYPE_DOUBLE: 1,
    pb_descriptor.FieldDescriptor.TYPE_FIXED64: 1,
    pb_descriptor.FieldDescriptor.TYPE_SFIXED64: 1,
    pb_descriptor.FieldDescriptor.TYPE_FLOAT: 5,
    pb_descriptor.FieldDescriptor.TYPE_FIXED32: 5,
    pb_descriptor.FieldDescriptor.TYPE_SFIXED32: 5,
}


def _field_bytes(number: int, wire_type: int, draw: st.DrawFn) -> bytes:
    key = _varint(number << 3 | wire_type)
    if wire_type == 0:
        return key + _varint(draw(st.integers(0, 2**63)))
    if wire_type == 1:
        return key + draw(st.binary(min_size=8, max_size=8))
    if wire_type == 5:
        return key + draw(st.binary(min_size=4, max_size=4))
    body = draw(st.binary(max_size=20))
    return key + _varint(len(body)) + body


@st.composite
def raw_requests(draw: st.DrawFn) -> tuple[str, str, bytes, frozenset[grpc.StatusCode]]:
    """(method, defect, bytes, statuses allowed) for one raw request."""
    defect = draw(st.sampled_from(["corrupt bytes", "truncated inside a field", "wrong wire types"]))
    if defect == "wrong wire types":
        method = draw(st.sampled_from(NEEDS_FIELDS))
        fields = list(request_class(method).DESCRIPTOR.fields)
        chosen = draw(st.lists(st.sampled_from(fields), min_size=1, max_size=len(fields), unique_by=lambda f: f.number))
        payload = b"".join(
            _field_bytes(
                f.number,
                draw(
                    st.sampled_from(
                        [w for w in (0, 1, 2, 5) if w != WIRE_TYPE.get(f.type, 0) and not (w == 2 and f.is_repeated)]
                    )
                ),
                draw,
            )
            for f in chosen
        )
        return method, defect, payload, CLEAN_REJECTIONS
    method = draw(st.sampled_from(CLIENT_METHODS + PEER_METHODS))
    cls = request_class(method)
    if defect == "corrupt bytes":
        payload = draw(st.binary(min_size=1, max_size=300).filter(lambda b: undecodable(cls, b)))
    else:
        string_fields = [f for f in cls.DESCRIPTOR.fields if f.type == f.TYPE_STRING]
        message = cls()
        if string_fields:
            setattr(message, string_fields[0].name, "run-" + "x" * draw(st.integers(10, 100)))
        else:  # no string field: an unknown length-delimited field 15 that is cut short
            message.MergeFromString(_varint(15 << 3 | 2) + _varint(50) + b"y" * 50)
        whole = message.SerializeToString()
        payload = whole[: draw(st.integers(3, len(whole) - 1))]
        if not undecodable(cls, payload):
            payload = whole[:3] + b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"  # an overlong varint: never valid
    return method, defect, payload, frozenset({grpc.StatusCode.INVALID_ARGUMENT})


@pytest.mark.reliability("bad_inputs", "gateway bytes")
@settings(FUZZ, max_examples=40)
@given(request=raw_requests())
def test_gateway_raw_bytes(
    mesh: Mesh,
    targets: Targets,
    ledger: Ledger,
    leak_scanner: Scanner,
    error_messages: list[tuple[str, str]],
    request: tuple[str, str, bytes, frozenset[grpc.StatusCode]],
) -> None:
    method, defect, payload, allowed = request
    expect_rejection(
        mesh,
        ledger,
        leak_scanner,
        error_messages,
        "gateway bytes",
        f"{method}: {defect}",
        lambda: _raw_call(mesh, method, payload),
        allowed,
    )


@pytest.mark.reliability("bad_inputs", "gateway bytes")
def test_gateway_request_over_the_size_limit(
    mesh: Mesh, targets: Targets, ledger: Ledger, leak_scanner: Scanner, error_messages: list[tuple[str, str]]
) -> None:
    spec = common_pb2.StudySpec()
    spec.CopyFrom(targets.spec)
    spec.study_id, spec.title = "fuzz-study", "t" * (65 * 1024 * 1024)
    payload = gateway_pb2.ProposeStudyRequest(spec=spec).SerializeToString()
    config = mesh.orgs["insurer"]
    credentials = MeshCredentials(config.pki_dir, "insurer", "client").channel_credentials("insurer")
    options = [o for o in CHANNEL_OPTIONS if o[0] != "grpc.max_send_message_length"] + [
        ("grpc.max_send_message_length", -1),
        ("grpc.ssl_target_name_override", "gateway.insurer.riskmesh"),
    ]
    with grpc.secure_channel(
        config.self_endpoint.address("gateway"), credentials, options=options
    ) as channel:  # sends past the server's limit
        propose = channel.unary_unary("/riskmesh.v1.GatewayService/ProposeStudy")
        expect_rejection(
            mesh,
            ledger,
            leak_scanner,
            error_messages,
            "gateway bytes",
            "ProposeStudy: 65 MiB request",
            lambda: propose(payload, timeout=60),
            frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED}),
        )


# --- join and lasso streams ------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamCase:
    defect: str
    messages: list[bytes]


def _mutate_stream(
    draw: st.DrawFn,
    header: bytes,
    chunks: list[bytes],
    corrupt_chunk: Callable[[st.DrawFn], tuple[str, bytes]],
    bad_header: Callable[[st.DrawFn], tuple[str, bytes]],
) -> StreamCase:
    """A stream of serialised requests with one defect (the well-formed stream is header + chunks)."""
    defect = draw(
        st.sampled_from(
            [
                "no header first",
                "chunks out of order",
                "a chunk repeated",
                "a corrupt message",
                "a bad chunk",
                "a bad header",
                "header twice",
            ]
        )
    )
    if defect == "no header first":
        return StreamCase(defect, chunks + [header] if draw(st.booleans()) else list(chunks))
    if defect == "chunks out of order":
        return StreamCase(defect, [header, *reversed(chunks)])
    if defect == "a chunk repeated":
        return StreamCase(defect, [header, chunks[0], chunks[0], *chunks[1:]])
    if defect == "a corrupt message":
        at = draw(st.integers(1, len(chunks)))
        garbage = draw(st.sampled_from([b"\xff\xff\xff", b"\x12\x05ab", b"\x0a\x10\x08"]))
        return StreamCase(defect, [header, *chunks[: at - 1], garbage, *chunks[at - 1 :]])
    if defect == "a bad chunk":
        what, chunk = corrupt_chunk(draw)
        return StreamCase(f"a bad chunk ({what})", [header, chunk])
    if defect == "header twice":
        return StreamCase(defect, [header, header, *chunks])
    what, bad = bad_header(draw)
    return StreamCase(f"a bad header ({what})", [bad, *chunks])


SERVICES = {"intersection": "IntersectionService", "resharing": "ResharingService", "lasso": "LassoService"}


def _stream(
    mesh: Mesh,
    caller: tuple[str, str],
    target: tuple[str, str],
    method: str,
    messages: list[bytes],
    response_stream: bool = False,
) -> Any:
    channel = mesh.channel(caller, target)
    path = f"/riskmesh.v1.{SERVICES[target[1]]}/{method}"
    if response_stream:
        return list(channel.stream_stream(path)(iter(messages), timeout=CALL_S))
    return channel.stream_unary(path)(iter(messages), timeout=CALL_S)


@dataclass
class UploadFixture:
    run_id: str
    header: join_pb2.UploadRowsRequest
    chunks: list[join_pb2.UploadRowsRequest]


@pytest.fixture(scope="module")
def upload(mesh: Mesh, targets: Targets) -> UploadFixture:
    """A run opened at the helper and a well-formed 3-row upload of the insurer (never sent whole during the fuzz)."""
    run_id = "fuzz-upload"
    join_pb2_grpc.IntersectionServiceStub(
        mesh.channel(("helper", "gateway"), ("helper", "intersection"))
    ).OpenIntersection(join_pb2.OpenIntersectionRequest(run_id=run_id, spec=targets.spec), timeout=CALL_S)
    bits = targets.spec.paillier_bits  # the helper refuses a key of another size than the study's
    key = generate_keypair(bits).public
    columns = codec.column_names(owner_columns(targets.spec, "insurer"))
    layout = SlotLayout.for_columns(len(columns), bits)
    pool = generate_pool(key, 3 * layout.ciphertexts_per_row)
    cts = [key.encode_ciphertext(key.encrypt(i, pool.pop())) for i in range(3 * layout.ciphertexts_per_row)]
    tags = [bytes([i]) * 32 for i in range(3)]
    header = join_pb2.UploadRowsRequest(
        header=join_pb2.UploadHeader(
            run_id=run_id,
            rows=3,
            layout=codec.layout_to_proto(layout),
            columns=columns,
            key=codec.public_key_to_proto(key),
        )
    )
    per = layout.ciphertexts_per_row
    chunks = [
        join_pb2.UploadRowsRequest(chunk=join_pb2.RowChunk(seq=0, tags=tags[:2], ciphertexts=cts[: 2 * per])),
        join_pb2.UploadRowsRequest(chunk=join_pb2.RowChunk(seq=1, tags=tags[2:], ciphertexts=cts[2 * per :])),
    ]
    return UploadFixture(run_id, header, chunks)


@st.composite
def bad_uploads(draw: st.DrawFn, u: UploadFixture) -> StreamCase:
    def bad_chunk(d: st.DrawFn) -> tuple[str, bytes]:
        chunk = join_pb2.UploadRowsRequest()
        chunk.CopyFrom(u.chunks[0])
        what = d(
            st.sampled_from(
                ["short tag", "ciphertexts for fewer rows", "ciphertext of a wrong width", "more rows than announced"]
            )
        )
        if what == "short tag":
            chunk.chunk.tags[0] = d(st.binary(max_size=31))
        elif what == "ciphertexts for fewer rows":
            del chunk.chunk.ciphertexts[-1]
        elif what == "ciphertext of a wrong width":
            chunk.chunk.ciphertexts[0] = chunk.chunk.ciphertexts[0][
                : d(st.integers(0, len(chunk.chunk.ciphertexts[0]) - 1))
            ]
        else:
            chunk.chunk.tags.extend([b"z" * 32] * 2)
            chunk.chunk.ciphertexts.extend(list(u.chunks[1].chunk.ciphertexts) * 2)
        return what, chunk.SerializeToString()

    def bad_header(d: st.DrawFn) -> tuple[str, bytes]:
        header = join_pb2.UploadRowsRequest()
        header.CopyFrom(u.header)
        what = d(
            st.sampled_from(
                ["unknown run", "columns not the study's", "rows over the limit", "no key", "rows fewer than sent"]
            )
        )
        if what == "unknown run":
            header.header.run_id = d(_unknown_ids())
        elif what == "columns not the study's":
            header.header.columns[0] = d(_text(1, 20).filter(lambda c: c not in header.header.columns))
        elif what == "rows over the limit":
            header.header.rows = d(st.integers(10_000_001, 2**64 - 1))
        elif what == "no key":
            header.header.ClearField("key")
        else:
            header.header.rows = 1
        return what, header.SerializeToString()

    return _mutate_stream(
        draw, u.header.SerializeToString(), [c.SerializeToString() for c in u.chunks], bad_chunk, bad_header
    )


@pytest.mark.reliability("bad_inputs", "join and lasso streams")
@settings(FUZZ, max_examples=15)
@given(data=st.data())
def test_uploads_to_the_helper(
    mesh: Mesh,
    upload: UploadFixture,
    ledger: Ledger,
    leak_scanner: Scanner,
    error_messages: list[tuple[str, str]],
    data: st.DataObject,
) -> None:
    case = data.draw(bad_uploads(upload))
    expect_rejection(
        mesh,
        ledger,
        leak_scanner,
        error_messages,
        "join and lasso streams",
        f"UploadRows: {case.defect}",
        lambda: _stream(mesh, ("insurer", "encryption"), ("helper", "intersection"), "UploadRows", case.messages),
    )


@pytest.mark.reliability("bad_inputs", "join and lasso streams")
def test_the_helper_still_takes_a_proper_upload(mesh: Mesh, upload: UploadFixture, ledger: Ledger) -> None:
    """Nothing of the refused uploads was kept: the insurer's proper upload is accepted whole."""
    with ledger.check(
        "bad_inputs", "join and lasso streams", "UploadRows: state intact after the fuzz (a proper upload is accepted)"
    ):
        reply = join_pb2_grpc.IntersectionServiceStub(
            mesh.channel(("insurer", "encryption"), ("helper", "intersection"))
        ).UploadRows(iter([upload.header, *upload.chunks]), timeout=CALL_S)
        assert reply.rows == 3


def _fresh_delivery(
    mesh: Mesh, targets: Targets, n: int
) -> tuple[str, join_pb2.DeliverMaskedRowsRequest, list[join_pb2.DeliverMaskedRowsRequest]]:
    run_id = f"fuzz-deliver-{n}-{time.monotonic_ns()}"
    key_msg = (
        join_pb2_grpc.ResharingServiceStub(mesh.channel(("insurer", "gateway"), ("insurer", "resharing")))
        .CreateKey(join_pb2.CreateKeyRequest(run_id=run_id, bits=BITS), timeout=CALL_S)
        .key
    )
    key = codec.public_key_from_proto(key_msg)
    columns = codec.column_names(owner_columns(targets.spec, "hospital"))
    layout = SlotLayout.for_columns(len(columns), BITS)
    pool = generate_pool(key, 2 * layout.ciphertexts_per_row)
    cts = [key.encode_ciphertext(key.encrypt(i, pool.pop())) for i in range(2 * layout.ciphertexts_per_row)]
    header = join_pb2.DeliverMaskedRowsRequest(
        header=join_pb2.MaskedRowsHeader(
            run_id=run_id, joined=2, layout=codec.layout_to_proto(layout), columns=columns, key_id=key.key_id
        )
    )
    per = layout.ciphertexts_per_row
    chunks = [
        join_pb2.DeliverMaskedRowsRequest(chunk=join_pb2.MaskedRowsChunk(seq=0, ciphertexts=cts[:per])),
        join_pb2.DeliverMaskedRowsRequest(chunk=join_pb2.MaskedRowsChunk(seq=1, ciphertexts=cts[per:])),
    ]
    return run_id, header, chunks


@pytest.mark.reliability("bad_inputs", "join and lasso streams")
@settings(FUZZ, max_examples=12)
@given(data=st.data())
def test_deliveries_to_an_owner(
    mesh: Mesh,
    targets: Targets,
    ledger: Ledger,
    leak_scanner: Scanner,
    error_messages: list[tuple[str, str]],
    data: st.DataObject,
) -> None:
    run_id, header, chunks = _fresh_delivery(mesh, targets, data.draw(st.integers(0, 10**6)))
    resharing = join_pb2_grpc.ResharingServiceStub(mesh.channel(("insurer", "gateway"), ("insurer", "resharing")))
    waiter = resharing.AwaitShares(
        join_pb2.AwaitSharesRequest(run_id=run_id), timeout=CALL_S
    )  # as the insurer's gateway waits during a run
    assert next(waiter).progress.message == "waiting for the helper"

    def bad_chunk(d: st.DrawFn) -> tuple[str, bytes]:
        chunk = join_pb2.DeliverMaskedRowsRequest()
        chunk.CopyFrom(chunks[0])
        what = d(st.sampled_from(["a partial row", "ciphertext of a wrong width", "more rows than announced"]))
        if what == "a partial row":
            del chunk.chunk.ciphertexts[-1]
        elif what == "ciphertext of a wrong width":
            chunk.chunk.ciphertexts[0] = chunk.chunk.ciphertexts[0][:-1]
        else:
            chunk.chunk.ciphertexts.extend(list(chunks[1].chunk.ciphertexts) * 2)
        return what, chunk.SerializeToString()

    def bad_header(d: st.DrawFn) -> tuple[str, bytes]:
        bad = join_pb2.DeliverMaskedRowsRequest()
        bad.CopyFrom(header)
        what = d(st.sampled_from(["another key", "unknown run", "bad layout", "fewer rows than sent"]))
        if what == "another key":
            bad.header.key_id = d(_text(1, 40).filter(lambda k: k != header.header.key_id))
        elif what == "unknown run":
            bad.header.run_id = d(_unknown_ids())
        elif what == "bad layout":
            bad.header.layout.slot_bits = d(st.integers(0, 10))
        else:
            bad.header.joined = 1
        return what, bad.SerializeToString()

    case = _mutate_stream(
        data.draw, header.SerializeToString(), [c.SerializeToString() for c in chunks], bad_chunk, bad_header
    )

    def nothing_served() -> None:
        """No partial shares; the gateway's waiter ends with a clear status (the run failed, or was dropped)."""
        mesh.shares_refused(run_id, ["insurer"], within=0.0)
        resharing.DropRun(join_pb2.DropRunRequest(run_id=run_id), timeout=CALL_S)
        with pytest.raises(grpc.RpcError) as ended:
            list(waiter)
        assert ended.value.code() in (
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.ABORTED,
            grpc.StatusCode.UNAVAILABLE,
        ), f"the waiter got {ended.value.code().name}: {ended.value.details()}"

    expect_rejection(
        mesh,
        ledger,
        leak_scanner,
        error_messages,
        "join and lasso streams",
        f"DeliverMaskedRows: {case.defect}",
        lambda: _stream(mesh, ("helper", "intersection"), ("insurer", "resharing"), "DeliverMaskedRows", case.messages),
        after=nothing_served,
    )


@pytest.mark.reliability("bad_inputs", "join and lasso streams")
@settings(FUZZ, max_examples=12)
@given(data=st.data())
def test_helper_shares_stored(
    mesh: Mesh,
    targets: Targets,
    ledger: Ledger,
    leak_scanner: Scanner,
    error_messages: list[tuple[str, str]],
    data: st.DataObject,
) -> None:
    run_id = f"fuzz-store-{data.draw(st.integers(0, 10**6))}-{time.monotonic_ns()}"
    columns = codec.column_names(owner_columns(targets.spec, "insurer"))
    layout = SlotLayout.for_columns(len(columns), BITS)
    width = 16
    header = join_pb2.StoreHelperSharesRequest(
        header=join_pb2.SharesHeader(
            run_id=run_id, rows=2, columns=columns, value_bytes=width, layout=codec.layout_to_proto(layout)
        )
    )
    row = bytes(width * len(columns))
    chunks = [join_pb2.StoreHelperSharesRequest(chunk=join_pb2.SharesChunk(seq=s, rows=1, values=row)) for s in (0, 1)]

    def bad_chunk(d: st.DrawFn) -> tuple[str, bytes]:
        what = d(st.sampled_from(["values of a partial row", "more rows than announced"]))
        values = row[: d(st.integers(1, len(row) - 1))] if what == "values of a partial row" else row * 3
        return what, join_pb2.StoreHelperSharesRequest(
            chunk=join_pb2.SharesChunk(seq=0, rows=1, values=values)
        ).SerializeToString()

    def bad_header(d: st.DrawFn) -> tuple[str, bytes]:
        bad = join_pb2.StoreHelperSharesRequest()
        bad.CopyFrom(header)
        what = d(st.sampled_from(["bad layout", "fewer rows than sent", "value width zero"]))
        if what == "bad layout":
            bad.header.layout.slots_per_ciphertext = 0
        elif what == "fewer rows than sent":
            bad.header.rows = 1
        else:
            bad.header.value_bytes = 0
        return what, bad.SerializeToString()

    case = _mutate_stream(
        data.draw, header.SerializeToString(), [c.SerializeToString() for c in chunks], bad_chunk, bad_header
    )

    def nothing_served() -> None:
        mesh.shares_refused(run_id, ["helper"], within=0.0)
        join_pb2_grpc.ResharingServiceStub(mesh.channel(("helper", "gateway"), ("helper", "resharing"))).DropRun(
            join_pb2.DropRunRequest(run_id=run_id), timeout=CALL_S
        )

    expect_rejection(
        mesh,
        ledger,
        leak_scanner,
        error_messages,
        "join and lasso streams",
        f"StoreHelperShares: {case.defect}",
        lambda: _stream(mesh, ("helper", "intersection"), ("helper", "resharing"), "StoreHelperShares", case.messages),
        after=nothing_served,
    )


@pytest.mark.reliability("bad_inputs", "join and lasso streams")
@settings(FUZZ, max_examples=10)
@given(data=st.data())
def test_lasso_requests(
    mesh: Mesh,
    targets: Targets,
    ledger: Ledger,
    leak_scanner: Scanner,
    error_messages: list[tuple[str, str]],
    data: st.DataObject,
) -> None:
    """Exchange frames from a peer lasso server that do not start with a hello, and RunLasso
    requests from the org's gateway that are invalid or name a run without shares."""
    kind = data.draw(st.sampled_from(["exchange", "run lasso"]))
    if kind == "exchange":
        first = data.draw(st.sampled_from(["an MPC message", "an end frame", "a corrupt frame", "an empty frame"]))
        frame = {
            "an MPC message": lasso_pb2.ExchangeRequest(
                message=lasso_pb2.MpcMessage(
                    pc=data.draw(st.integers(-(2**63), 2**63 - 1)), payload=data.draw(st.binary(max_size=64))
                )
            ).SerializeToString(),
            "an end frame": lasso_pb2.ExchangeRequest(end=lasso_pb2.MpcEnd(abort_reason="x")).SerializeToString(),
            "a corrupt frame": b"\x0a\x05\x08",
            "an empty frame": b"",
        }[first]
        expect_rejection(
            mesh,
            ledger,
            leak_scanner,
            error_messages,
            "join and lasso streams",
            f"Exchange: starts with {first}",
            lambda: _stream(
                mesh, ("insurer", "lasso"), ("hospital", "lasso"), "Exchange", [frame], response_stream=True
            ),
        )
        return
    defect, spec = data.draw(st.one_of(bad_specs(targets.spec), st.just(("a run without shares here", targets.spec))))
    run_id = (
        data.draw(st.one_of(st.just(""), st.just(f"fuzz-lasso-{time.monotonic_ns()}")))
        if defect != "a run without shares here"
        else f"fuzz-lasso-{time.monotonic_ns()}"
    )
    stub = lasso_pb2_grpc.LassoServiceStub(mesh.channel(("insurer", "gateway"), ("insurer", "lasso")))
    expect_rejection(
        mesh,
        ledger,
        leak_scanner,
        error_messages,
        "join and lasso streams",
        f"RunLasso: {defect if run_id else 'no run id'}",
        lambda: list(stub.RunLasso(lasso_pb2.RunLassoRequest(run_id=run_id, spec=spec), timeout=CALL_S)),
    )


# --- CSV files -------------------------------------------------------------------------------------


def _csv_lines(known: KnownData) -> list[str]:
    return known.sources["insurer"].read_text().splitlines()[:25]


def _with_cell(line: str, index: int, value: str) -> str:
    cells = line.split(",")
    cells[index] = value
    return ",".join(cells)


def _write(path: Path, lines: list[str], encoding: str = "utf-8") -> Path:
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding) if lines else b"")
    return path


CSV_DEFECTS = (
    "utf-16",
    "latin-1 header",
    "pipe delimiter",
    "space delimiter",
    "empty file",
    "blank lines only",
    "header only",
    "huge value",
    "value out of range",
    "nan",
    "inf",
    "duplicate id",
    "missing cell",
    "non-numeric cell",
    "extra field",
    "bad quoting",
    "impossible birth date",
    "bad postal code",
    "random bytes",
)


@st.composite
def bad_csvs(draw: st.DrawFn, known: KnownData) -> tuple[str, list[str], str, bytes | None]:
    """(defect, lines, encoding, raw bytes or None) of one bad insurer CSV."""
    lines = _csv_lines(known)
    defect = draw(st.sampled_from(CSV_DEFECTS))
    row = draw(st.integers(1, len(lines) - 1))
    value_col = draw(st.integers(2, len(lines[0].split(",")) - 1))
    encoding = "utf-8"
    if defect == "utf-16":
        encoding = draw(st.sampled_from(["utf-16", "utf-16-le", "utf-32"]))
    elif defect == "latin-1 header":
        lines[0] = lines[0].replace("birth_date", "birth_daté")
        encoding = "latin-1"
    elif defect == "pipe delimiter":
        lines = [line.replace(",", "|") for line in lines]
    elif defect == "space delimiter":
        lines = [line.replace(",", " ") for line in lines]
    elif defect == "empty file":
        lines = []
    elif defect == "blank lines only":
        lines = [" "] * draw(st.integers(1, 5))
    elif defect == "header only":
        lines = lines[:1]
    elif defect == "huge value":
        lines[row] = _with_cell(lines[row], value_col, draw(st.sampled_from(["1e308", "-1e308", "1e999", "9" * 400])))
    elif defect == "value out of range":
        lines[row] = _with_cell(lines[row], value_col, repr(draw(st.floats(1000.5, 1e9))))
    elif defect == "nan":
        lines[row] = _with_cell(lines[row], value_col, draw(st.sampled_from(["nan", "NaN", "-nan"])))
    elif defect == "inf":
        lines[row] = _with_cell(lines[row], value_col, draw(st.sampled_from(["inf", "-Infinity", "+inf"])))
    elif defect == "duplicate id":
        lines.append(lines[row])
    elif defect == "missing cell":
        lines[row] = _with_cell(lines[row], value_col, draw(st.sampled_from(["", "NA", "null"])))
    elif defect == "non-numeric cell":
        lines[row] = _with_cell(
            lines[row],
            value_col,
            draw(
                st.text(string.ascii_letters, min_size=1, max_size=8).filter(
                    lambda t: t.lower() not in ("na", "nan", "inf", "null", "none", "infinity")
                )
            ),
        )
    elif defect == "extra field":
        lines[row] = lines[row] + ",1.5"
    elif defect == "bad quoting":
        lines[row] = lines[row].replace(",", ',"', 1)
    elif defect == "impossible birth date":
        lines[row] = _with_cell(
            lines[row], 0, draw(st.sampled_from(["1975-02-30", "31-13-1980", "1700-01-01", "someday"]))
        )
    elif defect == "bad postal code":
        lines[row] = _with_cell(lines[row], 1, draw(st.sampled_from(["12-34", "AB", "1234.GH", "12345678901"])))
    else:
        return defect, [], encoding, draw(st.binary(min_size=1, max_size=200).filter(lambda b: _not_utf8(b)))
    return defect, lines, encoding, None


def _not_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


@pytest.mark.reliability("bad_inputs", "CSV files")
@settings(FUZZ, max_examples=40)
@given(data=st.data())
def test_csv_files_at_the_encryption_server(
    mesh: Mesh,
    targets: Targets,
    ledger: Ledger,
    leak_scanner: Scanner,
    error_messages: list[tuple[str, str]],
    data: st.DataObject,
) -> None:
    defect, lines, encoding, raw = data.draw(bad_csvs(targets.known))
    path = targets.csv_dir / f"case-{time.monotonic_ns()}.csv"
    if raw is not None:
        path.write_bytes(raw)
    else:
        _write(path, lines, encoding)
    run_id = f"fuzz-csv-{time.monotonic_ns()}"
    spec = spec_for(targets.known.data, BAD_INPUT_STUDY, alphas=[0.05])
    encryption = join_pb2_grpc.EncryptionServiceStub(mesh.channel(("insurer", "gateway"), ("insurer", "encryption")))

    def nothing_prepared() -> None:
        with pytest.raises(grpc.RpcError) as err:
            list(encryption.RunEncryption(join_pb2.RunEncryptionRequest(run_id=run_id), timeout=CALL_S))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    expect_rejection(
        mesh,
        ledger,
        leak_scanner,
        error_messages,
        "CSV files",
        f"PrepareEncryption: {defect}",
        lambda: encryption.PrepareEncryption(
            join_pb2.PrepareEncryptionRequest(run_id=run_id, spec=spec, source_path=str(path)), timeout=CALL_S
        ),
        frozenset({grpc.StatusCode.INVALID_ARGUMENT}),
        after=nothing_prepared,
    )


@pytest.mark.reliability("bad_inputs", "CSV files")
@pytest.mark.parametrize("defect", ["nan", "duplicate id"])
def test_bad_csv_through_a_whole_run(
    mesh: Mesh,
    targets: Targets,
    ledger: Ledger,
    leak_scanner: Scanner,
    error_messages: list[tuple[str, str]],
    defect: str,
) -> None:
    """At the gateway a bad CSV ends the run FAILED in setup, with a reason naming the row
    and column (never the value), at every org that heard of the run; nothing else changes."""
    with ledger.check("bad_inputs", "CSV files", f"StartRun with a CSV holding a {defect}") as item:
        if defect == "nan":
            run_id = targets.failed_run  # made by the fixture: it was the study's only run
        else:
            lines = _csv_lines(targets.known)
            path = _write(targets.csv_dir / "duplicate.csv", [*lines, lines[3]])
            mesh.approve(
                spec_for(targets.known.data, DUPLICATE_CSV_STUDY, alphas=[0.05]),
                {"insurer": path, "hospital": targets.known.sources["hospital"]},
            )
            run_id = mesh.run_to_end(DUPLICATE_CSV_STUDY)["insurer"].run_id
        run = mesh.run("insurer", run_id)
        assert (
            run is not None and run.state == common_pb2.RUN_STATE_FAILED and run.error.phase == common_pb2.PHASE_SETUP
        ), run
        reason = run.error.reason
        error_messages.append((f"run {run_id}", reason))
        assert "row" in reason and not leak_scanner.scan_texts([("reason", reason)]), reason
        mesh.shares_refused(run_id)
        mesh.verify_audits()
        item.detail = f"FAILED in PHASE_SETUP: {reason[:120]}"


@pytest.mark.reliability("bad_inputs", "gateway fields")
def test_state_after_the_fuzz(mesh: Mesh, targets: Targets, ledger: Ledger) -> None:
    with ledger.check(
        "bad_inputs", "gateway fields", "state after the fuzz: audits verify, the succeeded run's result unchanged"
    ):
        mesh.verify_audits()
        assert mesh.result("insurer", targets.succeeded_run).coefficients
