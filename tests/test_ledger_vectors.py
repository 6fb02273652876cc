"""The ledger's test vectors (docs/ledger-vectors.json): the server's code still produces
them, a stranger's implementation of docs/ledger-encoding.md rebuilds every payload from what
the API serves, and they verify both independently and with `foretell verify`'s checks."""

from __future__ import annotations

import hashlib
import json
import struct
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from foretell.cli._verify import Ledger, check_ledger
from foretell.forecast.v1 import forecast_service_pb2 as pb
from foretell.ledger import vectors

VECTORS = Path(__file__).parent.parent / "docs" / "ledger-vectors.json"


def load() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(VECTORS.read_text())
    return document


def test_the_server_still_produces_the_committed_vectors() -> None:
    assert vectors.build() == load()


# --- a stranger's implementation, from docs/ledger-encoding.md alone --------------------------


def rfc3339(text: str) -> str:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def binary64(value: float | None) -> str | None:
    return None if value is None else struct.pack(">d", value).hex()


def enum_word(value: str, prefix: str) -> str:
    return value.removeprefix(prefix).lower()


def rebuild(api: dict[str, Any]) -> bytes:
    run = api["run"]
    forecasts = [
        {
            "symbol": f["symbol"],
            "as_of": rfc3339(f["asOf"]),
            "target_time": rfc3339(f["targetTime"]),
            "kind": enum_word(f["kind"], "RUN_KIND_"),
            "direction": enum_word(f["direction"], "DIRECTION_"),
            "predicted_return": binary64(f.get("predictedReturn")),
            "probability": binary64(f.get("probability")),
            "recorded_at": rfc3339(f["recordedTime"]),
        }
        for f in api["forecasts"]
    ]
    document = {
        "v": 1,
        "model": run["model"],
        "run_id": run["id"],
        "version": run["version"],
        "version_digest": api["versionDigest"],
        "kind": enum_word(run["kind"], "RUN_KIND_"),
        "as_of": rfc3339(run["asOf"]),
        "recorded_at": rfc3339(run["createTime"]),
        "outcome": enum_word(run["outcome"], "RUN_OUTCOME_"),
        "duration_s": binary64(run["durationSeconds"]),
        "detail_sha256": hashlib.sha256(run["detail"].encode()).hexdigest(),
        "log_sha256": hashlib.sha256(run["log"].encode()).hexdigest(),
        "forecasts": sorted(forecasts, key=lambda f: (f["symbol"], f["target_time"])),
    }
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return text.encode("ascii")


def test_every_payload_rebuilds_from_the_api_and_the_chain_and_signature_verify() -> None:
    document = load()
    previous = bytes(32)
    for entry in document["entries"]:
        payload = rebuild(entry["api"])
        assert payload == entry["payload"].encode()
        assert bytes.fromhex(entry["prev_hash"]) == previous
        previous = hashlib.sha256(previous + payload).digest()
        assert previous.hex() == entry["entry_hash"]
    point = document["checkpoint"]
    public = bytes.fromhex(point["public_key"])
    assert hashlib.sha256(public).hexdigest()[:32] == point["key_id"]
    message = json.dumps(
        {
            "v": 1, "purpose": "foretell-ledger-checkpoint", "model": document["model"],
            "sequence": point["sequence"], "head_hash": previous.hex(),
            "signed_at": rfc3339(point["sign_time"]), "key_id": point["key_id"],
        },
        sort_keys=True, separators=(",", ":"), ensure_ascii=True,
    ).encode()  # fmt: skip
    assert message == point["message"].encode()
    Ed25519PublicKey.from_public_bytes(public).verify(bytes.fromhex(point["signature"]), message)


def test_the_vectors_pass_foretell_verify() -> None:
    document = load()
    ledger = Ledger()
    records = []
    for entry in document["entries"]:
        ledger.entries.append(
            pb.LedgerEntry(
                sequence=entry["sequence"], run_id=entry["run_id"],
                prev_hash=bytes.fromhex(entry["prev_hash"]),
                entry_hash=bytes.fromhex(entry["entry_hash"]), payload=entry["payload"],
            )
        )  # fmt: skip
        records += [
            json_format.ParseDict(f, pb.ForecastRecord()) for f in entry["api"]["forecasts"]
        ]
    point = document["checkpoint"]
    sign_time = Timestamp()
    sign_time.FromJsonString(point["sign_time"])
    ledger.checkpoints.append(
        pb.LedgerCheckpoint(
            sequence=point["sequence"], head_hash=bytes.fromhex(point["head_hash"]),
            sign_time=sign_time, key_id=point["key_id"],
            signature=bytes.fromhex(point["signature"]),
        )
    )  # fmt: skip
    ledger.keys.append(
        pb.LedgerKey(key_id=point["key_id"], public_key=bytes.fromhex(point["public_key"]))
    )
    verdict = check_ledger(document["model"], ledger, records)
    assert verdict.ok, verdict.problem
    assert (verdict.entries, verdict.checkpoints, verdict.forecasts_checked) == (3, 1, 2)
    # One byte changed anywhere breaks it.
    tampered = ledger.entries[0].payload.replace('"up"', '"down"')
    ledger.entries[0].payload = tampered
    assert not check_ledger(document["model"], ledger, records).ok
