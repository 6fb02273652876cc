"""Server-side administration of data feeders for `foretell admin feeders`: create one (an
account and its API key), grant and revoke symbols, list them."""

from __future__ import annotations

from foretell.auth.policy import Role
from foretell.clock import utc_now
from foretell.db import connected
from foretell.errors import Violations
from foretell.marketdata import feeders, validate
from foretell.marketdata.feeders import Feeder
from foretell.services.account.admin import FeederAccount, create_feeder, find_user
from foretell.settings import Settings

# Who granted symbols from the server's command line (an admin's RPC would name the account).
_BY_CLI = "cli"


def checked_symbols(symbols: list[str]) -> list[str]:
    """Upper-cased, de-duplicated symbols; ValueError naming the bad ones."""
    v = Violations()
    chosen = sorted({validate.symbol(v, s, s.strip().upper()) for s in symbols})
    if v.items:
        raise ValueError("; ".join(f"{x.field!r}: {x.description}" for x in v.items))
    if not chosen:
        raise ValueError("name at least one symbol")
    return chosen


async def create(
    settings: Settings, email: str, display_name: str, symbols: list[str]
) -> FeederAccount:
    """A new feeder granted `symbols`; ValueError with a readable message on bad input."""
    chosen = checked_symbols(symbols)
    account = await create_feeder(settings, email, display_name)
    async with connected(settings.database_url) as db:
        await feeders.grant(db, account.user_id, chosen, by=_BY_CLI, now=utc_now())
    return account


async def grant(settings: Settings, email: str, symbols: list[str]) -> list[str]:
    chosen = checked_symbols(symbols)
    user_id = await find_user(settings, email, Role.FEEDER)
    async with connected(settings.database_url) as db:
        await feeders.grant(db, user_id, chosen, by=_BY_CLI, now=utc_now())
    return chosen


async def revoke(settings: Settings, email: str, symbols: list[str]) -> int:
    chosen = checked_symbols(symbols)
    user_id = await find_user(settings, email, Role.FEEDER)
    async with connected(settings.database_url) as db:
        return await feeders.revoke(db, user_id, chosen)


async def list_all(settings: Settings) -> list[Feeder]:
    async with connected(settings.database_url) as db:
        return await feeders.list_feeders(db)
