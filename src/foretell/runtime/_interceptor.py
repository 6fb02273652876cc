"""One server interceptor wraps every RPC handler with, from the outside in: metrics, error
translation, authentication and the policy check. Authentication happens inside the wrapped
handler (not in intercept_service) so the principal lives in the handler's own context."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import grpc
from grpc import aio

from foretell import metrics
from foretell.auth.api_keys import API_KEY_PREFIX, UserCheck
from foretell.auth.policy import INFRASTRUCTURE_PREFIXES, POLICY
from foretell.auth.principal import Principal, set_principal
from foretell.auth.tokens import TokenVerifier
from foretell.errors import ForetellError, PermissionDenied, Unauthenticated
from foretell.logs import get_logger
from foretell.runtime._outage import outage
from foretell.runtime._requests import check_request, checked_stream, lenient
from foretell.runtime._status import error_status, internal_status

log = get_logger("foretell.rpc")


ApiKeyResolver = Callable[[str], Awaitable[Principal | None]]


def bearer_token(metadata: tuple[tuple[str, str | bytes], ...] | None) -> str | None:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            raise Unauthenticated("the authorization header must be 'Bearer TOKEN'")
    return None


def client_address(context: Any) -> str:
    """The address of the client a request came from: the one the gateway (Envoy, the edge,
    `use_remote_address`) saw and put in `x-envoy-external-address`, else the peer of the
    connection. Not X-Forwarded-For: its entries can come from the client. The services listen
    behind the gateway; a client reaching them directly could name any address there."""
    for key, value in context.invocation_metadata() or ():
        if key == "x-envoy-external-address" and isinstance(value, str) and value.strip():
            return value.strip()
    peer = unquote(str(context.peer() or ""))
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        return rest.rsplit(":", 1)[0].strip("[]")
    return peer


@dataclass(frozen=True)
class Authenticator:
    verifier: TokenVerifier
    resolve_api_key: ApiKeyResolver
    # Whether a token's account still exists: a token outlives a deleted account.
    user_exists: UserCheck

    async def authenticate(self, method: str, metadata: Any) -> Principal | None:
        policy = POLICY.get(method)
        if policy is None:
            # Fail closed: a method nobody wrote a policy for is callable by nobody.
            raise PermissionDenied("this method is not available")
        if policy.roles is None:
            return None
        token = bearer_token(metadata)
        if token is None:
            raise Unauthenticated("sign in first: send the header 'authorization: Bearer TOKEN'")
        if token.startswith(API_KEY_PREFIX):
            principal = await self.resolve_api_key(token)
            if principal is None:
                raise Unauthenticated("API key is not valid")
            if not policy.accepts_api_key(principal.role):
                raise PermissionDenied("API keys may call read methods only; sign in for this one")
        else:
            claims = self.verifier.verify(token)
            if not await self.user_exists(claims.user_id):
                raise Unauthenticated("the account this token was issued to no longer exists")
            principal = Principal(claims.user_id, claims.role, "jwt")
        if principal.role not in policy.roles:
            raise PermissionDenied(f"a {principal.role.value} may not call this method")
        return principal


if TYPE_CHECKING:
    # Generic only in the type stubs.
    Context = aio.ServicerContext[Any, Any]
    Handler = grpc.RpcMethodHandler[Any, Any]


# The kinds of RPC (go-grpc-prometheus' grpc_type) whose requests arrive as a stream.
_STREAMED_REQUESTS = ("client_stream", "bidi_stream")


class ServiceInterceptor(aio.ServerInterceptor):
    def __init__(self, authenticator: Authenticator) -> None:
        self._auth = authenticator

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(details)
        method: str = details.method
        if handler is None or method.startswith(INFRASTRUCTURE_PREFIXES):
            return handler
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(method, handler.unary_unary, "unary"),
                request_deserializer=lenient(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(method, handler.stream_unary, "client_stream"),
                request_deserializer=lenient(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(method, handler.unary_stream, "server_stream"),
                request_deserializer=lenient(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        assert handler.stream_stream is not None
        return grpc.stream_stream_rpc_method_handler(
            self._stream(method, handler.stream_stream, "bidi_stream"),
            request_deserializer=lenient(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )

    def _unary(self, method: str, behavior: Callable[..., Awaitable[Any]], kind: str) -> Any:
        async def wrapped(request: Any, context: Context) -> Any:
            outcome = _Outcome(method, kind)
            try:
                set_principal(await self._auth.authenticate(method, context.invocation_metadata()))
                if kind in _STREAMED_REQUESTS:
                    request = checked_stream(request)
                else:
                    check_request(request)
                return await behavior(request, context)
            except BaseException as error:  # noqa: BLE001 - translated, never swallowed
                await outcome.fail(error, context)
            finally:
                outcome.record()

        return wrapped

    def _stream(self, method: str, behavior: Callable[..., Any], kind: str) -> Any:
        async def wrapped(request: Any, context: Context) -> AsyncIterator[Any]:
            outcome = _Outcome(method, kind)
            try:
                set_principal(await self._auth.authenticate(method, context.invocation_metadata()))
                if kind in _STREAMED_REQUESTS:
                    request = checked_stream(request)
                else:
                    check_request(request)
                async for response in behavior(request, context):
                    yield response
            except BaseException as error:  # noqa: BLE001 - translated, never swallowed
                await outcome.fail(error, context)
            finally:
                outcome.record()

        return wrapped


class _Outcome:
    def __init__(self, method: str, kind: str) -> None:
        self.method = method
        self.kind = kind
        self.code = "OK"
        self.started = time.perf_counter()
        metrics.started(method, kind)

    def record(self) -> None:
        metrics.observe(self.method, self.code, time.perf_counter() - self.started, self.kind)

    async def fail(self, error: BaseException, context: Context) -> None:
        """Aborts the RPC for `error`; always raises."""
        unavailable = outage(error) if isinstance(error, Exception) else None
        if unavailable is not None:
            log.warning("store unavailable", method=self.method, error=repr(error))
            error = unavailable
        if isinstance(error, ForetellError):
            self.code = error.code.name
            status = error_status(error)
        elif isinstance(error, aio.AbortError):
            # The handler aborted on purpose; its status is already set.
            code = context.code()
            self.code = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
            raise error
        elif isinstance(error, (GeneratorExit, KeyboardInterrupt, SystemExit)):
            self.code = "CANCELLED"
            raise error
        elif not isinstance(error, Exception):
            # asyncio.CancelledError: the client went away or the server is stopping.
            self.code = "CANCELLED"
            raise error
        else:
            error_id = uuid.uuid4().hex[:12]
            self.code = "INTERNAL"
            log.error("unhandled error", method=self.method, error_id=error_id, exc_info=error)
            status = internal_status(error_id)
        await context.abort(status.code, status.details, status.trailing_metadata)
