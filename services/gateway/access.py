"""Who may do what in a study, beyond the authorisation table (services/gateway/rules.py).

The table admits the org's own clients or peer gateways per method; these checks then
hold each call against the study itself: a peer must be a party, an owner where it
matters, and results are for data owners only. A refusal is a `RequestError`.
"""

from __future__ import annotations

import grpc

from riskmesh.v1 import common_pb2
from services.gateway.codec import role_to_proto
from services.gateway.errors import RequestError
from services.mesh.config import OrgConfig
from services.study import spec as specs


def denied(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.PERMISSION_DENIED, message)


def is_owner(spec: common_pb2.StudySpec, org: str) -> bool:
    return specs.role_of(spec, org) == common_pb2.ROLE_DATA_OWNER


def require_owner(spec: common_pb2.StudySpec, org: str, what: str) -> None:
    """This organisation (`org`) must own data in the study to do `what`."""
    if not is_owner(spec, org):
        raise denied(f"{org} is not a data owner of study {spec.study_id!r}: {what} is for data owners only")


def require_party(spec: common_pb2.StudySpec, org: str) -> None:
    if specs.role_of(spec, org) == common_pb2.ROLE_UNSPECIFIED:
        raise denied(f"{org} is not a party of study {spec.study_id!r}")


def require_configured_parties(spec: common_pb2.StudySpec, config: OrgConfig) -> None:
    """Every party of the spec is an organisation of this mesh, in the role it has here."""
    for party in spec.parties:
        role = config.role_of(party.org)
        if role is None:
            raise RequestError(
                grpc.StatusCode.INVALID_ARGUMENT, f"party {party.org!r} is not a configured organisation of this mesh"
            )
        if role_to_proto(role) != party.role:
            raise RequestError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"party {party.org!r} is a {role} in this mesh, not {common_pb2.Role.Name(party.role)}",
            )
