"""Access tokens: short-lived ES256 JWTs. Every token is treated as forged until its
signature, algorithm, key id, issuer, audience and expiry all check out."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import jwt

from foretell.auth.keys import SigningKeys
from foretell.auth.policy import Role
from foretell.errors import Unauthenticated

ALGORITHM = "ES256"
_CACHE_SIZE = 10_000


@dataclass(frozen=True)
class AccessClaims:
    user_id: uuid.UUID
    role: Role
    expires: float


@dataclass(frozen=True)
class TokenIssuer:
    keys: SigningKeys
    issuer: str
    audience: str
    ttl: timedelta

    def issue(self, user_id: uuid.UUID, role: Role, now: datetime) -> tuple[str, datetime]:
        expires = now + self.ttl
        claims = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": str(user_id),
            "role": role.value,
            "iat": int(now.timestamp()),
            "nbf": int(now.timestamp()),
            "exp": int(expires.timestamp()),
            "jti": uuid.uuid4().hex,
        }
        token = jwt.encode(
            claims,
            self.keys.signing_key,
            algorithm=ALGORITHM,
            headers={"kid": self.keys.signing_kid},
        )
        return token, expires


@dataclass(frozen=True)
class TokenVerifier:
    keys: SigningKeys
    issuer: str
    audience: str

    # Tokens whose signature and claims checked out, kept until they expire. A signature
    # check costs more than the rest of a small RPC; a client sends the same token many times.
    _verified: dict[str, AccessClaims] = field(default_factory=dict, compare=False, repr=False)

    def verify(self, token: str) -> AccessClaims:
        cached = self._verified.get(token)
        if cached is not None:
            if time.time() < cached.expires:
                return cached
            del self._verified[token]
        try:
            header = jwt.get_unverified_header(token)
            public = self.keys.public.get(str(header.get("kid", "")))
            if public is None or header.get("alg") != ALGORITHM:
                raise Unauthenticated("access token is not valid")
            claims = jwt.decode(
                token,
                public.key,
                algorithms=[ALGORITHM],
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["exp", "iat", "sub", "iss", "aud"]},
            )
            verified = AccessClaims(
                uuid.UUID(claims["sub"]), Role(claims["role"]), float(claims["exp"])
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("access token has expired: refresh it or sign in again") from None
        except (jwt.PyJWTError, KeyError, ValueError, TypeError):
            raise Unauthenticated("access token is not valid") from None
        if len(self._verified) >= _CACHE_SIZE:
            del self._verified[next(iter(self._verified))]
        self._verified[token] = verified
        return verified
