"""Files that live at the top of the repository (the Envoy template, the descriptor set) and
are copied into the wheel under `foretell/_assets/`."""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent
_CANDIDATES = (_HERE.parents[1], _HERE / "_assets")


def asset_path(relative: str) -> Path:
    """`relative` as found in a checkout (editable install) or in the installed wheel."""
    for root in _CANDIDATES:
        path = root / relative
        if path.exists():
            return path
    raise FileNotFoundError(f"{relative} is missing from this installation")
