"""Runs Alembic migrations programmatically (`foretell db upgrade`, `foretell up`, tests)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config

_HERE = Path(__file__).parent


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_HERE / "migrations"))
    # ConfigParser interpolation would eat a literal % in a password.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade_sync(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


async def upgrade(url: str, revision: str = "head") -> None:
    """Migrates the database at `url` to `revision`. Alembic's async env runs its own loop,
    so it goes to a thread."""
    await asyncio.to_thread(upgrade_sync, url, revision)
