"""Who may call which lasso RPC (see services.mesh.authz): the run comes from the same
org's gateway; MPC traffic flows only between the lasso servers of the orgs."""

from services.mesh.authz import Allow

_SVC = "/riskmesh.v1.LassoService/"

LASSO_RULES = {
    _SVC + "RunLasso": (Allow("self", "gateway"),),
    _SVC + "Exchange": (Allow("peer", "lasso"),),
}
