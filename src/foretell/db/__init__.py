"""PostgreSQL access: SQLAlchemy 2 async on asyncpg, schema managed by Alembic."""

from foretell.db._engine import Database, async_url, connect, connected, drop_closed
from foretell.db.migrate import upgrade
from foretell.db.models import (
    ApiKey,
    Base,
    Model,
    OutboxMessage,
    RefreshToken,
    User,
    Version,
)

__all__ = [
    "ApiKey",
    "Base",
    "Database",
    "Model",
    "OutboxMessage",
    "RefreshToken",
    "User",
    "Version",
    "async_url",
    "connect",
    "connected",
    "drop_closed",
    "upgrade",
]
