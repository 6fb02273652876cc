"""Models remember since when their live version has been live.

`versions.published_at` is a version's first publication, history that never changes. A model
taken offline and published again went live again: the scheduler counts slots (run or missed)
from `models.live_since`, set whenever a version goes live and cleared when the model goes
offline, so the time a model spent offline is never recorded as missed slots.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("models", sa.Column("live_since", sa.DateTime(timezone=True), nullable=True))
    # Models live now have been live at least since their live version's first publication
    # (the best this database knows).
    op.execute("""
        UPDATE models SET live_since = versions.published_at
        FROM versions
        WHERE versions.model_id = models.id AND versions.number = models.live_version
    """)
    op.create_check_constraint(
        "models_live_since_check", "models", "(live_version IS NULL) = (live_since IS NULL)"
    )


def downgrade() -> None:
    op.drop_constraint("models_live_since_check", "models", type_="check")
    op.drop_column("models", "live_since")
