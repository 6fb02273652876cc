"""Access-token signing keys: ES256 (P-256) key pairs kept as PEM files in the keys directory.

The newest key signs; every key in the directory verifies, so a key can be rotated by adding a
new file and removing the old one once its tokens have expired. All processes of one site read
the same directory, so creation is serialised with a file lock.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

_PREFIX = "jwt-"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True)
class PublicKey:
    kid: str
    key: ec.EllipticCurvePublicKey

    def jwk(self) -> dict[str, str]:
        numbers = self.key.public_numbers()
        return {
            "kty": "EC",
            "kid": self.kid,
            "use": "sig",
            "alg": "ES256",
            "crv": "P-256",
            "x": _b64(numbers.x.to_bytes(32, "big")),
            "y": _b64(numbers.y.to_bytes(32, "big")),
        }


@dataclass(frozen=True)
class SigningKeys:
    signing_kid: str
    signing_key: ec.EllipticCurvePrivateKey
    public: dict[str, PublicKey]


def _thumbprint(key: ec.EllipticCurvePublicKey) -> str:
    # RFC 7638: sha256 over the required members in lexicographic order, no whitespace.
    jwk = PublicKey("", key).jwk()
    members = {k: jwk[k] for k in ("crv", "kty", "x", "y")}
    return _b64(hashlib.sha256(json.dumps(members, separators=(",", ":")).encode()).digest())


def _load(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ValueError(f"{path}: not a P-256 private key")
    return key


def _create(keys_dir: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    path = keys_dir / f"{_PREFIX}{stamp}-{_thumbprint(key.public_key())[:16]}.pem"
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)


def load_or_create_keys(keys_dir: Path) -> SigningKeys:
    """Loads the key set, creating a first key if the directory has none."""
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(keys_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        paths = sorted(keys_dir.glob(f"{_PREFIX}*.pem"))
        if not paths:
            _create(keys_dir)
            paths = sorted(keys_dir.glob(f"{_PREFIX}*.pem"))
    private = {p: _load(p) for p in paths}
    public = {}
    for key in private.values():
        kid = _thumbprint(key.public_key())
        public[kid] = PublicKey(kid, key.public_key())
    newest = private[paths[-1]]
    return SigningKeys(_thumbprint(newest.public_key()), newest, public)


_SECRET_BYTES = 32


def load_or_create_secret(keys_dir: Path, name: str) -> bytes:
    """A random server secret kept in the keys directory (created on first use, mode 0600),
    e.g. the page-token key: every process of a site reads the same one."""
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = keys_dir / name
    with open(keys_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(os.urandom(_SECRET_BYTES))
    secret = path.read_bytes()
    if len(secret) < _SECRET_BYTES:
        raise ValueError(f"{path}: a secret of at least {_SECRET_BYTES} bytes expected")
    return secret
