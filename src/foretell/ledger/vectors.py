"""Test vectors of the ledger's encoding, built with the server's own code (`chain.payload`,
`canonical`): a small chain of three runs (one ok with forecasts, one missed, one whose data
never came) and a signed checkpoint, with every input as the API serves it.
`python -m foretell.ledger.vectors > docs/ledger-vectors.json` writes the committed file;
tests/test_ledger_vectors.py checks that the server still produces it and that it verifies,
independently and with `foretell verify`'s code.

The key is derived from a fixed seed: it signs nothing but these vectors."""

from __future__ import annotations

import json
import sys
import uuid
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from foretell.ledger import canonical
from foretell.ledger.chain import ForecastRow, RunRow, payload

SEED = bytes(range(32))
MODEL = "vectors-momentum"
DIGEST = "sha256:" + "ab" * 32
_T = datetime(2024, 3, 4, 15, tzinfo=UTC)


def _t(hours: float, seconds: float = 0) -> datetime:
    return datetime.fromtimestamp(_T.timestamp() + hours * 3600 + seconds, UTC)


def _runs() -> list[tuple[RunRow, list[ForecastRow]]]:
    ok = RunRow(
        run_id=uuid.UUID("00000000-0000-4000-8000-000000000001"),
        model=MODEL, version=1, version_digest=DIGEST, kind="live", as_of=_t(0),
        recorded_at=_t(0, 31.25), outcome="ok", duration_s=0.4213751,
        detail="", log="EURUSD last close 1.0871\nGOOG: «no move»\n",
    )  # fmt: skip
    forecasts = [
        ForecastRow(ok.run_id, "GOOG", _t(0), _t(1), "live", "down", -0.0012, None, _t(0, 31.25)),
        ForecastRow(ok.run_id, "EURUSD", _t(0), _t(1), "live", "up", 0.0004, 0.62, _t(0, 31.25)),
    ]
    missed = RunRow(
        run_id=uuid.UUID("00000000-0000-4000-8000-000000000002"),
        model=MODEL, version=1, version_digest=DIGEST, kind="live", as_of=_t(1),
        recorded_at=_t(2, 5), outcome="missed", duration_s=0.0,
        detail="missed: the platform was not running when this slot came due", log="",
    )  # fmt: skip
    absent = RunRow(
        run_id=uuid.UUID("00000000-0000-4000-8000-000000000003"),
        model=MODEL, version=1, version_digest=DIGEST, kind="live", as_of=_t(2),
        recorded_at=_t(2, 900), outcome="data_missing", duration_s=0.0,
        detail="data missing: no 1h bar closing at this slot had arrived for GOOG by the data "
        "deadline (900 s after the close); not run, and not counted against the model",
        log="",
    )  # fmt: skip
    return [(ok, forecasts), (missed, []), (absent, [])]


def _api_run(run: RunRow, count: int) -> dict[str, Any]:
    """The run as GetRun serves it (proto3 JSON field names), the fields the payload uses."""
    return {
        "id": str(run.run_id), "model": run.model, "version": run.version,
        "asOf": canonical.time(run.as_of).replace(".000000Z", "Z"),
        "kind": "RUN_KIND_" + run.kind.upper(), "outcome": "RUN_OUTCOME_" + run.outcome.upper(),
        "detail": run.detail, "log": run.log, "durationSeconds": run.duration_s,
        "forecastCount": count, "createTime": run.recorded_at.isoformat().replace("+00:00", "Z"),
    }  # fmt: skip


def _api_forecast(f: ForecastRow, version: int) -> dict[str, Any]:
    """The forecast as ListForecasts serves it (proto3 JSON)."""
    out: dict[str, Any] = {
        "model": MODEL, "runId": str(f.run_id), "version": version, "symbol": f.symbol,
        "asOf": f.as_of.isoformat().replace("+00:00", "Z"),
        "targetTime": f.target_time.isoformat().replace("+00:00", "Z"),
        "direction": "DIRECTION_" + f.direction.upper(), "kind": "RUN_KIND_" + f.kind.upper(),
        "recordedTime": f.recorded_at.isoformat().replace("+00:00", "Z"),
    }  # fmt: skip
    if f.predicted_return is not None:
        out["predictedReturn"] = f.predicted_return
    if f.probability is not None:
        out["probability"] = f.probability
    return out


def build() -> dict[str, Any]:
    """The vectors, as a JSON-ready document."""
    key = Ed25519PrivateKey.from_private_bytes(SEED)
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    key_id = canonical.key_id(public)
    entries = []
    previous = canonical.GENESIS
    for sequence, (run, forecasts) in enumerate(_runs(), start=1):
        body = payload(run, forecasts)
        entry = canonical.entry_hash(previous, body)
        entries.append(
            {
                "sequence": sequence,
                "run_id": str(run.run_id),
                "prev_hash": previous.hex(),
                "entry_hash": entry.hex(),
                "payload": body.decode(),
                "api": {
                    "run": _api_run(run, len(forecasts)),
                    "versionDigest": run.version_digest,
                    "forecasts": [_api_forecast(f, run.version) for f in forecasts],
                },
            }
        )
        previous = entry
    signed_at = _t(2, 930)
    message = canonical.checkpoint_message(MODEL, len(entries), previous, signed_at, key_id)
    return {
        "ledger_version": canonical.VERSION,
        "model": MODEL,
        "entries": entries,
        "checkpoint": {
            "sequence": len(entries),
            "head_hash": previous.hex(),
            "sign_time": signed_at.isoformat().replace("+00:00", "Z"),
            "key_id": key_id,
            "public_key": public.hex(),
            "message": message.decode(),
            "signature": key.sign(message).hex(),
        },
    }


def main() -> None:
    json.dump(build(), sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
