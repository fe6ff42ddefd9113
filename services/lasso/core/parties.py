"""MPC party ids of a study, as every lasso server derives them from the approved spec:
the two data owners in the parties' order are 0 and 1, the helper is 2 (docs/design.md;
the rule itself lives once, in services.study.spec.party_ids).

The acceptor of an Exchange stream checks the dialer's claimed id against the org of
its certificate with these ids.
"""

from __future__ import annotations

from riskmesh.v1 import common_pb2
from services.study.spec import SpecError, party_ids

PARTIES = 3
HELPER_PID = 2


class PartyError(ValueError):
    """The study's parties do not form two data owners and one helper."""


def party_orgs(spec: common_pb2.StudySpec) -> tuple[str, ...]:
    """Orgs by MPC party id: (owner 0, owner 1, helper)."""
    try:
        ids = party_ids(spec)
    except SpecError as exc:
        raise PartyError(str(exc)) from None
    if len(ids) != PARTIES or len(spec.parties) != PARTIES or "" in ids:
        raise PartyError("a study has exactly three distinct, named parties")
    return tuple(sorted(ids, key=ids.__getitem__))
