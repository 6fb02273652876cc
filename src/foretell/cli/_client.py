"""One gRPC channel to Foretell with token refresh, paging through List calls, and the mapping
from gRPC status to the message a person reads and the exit code a script reads.

Client side only: this module and the ones it draws on (`_target`, `_credentials`, `_exit`,
`_output`) may import grpcio, protobuf, the google.rpc protos, click, the stdlib and generated
`foretell.<svc>.v1` code, nothing of the server stack (a test enforces it).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from foretell.account.v1 import account_service_pb2 as account_pb
from foretell.account.v1 import account_service_pb2_grpc as account_grpc
from foretell.cli._credentials import Credentials, load_credentials, rotate_credentials
from foretell.cli._exit import CliError, Exit
from foretell.cli._target import Target, parse_target
from foretell.forecast.v1 import forecast_service_pb2_grpc as forecast_grpc
from foretell.registry.v1 import registry_service_pb2_grpc as registry_grpc
from foretell.subscription.v1 import subscription_service_pb2_grpc as subscription_grpc

CALL_TIMEOUT_S = 30.0
# An API key to call with instead of the stored session (scripts).
API_KEY_ENV = "FORETELL_API_KEY"
# Items asked for per page of a List call.
PAGE_SIZE = 100

Metadata = tuple[tuple[str, str], ...]
Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)
T = TypeVar("T")


def not_signed_in(target: Target) -> CliError:
    return CliError(f"not signed in to {target.url}: run `foretell login`", Exit.AUTH)


@dataclass
class Client:
    """One channel to Foretell, its stubs, and the signed-in session (loaded on first use)."""

    target: Target
    channel: grpc.Channel
    account: account_grpc.AccountServiceStub = field(init=False)
    registry: registry_grpc.RegistryServiceStub = field(init=False)
    forecast: forecast_grpc.ForecastServiceStub = field(init=False)
    subscription: subscription_grpc.SubscriptionServiceStub = field(init=False)
    credentials: Credentials | None = None

    def __post_init__(self) -> None:
        self.account = account_grpc.AccountServiceStub(self.channel)
        self.registry = registry_grpc.RegistryServiceStub(self.channel)
        self.forecast = forecast_grpc.ForecastServiceStub(self.channel)
        self.subscription = subscription_grpc.SubscriptionServiceStub(self.channel)

    def session(self) -> Credentials:
        """The stored credentials, refreshed first when the access token is about to expire."""
        credentials = self.credentials or load_credentials(self.target.url)
        if credentials is None:
            raise not_signed_in(self.target)
        self.credentials = credentials
        return credentials if credentials.access_is_fresh() else self.refresh(credentials)

    def refresh(self, rejected: Credentials) -> Credentials:
        """Rotates the tokens and stores them, unless another process already did."""
        credentials = rotate_credentials(self.target.url, rejected, self._renew)
        if credentials is None:
            raise not_signed_in(self.target)
        self.credentials = credentials
        return credentials

    def _renew(self, current: Credentials) -> Credentials:
        try:
            response = self.account.Refresh(
                account_pb.RefreshRequest(refresh_token=current.refresh_token),
                timeout=CALL_TIMEOUT_S,
            )
        except grpc.RpcError as error:
            if error.code() in (
                grpc.StatusCode.UNAUTHENTICATED,
                grpc.StatusCode.INVALID_ARGUMENT,
            ):
                raise not_signed_in(self.target) from None
            raise
        return Credentials.from_tokens(self.target.url, current.email, response.tokens)

    def call(self, send: Callable[[Metadata], T]) -> T:
        """Calls `send` with the bearer token; on UNAUTHENTICATED refreshes once and retries.
        An API key in FORETELL_API_KEY (a script's, e.g. a data feeder's) is sent instead of
        the stored session, and never refreshed."""
        api_key = os.environ.get(API_KEY_ENV, "").strip()
        if api_key:
            return send((("authorization", f"Bearer {api_key}"),))
        credentials = self.session()
        try:
            return send(_bearer(credentials))
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.UNAUTHENTICATED:
                raise
        return send(_bearer(self.refresh(credentials)))

    def unary(
        self,
        method: grpc.UnaryUnaryMultiCallable[Req, Resp],
        request: Req,
        timeout: float = CALL_TIMEOUT_S,
    ) -> Resp:
        return self.call(lambda metadata: method(request, metadata=metadata, timeout=timeout))

    def stream(
        self,
        method: grpc.UnaryStreamMultiCallable[Req, Resp],
        request: Req,
    ) -> Iterator[Resp]:
        """A server stream, retried after a refresh if the first message is UNAUTHENTICATED.
        No deadline: a build log stays open as long as the build runs."""

        def first(metadata: Metadata) -> tuple[Resp | None, Iterator[Resp]]:
            responses = method(request, metadata=metadata)
            return next(responses, None), responses

        head, rest = self.call(first)
        if head is not None:
            yield head
            yield from rest


class PagedRequest(Protocol):
    page_size: int
    page_token: str


class Page(Protocol):
    next_page_token: str


PagedReq = TypeVar("PagedReq", bound=PagedRequest)
PageT = TypeVar("PageT", bound=Page)


def pages(
    client: Client,
    method: Callable[..., PageT],
    request: PagedReq,
    count: Callable[[PageT], int],
    limit: int | None = None,
    page_size: int = PAGE_SIZE,
) -> Iterator[PageT]:
    """The pages of a List call, following `next_page_token`, until `limit` items (`count`
    says how many a page holds; None: every page). A server handing back the token it was
    given ends the loop rather than spinning."""
    seen = 0
    while limit is None or seen < limit:
        request.page_size = page_size if limit is None else min(page_size, limit - seen)
        page = client.call(
            lambda metadata: method(request, metadata=metadata, timeout=CALL_TIMEOUT_S)
        )
        seen += count(page)
        yield page
        if not page.next_page_token or page.next_page_token == request.page_token:
            return
        request.page_token = page.next_page_token


def _bearer(credentials: Credentials) -> Metadata:
    return (("authorization", f"Bearer {credentials.access_token}"),)


def open_channel(target: Target) -> grpc.Channel:
    if target.tls:
        return grpc.secure_channel(target.address, grpc.ssl_channel_credentials())
    return grpc.insecure_channel(target.address)


@contextlib.contextmanager
def connect(url: str) -> Iterator[Client]:
    """A client for `url`; gRPC and file errors inside the block become plain CLI errors."""
    target = parse_target(url)
    channel = open_channel(target)
    try:
        yield Client(target, channel)
    except grpc.RpcError as error:
        raise rpc_error(error, target) from None
    except OSError as error:  # the credentials file or a bundle directory
        raise CliError(str(error)) from None
    finally:
        channel.close()


# --- errors -----------------------------------------------------------------------------------


def _details(error: grpc.RpcError) -> list[Any]:
    try:
        status = rpc_status.from_call(error)
    except ValueError:  # status details that disagree with the code and message
        return []
    return list(status.details) if status is not None else []


def unpack_details(error: grpc.RpcError, kind: type[Resp]) -> list[Resp]:
    """The error's rich status details of one kind (`BadRequest`, `RetryInfo`, ...)."""
    found: list[Resp] = []
    for detail in _details(error):
        if detail.Is(kind.DESCRIPTOR):
            message = kind()
            detail.Unpack(message)
            found.append(message)
    return found


