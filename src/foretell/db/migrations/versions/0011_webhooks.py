"""Webhooks: subscribers' HTTPS endpoints, and the deliveries the worker sends to them.

A subscriber registers endpoints per subscription (`webhook_endpoints`, with the HMAC secret
shown once at creation). Each live forecast recorded for the model queues one delivery per
endpoint of an entitled subscription (`webhook_deliveries`): a trigger on `forecasts` inserts
them in the very transaction that records the forecast, so a recorded forecast can never miss
its deliveries, whatever happens to the process after the commit. Unique per (endpoint,
forecast): a forecast is queued for an endpoint at most once. `webhook_attempts` is the log of
every POST (status code or error, duration), which the web app shows.

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_ENQUEUE = """
CREATE FUNCTION webhook_enqueue_forecast() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO webhook_deliveries (id, endpoint_id, forecast_id, event_type, state, attempts,
                                  created_at, next_attempt_at)
  SELECT gen_random_uuid(), e.id, NEW.id, 'forecast.recorded', 'pending', 0,
         NEW.recorded_at, NEW.recorded_at
  FROM webhook_endpoints e
  JOIN subscriptions s ON s.id = e.subscription_id
  WHERE s.model_id = NEW.model_id AND s.state IN ('trialing', 'active', 'past_due')
  ON CONFLICT (endpoint_id, forecast_id) DO NOTHING;
  RETURN NULL;
END $$
"""


def upgrade() -> None:
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column(
            "subscription_id",
            sa.Uuid(),
            sa.ForeignKey("subscriptions.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("description", sa.String(200), nullable=False),
        sa.Column("secret", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("webhook_endpoints_subscription_idx", "webhook_endpoints", ["subscription_id"])
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column(
            "endpoint_id",
            sa.Uuid(),
            sa.ForeignKey("webhook_endpoints.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column(
            "forecast_id",
            sa.BigInteger(),
            sa.ForeignKey("forecasts.id", ondelete="CASCADE"),
            nullable=True,
        ),
        sa.Column("event_type", sa.String(32), nullable=False),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=False, server_default=""),
        sa.CheckConstraint(
            "state IN ('pending', 'delivered', 'failed', 'canceled')",
            name="webhook_deliveries_state_check",
        ),
        sa.UniqueConstraint(
            "endpoint_id", "forecast_id", name="webhook_deliveries_endpoint_forecast_key"
        ),
    )
    op.create_index(
        "webhook_deliveries_due_idx",
        "webhook_deliveries",
        ["next_attempt_at"],
        postgresql_where=sa.text("state = 'pending'"),
    )
    op.create_index(
        "webhook_deliveries_endpoint_idx", "webhook_deliveries", ["endpoint_id", "created_at"]
    )
    op.create_table(
        "webhook_attempts",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column(
            "delivery_id",
            sa.Uuid(),
            sa.ForeignKey("webhook_deliveries.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=False),
    )
    op.create_index("webhook_attempts_delivery_idx", "webhook_attempts", ["delivery_id", "number"])
    op.execute(_ENQUEUE)
    op.execute("""
        CREATE TRIGGER forecasts_webhooks AFTER INSERT ON forecasts
        FOR EACH ROW WHEN (NEW.kind = 'live') EXECUTE FUNCTION webhook_enqueue_forecast()
    """)


def downgrade() -> None:
    op.execute("DROP TRIGGER forecasts_webhooks ON forecasts")
    op.execute("DROP FUNCTION webhook_enqueue_forecast()")
    op.drop_table("webhook_attempts")
    op.drop_table("webhook_deliveries")
    op.drop_table("webhook_endpoints")
