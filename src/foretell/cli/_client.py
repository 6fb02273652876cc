"""What every client command shares: the target URL, stored credentials, one gRPC channel with
token refresh, the mapping from gRPC status to messages and exit codes, and output helpers.

Client side only: this module may import grpcio, protobuf, the google.rpc protos, click, the
stdlib and generated `foretell.<svc>.v1` code, nothing of the server stack (a test enforces it).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar

import click
import grpc
from google.protobuf import json_format, timestamp_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from foretell.account.v1 import account_service_pb2 as account_pb
from foretell.account.v1 import account_service_pb2_grpc as account_grpc
from foretell.forecast.v1 import forecast_service_pb2_grpc as forecast_grpc
from foretell.registry.v1 import registry_service_pb2_grpc as registry_grpc
from foretell.subscription.v1 import subscription_service_pb2_grpc as subscription_grpc

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, refreshes may race
    fcntl = None  # type: ignore[assignment]


class Exit(IntEnum):
    """Exit codes of the client commands; scripts may rely on them."""

    OK = 0
    ERROR = 1
    USAGE = 2
    AUTH = 3
    DENIED = 4
    NOT_FOUND = 5
    CONFLICT = 6
    UNREACHABLE = 7
    BUILD_FAILED = 8
    RATE_LIMITED = 9
    RUN_FAILED = 10
    LEDGER_MISMATCH = 11


EXIT_CODES_HELP = """\b
Exit codes:
  0  success
  1  unexpected error (the server's reference id is shown)
  2  bad usage or input, including the server's field violations
  3  not signed in, or the session expired: run `foretell login`
  4  permission denied
  5  not found
  6  conflict: already exists, or not possible in the current state
  7  Foretell unreachable or not answering in time
  8  the build failed
  9  too many requests: try again later
  10  the model's run did not end ok (`foretell run`: error, limit, refused output)
  11  the ledger does not match (`foretell verify`: edited, deleted or inserted history)

\b
The server URL comes from --url, else FORETELL_URL, else localhost:8080.
"""

DEFAULT_URL = "localhost:8080"
CALL_TIMEOUT_S = 30.0
# Items asked for per page of a List call.
PAGE_SIZE = 100
# Refresh this long before the access token expires, so it cannot expire in flight.
REFRESH_MARGIN = timedelta(seconds=30)

Metadata = tuple[tuple[str, str], ...]
Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)
T = TypeVar("T")


class CliError(click.ClickException):
    """An error shown as one plain `error: ...` message with a documented exit code."""

    def __init__(self, message: str, code: Exit = Exit.ERROR) -> None:
        super().__init__(message)
        self.code = code

    # click reads `exit_code`, a class attribute there: one class per code would be noise.
    @property
    def exit_code(self) -> int:  # type: ignore[override]
        return int(self.code)

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"error: {self.message}", err=True)


# --- target -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where Foretell's gateway is. `url` is normalised and keys the stored credentials."""

    url: str
    address: str
    tls: bool


def parse_target(raw: str) -> Target:
    """Accepts `host:port`, `http://host[:port]` or `https://host[:port]`.

    A missing port means 8080 (Foretell's gateway) in plain text and 443 with TLS.
    """
    text = raw.strip()
    parts = urllib.parse.urlsplit(text if "://" in text else f"http://{text}")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or port == -1
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username
    ):
        raise CliError(
            f"bad Foretell URL {raw!r}: use host:port, http://host:port or https://host[:port]",
            Exit.USAGE,
        )
    tls = parts.scheme == "https"
    port = port or (443 if tls else 8080)
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return Target(url=f"{parts.scheme}://{host}:{port}", address=f"{host}:{port}", tls=tls)


# --- credentials ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    url: str
    email: str
    access_token: str
    access_expire_time: datetime
    refresh_token: str
    refresh_expire_time: datetime

    @classmethod
    def from_tokens(cls, url: str, email: str, tokens: account_pb.AuthTokens) -> Credentials:
        return cls(
            url=url,
            email=email,
            access_token=tokens.access_token,
            access_expire_time=tokens.access_token_expire_time.ToDatetime(tzinfo=UTC),
            refresh_token=tokens.refresh_token,
            refresh_expire_time=tokens.refresh_token_expire_time.ToDatetime(tzinfo=UTC),
        )

    @classmethod
    def from_json(cls, url: str, data: Mapping[str, Any]) -> Credentials:
        return cls(
            url=url,
            email=str(data["email"]),
            access_token=str(data["access_token"]),
            access_expire_time=_parse_time(data["access_expire_time"]),
            refresh_token=str(data["refresh_token"]),
            refresh_expire_time=_parse_time(data["refresh_expire_time"]),
        )

    def to_json(self) -> dict[str, str]:
        return {
            "url": self.url,
            "email": self.email,
            "access_token": self.access_token,
            "access_expire_time": self.access_expire_time.isoformat(),
            "refresh_token": self.refresh_token,
            "refresh_expire_time": self.refresh_expire_time.isoformat(),
        }

    def access_is_fresh(self) -> bool:
        return self.access_expire_time - _now() > REFRESH_MARGIN