_CODE_EXITS = {
    grpc.StatusCode.INVALID_ARGUMENT: Exit.USAGE,
    grpc.StatusCode.OUT_OF_RANGE: Exit.USAGE,
    grpc.StatusCode.UNAUTHENTICATED: Exit.AUTH,
    grpc.StatusCode.PERMISSION_DENIED: Exit.DENIED,
    grpc.StatusCode.NOT_FOUND: Exit.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS: Exit.CONFLICT,
    grpc.StatusCode.FAILED_PRECONDITION: Exit.CONFLICT,
    grpc.StatusCode.ABORTED: Exit.CONFLICT,
    grpc.StatusCode.UNAVAILABLE: Exit.UNREACHABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: Exit.UNREACHABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Exit.RATE_LIMITED,
}


def rpc_error(error: grpc.RpcError, target: Target) -> CliError:
    """Turns a gRPC error into the message a person reads and the exit code a script reads."""
    code: grpc.StatusCode = error.code()
    text: str = error.details() or code.name.lower()
    exit_code = _CODE_EXITS.get(code, Exit.ERROR)
    if code == grpc.StatusCode.UNAVAILABLE:
        # The server's wording ("failed to connect to all addresses; ...") helps nobody;
        # "no healthy upstream" from Envoy means the gateway is up but a service is not.
        if "upstream" in text:
            text = f"Foretell at {target.url} is unavailable ({text}): try again shortly"
        else:
            text = f"cannot reach Foretell at {target.url}: is `foretell up` running?"
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
        text = f"Foretell at {target.url} did not answer in time"
    elif code == grpc.StatusCode.INVALID_ARGUMENT:
        violations = [
            f"  {v.field}: {v.description}"
            for bad in unpack_details(error, error_details_pb2.BadRequest)
            for v in bad.field_violations
        ]
        if violations:
            text = "\n".join(["invalid request:", *violations])
    elif code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        for info in unpack_details(error, error_details_pb2.RetryInfo):
            delay_s = max(1, round(info.retry_delay.ToTimedelta().total_seconds()))
            text += f" (try again in {delay_s} s)"
    return CliError(text, exit_code)
