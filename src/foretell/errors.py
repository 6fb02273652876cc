"""The platform's error tree. Services raise these; `foretell.runtime` turns them into gRPC
status codes with `google.rpc` details in one place. Messages are shown to clients, so they
must never carry internals (SQL, paths, exception text)."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class ForetellError(Exception):
    """Base of every error a client may see."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    reason: str = "ERROR"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


# Violations listed in one error: status details travel in gRPC trailers (and the message in a
# header), which are small. Past this many, the rest are only counted.
MAX_LISTED = 20
# The field the count of unlisted violations is reported under, unless a caller names one.
WHOLE_REQUEST = "request"


def _unlisted(count: int) -> str:
    return f"{count} more problems not listed"


class InvalidArgument(ForetellError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        violations: list[FieldViolation],
        message: str = "",
        *,
        unlisted: int = 0,
        count_field: str = WHOLE_REQUEST,
    ) -> None:
        unlisted += max(0, len(violations) - MAX_LISTED)
        violations = violations[:MAX_LISTED]
        if unlisted:
            violations = [*violations, FieldViolation(count_field, _unlisted(unlisted))]
        summary = "; ".join(f"{v.field}: {v.description}" for v in violations)
        super().__init__(message or f"invalid request: {summary}")
        self.violations = violations
        # How many violations were found but not listed (the last violation says so too).
        self.unlisted = unlisted


class Unauthenticated(ForetellError):
    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "UNAUTHENTICATED"


class PermissionDenied(ForetellError):
    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "PERMISSION_DENIED"


class NotFound(ForetellError):
    code = grpc.StatusCode.NOT_FOUND
    reason = "NOT_FOUND"


class AlreadyExists(ForetellError):
    code = grpc.StatusCode.ALREADY_EXISTS
    reason = "ALREADY_EXISTS"

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


class FailedPrecondition(ForetellError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "FAILED_PRECONDITION"


class OutOfRange(ForetellError):
    """A request past a bound the caller may not cross (a run asking for bars after its as_of)."""

    code = grpc.StatusCode.OUT_OF_RANGE
    reason = "OUT_OF_RANGE"


class ResourceExhausted(ForetellError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Unavailable(ForetellError):
    """The platform could not do it now; the same request may succeed later."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = "UNAVAILABLE"


@dataclass
class Violations:
    """Collects every field problem of a request so the client sees them all at once: the
    first MAX_LISTED of them, and a count of the rest (under `count_field`)."""

    items: list[FieldViolation] = field(default_factory=list)
    unlisted: int = 0
    count_field: str = WHOLE_REQUEST

    def add(self, field_name: str, description: str) -> None:
        if len(self.items) < MAX_LISTED:
            self.items.append(FieldViolation(field_name, description))
        else:
            self.unlisted += 1

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidArgument(self.items, unlisted=self.unlisted, count_field=self.count_field)
