"""Who may call which join RPC (see services.mesh.authz). Only these cross-org paths
exist: owner encryption → helper intersection, helper intersection → owner resharing.
A crypto worker serves its own organisation's encryption and resharing servers only."""

from services.mesh.authz import Allow

_ENC = "/riskmesh.v1.EncryptionService/"
_INT = "/riskmesh.v1.IntersectionService/"
_RES = "/riskmesh.v1.ResharingService/"
_CW = "/riskmesh.v1.CryptoWorkerService/"
_OWN_GATEWAY = (Allow("self", "gateway"),)

ENCRYPTION_RULES = {
    _ENC + "PrepareEncryption": _OWN_GATEWAY,
    _ENC + "RunEncryption": _OWN_GATEWAY,
    _ENC + "PreparePool": _OWN_GATEWAY,
}

INTERSECTION_RULES = {
    _INT + "OpenIntersection": _OWN_GATEWAY,
    _INT + "UploadRows": (Allow("owner", "encryption"),),
    _INT + "AwaitIntersection": _OWN_GATEWAY,
}

RESHARING_RULES = {
    _RES + "CreateKey": _OWN_GATEWAY,
    _RES + "PrepareKey": _OWN_GATEWAY,
    _RES + "DeliverMaskedRows": (Allow("helper", "intersection"),),
    # The helper's own shares come from its own intersection server only.
    _RES + "StoreHelperShares": (Allow("self", "intersection"),),
    _RES + "AwaitShares": _OWN_GATEWAY,
    _RES + "GetShares": (Allow("self", "lasso"),),
    _RES + "DropRun": _OWN_GATEWAY,
}

CRYPTO_WORKER_RULES = {
    # Pool elements are secret (with one, a ciphertext made with it is readable): own encryption only.
    _CW + "MakePool": (Allow("self", "encryption"),),
    # The request carries the run's private key: own resharing only.
    _CW + "DecryptChunk": (Allow("self", "resharing"),),
    # Counters only (no data): the org's own operators and tools (benchmarks).
    _CW + "GetWorkerStats": (Allow("self", "client"),),
}