def _now() -> datetime:
    return datetime.now(UTC)


def _parse_time(value: object) -> datetime:
    parsed = datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def config_dir() -> Path:
    return Path(os.environ.get("FORETELL_CONFIG_DIR") or click.get_app_dir("foretell"))


def credentials_path() -> Path:
    return config_dir() / "credentials.json"


@contextlib.contextmanager
def _store_lock() -> Iterator[None]:
    """Serialises read-modify-write of the credentials file across processes. It matters for
    refresh: refresh tokens are single-use, and two processes spending the same one would make
    the server revoke the whole session."""
    directory = config_dir()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(directory / "credentials.lock", "a") as lock_file:
        if fcntl is not None:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
        yield  # the lock goes with the file's closing


def _read_all() -> dict[str, Credentials]:
    path = credentials_path()
    try:
        data = json.loads(path.read_text())
        return {url: Credentials.from_json(url, entry) for url, entry in data.items()}
    except FileNotFoundError:
        return {}
    except (ValueError, KeyError, TypeError, AttributeError):
        click.echo(f"warning: ignoring unreadable credentials file {path}", err=True)
        return {}


def _write_all(entries: Mapping[str, Credentials]) -> None:
    directory = config_dir()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    # mkstemp creates the file 0600, so the tokens are never readable by others, not even
    # between the write and the rename; os.replace makes the switch atomic.
    fd, temp = tempfile.mkstemp(dir=directory, prefix=".credentials-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as out:
            json.dump({url: c.to_json() for url, c in entries.items()}, out, indent=2)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, credentials_path())
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def load_credentials(url: str) -> Credentials | None:
    return _read_all().get(url)


def save_credentials(credentials: Credentials) -> None:
    with _store_lock():
        _write_all({**_read_all(), credentials.url: credentials})


def delete_credentials(url: str) -> bool:
    with _store_lock():
        entries = _read_all()
        if entries.pop(url, None) is None:
            return False
        _write_all(entries)
        return True


# --- client -----------------------------------------------------------------------------------


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
        with _store_lock():
            entries = _read_all()
            current = entries.get(self.target.url)
            if current is None or current.refresh_expire_time <= _now():
                raise not_signed_in(self.target)
            if current.access_token != rejected.access_token and current.access_is_fresh():
                self.credentials = current
                return current
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
            self.credentials = Credentials.from_tokens(
                self.target.url, current.email, response.tokens
            )
            _write_all({**entries, self.target.url: self.credentials})
            return self.credentials

    def call(self, send: Callable[[Metadata], T]) -> T:
        """Calls `send` with the bearer token; on UNAUTHENTICATED refreshes once and retries."""
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


def _unpack(error: grpc.RpcError, kind: type[Resp]) -> list[Resp]:
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
            for bad in _unpack(error, error_details_pb2.BadRequest)
            for v in bad.field_violations
        ]
        if violations:
            text = "\n".join(["invalid request:", *violations])
    elif code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        for info in _unpack(error, error_details_pb2.RetryInfo):
            delay_s = max(1, round(info.retry_delay.ToTimedelta().total_seconds()))
            text += f" (try again in {delay_s} s)"
    return CliError(text, exit_code)


# --- options and output -----------------------------------------------------------------------

url_option = click.option(
    "--url",
    envvar="FORETELL_URL",
    default=DEFAULT_URL,
    show_default=True,
    metavar="URL",
    help="Foretell gateway: host:port, http://host:port or https://host (env FORETELL_URL).",
)
json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON document on stdout and nothing else."
)


def message_dict(message: Message) -> dict[str, Any]:
    """A message as proto3 JSON (lowerCamelCase names), the same shape the REST API returns."""
    return json_format.MessageToDict(message)


def echo_json(document: object) -> None:
    click.echo(json.dumps(document, indent=2))


def echo_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(c) for c in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def short_time(stamp: timestamp_pb2.Timestamp) -> str:
    """A timestamp as tables show it: `2026-11-02 09:00Z`, or `-` when unset."""
    if not stamp.seconds and not stamp.nanos:
        return "-"
    return stamp.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%MZ")


def enum_label(name: str, prefix: str) -> str:
    """`ROLE_PROVIDER` -> `provider`: enum names as people say them."""
    return name.removeprefix(prefix).lower()
