"""Authorisation: every RPC is allowed or refused by the caller's certificate identity.

Each server declares a table: full method name → the identities allowed, written as
`Allow(scope, service)`, where scope is relative to this organisation:

- "self":   the same organisation (e.g. the org's own gateway calling its encryption server)
- "peer":   any other configured organisation
- "owner":  another organisation whose role is data_owner
- "helper": the organisation whose role is helper (may be self)

Refusals: no usable identity → UNAUTHENTICATED; identity not allowed → PERMISSION_DENIED.
A connection without a certificate chained to the trust bundle never gets this far: the
TLS handshake refuses it (the client sees UNAVAILABLE). Methods missing from the table
are refused, except the standard health and reflection services.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import grpc

from services.mesh.config import OrgConfig
from services.mesh.handlers import wrap_handler
from services.mesh.identity import Identity, IdentityResolver, peer_certificate_pem
from services.mesh.telemetry import rpc_admitted, rpc_refused

log = logging.getLogger("riskmesh.authz")

OPEN_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)

# The caller of the current RPC, for servicers that need it (set before the handler runs).
current_caller: contextvars.ContextVar[Identity | None] = contextvars.ContextVar("riskmesh_caller", default=None)
# The full method name of the current RPC (set with the caller), e.g. for audit rows.
current_method: contextvars.ContextVar[str] = contextvars.ContextVar("riskmesh_method", default="")


@dataclass(frozen=True)
class Allow:
    scope: str
    service: str

    def admits(self, caller: Identity, config: OrgConfig) -> bool:
        if caller.service != self.service:
            return False
        role = config.role_of(caller.org)
        if role is None:
            return False
        if self.scope == "self":
            return caller.org == config.org
        if self.scope == "peer":
            return caller.org != config.org
        if self.scope == "owner":
            return caller.org != config.org and role == "data_owner"
        if self.scope == "helper":
            return role == "helper"
        raise ValueError(f"unknown scope {self.scope!r}")


Rules = Mapping[str, tuple[Allow, ...]]
RefusalHook = Callable[[str, Identity | None, grpc.StatusCode], None]


def caller_identity(context: grpc.aio.ServicerContext, resolver: IdentityResolver) -> Identity | None:
    pem = peer_certificate_pem(context.auth_context())
    return resolver.resolve(pem) if pem else None


class AuthorizationInterceptor(grpc.aio.ServerInterceptor):
    """Wraps each handler so the check runs with the call's auth context in hand
    (grpc.aio interceptors see only the method name before the handler)."""

    def __init__(
        self, config: OrgConfig, resolver: IdentityResolver, rules: Rules, on_refusal: RefusalHook | None = None
    ) -> None:
        self._config = config
        self._resolver = resolver
        self._rules = dict(rules)
        self._on_refusal = on_refusal

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method = details.method
        if handler is None or method.startswith(OPEN_PREFIXES):
            return handler
        return wrap_handler(handler, lambda request, context: self._check(method, context))

    async def _check(self, method: str, context: grpc.aio.ServicerContext) -> None:
        caller = caller_identity(context, self._resolver)
        if caller is None:
            await self._refuse(
                method,
                None,
                grpc.StatusCode.UNAUTHENTICATED,
                context,
                "no valid riskmesh identity in the client certificate",
            )
        assert caller is not None  # _refuse aborted the call otherwise
        allowed = self._rules.get(method, ())
        if not any(rule.admits(caller, self._config) for rule in allowed):
            await self._refuse(
                method, caller, grpc.StatusCode.PERMISSION_DENIED, context, f"{caller} may not call {method}"
            )
        rpc_admitted(method, caller.org)
        current_caller.set(caller)
        current_method.set(method)

    async def _refuse(
        self,
        method: str,
        caller: Identity | None,
        code: grpc.StatusCode,
        context: grpc.aio.ServicerContext,
        message: str,
    ) -> None:
        log.warning("refused %s for %s: %s", method, caller or "unidentified caller", code.name)
        rpc_refused(method, code.name, caller.org if caller else "")
        if self._on_refusal:
            self._on_refusal(method, caller, code)
        await context.abort(code, message)
