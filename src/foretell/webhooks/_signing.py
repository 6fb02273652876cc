"""Signatures on webhook requests, in the Standard Webhooks scheme
(https://www.standardwebhooks.com/): the headers `webhook-id`, `webhook-timestamp` (Unix
seconds) and `webhook-signature` (`v1,` and the base64 HMAC-SHA256 of `id.timestamp.body`,
keyed with the base64-decoded part of the `whsec_…` secret)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Mapping

SECRET_PREFIX = "whsec_"  # noqa: S105 - the prefix of every secret, not a secret
# How far a request's timestamp may be from the receiver's clock (seconds): older requests are
# replays, whatever their signature.
TOLERANCE_S = 300


class SignatureInvalid(Exception):
    pass


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(secret: str, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, message_id, timestamp, body),
    }


def verify(
    secret: str,
    received: Mapping[str, str],
    body: bytes,
    now: float,
    tolerance_s: int = TOLERANCE_S,
) -> str:
    """What a receiver does (docs/webhooks.md): checks the timestamp is within `tolerance_s` of
    `now` and one of the space-separated `v1,` signatures matches; returns the message id (keep
    the ids seen within the tolerance to drop a replay or a retry already handled). Raises
    SignatureInvalid. `received` must map lower-case header names."""
    try:
        message_id = received["webhook-id"]
        timestamp = int(received["webhook-timestamp"])
        offered = received["webhook-signature"].split()
    except (KeyError, ValueError):
        raise SignatureInvalid("missing or malformed webhook headers") from None
    if abs(now - timestamp) > tolerance_s:
        raise SignatureInvalid("timestamp outside the tolerance: a replay or a wrong clock")
    expected = sign(secret, message_id, timestamp, body)
    if not any(hmac.compare_digest(expected, candidate) for candidate in offered):
        raise SignatureInvalid("no signature matches")
    return message_id
