"""Who may call which gateway RPC (see services.mesh.authz)."""

from services.mesh.authz import Allow

_SVC = "/riskmesh.v1.GatewayService/"
_CLIENT = (Allow("self", "client"),)
# The org's web console (services/console) acts for the org's people: everything a
# client does except Predict, which takes record values the console never handles.
_CONSOLE = (Allow("self", "console"),)
_PEER_GATEWAY = (Allow("peer", "gateway"),)
_CLIENT_METHODS = (
    "CheckPeers", "ProposeStudy", "ApproveStudy", "GetStudy", "ListStudies", "StartRun",
    "WatchRun", "GetResult", "CancelRun", "ListRuns", "Predict", "VerifyAudit", "ListAudit", "ApproveRun",
)  # fmt: skip
_PEER_METHODS = (
    "PeerPropose", "PeerApprove", "PeerStartRun", "PeerProgress", "PeerCancelRun", "PeerApproveRun",
    "PeerRequestRunApproval", "PeerAnnounceKey",
)  # fmt: skip

GATEWAY_RULES = {
    _SVC + "GetInfo": _CLIENT + _CONSOLE + _PEER_GATEWAY,
    **{_SVC + m: _CLIENT + _CONSOLE for m in _CLIENT_METHODS if m != "Predict"},
    _SVC + "Predict": _CLIENT,
    **{_SVC + m: _PEER_GATEWAY for m in _PEER_METHODS},
}
