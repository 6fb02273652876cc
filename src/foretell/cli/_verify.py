"""`foretell verify MODEL`: recomputes a model's ledger from what the caller can read and checks
the checkpoint signatures, so that an edit, deletion or insertion made behind the platform's
back shows. `check_ledger` is the check itself, on messages already fetched."""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

import click
import grpc

from foretell.cli._client import Client, connect, pages
from foretell.cli._credentials import config_dir
from foretell.cli._exit import Exit
from foretell.cli._output import echo_json, json_option
from foretell.cli._target import parse_target, url_option
from foretell.forecast.v1 import forecast_service_pb2 as pb
from foretell.ledger import canonical

_DIRECTIONS = {pb.DIRECTION_UP: "up", pb.DIRECTION_DOWN: "down", pb.DIRECTION_FLAT: "flat"}
_KINDS = {pb.RUN_KIND_LIVE: "live", pb.RUN_KIND_DRY: "dry", pb.RUN_KIND_SIMULATED: "simulated"}


@dataclass
class Ledger:
    """Every page of GetLedger put together."""

    entries: list[pb.LedgerEntry] = field(default_factory=list)
    checkpoints: list[pb.LedgerCheckpoint] = field(default_factory=list)
    keys: list[pb.LedgerKey] = field(default_factory=list)
    unledgered: list[str] = field(default_factory=list)

    def add(self, page: pb.GetLedgerResponse) -> None:
        self.entries.extend(page.entries)
        self.checkpoints.extend(page.checkpoints)
        self.keys.extend(page.keys)
        self.unledgered.extend(page.unledgered_run_ids)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    entries: int
    checkpoints: int
    forecasts_checked: int | None
    problem: str = ""
    head_hash: str = ""
    # Entries whose contents the caller may not read: chained, not recomputed.
    withheld: int = 0


def _listed(record: pb.ForecastRecord) -> dict[str, Any]:
    """A forecast as ListForecasts returned it, in the ledger's canonical form."""
    return canonical.forecast(
        symbol=record.symbol,
        as_of=record.as_of.ToDatetime(tzinfo=UTC),
        target_time=record.target_time.ToDatetime(tzinfo=UTC),
        kind=_KINDS.get(record.kind, "?"),
        direction=_DIRECTIONS.get(record.direction, "?"),
        predicted_return=record.predicted_return if record.HasField("predicted_return") else None,
        probability=record.probability if record.HasField("probability") else None,
        recorded_at=record.recorded_time.ToDatetime(tzinfo=UTC),
    )


def _signature_ok(public_key: bytes, signature: bytes, message: bytes) -> bool:
    # Imported here: only this command needs cryptography on the client side.
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


class _Mismatch(Exception):
    """The first problem found."""


def _check_entries(
    model: str, entries: Sequence[pb.LedgerEntry]
) -> tuple[dict[int, bytes], dict[str, list[dict[str, Any]]]]:
    """Recomputes the chain: each entry's hash from its previous hash and its payload."""
    hashes: dict[int, bytes] = {}
    by_run: dict[str, list[dict[str, Any]]] = {}
    previous = canonical.GENESIS
    for expected, entry in enumerate(entries, start=1):
        where = f"entry {entry.sequence} (run {entry.run_id})"
        if entry.sequence != expected:
            raise _Mismatch(f"entry {expected} is missing: the chain jumps to {entry.sequence}")
        if entry.prev_hash != previous:
            raise _Mismatch(f"{where}: its previous hash is not entry {expected - 1}'s hash")
        if entry.withheld:
            previous = entry.entry_hash
            hashes[entry.sequence] = entry.entry_hash
            continue
        if not entry.payload:
            raise _Mismatch(f"{where}: its run no longer exists (deleted)")
        payload = entry.payload.encode()
        try:
            document = json.loads(payload)
        except ValueError:
            raise _Mismatch(f"{where}: its payload is not JSON") from None
        if canonical.encode(document) != payload or document.get("run_id") != entry.run_id:
            raise _Mismatch(f"{where}: its payload is not in canonical form for this run")
        if document.get("model") != model:
            raise _Mismatch(f"{where}: its run belongs to model {document.get('model')!r}")
        if canonical.entry_hash(previous, payload) != entry.entry_hash:
            raise _Mismatch(
                f"{where}, as_of {document.get('as_of')}: the run or its forecasts differ "
                "from what was recorded (hash mismatch)"
            )
        by_run[entry.run_id] = document.get("forecasts", [])
        previous = entry.entry_hash
        hashes[entry.sequence] = entry.entry_hash
    return hashes, by_run


