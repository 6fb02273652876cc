"""Size limits of a bundle, the same for the CLI that packs it and the server that checks it."""

from __future__ import annotations

from dataclasses import dataclass

_KIB = 1024
_MIB = 1024 * _KIB


@dataclass(frozen=True)
class Limits:
    max_bundle_bytes: int = 64 * _MIB
    max_entries: int = 2_000
    max_file_bytes: int = 32 * _MIB
    max_total_bytes: int = 256 * _MIB


DEFAULT_LIMITS = Limits()


def format_bytes(n: int) -> str:
    """A size for messages: exact when it is a round number of KiB or MiB."""
    if n >= _MIB:
        return f"{n // _MIB} MiB" if n % _MIB == 0 else f"{n / _MIB:.1f} MiB"
    if n >= _KIB and n % _KIB == 0:
        return f"{n // _KIB} KiB"
    return f"{n} bytes"
