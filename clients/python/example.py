"""What a hospital system does with its own organisation's gateway, in Python.

Who is the gateway, are its peers up, which studies exist, and — given a finished run —
the revealed model and a prediction for a new patient at the middle of every declared
feature range:

    python clients/python/example.py --address 127.0.0.1:7100 --org insurer --pki .riskmesh/pki [--run RUN_ID]
    python clients/python/example.py --address 127.0.0.1:7100 --org insurer \\
        --ca ca.pem --cert client.pem --key client.key

--org names the gateway's organisation (its CA and TLS server name); --cert/--key/--ca
override the files taken from --pki. Prints one `key=value` line per fact, the same lines
as clients/typescript/src/example.ts; a refused call prints `error status=<CODE> ...` on
stderr and exits 1. Needs only `riskmesh.client` + `riskmesh.v1` (grpcio and protobuf).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import grpc

from riskmesh.client import GatewayClient
from riskmesh.v1 import common_pb2


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", required=True, help="HOST:PORT of the org's gateway")
    parser.add_argument(
        "--org", required=True, help="the gateway's organisation (CA and server name gateway.<org>.riskmesh)"
    )
    parser.add_argument("--pki", type=Path, help="PKI directory: <pki>/<org>/client.pem, client.key, ca.pem")
    parser.add_argument("--cert", type=Path, help="client certificate (PEM); overrides --pki")
    parser.add_argument("--key", type=Path, help="client private key (PEM); overrides --pki")
    parser.add_argument("--ca", type=Path, help="the gateway org's CA (PEM); overrides --pki")
    parser.add_argument("--run", dest="run_id", help="a finished run: print its model and a prediction")
    return parser.parse_args(argv)


def pem(explicit: Path | None, pki: Path | None, org: str, file: str, flag: str) -> bytes:
    if explicit is not None:
        return explicit.read_bytes()
    if pki is None:
        raise SystemExit(f"give --pki DIR or --{flag} PEM")
    return (pki / org / file).read_bytes()


def midpoint_record(spec: common_pb2.StudySpec, features: list[str]) -> dict[str, float]:
    """A record at the middle of every declared range of the model's features."""
    ranges = {column.name: column for owner in spec.owners for column in owner.features}
    record: dict[str, float] = {}
    for feature in features:
        if feature not in ranges:
            raise SystemExit(f"feature {feature} is not declared in study {spec.study_id}")
        record[feature] = (ranges[feature].min + ranges[feature].max) / 2
    return record


def show_run(gw: GatewayClient, run_id: str) -> None:
    run, result = gw.result(run_id)
    print(
        f"run id={run.run_id} study={run.study_id} state={common_pb2.RunState.Name(run.state)} joined={result.joined}"
    )
    for c in result.coefficients:
        print(f"coefficient feature={c.feature} value={c.value!r}")
    print(f"intercept value={result.intercept!r}")
    print(
        f"certificate converged={str(result.converged).lower()} gap={result.certified_gap!r} "
        f"iterations={result.iterations}"
    )
    study = gw.get_study(run.study_id)
    features = [c.feature for c in result.coefficients]
    record = midpoint_record(study.spec, features)
    [prediction] = gw.predict(run.run_id, [record])
    shown = ",".join(f"{f}:{record[f]!r}" for f in features)
    print(f"prediction record={shown} value={prediction!r}")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    certificate = pem(args.cert, args.pki, args.org, "client.pem", "cert")
    private_key = pem(args.key, args.pki, args.org, "client.key", "key")
    ca = pem(args.ca, args.pki, args.org, "ca.pem", "ca")
    with GatewayClient(args.address, args.org, certificate, private_key, ca) as gw:
        try:
            info = gw.get_info()
            print(
                f"gateway org={info.org} role={common_pb2.Role.Name(info.role)} version={info.version} "
                f"caller={info.caller_identity}"
            )
            for p in gw.check_peers().peers:
                error = "" if p.reachable else f" error={json.dumps(p.error)}"
                print(
                    f"peer org={p.org} reachable={str(p.reachable).lower()} role={common_pb2.Role.Name(p.role)} "
                    f"latency_ms={p.latency_ms:.1f}{error}"
                )
            studies = gw.list_studies()
            print(f"studies count={len(studies)}")
            for s in studies:
                print(
                    f"study id={s.spec.study_id} state={common_pb2.StudyState.Name(s.state)} "
                    f"approved_by={','.join(s.approved_by)}"
                )
            if args.run_id is not None:
                show_run(gw, args.run_id)
        except grpc.RpcError as err:
            if not isinstance(err, grpc.Call):
                raise
            print(f"error status={err.code().name} details={json.dumps(err.details())}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
