"""Runs may be recorded as missed: a live slot that came due while the platform was down.

A missed slot is a row of kind 'live' with outcome 'missed', so the (version, as_of, kind) key
keeps it from ever being run late and recorded as a live forecast.

Revision ID: 0005
Revises: 0004
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_OUTCOMES = "'ok', 'model_error', 'timeout', 'out_of_memory', 'killed_by_policy', 'invalid_output'"


def upgrade() -> None:
    op.drop_constraint("runs_outcome_check", "runs", type_="check")
    op.create_check_constraint("runs_outcome_check", "runs", f"outcome IN ({_OUTCOMES}, 'missed')")


def downgrade() -> None:
    op.execute("DELETE FROM runs WHERE outcome = 'missed'")
    op.drop_constraint("runs_outcome_check", "runs", type_="check")
    op.create_check_constraint("runs_outcome_check", "runs", f"outcome IN ({_OUTCOMES})")
