"""Data feeders and bar corrections.

A data feeder is an account (role 'feeder') that may only push bars, for the symbols an admin
granted it (`feeder_grants`). A bar a run already read changes only by an admin's correction,
recorded in `bar_corrections` with the old and new values, who, when and why.

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_PRICES = ("open", "high", "low", "close", "volume")


def upgrade() -> None:
    op.drop_constraint("users_role_check", "users", type_="check")
    op.create_check_constraint(
        "users_role_check", "users", "role IN ('provider', 'subscriber', 'admin', 'feeder')"
    )
    op.create_table(
        "feeder_grants",
        sa.Column(
            "user_id", sa.Uuid(), sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("symbol", sa.String(32), primary_key=True),
        sa.Column("granted_at", sa.DateTime(timezone=True), nullable=False),
        # The admin's account, or 'cli' when granted on the server with `foretell admin`.
        sa.Column("granted_by", sa.String(64), nullable=False),
    )
    op.create_table(
        "bar_corrections",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("resolution", sa.String(4), nullable=False),
        sa.Column("open_time", sa.DateTime(timezone=True), nullable=False),
        *(sa.Column(f"old_{name}", sa.Double(), nullable=False) for name in _PRICES),
        *(sa.Column(f"new_{name}", sa.Double(), nullable=False) for name in _PRICES),
        sa.Column("reason", sa.Text(), nullable=False),
        # No foreign key: the record outlives the admin's account.
        sa.Column("corrected_by", sa.Uuid(), nullable=False),
        sa.Column("corrected_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(
        "bar_corrections_bar_idx", "bar_corrections", ["symbol", "resolution", "open_time"]
    )
    # Corrections are history: never edited or removed.
    op.execute("""
CREATE FUNCTION foretell_bar_corrections_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'bar corrections are never changed';
END $$
""")
    op.execute("""
CREATE TRIGGER bar_corrections_append_only BEFORE UPDATE OR DELETE ON bar_corrections
  FOR EACH ROW EXECUTE FUNCTION foretell_bar_corrections_append_only()
""")


def downgrade() -> None:
    op.execute("DROP TRIGGER bar_corrections_append_only ON bar_corrections")
    op.execute("DROP FUNCTION foretell_bar_corrections_append_only()")
    op.drop_table("bar_corrections")
    op.drop_table("feeder_grants")
    op.execute("DELETE FROM users WHERE role = 'feeder'")
    op.drop_constraint("users_role_check", "users", type_="check")
    op.create_check_constraint(
        "users_role_check", "users", "role IN ('provider', 'subscriber', 'admin')"
    )
