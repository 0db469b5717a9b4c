"""Bearer-token authentication for every RPC, as a server interceptor."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc

from server.api.handlers import refusing
from server.domain.errors import Defect, PermissionDenied
from server.domain.identity import Permission, Principal, is_allowed

#: Standard infrastructure services that load balancers and tools call without credentials.
UNAUTHENTICATED_SERVICES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


class TokenAuthenticator:
    """Maps `authorization: Bearer <token>` metadata to a Principal.

    Tokens are compared by SHA-256 digest, so lookup time does not depend on how much of a
    guessed token matches.
    """

    def __init__(self, tokens: Mapping[str, Principal]) -> None:
        self._by_digest = {hashlib.sha256(token.encode()).digest(): principal for token, principal in tokens.items()}

    def authenticate(self, metadata: Any) -> Principal | None:
        """The principal of the one `authorization` entry; None when it is missing, malformed, unknown,
        or given more than once (which credentials would count is ambiguous: none do)."""
        values = [value for key, value in metadata or () if key == "authorization"]
        if len(values) != 1:
            return None
        scheme, _, token = values[0].partition(" ")
        if not hmac.compare_digest(scheme.lower(), "bearer") or not token:
            return None
        return self._by_digest.get(hashlib.sha256(token.strip().encode()).digest())

    def authorize(self, context: grpc.aio.ServicerContext, permission: Permission) -> Principal:
        """The caller of a handler, if its role allows `permission`; PermissionDenied otherwise.

        The interceptor has already refused calls without valid credentials.
        """
        principal = self.authenticate(context.invocation_metadata())
        if principal is None:  # unreachable behind AuthInterceptor; guards a handler mounted without it
            raise Defect("handler reached without authentication: it is mounted without AuthInterceptor")
        if not is_allowed(principal, permission):
            raise PermissionDenied(principal.client_id, principal.role.value, permission.value)
        return principal


def _rejecting(handler: Any, message: str) -> grpc.RpcMethodHandler:
    return refusing(handler, grpc.StatusCode.UNAUTHENTICATED, message)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, authenticator: TokenAuthenticator) -> None:
        self._authenticator = authenticator

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(UNAUTHENTICATED_SERVICES):
            return handler  # an unknown method is UNIMPLEMENTED whoever asks
        metadata = handler_call_details.invocation_metadata
        if not any(key == "authorization" for key, _ in metadata or ()):
            return _rejecting(handler, "missing credentials: send `authorization: Bearer <token>` metadata")
        if sum(key == "authorization" for key, _ in metadata) > 1:
            return _rejecting(handler, "send `authorization` metadata once: which of several would count is ambiguous")
        if self._authenticator.authenticate(metadata) is None:
            return _rejecting(handler, "unknown or malformed bearer token in `authorization` metadata")
        return handler
