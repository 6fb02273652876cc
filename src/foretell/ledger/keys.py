"""Ed25519 keys that sign ledger checkpoints, kept apart from the token-signing keys: PEM files
(PKCS#8, mode 0600) in `$FORETELL_DATA_DIR/ledger-keys/`. The newest file signs; a key is
created on first use. To rotate, add a newer key file: old checkpoints stay verifiable, since
every public key that signed is kept in the database (`ledger_keys`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from foretell.ledger import canonical


@dataclass(frozen=True)
class SigningKey:
    key_id: str
    private: Ed25519PrivateKey

    @property
    def public_bytes(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def sign(self, message: bytes) -> bytes:
        return self.private.sign(message)


def _load(path: Path) -> SigningKey:
    private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(private, Ed25519PrivateKey):
        raise TypeError(f"{path}: not an Ed25519 private key")
    public = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return SigningKey(canonical.key_id(public), private)


def signing_key(directory: Path) -> SigningKey:
    """The newest key of `directory` (by file name), created when there is none."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    files = sorted(directory.glob("*.pem"))
    if files:
        return _load(files[-1])
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path = directory / f"{datetime.now(UTC):%Y%m%dT%H%M%S}.pem"
    temporary = directory / f".{os.getpid()}-{os.urandom(4).hex()}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    try:
        # A link appears whole or not at all: of two processes creating the first key at
        # once, one wins and the other loads the winner's complete file.
        os.link(temporary, path)
    except FileExistsError:
        pass
    finally:
        temporary.unlink()
    return _load(path)