def _check_forecasts(
    by_run: Mapping[str, list[dict[str, Any]]], forecasts: Iterable[pb.ForecastRecord]
) -> int:
    """Every readable forecast is in the ledger, and every run's forecasts match."""
    listed: dict[str, list[dict[str, Any]]] = {}
    for record in forecasts:
        if record.run_id not in by_run:
            raise _Mismatch(f"forecast of run {record.run_id} is not in the ledger (inserted)")
        listed.setdefault(record.run_id, []).append(_listed(record))
    checked = 0
    for run_id, in_ledger in by_run.items():
        readable = canonical.sort_forecasts(listed.get(run_id, []))
        if readable != in_ledger:
            raise _Mismatch(f"run {run_id}: ListForecasts disagrees with the ledger")
        checked += len(readable)
    return checked


def _check_checkpoints(model: str, ledger: Ledger, hashes: Mapping[int, bytes]) -> None:
    keys = {k.key_id: k.public_key for k in ledger.keys}
    for point in ledger.checkpoints:
        where = f"checkpoint at entry {point.sequence}"
        public = keys.get(point.key_id)
        if public is None or canonical.key_id(public) != point.key_id:
            raise _Mismatch(f"{where}: signed by an unknown key {point.key_id}")
        message = canonical.checkpoint_message(
            model,
            point.sequence,
            point.head_hash,
            point.sign_time.ToDatetime(tzinfo=UTC),
            point.key_id,
        )
        if not _signature_ok(public, point.signature, message):
            raise _Mismatch(f"{where}: the signature does not verify")
        if hashes.get(point.sequence) != point.head_hash:
            raise _Mismatch(f"{where}: the signed head is not the chain's entry {point.sequence}")


def _check_unledgered(unledgered: Sequence[str]) -> None:
    if unledgered:
        raise _Mismatch(f"run {unledgered[0]} is live but has no ledger entry (inserted)")


def _check_remembered(hashes: Mapping[int, bytes], remembered: Mapping[int, str]) -> None:
    """Checkpoints seen on earlier calls must still be the chain's: a history rewritten and
    re-signed by someone holding the key shows here."""
    for sequence, head in sorted(remembered.items()):
        if hashes.get(sequence, b"").hex() != head:
            raise _Mismatch(
                f"entry {sequence}: differs from the checkpoint this machine saw before "
                "(history rewritten)"
            )


def check_ledger(
    model: str,
    ledger: Ledger,
    forecasts: Iterable[pb.ForecastRecord] | None,
    remembered: Mapping[int, str] | None = None,
) -> Verdict:
    """Recomputes the chain and checks it against the forecasts read with ListForecasts
    (None: not readable, not cross-checked), the signed checkpoints and the checkpoints this
    machine saw before (`remembered`: sequence -> head hash hex)."""
    checked: int | None = None
    try:
        hashes, by_run = _check_entries(model, ledger.entries)
        _check_unledgered(ledger.unledgered)
        if forecasts is not None:
            checked = _check_forecasts(by_run, forecasts)
        _check_checkpoints(model, ledger, hashes)
        _check_remembered(hashes, remembered or {})
    except _Mismatch as problem:
        return Verdict(False, len(ledger.entries), len(ledger.checkpoints), checked, str(problem))
    head = ledger.entries[-1].entry_hash.hex() if ledger.entries else ""
    withheld = sum(entry.withheld for entry in ledger.entries)
    return Verdict(True, len(ledger.entries), len(ledger.checkpoints), checked, "", head, withheld)


