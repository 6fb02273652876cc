"""The canonical encoding of ledger entries and checkpoints: what third parties re-implement.

A payload is a JSON object encoded as UTF-8 with keys sorted, no whitespace (separators `,`
and `:`), non-ASCII characters escaped as `\\uXXXX` (so the bytes are ASCII), and:
- times: RFC 3339 in UTC with exactly six fractional digits and `Z`
  (`2024-03-04T10:00:00.000000Z`);
- floating-point numbers: the 16 lowercase hex digits of their IEEE 754 binary64 big-endian
  bytes (`1.0` is `"3ff0000000000000"`), exact in every language; absent values are `null`;
- text that only a model's owner may read (a run's detail and log) enters as the hex sha256
  of its UTF-8 bytes.

Entry payload keys: `v` (1), `model` (name), `run_id`, `version` (number),
`version_digest`, `kind` ("live"), `as_of`, `recorded_at` (the platform's recording time),
`outcome`, `duration_s`, `detail_sha256`, `log_sha256`, `forecasts`: a list sorted by
(`symbol`, `target_time`) of objects with keys `symbol`, `as_of`, `target_time`, `kind`,
`direction` ("up", "down", "flat"), `predicted_return`, `probability`, `recorded_at`.

entry_hash = sha256(prev_hash || payload bytes), prev_hash of the first entry being 32 zero
bytes. A checkpoint signs (Ed25519) the canonical bytes of
{"v": 1, "purpose": "foretell-ledger-checkpoint", "model", "sequence", "head_hash" (hex),
"signed_at", "key_id"}; a key's id is the first 32 hex digits of the sha256 of its raw 32-byte
public key.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

GENESIS = bytes(32)
VERSION = 1
CHECKPOINT_PURPOSE = "foretell-ledger-checkpoint"


def encode(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def number(value: float | None) -> str | None:
    return None if value is None else struct.pack(">d", value).hex()


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def key_id(public_key: bytes) -> str:
    return hashlib.sha256(public_key).hexdigest()[:32]


def entry_hash(prev_hash: bytes, payload: bytes) -> bytes:
    return hashlib.sha256(prev_hash + payload).digest()


def forecast(
    *,
    symbol: str,
    as_of: datetime,
    target_time: datetime,
    kind: str,
    direction: str,
    predicted_return: float | None,
    probability: float | None,
    recorded_at: datetime,
) -> dict[str, Any]:
    return {
        "symbol": symbol,
        "as_of": time(as_of),
        "target_time": time(target_time),
        "kind": kind,
        "direction": direction,
        "predicted_return": number(predicted_return),
        "probability": number(probability),
        "recorded_at": time(recorded_at),
    }


def sort_forecasts(forecasts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(forecasts, key=lambda f: (f["symbol"], f["target_time"], encode(f)))


def checkpoint_message(
    model: str, sequence: int, head_hash: bytes, signed_at: datetime, key_id: str
) -> bytes:
    return encode(
        {
            "v": VERSION,
            "purpose": CHECKPOINT_PURPOSE,
            "model": model,
            "sequence": sequence,
            "head_hash": head_hash.hex(),
            "signed_at": time(signed_at),
            "key_id": key_id,
        }
    )
