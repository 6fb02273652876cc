"""Symbols: the names of the instruments the platform holds bars for and models forecast.

The database checks the same pattern (migration 0003's `bars_symbol_check`)."""

from __future__ import annotations

import re

SYMBOL = re.compile(r"[A-Z0-9][A-Z0-9._-]{0,31}")
SYMBOL_RULE = "1 to 32 characters: A-Z, 0-9, '.', '_', '-', starting with a letter or digit"
