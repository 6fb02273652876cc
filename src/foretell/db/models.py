"""Tables, as SQLAlchemy declarative classes. Migrations in `migrations/` are the source of
truth for the schema; these classes must agree with them (a test checks)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Double,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    LargeBinary,
    PrimaryKeyConstraint,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: DateTime(timezone=True)}


class User(Base):
    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint(
            "role IN ('provider', 'subscriber', 'admin', 'feeder')", name="users_role_check"
        ),
        # Emails are stored NFKC-normalised (migration 0009), so this catches addresses that
        # differ only in case or in compatibility forms (fullwidth letters).
        Index("users_email_key", text("lower(email)"), unique=True),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    email: Mapped[str] = mapped_column(String(254))
    display_name: Mapped[str] = mapped_column(String(80))
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]


class OutboxMessage(Base):
    """A notice to send to an account owner's address; the operator's mailer sends it and
    stamps `sent_at` (migration 0009)."""

    __tablename__ = "outbox"
    __table_args__ = (
        Index("outbox_unsent_idx", "created_at", postgresql_where=text("sent_at IS NULL")),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    kind: Mapped[str] = mapped_column(String(32))
    recipient: Mapped[str] = mapped_column(String(254))
    subject: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]
    sent_at: Mapped[datetime | None]


class RefreshToken(Base):
    """One refresh token. Tokens rotated from one login share a family; reusing a rotated
    token revokes the whole family."""

    __tablename__ = "refresh_tokens"
    __table_args__ = (Index("refresh_tokens_family_idx", "family_id"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    family_id: Mapped[uuid.UUID]
    token_hash: Mapped[bytes] = mapped_column(LargeBinary, unique=True)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    rotated_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class ApiKey(Base):
    __tablename__ = "api_keys"
    __table_args__ = (Index("api_keys_user_idx", "user_id"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    prefix: Mapped[str] = mapped_column(String(16))
    secret_hash: Mapped[bytes] = mapped_column(LargeBinary, unique=True)
    created_at: Mapped[datetime]
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class Model(Base):
    __tablename__ = "models"
    __table_args__ = (
        Index("models_owner_idx", "owner_id"),
        ForeignKeyConstraint(
            ["id", "live_version"],
            ["versions.model_id", "versions.number"],
            name="models_live_version_fkey",
            use_alter=True,
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(40), unique=True)
    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    title: Mapped[str] = mapped_column(String(120))
    description: Mapped[str] = mapped_column(Text)
    symbols: Mapped[list[str]] = mapped_column(ARRAY(Text))
    resolution: Mapped[str] = mapped_column(String(4))
    horizon: Mapped[int]
    tags: Mapped[list[str]] = mapped_column(ARRAY(Text))
    visibility: Mapped[str] = mapped_column(String(8))
    live_version: Mapped[int | None]
    # When the live version went live (its latest publication); None while offline. The
    # scheduler counts slots from here: time offline is never a missed slot (migration 0008).
    live_since: Mapped[datetime | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class Version(Base):
    """One immutable build of a model. Database triggers refuse changes to what a version is
    (see migration 0002); code never tries."""

    __tablename__ = "versions"
    __table_args__ = (
        UniqueConstraint("model_id", "number", name="versions_model_number_key"),
        UniqueConstraint("model_id", "digest", name="versions_model_digest_key"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    model_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    number: Mapped[int]
    digest: Mapped[str] = mapped_column(String(71))
    bundle_size: Mapped[int] = mapped_column(BigInteger)
    manifest: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime]
    build_state: Mapped[str] = mapped_column(String(8))
    failure_reason: Mapped[str] = mapped_column(Text)
    image_digest: Mapped[str | None] = mapped_column(String(71))
    build_finished_at: Mapped[datetime | None]
    build_log: Mapped[str] = mapped_column(Text)
    published_at: Mapped[datetime | None]


class Bar(Base):
    """One OHLCV bar. Its rules (grid-aligned open time, finite values, high and low around
    open and close) are CHECK constraints of migration 0003 as well as code."""

    __tablename__ = "bars"
    __table_args__ = (PrimaryKeyConstraint("symbol", "resolution", "open_time", name="bars_pkey"),)

    symbol: Mapped[str] = mapped_column(String(32))
    resolution: Mapped[str] = mapped_column(String(4))
    open_time: Mapped[datetime]
    close_time: Mapped[datetime]
    open: Mapped[float] = mapped_column(Double)
    high: Mapped[float] = mapped_column(Double)
    low: Mapped[float] = mapped_column(Double)
    close: Mapped[float] = mapped_column(Double)
    volume: Mapped[float] = mapped_column(Double)


class SymbolCalendar(Base):
    """A symbol's trading calendar (`foretell.calendars`), set when its first bars are stored
    or by an admin (`set_by`: 'default' or the admin's user id)."""

    __tablename__ = "symbol_calendars"
    __table_args__ = (
        CheckConstraint("calendar ~ '^[A-Z0-9/]{2,16}$'", name="symbol_calendars_name_check"),
    )

    symbol: Mapped[str] = mapped_column(String(32), primary_key=True)
    calendar: Mapped[str] = mapped_column(String(16))
    set_at: Mapped[datetime]
    set_by: Mapped[str] = mapped_column(String(64))


class FeederGrant(Base):
    """A symbol a data feeder may push bars for (migration 0012)."""

    __tablename__ = "feeder_grants"

    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    symbol: Mapped[str] = mapped_column(String(32), primary_key=True)
    granted_at: Mapped[datetime]
    granted_by: Mapped[str] = mapped_column(String(64))


class BarCorrection(Base):
    """An admin's change of a stored bar, with the values before and after (migration 0012).
    Append-only in the database."""

    __tablename__ = "bar_corrections"
    __table_args__ = (Index("bar_corrections_bar_idx", "symbol", "resolution", "open_time"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    symbol: Mapped[str] = mapped_column(String(32))
    resolution: Mapped[str] = mapped_column(String(4))
    open_time: Mapped[datetime]
    old_open: Mapped[float] = mapped_column(Double)
    old_high: Mapped[float] = mapped_column(Double)
    old_low: Mapped[float] = mapped_column(Double)
    old_close: Mapped[float] = mapped_column(Double)
    old_volume: Mapped[float] = mapped_column(Double)
    new_open: Mapped[float] = mapped_column(Double)
    new_high: Mapped[float] = mapped_column(Double)
    new_low: Mapped[float] = mapped_column(Double)
    new_close: Mapped[float] = mapped_column(Double)
    new_volume: Mapped[float] = mapped_column(Double)
    reason: Mapped[str] = mapped_column(Text)
    corrected_by: Mapped[uuid.UUID]
    corrected_at: Mapped[datetime]


class Run(Base):
    """One execution of a version at one as_of: how it ended, its provider-facing detail and
    its captured output. Unique per (version, as_of, kind): a retried job records nothing new."""

    __tablename__ = "runs"
    __table_args__ = (
        UniqueConstraint("version_id", "as_of", "kind", name="runs_version_as_of_kind_key"),
        Index("runs_model_idx", "model_id", "as_of"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    model_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    version_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("versions.id", ondelete="CASCADE"))
    as_of: Mapped[datetime]
    kind: Mapped[str] = mapped_column(String(9))
    outcome: Mapped[str] = mapped_column(String(16))
    duration_s: Mapped[float] = mapped_column(Double)
    detail: Mapped[str] = mapped_column(Text)
    log: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]


_FORECAST_KEY = ("version_id", "as_of", "symbol", "target_time", "kind")


class Forecast(Base):
    """One recorded forecast, written by the platform after its run (recorded_at is the
    platform's clock). Unique per (version, as_of, symbol, target_time, kind)."""

    __tablename__ = "forecasts"
    __table_args__ = (
        UniqueConstraint(*_FORECAST_KEY, name="forecasts_version_as_of_symbol_target_kind_key"),
        Index("forecasts_model_idx", "model_id", "target_time"),
        Index("forecasts_run_idx", "run_id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    model_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    version_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("versions.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(9))
    symbol: Mapped[str] = mapped_column(String(32))
    as_of: Mapped[datetime]
    target_time: Mapped[datetime]
    direction: Mapped[str] = mapped_column(String(4))
    predicted_return: Mapped[float | None] = mapped_column(Double)
    probability: Mapped[float | None] = mapped_column(Double)
    recorded_at: Mapped[datetime]


_CASCADE = "CASCADE"


class Plan(Base):
    """A model's monthly price (integer minor units of an ISO 4217 currency) and trial days."""

    __tablename__ = "plans"
    __table_args__ = (
        CheckConstraint("price_minor >= 0", name="plans_price_check"),
        CheckConstraint("currency ~ '^[A-Z]{3}$'", name="plans_currency_check"),
        CheckConstraint("trial_days BETWEEN 0 AND 30", name="plans_trial_days_check"),
    )

    model_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("models.id", ondelete=_CASCADE), primary_key=True
    )
    price_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    trial_days: Mapped[int]
    updated_at: Mapped[datetime]


class Subscription(Base):
    """One subscriber's subscription to one model. `state` changes only through
    foretell.billing.machine. Paid periods are calendar months from `anchor`: period k runs
    from anchor + k months to anchor + k + 1 months (clamped to month ends, never drifting)."""

    __tablename__ = "subscriptions"
    __table_args__ = (
        CheckConstraint(
            "state IN ('trialing', 'incomplete', 'active', 'past_due', 'canceled', 'expired')",
            name="subscriptions_state_check",
        ),
        CheckConstraint("period_end > period_start", name="subscriptions_period_check"),
        Index(
            "subscriptions_live_key",
            "subscriber_id",
            "model_id",
            unique=True,
            postgresql_where=text("state IN ('trialing', 'incomplete', 'active', 'past_due')"),
        ),
        Index("subscriptions_model_idx", "model_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    model_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("models.id", ondelete=_CASCADE))
    subscriber_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete=_CASCADE))
    state: Mapped[str] = mapped_column(String(10))
    trial_end: Mapped[datetime | None]
    anchor: Mapped[datetime]
    period_index: Mapped[int]
    period_start: Mapped[datetime]
    period_end: Mapped[datetime]
    cancel_at_period_end: Mapped[bool] = mapped_column(Boolean)
    past_due_since: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    # Why it ended, for its subscriber (migration 0009).
    end_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class SubscriptionEvent(Base):
    """The audit log: one row per state machine transition."""

    __tablename__ = "subscription_events"
    __table_args__ = (Index("subscription_events_subscription_idx", "subscription_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    subscription_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("subscriptions.id", ondelete=_CASCADE)
    )
    event: Mapped[str] = mapped_column(String(24))
    from_state: Mapped[str | None] = mapped_column(String(10))
    to_state: Mapped[str] = mapped_column(String(10))
    at: Mapped[datetime]
    detail: Mapped[str] = mapped_column(Text)


class Invoice(Base):
    """One billed period. Immutable once issued (a trigger of migration 0006 refuses UPDATE,
    DELETE and TRUNCATE); unique per (subscription, period start)."""

    __tablename__ = "invoices"
    __table_args__ = (
        UniqueConstraint(
            "subscription_id", "period_start", name="invoices_subscription_period_key"
        ),
        CheckConstraint("amount_minor >= 0", name="invoices_amount_check"),
        CheckConstraint("currency ~ '^[A-Z]{3}$'", name="invoices_currency_check"),
        Index("invoices_subscriber_idx", "subscriber_id", "issued_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    subscription_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("subscriptions.id", ondelete=_CASCADE)
    )
    model_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("models.id", ondelete=_CASCADE))
    subscriber_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete=_CASCADE))
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    period_start: Mapped[datetime]
    period_end: Mapped[datetime]
    issued_at: Mapped[datetime]
    due_at: Mapped[datetime]


class Payment(Base):
    """Money received for an invoice (at most one per invoice), by which payment processor.
    Immutable."""

    __tablename__ = "payments"
    __table_args__ = (
        CheckConstraint("amount_minor >= 0", name="payments_amount_check"),
        CheckConstraint("currency ~ '^[A-Z]{3}$'", name="payments_currency_check"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    invoice_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("invoices.id", ondelete=_CASCADE), unique=True
    )
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    # The column kept its first name; in code it is the payment processor's name.
    processor: Mapped[str] = mapped_column("gateway", String(32))
    reference: Mapped[str] = mapped_column(Text)
    paid_at: Mapped[datetime]


class CreditNote(Base):
    """A correction of an issued invoice: reduces what is due. Immutable."""

    __tablename__ = "credit_notes"
    __table_args__ = (
        CheckConstraint("amount_minor > 0", name="credit_notes_amount_check"),
        Index("credit_notes_invoice_idx", "invoice_id"),
        # A prorated credit (unused_from set) at most once per invoice (migration 0013).
        Index(
            "credit_notes_unused_once_idx",
            "invoice_id",
            unique=True,
            postgresql_where=text("unused_from IS NOT NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    invoice_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("invoices.id", ondelete=_CASCADE))
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(Text)
    issued_at: Mapped[datetime]
    # Set on a prorated credit: the period was unused from this moment to its end.
    unused_from: Mapped[datetime | None]


class ModelRevision(Base):
    """Bumped by triggers on every row of `runs` and `forecasts` written for the model (see
    migration 0007): the performance cache's key."""

    __tablename__ = "model_revisions"

    model_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("models.id", ondelete="CASCADE"), primary_key=True
    )
    revision: Mapped[int] = mapped_column(BigInteger)


class DataRevision(Base):
    """One counter per shared table ('bars'), bumped by a statement trigger on every write."""

    __tablename__ = "data_revisions"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    revision: Mapped[int] = mapped_column(BigInteger)


class LedgerHead(Base):
    """A model's chain head; locked FOR UPDATE while an entry is appended."""

    __tablename__ = "ledger_heads"

    model_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("models.id", ondelete="CASCADE"), primary_key=True
    )
    sequence: Mapped[int] = mapped_column(BigInteger)
    head_hash: Mapped[bytes] = mapped_column(LargeBinary)


class LedgerEntry(Base):
    """One link of a model's chain: one recorded live run. `run_id` has no foreign key on
    purpose: a run deleted behind the platform's back leaves its entry, found missing."""

    __tablename__ = "ledger_entries"
    __table_args__ = (
        PrimaryKeyConstraint("model_id", "sequence", name="ledger_entries_pkey"),
        UniqueConstraint("run_id", name="ledger_entries_run_id_key"),
    )

    model_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    sequence: Mapped[int] = mapped_column(BigInteger)
    run_id: Mapped[uuid.UUID]
    prev_hash: Mapped[bytes] = mapped_column(LargeBinary)
    entry_hash: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime]


class LedgerKey(Base):
    """An Ed25519 public key that signs checkpoints (raw 32 bytes)."""

    __tablename__ = "ledger_keys"

    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    public_key: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime]


class LedgerCheckpoint(Base):
    """A signed chain head."""

    __tablename__ = "ledger_checkpoints"
    __table_args__ = (
        UniqueConstraint("model_id", "sequence", name="ledger_checkpoints_model_sequence_key"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    model_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    sequence: Mapped[int] = mapped_column(BigInteger)
    head_hash: Mapped[bytes] = mapped_column(LargeBinary)
    signed_at: Mapped[datetime]
    key_id: Mapped[str] = mapped_column(String(32), ForeignKey("ledger_keys.key_id"))
    signature: Mapped[bytes] = mapped_column(LargeBinary)


class WebhookEndpoint(Base):
    """A subscriber's HTTPS endpoint for one subscription, with the HMAC secret that signs what
    is sent to it (migration 0011)."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (Index("webhook_endpoints_subscription_idx", "subscription_id"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    subscription_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("subscriptions.id", ondelete=_CASCADE)
    )
    url: Mapped[str] = mapped_column(Text)
    description: Mapped[str] = mapped_column(String(200))
    secret: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]


class WebhookDelivery(Base):
    """One event for one endpoint: a recorded forecast (queued by a trigger on `forecasts`) or
    a test event. Unique per (endpoint, forecast)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        CheckConstraint(
            "state IN ('pending', 'delivered', 'failed', 'canceled')",
            name="webhook_deliveries_state_check",
        ),
        UniqueConstraint(
            "endpoint_id", "forecast_id", name="webhook_deliveries_endpoint_forecast_key"
        ),
        Index(
            "webhook_deliveries_due_idx",
            "next_attempt_at",
            postgresql_where=text("state = 'pending'"),
        ),
        Index("webhook_deliveries_endpoint_idx", "endpoint_id", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    endpoint_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("webhook_endpoints.id", ondelete=_CASCADE)
    )
    forecast_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("forecasts.id", ondelete=_CASCADE)
    )
    event_type: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(10))
    attempts: Mapped[int]
    created_at: Mapped[datetime]
    next_attempt_at: Mapped[datetime | None]
    delivered_at: Mapped[datetime | None]
    last_status: Mapped[int | None]
    last_error: Mapped[str] = mapped_column(Text, server_default="")


class WebhookAttempt(Base):
    """One POST of a delivery: the status code answered, or why there was none."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (Index("webhook_attempts_delivery_idx", "delivery_id", "number"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    delivery_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("webhook_deliveries.id", ondelete=_CASCADE)
    )
    number: Mapped[int]
    started_at: Mapped[datetime]
    duration_ms: Mapped[int]
    status_code: Mapped[int | None]
    error: Mapped[str] = mapped_column(Text)
