"""Plans, subscriptions and their audit log, invoices, payments and credit notes.

One live subscription per (subscriber, model): a partial unique index over the live states.
Invoices are keyed by (subscription, period start), so billing the same period twice issues
nothing twice. Issued invoices, payments and credit notes are immutable: triggers refuse UPDATE,
DELETE and TRUNCATE for every session (SQLSTATE FT001, as the versions triggers of 0002);
corrections are credit notes, payments are rows of their own. Their foreign keys cascade on
purpose: deleting a model or user that was ever invoiced reaches the trigger, which refuses it
with FT001 (FAILED_PRECONDITION to a client) rather than a bare foreign-key error.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)
_STATES = "'trialing', 'incomplete', 'active', 'past_due', 'canceled', 'expired'"
_LIVE = "state IN ('trialing', 'incomplete', 'active', 'past_due')"
_CURRENCY = "currency ~ '^[A-Z]{3}$'"
_IMMUTABLE = ("invoices", "payments", "credit_notes")

# One statement per string: asyncpg runs each as a prepared statement.
_GUARD = """
CREATE FUNCTION foretell_billing_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'issued % rows are immutable: issue a credit note instead', TG_TABLE_NAME
    USING ERRCODE = 'FT001';
END;
$$
"""


def _fk(table: str, *, cascade: bool = False) -> sa.ForeignKey:
    return sa.ForeignKey(f"{table}.id", ondelete="CASCADE" if cascade else None)


def upgrade() -> None:
    op.create_table(
        "plans",
        sa.Column("model_id", sa.Uuid(), _fk("models", cascade=True), primary_key=True),
        sa.Column("price_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("trial_days", sa.Integer(), nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.CheckConstraint("price_minor >= 0", name="plans_price_check"),
        sa.CheckConstraint(_CURRENCY, name="plans_currency_check"),
        sa.CheckConstraint("trial_days BETWEEN 0 AND 30", name="plans_trial_days_check"),
    )
    op.create_table(
        "subscriptions",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("model_id", sa.Uuid(), _fk("models", cascade=True), nullable=False),
        sa.Column("subscriber_id", sa.Uuid(), _fk("users", cascade=True), nullable=False),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("trial_end", _TS, nullable=True),
        sa.Column("anchor", _TS, nullable=False),
        sa.Column("period_index", sa.Integer(), nullable=False),
        sa.Column("period_start", _TS, nullable=False),
        sa.Column("period_end", _TS, nullable=False),
        sa.Column("cancel_at_period_end", sa.Boolean(), nullable=False),
        sa.Column("past_due_since", _TS, nullable=True),
        sa.Column("ended_at", _TS, nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.CheckConstraint(f"state IN ({_STATES})", name="subscriptions_state_check"),
        sa.CheckConstraint("period_end > period_start", name="subscriptions_period_check"),
    )
    op.create_index(
        "subscriptions_live_key",
        "subscriptions",
        ["subscriber_id", "model_id"],
        unique=True,
        postgresql_where=sa.text(_LIVE),
    )
    op.create_index("subscriptions_model_idx", "subscriptions", ["model_id"])
    op.create_table(
        "subscription_events",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("subscription_id", sa.Uuid(), _fk("subscriptions", cascade=True), nullable=False),
        sa.Column("event", sa.String(24), nullable=False),
        sa.Column("from_state", sa.String(10), nullable=True),
        sa.Column("to_state", sa.String(10), nullable=False),
        sa.Column("at", _TS, nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
    )
    op.create_index(
        "subscription_events_subscription_idx", "subscription_events", ["subscription_id", "id"]
    )
    op.create_table(
        "invoices",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("subscription_id", sa.Uuid(), _fk("subscriptions", cascade=True), nullable=False),
        sa.Column("model_id", sa.Uuid(), _fk("models", cascade=True), nullable=False),
        sa.Column("subscriber_id", sa.Uuid(), _fk("users", cascade=True), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("period_start", _TS, nullable=False),
        sa.Column("period_end", _TS, nullable=False),
        sa.Column("issued_at", _TS, nullable=False),
        sa.Column("due_at", _TS, nullable=False),
        sa.UniqueConstraint(
            "subscription_id", "period_start", name="invoices_subscription_period_key"
        ),
        sa.CheckConstraint("amount_minor >= 0", name="invoices_amount_check"),
        sa.CheckConstraint(_CURRENCY, name="invoices_currency_check"),
    )
    op.create_index("invoices_subscriber_idx", "invoices", ["subscriber_id", "issued_at"])
    op.create_table(
        "payments",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column(
            "invoice_id", sa.Uuid(), _fk("invoices", cascade=True), nullable=False, unique=True
        ),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("gateway", sa.String(32), nullable=False),
        sa.Column("reference", sa.Text(), nullable=False),
        sa.Column("paid_at", _TS, nullable=False),
        sa.CheckConstraint("amount_minor >= 0", name="payments_amount_check"),
        sa.CheckConstraint(_CURRENCY, name="payments_currency_check"),
    )
    op.create_table(
        "credit_notes",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("invoice_id", sa.Uuid(), _fk("invoices", cascade=True), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("issued_at", _TS, nullable=False),
        sa.CheckConstraint("amount_minor > 0", name="credit_notes_amount_check"),
    )
    op.create_index("credit_notes_invoice_idx", "credit_notes", ["invoice_id"])
    op.execute(_GUARD)
    for table in _IMMUTABLE:
        op.execute(
            f"CREATE TRIGGER {table}_immutable BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION foretell_billing_guard()"
        )
        # TRUNCATE skips row triggers; foretell_no_truncate comes from 0002.
        op.execute(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION foretell_no_truncate()"
        )


def downgrade() -> None:
    for table in reversed(_IMMUTABLE):
        op.drop_table(table)
    op.execute("DROP FUNCTION foretell_billing_guard()")
    op.drop_table("subscription_events")
    op.drop_table("subscriptions")
    op.drop_table("plans")
