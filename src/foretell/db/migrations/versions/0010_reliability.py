"""Emails in one form, an outbox of notices to account owners, and why subscriptions ended.

Emails are stored NFKC-normalised (fullwidth letters become plain ones; sign-up normalises
them), so the unique index on lower(email) also catches addresses that differ only in
compatibility forms. Existing addresses are normalised here where that makes no duplicate; an
old pair that would collide is left as it is rather than refusing the upgrade.

The outbox holds notices for account owners (e.g. "someone tried to sign up with your
address": sign-up answers the same whether or not an address is registered) until the
operator's mailer sends them.

Billing follows access: a subscription that ends records why (`subscriptions.end_reason`),
e.g. because its model was made private or retired, so its subscriber can see it.

A run the platform failed to carry out (its sandbox never ran the model) is recorded with the
outcome 'platform_error': chained like any run, never counted in the model's measures.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


_OUTCOMES = (
    "'ok', 'model_error', 'timeout', 'out_of_memory', 'killed_by_policy', 'invalid_output', "
    "'missed', 'data_missing'"
)


def upgrade() -> None:
    op.drop_constraint("runs_outcome_check", "runs", type_="check")
    op.create_check_constraint(
        "runs_outcome_check", "runs", f"outcome IN ({_OUTCOMES}, 'platform_error')"
    )
    op.execute("""
        UPDATE users SET email = normalize(email, NFKC)
        WHERE email <> normalize(email, NFKC)
          AND NOT EXISTS (
            SELECT 1 FROM users other
            WHERE other.id <> users.id AND lower(other.email) = lower(normalize(users.email, NFKC))
          )
    """)
    op.create_table(
        "outbox",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("recipient", sa.String(254), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index(
        "outbox_unsent_idx", "outbox", ["created_at"], postgresql_where=sa.text("sent_at IS NULL")
    )

    op.add_column("subscriptions", sa.Column("end_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    op.execute("DELETE FROM runs WHERE outcome = 'platform_error'")
    op.drop_constraint("runs_outcome_check", "runs", type_="check")
    op.create_check_constraint("runs_outcome_check", "runs", f"outcome IN ({_OUTCOMES})")
    op.drop_column("subscriptions", "end_reason")
    op.drop_index("outbox_unsent_idx", table_name="outbox")
    op.drop_table("outbox")
