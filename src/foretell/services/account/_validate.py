"""Input rules for AccountService requests. protovalidate's schema cannot be installed from a
package here, so the rules live in code; each returns every violation at once."""

from __future__ import annotations

import uuid

from email_validator import EmailNotValidError, validate_email

from foretell.account.v1 import account_service_pb2 as pb
from foretell.errors import Violations
from foretell.text import check_text

MAX_EMAIL = 254
MIN_PASSWORD = 10
# argon2 hashes anything, but an unbounded password is a cheap way to burn server CPU.
MAX_PASSWORD = 128
MAX_DISPLAY_NAME = 80
MAX_KEY_NAME = 64
_COMMON = frozenset(
    {
        "password123",
        "password1234",
        "1234567890",
        "0123456789",
        "qwertyuiop",
        "letmein123",
        "iloveyou12",
        "welcome123",
        "administrator",
        "passw0rd123",
    }
)

SELF_SERVICE_ROLES = {pb.ROLE_PROVIDER: "provider", pb.ROLE_SUBSCRIBER: "subscriber"}


def _printable(text: str) -> bool:
    return text.isprintable()


def check_email(v: Violations, field: str, email: str) -> str:
    """Returns the normalised address (domain lower-cased, IDNA applied)."""
    if not email:
        v.add(field, "required")
        return email
    if len(email) > MAX_EMAIL:
        v.add(field, f"at most {MAX_EMAIL} characters")
        return email
    try:
        return validate_email(email, check_deliverability=False).normalized
    except EmailNotValidError as error:
        v.add(field, f"not a valid email address: {error}")
        return email


def check_password(v: Violations, field: str, password: str, email: str) -> None:
    if not password:
        v.add(field, "required")
    elif len(password) < MIN_PASSWORD:
        v.add(field, f"at least {MIN_PASSWORD} characters")
    elif len(password) > MAX_PASSWORD:
        v.add(field, f"at most {MAX_PASSWORD} characters")
    elif (
        len(set(password)) < 5
        or password.lower() in _COMMON
        or _contains_local_part(password, email)
    ):
        v.add(field, "too easy to guess: use a longer phrase with varied characters")


def _contains_local_part(password: str, email: str) -> bool:
    local = email.split("@")[0].lower()
    return len(local) >= 4 and local in password.lower()


def create_user(request: pb.CreateUserRequest) -> tuple[str, str, str]:
    """Returns (email, display name, role) or raises InvalidArgument."""
    v = Violations()
    email = check_email(v, "email", request.email)
    check_password(v, "password", request.password, request.email)
    name = check_text(v, "display_name", request.display_name, MAX_DISPLAY_NAME)
    role = SELF_SERVICE_ROLES.get(request.role)
    if request.role == pb.ROLE_UNSPECIFIED:
        v.add("role", "required: ROLE_PROVIDER or ROLE_SUBSCRIBER")
    elif role is None:
        v.add("role", "must be ROLE_PROVIDER or ROLE_SUBSCRIBER")
    v.raise_if_any()
    assert role is not None
    return email, name, role


def login(request: pb.LoginRequest) -> None:
    v = Violations()
    if not request.email:
        v.add("email", "required")
    elif len(request.email) > MAX_EMAIL:
        v.add("email", f"at most {MAX_EMAIL} characters")
    if not request.password:
        v.add("password", "required")
    elif len(request.password) > MAX_PASSWORD:
        v.add("password", f"at most {MAX_PASSWORD} characters")
    v.raise_if_any()


def refresh_token(token: str) -> None:
    v = Violations()
    if not token:
        v.add("refresh_token", "required")
    elif len(token) > 200:
        v.add("refresh_token", "at most 200 characters")
    v.raise_if_any()


def api_key_name(name: str) -> str:
    v = Violations()
    name = check_text(v, "name", name, MAX_KEY_NAME)
    v.raise_if_any()
    return name


def api_key_id(key_id: str) -> uuid.UUID:
    v = Violations()
    parsed = None
    if not key_id:
        v.add("id", "required")
    else:
        try:
            parsed = uuid.UUID(key_id)
        except ValueError:
            v.add("id", "must be a UUID")
    v.raise_if_any()
    assert parsed is not None
    return parsed
