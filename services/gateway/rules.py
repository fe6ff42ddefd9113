"""Who may call which gateway RPC (see services.mesh.authz)."""

from services.mesh.authz import Allow

_SVC = "/riskmesh.v1.GatewayService/"
_CLIENT = (Allow("self", "client"),)
_PEER_GATEWAY = (Allow("peer", "gateway"),)

GATEWAY_RULES = {
    _SVC + "GetInfo": _CLIENT + _PEER_GATEWAY,
    **{_SVC + m: _CLIENT for m in (
        "CheckPeers", "ProposeStudy", "ApproveStudy", "GetStudy", "ListStudies", "StartRun",
        "WatchRun", "GetResult", "CancelRun", "ListRuns", "Predict", "VerifyAudit",
    )},
    **{_SVC + m: _PEER_GATEWAY for m in ("PeerPropose", "PeerApprove", "PeerStartRun", "PeerProgress", "PeerCancelRun")},
}
