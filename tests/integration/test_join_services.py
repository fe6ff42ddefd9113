"""The join's servers in this process over real mTLS: what crosses the wire, bad input, refusals.

Three orgs (insurer, hospital = data owners; helper) run their encryption, intersection
and resharing servers on the session's event-loop thread (tests/conftest.py), each behind
a test-only `RecordingInterceptor` placed before every other interceptor. It wraps the
request deserializer of each method, so it keeps the exact serialised bytes of every
request message the server received over TLS (refused ones included). The owners' tag
key is captured by wrapping `keys.derive_tag_key`, their Paillier key pairs by wrapping
`resharing_server.generate_keypair` — both only so that the tests can search the wire for
the key and decrypt what the owners received.

Rows reach the shares in the helper's secret permutation π; the tests undo it by matching
rows on their values (`drive.same_rows`: both sides sorted) and, where row k of one
delivery must be compared with row k of another, by the common π order of all deliveries.
"""

from __future__ import annotations

import contextlib
import csv
import io
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import grpc
import numpy as np
import pytest

from riskmesh.v1 import common_pb2, join_pb2, join_pb2_grpc
from services.bench.drive import Harness, collect_shares, plaintext_join, reconstruct_table, run_join, same_rows
from services.join import codec, encryption_server, intersection_server, resharing_server
from services.join.core import keys
from services.join.core.fixedpoint import FixedPointFormat
from services.join.core.packing import SlotLayout, unpack_row
from services.join.core.paillier import PrivateKey, PublicKey, generate_keypair, generate_pool
from services.mesh.config import OrgConfig, load_config
from services.mesh.server import MeshServer
from services.mesh.tls import MeshCredentials
from services.study.spec import owner_columns
from services.testkit.studies import spec_for
from services.testkit.synthetic import OwnerTable, StudyData, make_study_data
from services.tools.launcher import local_mesh_for
from tests.conftest import LoopThread

BITS = 1024  # resharing accepts 1024-bit keys for tests; 2048 runs in tests/e2e
RECORDS = 200  # rows per owner; half of each owner's rows join
ENC = "/riskmesh.v1.EncryptionService/"
INT = "/riskmesh.v1.IntersectionService/"
RES = "/riskmesh.v1.ResharingService/"
SERVERS = {
    "insurer": ("encryption", "resharing"),
    "hospital": ("encryption", "resharing"),
    "helper": ("intersection", "resharing"),
}
BUILDERS: dict[str, Callable[..., Any]] = {
    "encryption": encryption_server.build_server,
    "intersection": intersection_server.build_server,
    "resharing": resharing_server.build_server,
}


# --- test-only instruments ---------------------------------------------------------


class RecordingInterceptor(grpc.aio.ServerInterceptor):
    """Keeps (method, serialised request bytes) of every request message the server receives."""

    def __init__(self) -> None:
        self.received: list[tuple[str, bytes]] = []

    async def intercept_service(self, continuation, details):  # type: ignore[no-untyped-def]
        handler = await continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        method, deserialize = details.method, handler.request_deserializer

        def record(data: bytes) -> Any:
            self.received.append((method, bytes(data)))
            return deserialize(data)

        return handler._replace(request_deserializer=record)

    def messages(self, method: str) -> list[bytes]:
        return [data for m, data in self.received if m == method]


@contextlib.contextmanager
def recording_into(recorder: RecordingInterceptor) -> Iterator[None]:
    """While building a MeshServer: put `recorder` first on its mTLS server (not the health port)."""
    real = grpc.aio.server

    def server(*args: Any, interceptors: Any = None, **kwargs: Any) -> grpc.aio.Server:
        if interceptors is not None:
            interceptors = [recorder, *interceptors]
        return real(*args, interceptors=interceptors, **kwargs)

    with mock.patch.object(grpc.aio, "server", server):
        yield


@dataclass
class JoinMesh:
    configs: dict[str, Path]
    loop: LoopThread
    recorders: dict[tuple[str, str], RecordingInterceptor]
    tag_keys: list[keys.TagKey] = field(default_factory=list)
    paillier_keys: list[PrivateKey] = field(default_factory=list)
    channels: dict[tuple[str, str, str, str], grpc.Channel] = field(default_factory=dict)

    def stub(self, caller: tuple[str, str], target: tuple[str, str], stub_class: Any) -> Any:
        """A blocking stub to target (org, server) presenting caller (org, service)'s certificate."""
        key = (*caller, *target)
        if key not in self.channels:
            pki = load_config(self.configs[caller[0]], env={}).pki_dir
            address = load_config(self.configs[target[0]], env={}).self_endpoint.address(target[1])
            self.channels[key] = MeshCredentials(pki, *caller).sync_channel(target[0], target[1], address)
        return stub_class(self.channels[key])

    def gateway(self, org: str, server: str) -> Any:
        stub_class = {
            "encryption": join_pb2_grpc.EncryptionServiceStub,
            "intersection": join_pb2_grpc.IntersectionServiceStub,
            "resharing": join_pb2_grpc.ResharingServiceStub,
        }[server]
        return self.stub((org, "gateway"), (org, server), stub_class)

    def private_key(self, key_id: str) -> PrivateKey:
        return next(k for k in self.paillier_keys if k.public.key_id == key_id)


