"""Prorated credit notes: a subscription that ends before its paid period does (cancelled now
by its subscriber, or its model made private, retired or deleted) is credited the unused part
of that period. Such a credit note records the moment from which the period went unused
(`unused_from`); at most one per invoice (a partial unique index), so crediting twice is
impossible whatever retries happen.

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("credit_notes", sa.Column("unused_from", sa.DateTime(timezone=True)))
    op.create_index(
        "credit_notes_unused_once_idx",
        "credit_notes",
        ["invoice_id"],
        unique=True,
        postgresql_where=sa.text("unused_from IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("credit_notes_unused_once_idx", table_name="credit_notes")
    op.drop_column("credit_notes", "unused_from")
