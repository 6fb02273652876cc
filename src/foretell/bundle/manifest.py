"""The model manifest: `foretell.toml` at the root of a bundle tells the platform how to run it.

One `[model]` table, nothing else:

    [model]
    entrypoint = "model:predict"          # module:function; the module is a file in the bundle
    symbols = ["EURUSD", "GOOG"]          # 1 to 50 symbols, upper case
    resolution = "1h"                     # "1h", "4h" or "1d"; never finer than an hour
    horizon = 24                          # bars ahead to forecast, 1 to 1000
    lookback = 500                        # bars of history the model reads, 1 to 10000
    requirements = "requirements.txt"     # optional: pip requirements file in the bundle

Unknown keys are refused, so a typo never passes silently, and every problem of a manifest is
reported at once (field "manifest.<key>").
"""

from __future__ import annotations

import dataclasses
import difflib
import keyword
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import date, datetime, time
from typing import Any, cast

from foretell.bundle._limits import format_bytes
from foretell.bundle._paths import path_problem, printable
from foretell.errors import Violations
from foretell.resolutions import RESOLUTIONS
from foretell.symbols import SYMBOL

MANIFEST_NAME = "foretell.toml"
# A manifest is a few lines; this bounds the parser's work on a hostile one.
MAX_MANIFEST_BYTES = 64 * 1024

MAX_SYMBOLS = 50
MAX_HORIZON = 1000
MAX_LOOKBACK = 10000
# ASCII only: Python NFKC-normalises non-ASCII identifiers, so such a module name may not match
# the bytes of its file name.
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")
_DURATION = re.compile(r"\s*(\d{1,9})\s*([A-Za-z]{1,7})\s*")
_UNIT_SECONDS = {
    "s": 1,
    "sec": 1,
    "second": 1,
    "seconds": 1,
    "m": 60,
    "min": 60,
    "minute": 60,
    "minutes": 60,
    "h": 3600,
    "hour": 3600,
    "hours": 3600,
    "d": 86400,
    "day": 86400,
    "days": 86400,
}


@dataclass(frozen=True)
class Manifest:
    entrypoint: str
    symbols: tuple[str, ...]
    resolution: str
    horizon: int
    lookback: int
    # "" means no requirements file. The default cannot be "requirements.txt if it exists":
    # parsing does not see the bundle, so the scaffold writes the key explicitly.
    requirements: str = ""

    def __post_init__(self) -> None:
        # Every Manifest is valid, however it was made, so to_toml() always round-trips.
        found = Violations()
        for f in fields(self):
            if problem := _CHECKS[f.name](getattr(self, f.name)):
                found.add(f"manifest.{f.name}", problem)
        found.raise_if_any()

    @property
    def entrypoint_files(self) -> tuple[str, str]:
        return entrypoint_files(self.entrypoint)

    def to_json(self) -> dict[str, Any]:
        """As the database stores it (versions.manifest, JSONB)."""
        data = dataclasses.asdict(self)
        data["symbols"] = list(self.symbols)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        return cls(**{**data, "symbols": tuple(data["symbols"])})

    def to_toml(self) -> str:
        symbols = ", ".join(_toml_string(s) for s in self.symbols)
        return (
            "[model]\n"
            f"entrypoint = {_toml_string(self.entrypoint)}\n"
            f"symbols = [{symbols}]\n"
            f"resolution = {_toml_string(self.resolution)}\n"
            f"horizon = {self.horizon}\n"
            f"lookback = {self.lookback}\n"
            f"requirements = {_toml_string(self.requirements)}\n"
        )


def entrypoint_files(entrypoint: str) -> tuple[str, str]:
    """The two files that can hold the entrypoint's module: `a/b.py` or `a/b/__init__.py`."""
    module = entrypoint.partition(":")[0].replace(".", "/")
    return f"{module}.py", f"{module}/__init__.py"


def parse_manifest(text: str | bytes) -> Manifest:
    manifest, found, _ = check_fields(text)
    found.raise_if_any()
    assert manifest is not None
    return manifest


def check_fields(text: str | bytes) -> tuple[Manifest | None, Violations, dict[str, object]]:
    """The manifest if it is valid, every problem found, and the fields that passed their own
    checks: the bundle reader checks those against its files even when another field is wrong,
    so that all the manifest's problems are reported at once."""
    found = Violations()
    valid: dict[str, object] = {}
    table = _model_table(text, found)
    if table is None:
        return None, found, valid
    known = [f.name for f in fields(Manifest)]
    for key, value in table.items():
        if key not in _CHECKS:
            found.add(_field(key), "unknown key" + _suggestion(key, known))
        elif problem := _CHECKS[key](value):
            found.add(f"manifest.{key}", problem)
        else:
            valid[key] = tuple(value) if isinstance(value, list) else value
    for key in known:
        if key not in table and key != "requirements":
            found.add(f"manifest.{key}", "missing (required)")
    if found.items:
        return None, found, valid
    manifest = Manifest(
        entrypoint=cast(str, valid["entrypoint"]),
        symbols=cast(tuple[str, ...], valid["symbols"]),
        resolution=cast(str, valid["resolution"]),
        horizon=cast(int, valid["horizon"]),
        lookback=cast(int, valid["lookback"]),
        requirements=cast(str, valid.get("requirements", "")),
    )
    return manifest, found, valid