@pytest.fixture(scope="module")
def join_mesh(loop_thread: LoopThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[JoinMesh]:
    configs = local_mesh_for(tmp_path_factory.mktemp("join-mesh"), min_paillier_bits=BITS)  # fast keys
    mesh = JoinMesh(configs, loop_thread, {})
    real_derive, real_keypair = keys.derive_tag_key, resharing_server.generate_keypair

    def derive(*args: Any, **kwargs: Any) -> keys.TagKey:
        key = real_derive(*args, **kwargs)
        mesh.tag_keys.append(key)
        return key

    def keypair(bits: int) -> PrivateKey:
        key = real_keypair(bits)
        mesh.paillier_keys.append(key)
        return key

    servers: list[MeshServer] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(keys, "derive_tag_key", derive)
        patch.setattr(resharing_server, "generate_keypair", keypair)
        for org, names in SERVERS.items():
            config = load_config(configs[org], env={})
            for name in names:
                recorder = mesh.recorders[(org, name)] = RecordingInterceptor()

                async def start(
                    name: str = name, recorder: RecordingInterceptor = recorder, config: OrgConfig = config
                ) -> MeshServer:
                    with recording_into(recorder):
                        server = await BUILDERS[name](config)
                    await server.start()
                    return server

                servers.append(loop_thread.run(start()))
        yield mesh
        for channel in mesh.channels.values():
            channel.close()
        for server in servers:
            loop_thread.run(server.stop(0))


# --- data and what must never cross the wire ------------------------------------------


@dataclass
class Study:
    data: StudyData
    spec: common_pb2.StudySpec
    sources: dict[str, Path]


def make_study(root: Path, records: int, overlap: float = 0.5, study_id: str = "join-it", seed: int = 7) -> Study:
    data = make_study_data(records, overlap=overlap, features=10, seed=seed)
    spec = spec_for(data, study_id, min_intersection=10)  # small joins: the floors are the gateways' job
    spec.paillier_bits = BITS
    root.mkdir(parents=True, exist_ok=True)
    sources = {t.org: t.write_csv(root / f"{t.org}.csv") for t in (data.insurer, data.hospital)}
    return Study(data, spec, sources)


def id_strings(table: OwnerTable) -> set[str]:
    """Every form of every ID of an owner: as written, canonical, and its two parts."""
    out: set[str] = set()
    for (birth, postal), canonical in zip(table.ids, table.canonical, strict=True):
        iso, code = canonical.split("|")
        out |= {birth, postal, canonical, iso, code}
    return out


def value_strings(table: OwnerTable) -> set[str]:
    """Decimal forms of every attribute value (as the CSV holds it, and Python's repr if long)."""
    out: set[str] = set()
    for v in table.values.ravel():
        written = f"{v:.6f}"
        out.add(written)
        if len(repr(float(written))) >= 7:  # shorter strings occur by chance in random bytes
            out.add(repr(float(written)))
    return out


def value_encodings(table: OwnerTable) -> set[bytes]:
    """8-byte forms of every value: IEEE double and fixed-point x' = round(x·2^f) + 2^(ℓ−1), both byte orders."""
    fmt = FixedPointFormat()
    out: set[bytes] = set()
    for v in table.values.ravel():
        for x in {float(v), float(f"{v:.6f}")}:
            encoded = int(np.rint(x * fmt.scale)) + fmt.offset
            out |= {
                struct.pack(">d", x),
                struct.pack("<d", x),
                encoded.to_bytes(8, "big"),
                encoded.to_bytes(8, "little"),
            }
    return out


def forbidden(data: StudyData, tag_keys: list[keys.TagKey] | None = None) -> set[bytes]:
    """Byte strings of patient data (and the tag keys) that must never cross to the helper."""
    out: set[bytes] = set()
    for table in (data.insurer, data.hospital):
        out |= {s.encode() for s in id_strings(table) | value_strings(table)}
        out |= value_encodings(table)
    out |= {k.secret for k in tag_keys or []}
    return out


def occurrences(blob: bytes, needles: set[bytes]) -> set[bytes]:
    """The needles that occur in blob (one window set per needle length: fast for thousands of needles)."""
    found: set[bytes] = set()
    for length in {len(n) for n in needles}:
        windows = {blob[i : i + length] for i in range(len(blob) - length + 1)}
        found |= {n for n in needles if len(n) == length and n in windows}
    return found


def assert_clean_message(message: str, data: StudyData, extra: tuple[str, ...] = ()) -> None:
    """An error message names phases, rows and columns, never an ID or a value."""
    leaked = [
        s
        for s in id_strings(data.insurer)
        | id_strings(data.hospital)
        | value_strings(data.insurer)
        | value_strings(data.hospital)
        | set(extra)
        if s in message
    ]
    assert not leaked, f"patient data in an error message: {message!r}"


# --- a full run, recorded --------------------------------------------------------------


@dataclass
class RecordedRun:
    study: Study
    run_id: str
    joined: int
    shares: dict[str, Any]
    received: dict[tuple[str, str], list[tuple[str, bytes]]]
    tag_keys: list[keys.TagKey]


@pytest.fixture(scope="module")
def recorded_run(join_mesh: JoinMesh, tmp_path_factory: pytest.TempPathFactory) -> RecordedRun:
    study = make_study(tmp_path_factory.mktemp("wire-study"), RECORDS)
    for recorder in join_mesh.recorders.values():
        recorder.received.clear()
    join_mesh.tag_keys.clear()
    harness = Harness(join_mesh.configs)

    async def run() -> tuple[int, dict[str, Any]]:
        try:
            timings = await run_join(harness, study.spec, {o: str(p) for o, p in study.sources.items()}, "wire-1")
            return timings.joined, await collect_shares(harness, study.spec, "wire-1")
        finally:
            await harness.close()

    joined, shares = join_mesh.loop.run(run(), timeout=120)
    received = {k: list(r.received) for k, r in join_mesh.recorders.items()}
    return RecordedRun(study, "wire-1", joined, shares, received, list(join_mesh.tag_keys))


def test_shares_of_the_in_process_run_reconstruct_the_plaintext_join(recorded_run: RecordedRun) -> None:
    columns, expected = plaintext_join(recorded_run.study.data, recorded_run.study.sources)
    table = reconstruct_table(recorded_run.shares)
    assert recorded_run.joined == len(expected) == RECORDS // 2
    assert same_rows(table, columns, expected)


def test_helper_receives_no_id_no_tag_key_and_no_plaintext_value(recorded_run: RecordedRun) -> None:
    assert (
        len(recorded_run.tag_keys) == 2 and recorded_run.tag_keys[0] == recorded_run.tag_keys[1]
    )  # both owners derived it
    needles = forbidden(recorded_run.study.data, recorded_run.tag_keys)
    at_helper = recorded_run.received[("helper", "intersection")] + recorded_run.received[("helper", "resharing")]
    methods = {m for m, _ in at_helper}
    assert INT + "UploadRows" in methods and RES + "StoreHelperShares" in methods
    uploads = [data for m, data in at_helper if m == INT + "UploadRows"]
    assert sum(len(d) for d in uploads) > RECORDS * 2 * 256  # the ciphertexts really were recorded
    for method, data in at_helper:
        assert not occurrences(data, needles), f"patient data or the tag key in a {method} message at the helper"


def test_the_wire_scan_finds_planted_patient_data(recorded_run: RecordedRun) -> None:
    """The scan above is not vacuous: an ID, a value's fixed-point encoding or the tag key
    planted in a real recorded upload chunk is found."""
    data = recorded_run.study.data
    chunk = next(
        join_pb2.UploadRowsRequest.FromString(d)
        for m, d in recorded_run.received[("helper", "intersection")]
        if m == INT + "UploadRows" and join_pb2.UploadRowsRequest.FromString(d).HasField("chunk")
    )
    needles = forbidden(data, recorded_run.tag_keys)
    encoding = (int(np.rint(float(f"{data.hospital.values[3, 2]:.6f}") * 2.0**32)) + (1 << 63)).to_bytes(8, "little")
    for planted in (
        data.insurer.canonical[5].encode(),
        data.hospital.ids[7][0].encode(),
        encoding,
        recorded_run.tag_keys[0].secret,
    ):
        tampered = join_pb2.UploadRowsRequest()
        tampered.CopyFrom(chunk)
        ciphertext = bytearray(tampered.chunk.ciphertexts[10])
        ciphertext[100 : 100 + len(planted)] = planted
        tampered.chunk.ciphertexts[10] = bytes(ciphertext)
        assert planted in occurrences(tampered.SerializeToString(), needles)


def test_helper_sees_tags_and_fresh_randomised_ciphertexts_only(recorded_run: RecordedRun) -> None:
    uploads = [
        join_pb2.UploadRowsRequest.FromString(d)
        for m, d in recorded_run.received[("helper", "intersection")]
        if m == INT + "UploadRows"
    ]
    headers = [r.header for r in uploads if r.HasField("header")]
    chunks = [r.chunk for r in uploads if r.HasField("chunk")]
    assert len(headers) == 2 and all(h.rows == RECORDS for h in headers)
    tags = [t for c in chunks for t in c.tags]
    assert len(tags) == 2 * RECORDS and all(len(t) == 32 for t in tags)
    ciphertexts = [c for chunk in chunks for c in chunk.ciphertexts]
    assert len(set(ciphertexts)) == len(ciphertexts)  # no ciphertext twice
    # Enc(m) = (1 + mN)·ρ, so c mod N = ρ mod N: 1 only if no fresh randomness was applied.
    moduli = [codec.public_key_from_proto(h.key).n for h in headers]
    assert all(int.from_bytes(c, "big") % n != 1 for c in ciphertexts for n in moduli)


def _deliveries(recorded: RecordedRun, org: str) -> tuple[join_pb2.MaskedRowsHeader, list[bytes]]:
    requests = [
        join_pb2.DeliverMaskedRowsRequest.FromString(d)
        for m, d in recorded.received[(org, "resharing")]
        if m == RES + "DeliverMaskedRows"
    ]
    headers = [r.header for r in requests if r.HasField("header")]
    assert len(headers) == 1
    return headers[0], [c for r in requests if r.HasField("chunk") for c in r.chunk.ciphertexts]


@pytest.mark.parametrize("owner,other", [("insurer", "hospital"), ("hospital", "insurer")])
def test_each_owner_receives_only_masked_values_and_the_count(
    recorded_run: RecordedRun, join_mesh: JoinMesh, owner: str, other: str
) -> None:
    data = recorded_run.study.data
    header, ciphertexts = _deliveries(recorded_run, owner)
    other_table = data.insurer if other == "insurer" else data.hospital
    other_columns = tuple(c.name for c in other_table.columns) + (
        (other_table.target.name,) if other_table.target else ()
    )
    assert header.joined == recorded_run.joined and tuple(header.columns) == other_columns

    # Nothing of either owner's patients appears in any byte this owner's resharing received.
    needles = forbidden(data)
    for method, blob in recorded_run.received[(owner, "resharing")]:
        assert not occurrences(blob, needles), f"patient data in a {method} message at {owner}"

    # Decrypt what arrived (the captured key): x' + r per value, never x' itself.
    key = join_mesh.private_key(header.key_id)
    layout = SlotLayout(**{f.name: getattr(header.layout, f.name) for f in join_pb2.SlotLayout.DESCRIPTOR.fields})
    plain = [key.decrypt(key.public.decode_ciphertext(c)) for c in ciphertexts]
    per_row = layout.ciphertexts_per_row
    decrypted = [unpack_row(layout, plain[k : k + per_row], len(other_columns)) for k in range(0, len(plain), per_row)]
    assert len(decrypted) == recorded_run.joined
    # What the owner stores is exactly what it decrypted, in the same (π) order.
    stored = recorded_run.shares[owner]
    at = [stored.columns.index(c) for c in other_columns]
    assert [[row[i] for i in at] for row in stored.values] == decrypted
    # Against the plaintext, row by row in π order (the reconstructed table shares that order).
    table = reconstruct_table(recorded_run.shares)
    truth = [[row[table.columns.index(c)] for c in other_columns] for row in table.values]
    plaintext_values = {v for row in truth for v in row}
    for got, true in zip(decrypted, truth, strict=True):
        for masked, x in zip(got, true, strict=True):
            assert masked != x and masked not in plaintext_values
            assert 0 <= masked - x < 1 << layout.mask_bits  # the helper's mask r, drawn from [0, 2^(ℓ+σ))


def test_the_helper_stores_only_its_negated_masks(recorded_run: RecordedRun) -> None:
    helper = recorded_run.shares["helper"]
    table = reconstruct_table(recorded_run.shares)
    bound = 1 << SlotLayout.for_columns(6, BITS).mask_bits
    assert all(-bound < v <= 0 for row in helper.values for v in row)
    # Each value's three shares: the helper's −r, the decrypting owner's x' + r, and 0 at the value's own owner.
    for org in ("insurer", "hospital"):
        own = [c.name for o in recorded_run.study.spec.owners if o.org == org for c in o.features]
        at = [table.columns.index(c) for c in own]
        assert all(recorded_run.shares[org].values[k][i] == 0 for k in range(table.n_rows) for i in at)


# --- bad input: a clear error, nothing lost ----------------------------------------------


@pytest.fixture(scope="module")
def small_study(tmp_path_factory: pytest.TempPathFactory) -> Study:
    return make_study(tmp_path_factory.mktemp("small-study"), 40)


def _rewrite(source: Path, target: Path, edit: Callable[[list[list[str]]], list[list[str]]]) -> Path:
    with source.open(newline="") as f:
        rows = list(csv.reader(f))
    out = io.StringIO()
    csv.writer(out).writerows(edit(rows))
    target.write_text(out.getvalue())
    return target


def _set_cell(column: str, line: int, value: str) -> Callable[[list[list[str]]], list[list[str]]]:
    def edit(rows: list[list[str]]) -> list[list[str]]:
        rows[line - 1][rows[0].index(column)] = value
        return rows

    return edit


def _drop_column(column: str) -> Callable[[list[list[str]]], list[list[str]]]:
    def edit(rows: list[list[str]]) -> list[list[str]]:
        at = rows[0].index(column)
        return [r[:at] + r[at + 1 :] for r in rows]

    return edit


def _copy_id(from_line: int, to_line: int) -> Callable[[list[list[str]]], list[list[str]]]:
    def edit(rows: list[list[str]]) -> list[list[str]]:
        for column in ("birth_date", "postal_code"):
            at = rows[0].index(column)
            rows[to_line - 1][at] = rows[from_line - 1][at]
        return rows

    return edit


BAD_FILES: dict[str, tuple[Callable[[list[list[str]]], list[list[str]]] | str, tuple[str, ...], tuple[str, ...]]] = {
    # case: (edit or literal file text, fragments the message must hold, bad tokens it must not hold)
    "missing ID column": (_drop_column("postal_code"), ("'postal_code'", "not found"), ()),
    "missing attribute column": (_drop_column("x3"), ("'x3'", "not found"), ()),
    "non-numeric value": (_set_cell("x2", 5, "12.5kg"), ("row 5", "'x2'", "not a number"), ("12.5kg",)),
    "out-of-range value": (
        _set_cell("x1", 7, "987.654321"),
        ("row 7", "'x1'", "outside the declared range"),
        ("987.654321",),
    ),
    "out-of-range target": (
        _set_cell("hospitalisation_days", 3, "-4321.25"),
        ("row 3", "'hospitalisation_days'", "outside"),
        ("-4321.25",),
    ),
    "not finite": (_set_cell("x4", 4, "inf"), ("row 4", "'x4'", "infinite"), ()),
    "missing value": (_set_cell("x5", 6, ""), ("row 6", "'x5'", "missing"), ()),
    "NA value": (_set_cell("x5", 9, "NA"), ("row 9", "'x5'", "missing"), ()),
    "missing ID value": (_set_cell("birth_date", 8, ""), ("row 8", "'birth_date'", "missing"), ()),
    "invalid birth date": (
        _set_cell("birth_date", 10, "31-02-1971"),
        ("row 10", "'birth_date'", "calendar date"),
        ("31-02-1971", "1971"),
    ),
    "invalid postal code": (
        _set_cell("postal_code", 11, "12-34 XZ"),
        (
            "row 11",
            "'postal_code'",
        ),
        ("12-34 XZ", "12-34XZ"),
    ),
    "duplicate IDs": (_copy_id(3, 12), ("duplicate IDs", "rows 3, 12"), ()),
    "empty file": ("", ("empty",), ()),
    "header only": ("birth_date,postal_code,x1,x2,x3,x4,x5,hospitalisation_days\n", ("no data rows",), ()),
    "short row": (lambda rows: rows[:5] + [rows[5][:-2]] + rows[6:], ("row 6", "fields"), ()),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_insurer_file_is_refused_clearly_and_a_fixed_file_then_runs(
    join_mesh: JoinMesh, small_study: Study, tmp_path: Path, case: str
) -> None:
    edit, fragments, tokens = BAD_FILES[case]
    bad = tmp_path / "insurer.csv"
    if isinstance(edit, str):
        bad.write_text(edit)
    else:
        _rewrite(small_study.sources["insurer"], bad, edit)
    encryption = join_mesh.gateway("insurer", "encryption")
    run_id = f"bad-{case.replace(' ', '-')}"
    with pytest.raises(grpc.RpcError) as err:
        encryption.PrepareEncryption(
            join_pb2.PrepareEncryptionRequest(run_id=run_id, spec=small_study.spec, source_path=str(bad)), timeout=30
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    message = err.value.details()
    assert message.startswith("hashing/encryption: ")
    for fragment in fragments:
        assert fragment in message, message
    assert_clean_message(message, small_study.data, tokens)
    # Nothing is lost: the same run, given the valid file, is prepared normally.
    reply = encryption.PrepareEncryption(
        join_pb2.PrepareEncryptionRequest(
            run_id=run_id, spec=small_study.spec, source_path=str(small_study.sources["insurer"])
        ),
        timeout=30,
    )
    assert reply.rows == 40 and len(reply.x25519_public_key) == 32


def test_missing_file_and_unknown_columns_are_refused_clearly(
    join_mesh: JoinMesh, small_study: Study, tmp_path: Path
) -> None:
    encryption = join_mesh.gateway("insurer", "encryption")
    cases: list[tuple[common_pb2.StudySpec, str, str]] = []
    unknown = common_pb2.StudySpec()
    unknown.CopyFrom(small_study.spec)
    unknown.owners[0].features.add(name="x99", min=0, max=1)
    cases.append((unknown, str(small_study.sources["insurer"]), "'x99'"))
    not_an_owner = common_pb2.StudySpec()
    not_an_owner.CopyFrom(small_study.spec)
    not_an_owner.owners[0].org = "elsewhere"
    cases.append((not_an_owner, str(small_study.sources["insurer"]), "holds no columns"))
    cases.append((small_study.spec, str(tmp_path / "absent.csv"), "not found"))
    for spec, source, fragment in cases:
        with pytest.raises(grpc.RpcError) as err:
            encryption.PrepareEncryption(
                join_pb2.PrepareEncryptionRequest(run_id="bad-spec", spec=spec, source_path=source), timeout=30
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith("hashing/encryption: ") and fragment in err.value.details()
        assert_clean_message(err.value.details(), small_study.data)


# --- intersections that are empty or too small ------------------------------------------


def _start_run(mesh: JoinMesh, study: Study, run_id: str) -> None:
    """Keys, files, the helper's run, then both owners' encryption (each returns once the helper has its rows)."""
    keys_ = {
        o: mesh.gateway(o, "resharing").CreateKey(join_pb2.CreateKeyRequest(run_id=run_id, bits=BITS), timeout=30).key
        for o in ("insurer", "hospital")
    }
    prepared = {
        o: mesh.gateway(o, "encryption").PrepareEncryption(
            join_pb2.PrepareEncryptionRequest(run_id=run_id, spec=study.spec, source_path=str(study.sources[o])),
            timeout=30,
        )
        for o in ("insurer", "hospital")
    }
    mesh.gateway("helper", "intersection").OpenIntersection(
        join_pb2.OpenIntersectionRequest(run_id=run_id, spec=study.spec), timeout=30
    )
    for org, peer in (("insurer", "hospital"), ("hospital", "insurer")):
        request = join_pb2.RunEncryptionRequest(
            run_id=run_id, peer_x25519_public_key=prepared[peer].x25519_public_key, peer_paillier_key=keys_[peer]
        )
        replies = list(mesh.gateway(org, "encryption").RunEncryption(request, timeout=60))
        assert replies[-1].progress.done == replies[-1].progress.total == len(study.data.insurer.ids)


@pytest.mark.parametrize("overlap,joined", [(0.0, 0), (0.1, 4)])
def test_empty_or_too_small_intersection_stops_at_the_helper_and_no_shares_exist(
    join_mesh: JoinMesh, tmp_path: Path, overlap: float, joined: int
) -> None:
    study = make_study(tmp_path, 40, overlap=overlap, study_id=f"small-{joined}")
    assert study.spec.min_intersection == 10
    run_id = f"too-small-{joined}"
    waiting = {
        o: join_mesh.gateway(o, "resharing").AwaitShares(join_pb2.AwaitSharesRequest(run_id=run_id), timeout=60)
        for o in ("insurer", "hospital", "helper")
    }
    for stream in waiting.values():
        first = next(stream)  # the waiter is registered at each org
        assert first.progress.state == common_pb2.RUN_STATE_RUNNING and first.joined == 0
    _start_run(join_mesh, study, run_id)
    with pytest.raises(grpc.RpcError) as err:
        list(
            join_mesh.gateway("helper", "intersection").AwaitIntersection(
                join_pb2.AwaitIntersectionRequest(run_id=run_id), timeout=60
            )
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    message = err.value.details()
    # The exact text: it names the phase and the study's minimum, deliberately not the actual size.
    assert message == "intersection: intersection is smaller than the study's minimum of 10 patients"
    assert_clean_message(message, study.data)
    for org in ("insurer", "hospital", "helper"):
        with pytest.raises(grpc.RpcError) as refused:
            list(
                join_mesh.stub((org, "lasso"), (org, "resharing"), join_pb2_grpc.ResharingServiceStub).GetShares(
                    join_pb2.GetSharesRequest(run_id=run_id), timeout=10
                )
            )
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        # The gateway drops the failed run; whoever still waits for its shares is told, not left hanging.
        join_mesh.gateway(org, "resharing").DropRun(join_pb2.DropRunRequest(run_id=run_id), timeout=10)
        with pytest.raises(grpc.RpcError) as dropped:
            list(waiting[org])
        assert dropped.value.code() == grpc.StatusCode.ABORTED and dropped.value.details().startswith("resharing: ")


# --- malformed uploads at the helper -------------------------------------------------------


def _upload_rows(key: PublicKey, layout: SlotLayout, rows: int) -> tuple[list[bytes], list[bytes]]:
    """Well-formed (random tag, real ciphertext) rows under `key`: what an owner would send."""
    pool = generate_pool(key, rows * layout.ciphertexts_per_row)
    tags = [bytes([i]) * 32 for i in range(rows)]
    return tags, [key.encode_ciphertext(key.encrypt(i, pool.pop())) for i in range(rows * layout.ciphertexts_per_row)]


def test_malformed_uploads_are_refused_and_the_run_still_accepts_a_proper_one(
    join_mesh: JoinMesh, small_study: Study
) -> None:
    run_id = "malformed-upload"
    join_mesh.gateway("helper", "intersection").OpenIntersection(
        join_pb2.OpenIntersectionRequest(run_id=run_id, spec=small_study.spec), timeout=10
    )
    upload = join_mesh.stub(
        ("insurer", "encryption"), ("helper", "intersection"), join_pb2_grpc.IntersectionServiceStub
    ).UploadRows
    key = generate_keypair(BITS).public
    columns = ("x1", "x2", "x3", "x4", "x5", "hospitalisation_days")
    layout = SlotLayout.for_columns(len(columns), BITS)
    tags, cts = _upload_rows(key, layout, 3)
    proto_layout = join_pb2.SlotLayout(
        **{f.name: getattr(layout, f.name) for f in join_pb2.SlotLayout.DESCRIPTOR.fields}
    )

    def header(cols: tuple[str, ...] = columns, rows: int = 3) -> join_pb2.UploadRowsRequest:
        return join_pb2.UploadRowsRequest(
            header=join_pb2.UploadHeader(
                run_id=run_id, rows=rows, layout=proto_layout, columns=cols, key=codec.public_key_to_proto(key)
            )
        )

    def chunk(seq: int, n: int) -> join_pb2.UploadRowsRequest:
        return join_pb2.UploadRowsRequest(
            chunk=join_pb2.RowChunk(seq=seq, tags=tags[:n], ciphertexts=cts[: n * layout.ciphertexts_per_row])
        )

    bad = {
        "no header first": ([chunk(0, 3)], "header"),
        "columns not the study's": (
            [header(("x1", "x2", "x3", "x4", "hospitalisation_days", "x5")), chunk(0, 3)],
            "study's columns",
        ),
        "unknown column": ([header(("x1", "x2", "x3", "x4", "x5", "secret_col")), chunk(0, 3)], "study's columns"),
        "fewer rows than announced": ([header(rows=4), chunk(0, 3)], "ended after"),
        "chunk out of sequence": ([header(), chunk(1, 3)], "in sequence"),
        "ciphertext of a wrong width": (
            [
                header(),
                join_pb2.UploadRowsRequest(chunk=join_pb2.RowChunk(seq=0, tags=tags, ciphertexts=[c[1:] for c in cts])),
            ],
            "wrong length",
        ),
    }
    for case, (messages, fragment) in bad.items():
        with pytest.raises(grpc.RpcError) as err:
            upload(iter(messages), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, case
        assert err.value.details().startswith("intersection: "), case
        assert fragment in err.value.details(), (case, err.value.details())
    # Nothing was kept from the refused streams: the owner's proper upload is accepted in full.
    assert upload(iter([header(), chunk(0, 3)]), timeout=10).rows == 3


# --- refusals by identity -------------------------------------------------------------------

_GET = join_pb2.GetSharesRequest(run_id="no-such-run")

REFUSALS: list[tuple[tuple[str, str], tuple[str, str], str]] = [
    # (caller org, caller service), (target org, server), method
    (("hospital", "lasso"), ("insurer", "resharing"), "GetShares"),
    (("helper", "lasso"), ("insurer", "resharing"), "GetShares"),
    (("insurer", "gateway"), ("insurer", "resharing"), "GetShares"),
    (("insurer", "lasso"), ("helper", "resharing"), "GetShares"),
    (("insurer", "gateway"), ("helper", "intersection"), "UploadRows"),
    (("insurer", "lasso"), ("helper", "intersection"), "UploadRows"),
    (("helper", "encryption"), ("helper", "intersection"), "UploadRows"),
    (("helper", "intersection"), ("helper", "intersection"), "UploadRows"),
    (("helper", "gateway"), ("helper", "intersection"), "UploadRows"),
    (("insurer", "gateway"), ("insurer", "resharing"), "DeliverMaskedRows"),
    (("hospital", "intersection"), ("insurer", "resharing"), "DeliverMaskedRows"),
    (("insurer", "intersection"), ("insurer", "resharing"), "DeliverMaskedRows"),
    (("helper", "gateway"), ("insurer", "resharing"), "DeliverMaskedRows"),
    (("hospital", "encryption"), ("insurer", "resharing"), "DeliverMaskedRows"),
    (("insurer", "intersection"), ("helper", "resharing"), "StoreHelperShares"),
    (("hospital", "intersection"), ("helper", "resharing"), "StoreHelperShares"),
    (("helper", "gateway"), ("helper", "resharing"), "StoreHelperShares"),
    (("hospital", "gateway"), ("insurer", "encryption"), "RunEncryption"),
    (("helper", "gateway"), ("insurer", "resharing"), "CreateKey"),
]

ALLOWED: list[tuple[tuple[str, str], tuple[str, str], str]] = [
    (("insurer", "lasso"), ("insurer", "resharing"), "GetShares"),
    (("insurer", "encryption"), ("helper", "intersection"), "UploadRows"),
    (("helper", "intersection"), ("insurer", "resharing"), "DeliverMaskedRows"),
    (("helper", "intersection"), ("helper", "resharing"), "StoreHelperShares"),
]


def _call(mesh: JoinMesh, caller: tuple[str, str], target: tuple[str, str], method: str) -> grpc.RpcError:
    stub_class = {
        "resharing": join_pb2_grpc.ResharingServiceStub,
        "intersection": join_pb2_grpc.IntersectionServiceStub,
        "encryption": join_pb2_grpc.EncryptionServiceStub,
    }[target[1]]
    stub = mesh.stub(caller, target, stub_class)
    requests: dict[str, Callable[[], Any]] = {
        "GetShares": lambda: list(stub.GetShares(_GET, timeout=10)),
        "UploadRows": lambda: stub.UploadRows(
            iter([join_pb2.UploadRowsRequest(header=join_pb2.UploadHeader(run_id="no-such-run"))]), timeout=10
        ),
        "DeliverMaskedRows": lambda: stub.DeliverMaskedRows(
            iter([join_pb2.DeliverMaskedRowsRequest(header=join_pb2.MaskedRowsHeader(run_id="no-such-run"))]),
            timeout=10,
        ),
        "StoreHelperShares": lambda: stub.StoreHelperShares(
            iter([join_pb2.StoreHelperSharesRequest(header=join_pb2.SharesHeader(run_id="no-such-run"))]), timeout=10
        ),
        "RunEncryption": lambda: list(
            stub.RunEncryption(join_pb2.RunEncryptionRequest(run_id="no-such-run"), timeout=10)
        ),
        "CreateKey": lambda: stub.CreateKey(join_pb2.CreateKeyRequest(run_id="no-such-run", bits=BITS), timeout=10),
    }
    with pytest.raises(grpc.RpcError) as err:
        requests[method]()
    return err.value


@pytest.mark.parametrize(
    "caller,target,method", REFUSALS, ids=[f"{c[0]}.{c[1]}->{t[0]}.{t[1]}.{m}" for c, t, m in REFUSALS]
)
def test_identity_not_allowed_is_refused(
    join_mesh: JoinMesh, caller: tuple[str, str], target: tuple[str, str], method: str
) -> None:
    error = _call(join_mesh, caller, target, method)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert f"spiffe://{caller[0]}/{caller[1]}" in error.details()


@pytest.mark.parametrize(
    "caller,target,method", ALLOWED, ids=[f"{c[0]}.{c[1]}->{t[0]}.{t[1]}.{m}" for c, t, m in ALLOWED]
)
def test_allowed_identity_passes_authorisation(
    join_mesh: JoinMesh, caller: tuple[str, str], target: tuple[str, str], method: str
) -> None:
    """The counterpart of the refusals: the right identity gets past the check (and meets the run's own checks)."""
    error = _call(join_mesh, caller, target, method)
    assert error.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT), error.details()


# --- malformed deliveries at an owner's resharing ---------------------------------------------


def test_a_short_delivery_fails_the_run_and_no_partial_shares_are_served(join_mesh: JoinMesh) -> None:
    run_id = "short-delivery"
    key = codec.public_key_from_proto(
        join_mesh.gateway("insurer", "resharing")
        .CreateKey(join_pb2.CreateKeyRequest(run_id=run_id, bits=BITS), timeout=30)
        .key
    )
    waiting = join_mesh.gateway("insurer", "resharing").AwaitShares(
        join_pb2.AwaitSharesRequest(run_id=run_id), timeout=30
    )
    assert next(waiting).progress.message == "waiting for the helper"
    deliver = join_mesh.stub(
        ("helper", "intersection"), ("insurer", "resharing"), join_pb2_grpc.ResharingServiceStub
    ).DeliverMaskedRows
    columns = ("x6", "x7", "x8", "x9", "x10")
    layout = SlotLayout.for_columns(len(columns), BITS)
    _, cts = _upload_rows(key, layout, 2)
    proto_layout = join_pb2.SlotLayout(
        **{f.name: getattr(layout, f.name) for f in join_pb2.SlotLayout.DESCRIPTOR.fields}
    )

    def header(key_id: str) -> join_pb2.DeliverMaskedRowsRequest:
        return join_pb2.DeliverMaskedRowsRequest(
            header=join_pb2.MaskedRowsHeader(
                run_id=run_id, joined=3, layout=proto_layout, columns=columns, key_id=key_id
            )
        )

    chunk = join_pb2.DeliverMaskedRowsRequest(chunk=join_pb2.MaskedRowsChunk(seq=0, ciphertexts=cts))
    # A header for another key is refused before anything is accepted: the run is untouched.
    with pytest.raises(grpc.RpcError) as wrong_key:
        deliver(iter([header("0" * 32), chunk]), timeout=10)
    assert wrong_key.value.code() == grpc.StatusCode.INVALID_ARGUMENT and wrong_key.value.details().startswith(
        "resharing: "
    )
    # Two of three announced rows, then the stream ends: the run fails here.
    with pytest.raises(grpc.RpcError) as short:
        deliver(iter([header(key.key_id), chunk]), timeout=10)
    assert short.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert short.value.details() == "resharing: the stream from the helper ended before every announced row arrived"
    with pytest.raises(grpc.RpcError) as ended:
        list(waiting)
    assert (ended.value.code(), ended.value.details()) == (short.value.code(), short.value.details())
    with pytest.raises(grpc.RpcError) as get:
        list(
            join_mesh.stub(
                ("insurer", "lasso"), ("insurer", "resharing"), join_pb2_grpc.ResharingServiceStub
            ).GetShares(join_pb2.GetSharesRequest(run_id=run_id), timeout=10)
        )
    assert get.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "failed" in get.value.details()
    # The key went with the failed run: a second delivery finds nothing to decrypt with.
    with pytest.raises(grpc.RpcError) as again:
        deliver(iter([header(key.key_id), chunk]), timeout=10)
    assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_only_the_helper_stores_its_own_masks(join_mesh: JoinMesh) -> None:
    """An owner's own intersection identity passes the authorisation rule (same org), yet an
    owner's resharing never takes shares that way."""
    stub = join_mesh.stub(("insurer", "intersection"), ("insurer", "resharing"), join_pb2_grpc.ResharingServiceStub)
    with pytest.raises(grpc.RpcError) as err:
        stub.StoreHelperShares(
            iter([join_pb2.StoreHelperSharesRequest(header=join_pb2.SharesHeader(run_id="x"))]), timeout=10
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and err.value.details().startswith("resharing: ")


# --- Paillier key sizes ---------------------------------------------------------------------


def test_paillier_key_size_other_than_the_studys_is_refused_before_anything_is_encrypted(
    join_mesh: JoinMesh, small_study: Study
) -> None:
    """Encryption and intersection servers refuse a key of another size than the study's (FAILED_PRECONDITION)."""
    spec = common_pb2.StudySpec()
    spec.CopyFrom(small_study.spec)
    spec.paillier_bits = 2048  # the study's keys; the key offered is a 1024-bit one
    run_id = "key-size"
    key = generate_keypair(BITS).public
    peer = join_mesh.gateway("hospital", "encryption").PrepareEncryption(
        join_pb2.PrepareEncryptionRequest(run_id=run_id, spec=spec, source_path=str(small_study.sources["hospital"])),
        timeout=30,
    )
    join_mesh.gateway("insurer", "encryption").PrepareEncryption(
        join_pb2.PrepareEncryptionRequest(run_id=run_id, spec=spec, source_path=str(small_study.sources["insurer"])),
        timeout=30,
    )
    request = join_pb2.RunEncryptionRequest(
        run_id=run_id, peer_x25519_public_key=peer.x25519_public_key, peer_paillier_key=codec.public_key_to_proto(key)
    )
    replies: list[join_pb2.RunEncryptionResponse] = []
    with pytest.raises(grpc.RpcError) as err:
        for reply in join_mesh.gateway("insurer", "encryption").RunEncryption(request, timeout=30):
            replies.append(reply)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.value.details() == "hashing/encryption: the Paillier key has 1024 bits; the study's keys have 2048"
    assert replies == []  # not even the randomness pool was started
    # The helper refuses an upload under such a key at its header.
    join_mesh.gateway("helper", "intersection").OpenIntersection(
        join_pb2.OpenIntersectionRequest(run_id=run_id, spec=spec), timeout=10
    )
    columns = codec.column_names(owner_columns(spec, "insurer"))
    layout = SlotLayout.for_columns(len(columns), BITS)
    header = join_pb2.UploadRowsRequest(
        header=join_pb2.UploadHeader(
            run_id=run_id,
            rows=1,
            layout=codec.layout_to_proto(layout),
            columns=columns,
            key=codec.public_key_to_proto(key),
        )
    )
    with pytest.raises(grpc.RpcError) as err:
        join_mesh.stub(
            ("insurer", "encryption"), ("helper", "intersection"), join_pb2_grpc.IntersectionServiceStub
        ).UploadRows(iter([header]), timeout=10)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.value.details() == "intersection: the Paillier key has 1024 bits; the study's keys have 2048"


def test_paillier_key_below_2048_bits_is_refused_by_a_deployed_config(loop_thread: LoopThread, tmp_path: Path) -> None:
    """Outside a test mesh (min_paillier_bits left at 2048) no server makes or takes a 1024-bit key."""
    config = load_config(local_mesh_for(tmp_path)["insurer"], env={})
    assert config.min_paillier_bits == 2048
    server = loop_thread.run(_started(resharing_server.build_server(config)))
    try:
        address = config.self_endpoint.address("resharing")
        with MeshCredentials(config.pki_dir, "insurer", "gateway").sync_channel(
            "insurer", "resharing", address
        ) as channel:
            with pytest.raises(grpc.RpcError) as err:
                join_pb2_grpc.ResharingServiceStub(channel).CreateKey(
                    join_pb2.CreateKeyRequest(run_id="small-key", bits=1024), timeout=10
                )
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert err.value.details() == "resharing: this server creates no Paillier key below 2048 bits"
    finally:
        loop_thread.run(server.stop(0))


async def _started(building: Any) -> MeshServer:
    server = await building
    await server.start()
    return server


def test_the_helper_refuses_an_upload_above_its_configured_row_cap(join_mesh: JoinMesh, small_study: Study) -> None:
    """max_upload_rows (config) bounds what one owner may make the helper hold; the header is refused before any row."""
    cap = load_config(join_mesh.configs["helper"], env={}).max_upload_rows
    assert cap == 500_000  # the default (services/mesh/config.py explains the memory bound)
    run_id = "row-cap"
    join_mesh.gateway("helper", "intersection").OpenIntersection(
        join_pb2.OpenIntersectionRequest(run_id=run_id, spec=small_study.spec), timeout=10
    )
    key = generate_keypair(BITS).public
    columns = codec.column_names(owner_columns(small_study.spec, "insurer"))
    layout = SlotLayout.for_columns(len(columns), BITS)
    header = join_pb2.UploadRowsRequest(
        header=join_pb2.UploadHeader(
            run_id=run_id,
            rows=cap + 1,
            layout=codec.layout_to_proto(layout),
            columns=columns,
            key=codec.public_key_to_proto(key),
        )
    )
    with pytest.raises(grpc.RpcError) as err:
        join_mesh.stub(
            ("insurer", "encryption"), ("helper", "intersection"), join_pb2_grpc.IntersectionServiceStub
        ).UploadRows(iter([header]), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == f"intersection: an upload may hold at most {cap} rows"