# --- remembered checkpoints -------------------------------------------------------------------


def _memory_path(url: str, model: str) -> Path:
    tag = hashlib.sha256(url.encode()).hexdigest()[:16]
    return config_dir() / "ledger" / tag / f"{model}.json"


def load_remembered(url: str, model: str) -> dict[int, str]:
    path = _memory_path(url, model)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {int(k): str(v) for k, v in data.items()}


def remember(url: str, model: str, seen: Mapping[int, str], points: Sequence[Any]) -> None:
    path = _memory_path(url, model)
    path.parent.mkdir(parents=True, exist_ok=True)
    merged = {**seen, **{p.sequence: p.head_hash.hex() for p in points}}
    path.write_text(json.dumps({str(k): v for k, v in sorted(merged.items())}))


# --- the command -------------------------------------------------------------------------------


def fetch_ledger(client: Client, model: str) -> Ledger:
    ledger = Ledger()
    request = pb.GetLedgerRequest(model=model)
    for page in pages(client, client.forecast.GetLedger, request, _entry_count, page_size=1000):
        ledger.add(page)
    return ledger


def _entry_count(page: pb.GetLedgerResponse) -> int:
    return len(page.entries)


def fetch_forecasts(client: Client, model: str) -> list[pb.ForecastRecord] | None:
    """Every forecast the caller may read; None when they may read none."""
    request = pb.ListForecastsRequest(model=model)
    try:
        return [
            record
            for page in pages(
                client, client.forecast.ListForecasts, request, _forecast_count, page_size=1000
            )
            for record in page.forecasts
        ]
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.PERMISSION_DENIED:
            return None
        raise


def _forecast_count(page: pb.ListForecastsResponse) -> int:
    return len(page.forecasts)


@click.command(short_help="Check a model's forecast ledger: OK or the first mismatch.")
@click.argument("model")
@url_option
@json_option
def verify(model: str, url: str, as_json: bool) -> None:
    """Recompute MODEL's ledger (the hash chain of its live runs) from the runs and forecasts
    Foretell serves now, cross-check it with the forecasts you can read, verify the signed
    checkpoints of the chain head, and compare with the checkpoints this machine saw on
    earlier calls (kept in the CLI's config directory). Prints OK, or the first entry that does
    not match, with exit code 11.

    \b
    Examples:
      foretell verify eurusd-momentum
      foretell verify eurusd-momentum --json
    """
    target = parse_target(url)
    with connect(url) as client:
        ledger = fetch_ledger(client, model)
        forecasts = fetch_forecasts(client, model)
    seen = load_remembered(target.url, model)
    verdict = check_ledger(model, ledger, forecasts, seen)
    if verdict.ok:
        remember(target.url, model, seen, ledger.checkpoints)
    if as_json:
        echo_json(verdict.__dict__)
    elif verdict.ok:
        cross = (
            f"{verdict.forecasts_checked} forecasts cross-checked"
            if verdict.forecasts_checked is not None
            else "forecasts not readable: not cross-checked"
        )
        click.echo(
            f"OK: {model}: {verdict.entries} entries, head {verdict.head_hash[:16] or '-'}, "
            f"{verdict.checkpoints} signed checkpoints, {cross}"
        )
        if verdict.withheld:
            click.echo(
                f"{verdict.withheld} entries' contents withheld (not subscribed): their "
                "hashes chain and are signed, their forecasts were not recomputed"
            )
    else:
        click.echo(f"MISMATCH: {model}: {verdict.problem}")
    if not verdict.ok:
        sys.exit(Exit.LEDGER_MISMATCH)


__all__ = ["Ledger", "Verdict", "check_ledger", "verify"]