def _model_table(text: str | bytes, found: Violations) -> dict[str, object] | None:
    if len(text) > MAX_MANIFEST_BYTES:
        found.add("manifest", f"{MANIFEST_NAME} is larger than {format_bytes(MAX_MANIFEST_BYTES)}")
        return None
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            found.add("manifest", f"{MANIFEST_NAME} is not valid UTF-8 (byte {e.start})")
            return None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        # tomllib's message names the line and column: "Invalid value (at line 3, column 9)".
        found.add("manifest", f"invalid TOML: {e}")
        return None
    for key in document:
        if key != "model":
            found.add(_field(key), "unknown table or key; the manifest holds one [model] table")
    model = document.get("model")
    if model is None:
        found.add("manifest.model", "missing [model] table")
        return None
    if not isinstance(model, dict):
        found.add("manifest.model", f"must be a table, not {_toml_type(model)}")
        return None
    return model


def _field(key: str) -> str:
    # Keys come from the client's file: a quoted TOML key can hold anything, escape sequences
    # included, and field names get printed.
    return f"manifest.{key}" if _BARE_KEY.fullmatch(key) else f"manifest.{printable(key)}"


def _suggestion(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    return f"; did you mean {close[0]!r}?" if close else f" (known keys: {', '.join(known)})"


def _toml_type(value: object) -> str:
    # bool before int: TOML booleans are Python ints too.
    for kind, name in (
        (bool, "a boolean"),
        (int, "an integer"),
        (float, "a float"),
        (str, "a string"),
        (list, "an array"),
        (dict, "a table"),
        (datetime, "a date-time"),
        (date, "a date"),
        (time, "a time"),
    ):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _check_entrypoint(value: object) -> str | None:
    if not isinstance(value, str):
        return f"must be a string, not {_toml_type(value)}"
    module, colon, function = value.partition(":")
    shape = 'must be "module:function", e.g. "model:predict" or "pkg.signals:predict"'
    if not colon or not module or not function:
        return f"{printable(value)} {shape}"
    names = [*module.split("."), function]
    if not all(_IDENTIFIER.fullmatch(n) and not keyword.iskeyword(n) for n in names):
        return f"{printable(value)} {shape}, made of ASCII Python identifiers"
    return None


def _check_symbols(value: object) -> str | None:
    if not isinstance(value, list | tuple):
        return f"must be an array of strings, not {_toml_type(value)}"
    if not 1 <= len(value) <= MAX_SYMBOLS:
        return f"must hold 1 to {MAX_SYMBOLS} symbols, not {len(value)}"
    problems: list[str] = []
    if not_strings := [v for v in value if not isinstance(v, str)]:
        problems.append(f"must be strings, not {_toml_type(not_strings[0])}")
    strings = [v for v in value if isinstance(v, str)]
    if bad := [s for s in strings if not SYMBOL.fullmatch(s)]:
        shown = ", ".join(printable(s) for s in bad)
        problems.append(
            f"{shown}: a symbol is 1 to 32 upper-case letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    if dups := sorted({s for s in strings if strings.count(s) > 1}):
        problems.append("listed more than once: " + ", ".join(printable(s) for s in dups))
    return "; ".join(problems) or None


def _check_resolution(value: object) -> str | None:
    if not isinstance(value, str):
        return f"must be a string, not {_toml_type(value)}"
    if value in RESOLUTIONS:
        return None
    allowed = ", ".join(f'"{r}"' for r in RESOLUTIONS)
    m = _DURATION.fullmatch(value)
    seconds = int(m[1]) * _UNIT_SECONDS.get(m[2], 0) if m else 0
    if 0 < seconds < 3600:
        return f"{printable(value)} is finer than an hour, which Foretell never runs; use {allowed}"
    return f"{printable(value)} is not supported; use {allowed}"


def _int_check(low: int, high: int) -> Callable[[object], str | None]:
    def check(value: object) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"must be an integer, not {_toml_type(value)}"
        if not low <= value <= high:
            return f"must be from {low} to {high}, not {value}"
        return None

    return check


def _check_requirements(value: object) -> str | None:
    if not isinstance(value, str):
        return f"must be a string, not {_toml_type(value)}"
    if value and (problem := path_problem(value)):
        return f'{printable(value)}: {problem}; name a file in the bundle, like "requirements.txt"'
    return None


_CHECKS: dict[str, Callable[[object], str | None]] = {
    "entrypoint": _check_entrypoint,
    "symbols": _check_symbols,
    "resolution": _check_resolution,
    "horizon": _int_check(1, MAX_HORIZON),
    "lookback": _int_check(1, MAX_LOOKBACK),
    "requirements": _check_requirements,
}


def _toml_string(value: str) -> str:
    # Valid values hold no control characters, so only quote and backslash need escaping.
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
