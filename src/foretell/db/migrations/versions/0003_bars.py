"""Market data: OHLCV bars per symbol and resolution.

The rules every bar obeys are checked here as well as in code, so a bar written by any session
(an import script, a person with psql) cannot be one a model should never see: misaligned,
unfinished arithmetic (NaN, infinities) or a high below its low.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)

# Seconds of each resolution, and the grid its open times sit on (UTC, from the epoch).
_STEP = "CASE resolution WHEN '1h' THEN 3600 WHEN '4h' THEN 14400 WHEN '1d' THEN 86400 END"


def _finite(column: str) -> str:
    # In PostgreSQL NaN sorts above +Infinity, so this one comparison pair excludes all three.
    return f"{column} > '-Infinity'::float8 AND {column} < 'Infinity'::float8"


def upgrade() -> None:
    op.create_table(
        "bars",
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("resolution", sa.String(4), nullable=False),
        sa.Column("open_time", _TS, nullable=False),
        sa.Column("close_time", _TS, nullable=False),
        sa.Column("open", sa.Double(), nullable=False),
        sa.Column("high", sa.Double(), nullable=False),
        sa.Column("low", sa.Double(), nullable=False),
        sa.Column("close", sa.Double(), nullable=False),
        sa.Column("volume", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("symbol", "resolution", "open_time", name="bars_pkey"),
        sa.CheckConstraint("symbol ~ '^[A-Z0-9][A-Z0-9._-]{0,31}$'", name="bars_symbol_check"),
        sa.CheckConstraint("resolution IN ('1h', '4h', '1d')", name="bars_resolution_check"),
        sa.CheckConstraint(
            f"mod(extract(epoch FROM open_time)::numeric, {_STEP}) = 0",
            name="bars_open_time_check",
        ),
        sa.CheckConstraint(
            f"close_time = open_time + make_interval(secs => {_STEP})",
            name="bars_close_time_check",
        ),
        sa.CheckConstraint(
            " AND ".join(_finite(c) for c in ("open", "high", "low", "close", "volume")),
            name="bars_finite_check",
        ),
        sa.CheckConstraint(
            "high >= greatest(open, close) AND low <= least(open, close)",
            name="bars_range_check",
        ),
        sa.CheckConstraint("volume >= 0", name="bars_volume_check"),
    )


def downgrade() -> None:
    op.drop_table("bars")
