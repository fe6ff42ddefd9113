"""Who may call which gateway RPC (see services.mesh.authz)."""

from services.mesh.authz import Allow

_SVC = "/riskmesh.v1.GatewayService/"
_CLIENT = (Allow("self", "client"),)
_PEER_GATEWAY = (Allow("peer", "gateway"),)
_CLIENT_METHODS = (
    "CheckPeers", "ProposeStudy", "ApproveStudy", "GetStudy", "ListStudies", "StartRun",
    "WatchRun", "GetResult", "CancelRun", "ListRuns", "Predict", "VerifyAudit", "ApproveRun",
)  # fmt: skip
_PEER_METHODS = (
    "PeerPropose", "PeerApprove", "PeerStartRun", "PeerProgress", "PeerCancelRun", "PeerApproveRun",
    "PeerRequestRunApproval",
)  # fmt: skip

GATEWAY_RULES = {
    _SVC + "GetInfo": _CLIENT + _PEER_GATEWAY,
    **{_SVC + m: _CLIENT for m in _CLIENT_METHODS},
    **{_SVC + m: _PEER_GATEWAY for m in _PEER_METHODS},
}
