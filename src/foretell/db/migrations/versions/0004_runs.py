"""Runs of model versions and the forecasts they recorded.

Both tables are keyed so that executing the same (version, as_of) again records nothing twice:
runs by (version_id, as_of, kind), forecasts by (version_id, as_of, symbol, target_time, kind).
`kind` separates the track record ('live') from dry runs and simulated replays, which may cover
the same slots without ever blocking or mixing with live forecasts. The value rules of
SubmitForecasts are CHECK constraints here too.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)
_FORECAST_KEY = ("version_id", "as_of", "symbol", "target_time", "kind")
_KINDS = "kind IN ('live', 'dry', 'simulated')"


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column(
            "model_id", sa.Uuid(), sa.ForeignKey("models.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column(
            "version_id",
            sa.Uuid(),
            sa.ForeignKey("versions.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("as_of", _TS, nullable=False),
        sa.Column("kind", sa.String(9), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("duration_s", sa.Double(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("log", sa.Text(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.UniqueConstraint("version_id", "as_of", "kind", name="runs_version_as_of_kind_key"),
        sa.CheckConstraint(_KINDS, name="runs_kind_check"),
        sa.CheckConstraint(
            "outcome IN ('ok', 'model_error', 'timeout', 'out_of_memory', 'killed_by_policy', "
            "'invalid_output')",
            name="runs_outcome_check",
        ),
        sa.CheckConstraint("duration_s >= 0", name="runs_duration_check"),
    )
    op.create_index("runs_model_idx", "runs", ["model_id", "as_of"])
    op.create_table(
        "forecasts",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column(
            "run_id", sa.Uuid(), sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column(
            "model_id", sa.Uuid(), sa.ForeignKey("models.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column(
            "version_id",
            sa.Uuid(),
            sa.ForeignKey("versions.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("kind", sa.String(9), nullable=False),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("as_of", _TS, nullable=False),
        sa.Column("target_time", _TS, nullable=False),
        sa.Column("direction", sa.String(4), nullable=False),
        sa.Column("predicted_return", sa.Double(), nullable=True),
        sa.Column("probability", sa.Double(), nullable=True),
        sa.Column("recorded_at", _TS, nullable=False),
        sa.UniqueConstraint(*_FORECAST_KEY, name="forecasts_version_as_of_symbol_target_kind_key"),
        sa.CheckConstraint(_KINDS, name="forecasts_kind_check"),
        sa.CheckConstraint("direction IN ('up', 'down', 'flat')", name="forecasts_direction_check"),
        sa.CheckConstraint("target_time > as_of", name="forecasts_target_check"),
        sa.CheckConstraint(
            "probability IS NULL OR (probability >= 0 AND probability <= 1)",
            name="forecasts_probability_check",
        ),
        # NaN sorts above +Infinity in PostgreSQL: this pair excludes all three.
        sa.CheckConstraint(
            "predicted_return IS NULL OR (predicted_return > '-Infinity'::float8 "
            "AND predicted_return < 'Infinity'::float8)",
            name="forecasts_predicted_return_check",
        ),
    )
    op.create_index("forecasts_model_idx", "forecasts", ["model_id", "target_time"])
    op.create_index("forecasts_run_idx", "forecasts", ["run_id"])


def downgrade() -> None:
    op.drop_table("forecasts")
    op.drop_table("runs")
