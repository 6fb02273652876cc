"""Market time: each symbol has a trading calendar, and a live slot whose bars never arrived is
recorded as such.

`symbol_calendars` holds one calendar per symbol (see `foretell.calendars`: FX, CRYPTO or an
exchange code such as XNYS), set when the symbol's first bars are stored or by an admin. Runs
may end 'data_missing': the slot's bars had not landed by the data deadline, so the slot was
not run (never late) and never counts against the model.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_OUTCOMES = (
    "'ok', 'model_error', 'timeout', 'out_of_memory', 'killed_by_policy', 'invalid_output', "
    "'missed'"
)


# Copied from foretell.calendars (a migration must not change when the code does).
_CURRENCIES = (
    "USD|EUR|JPY|GBP|CHF|AUD|NZD|CAD|SEK|NOK|DKK|PLN|HUF|CZK|TRY|ZAR|MXN|SGD|HKD|CNH|CNY|INR|"
    "KRW|BRL|RUB|ILS|THB|XAU|XAG|XPT|XPD"
)
_FX_PATTERN = f"^({_CURRENCIES})[_.-]?({_CURRENCIES})([^A-Z]|$)"
_CRYPTO_PATTERN = "^(BTC|ETH|SOL|XRP|ADA|DOGE|LTC|DOT|BNB|AVAX|LINK|XBT)[_.-]?[A-Z]"

_BUMP = """
CREATE FUNCTION foretell_bump_bars_revision() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  UPDATE data_revisions SET revision = revision + 1 WHERE name = 'bars';
  RETURN NULL;
END $$
"""
_TRIGGER = """
CREATE TRIGGER symbol_calendars_data_revision AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
  ON symbol_calendars FOR EACH STATEMENT EXECUTE FUNCTION foretell_bump_bars_revision()
"""


def upgrade() -> None:
    op.create_table(
        "symbol_calendars",
        sa.Column("symbol", sa.String(32), primary_key=True),
        sa.Column("calendar", sa.String(16), nullable=False),
        sa.Column("set_at", sa.DateTime(timezone=True), nullable=False),
        # Who set it: 'default' when the first bars arrived, else the admin's user id.
        sa.Column("set_by", sa.String(64), nullable=False),
        sa.CheckConstraint("calendar ~ '^[A-Z0-9/]{2,16}$'", name="symbol_calendars_name_check"),
    )
    # Symbols that already have bars get the default of their asset class, as new ones will
    # (`foretell.calendars.default_for`: the same patterns).
    op.execute(
        sa.text("""
        INSERT INTO symbol_calendars (symbol, calendar, set_at, set_by)
        SELECT DISTINCT symbol,
               CASE WHEN symbol ~ :crypto THEN 'CRYPTO' WHEN symbol ~ :fx THEN 'FX' ELSE 'XNYS' END,
               now(), 'default'
        FROM bars
        """).bindparams(crypto=_CRYPTO_PATTERN, fx=_FX_PATTERN)
    )
    # A calendar decides which bars are periods of a record: a change invalidates every
    # performance report, as a change of bars does.
    op.execute(_BUMP)
    op.execute(_TRIGGER)
    op.drop_constraint("runs_outcome_check", "runs", type_="check")
    op.create_check_constraint(
        "runs_outcome_check", "runs", f"outcome IN ({_OUTCOMES}, 'data_missing')"
    )


def downgrade() -> None:
    op.execute("DELETE FROM runs WHERE outcome = 'data_missing'")
    op.drop_constraint("runs_outcome_check", "runs", type_="check")
    op.create_check_constraint("runs_outcome_check", "runs", f"outcome IN ({_OUTCOMES})")
    op.drop_table("symbol_calendars")
    op.execute("DROP FUNCTION foretell_bump_bars_revision()")
