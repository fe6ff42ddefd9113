"""MPC party ids from the study: owners in the parties' order, then the helper."""

from __future__ import annotations

import pytest

from riskmesh.v1 import common_pb2
from services.lasso.core.parties import PartyError, party_orgs
from tests.unit.gateway.specs import make_spec


def test_owners_in_order_then_helper():
    spec = make_spec()
    assert party_orgs(spec) == ("insurer", "hospital", "helper")
    spec.parties[0].CopyFrom(common_pb2.Party(org="helper", role=common_pb2.ROLE_HELPER))
    spec.parties[2].CopyFrom(common_pb2.Party(org="insurer", role=common_pb2.ROLE_DATA_OWNER))
    assert party_orgs(spec) == ("hospital", "insurer", "helper")


def test_two_helpers_are_refused():
    spec = make_spec()
    spec.parties[0].role = common_pb2.ROLE_HELPER
    with pytest.raises(PartyError):
        party_orgs(spec)
