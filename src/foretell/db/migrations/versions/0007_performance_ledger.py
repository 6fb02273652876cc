"""Revision counters for the performance cache, and the forecast ledger.

Performance is computed from runs, forecasts and bars, and cached per process; a cached answer
is used only while nothing it was computed from has changed. Triggers keep the counters, so an
edit made directly in SQL invalidates as surely as a run recorded by the platform:
- `model_revisions`: one row per model, bumped by every row inserted, updated or deleted in
  `runs` or `forecasts` (row triggers: only that model's row is locked);
- `data_revisions`: one row ('bars'), bumped by every statement that writes `bars` (a bar
  corrected by IngestBars with upsert changes a realized return).

The ledger: `ledger_heads` holds each model's chain head (its row is locked FOR UPDATE while an
entry is appended, which serialises appends per model); `ledger_entries` the chain, one entry
per recorded live run (run_id deliberately without a foreign key: deleting a run must leave its
entry behind, to be found missing); `ledger_checkpoints` signed chain heads; `ledger_keys` the
Ed25519 public keys that signed them (the private keys stay in files of the data directory).
Live runs recorded before this migration are chained here, in the order they were recorded.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)

_FUNCTIONS = """
CREATE FUNCTION foretell_bump_model_revision() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP IN ('UPDATE', 'DELETE') THEN
    INSERT INTO model_revisions (model_id, revision) VALUES (OLD.model_id, 1)
    ON CONFLICT (model_id) DO UPDATE SET revision = model_revisions.revision + 1;
  END IF;
  IF TG_OP IN ('INSERT', 'UPDATE') THEN
    INSERT INTO model_revisions (model_id, revision) VALUES (NEW.model_id, 1)
    ON CONFLICT (model_id) DO UPDATE SET revision = model_revisions.revision + 1;
  END IF;
  RETURN NULL;
END $$;

CREATE FUNCTION foretell_bump_all_models() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  UPDATE model_revisions SET revision = revision + 1;
  RETURN NULL;
END $$;

CREATE FUNCTION foretell_bump_data_revision() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  UPDATE data_revisions SET revision = revision + 1 WHERE name = TG_TABLE_NAME;
  RETURN NULL;
END $$;
"""

_TRIGGERS = """
CREATE TRIGGER runs_model_revision AFTER INSERT OR UPDATE OR DELETE ON runs
  FOR EACH ROW EXECUTE FUNCTION foretell_bump_model_revision();
CREATE TRIGGER forecasts_model_revision AFTER INSERT OR UPDATE OR DELETE ON forecasts
  FOR EACH ROW EXECUTE FUNCTION foretell_bump_model_revision();
CREATE TRIGGER runs_truncate_revision AFTER TRUNCATE ON runs
  FOR EACH STATEMENT EXECUTE FUNCTION foretell_bump_all_models();
CREATE TRIGGER forecasts_truncate_revision AFTER TRUNCATE ON forecasts
  FOR EACH STATEMENT EXECUTE FUNCTION foretell_bump_all_models();
CREATE TRIGGER bars_data_revision AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON bars
  FOR EACH STATEMENT EXECUTE FUNCTION foretell_bump_data_revision();
"""


def upgrade() -> None:
    op.create_table(
        "model_revisions",
        sa.Column(
            "model_id",
            sa.Uuid(),
            sa.ForeignKey("models.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("revision", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "data_revisions",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("revision", sa.BigInteger(), nullable=False),
    )
    op.execute("INSERT INTO data_revisions (name, revision) VALUES ('bars', 0)")
    # One statement per call: asyncpg prepares each, and a prepared statement holds one.
    for statement in _FUNCTIONS.split("\n\n") + _TRIGGERS.strip().split(";\n"):
        if statement.strip():
            op.execute(statement)
    op.create_table(
        "ledger_heads",
        sa.Column(
            "model_id",
            sa.Uuid(),
            sa.ForeignKey("models.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("head_hash", sa.LargeBinary(), nullable=False),
    )
    op.create_table(
        "ledger_entries",
        sa.Column(
            "model_id", sa.Uuid(), sa.ForeignKey("models.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("run_id", sa.Uuid(), nullable=False),
        sa.Column("prev_hash", sa.LargeBinary(), nullable=False),
        sa.Column("entry_hash", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("model_id", "sequence", name="ledger_entries_pkey"),
        sa.UniqueConstraint("run_id", name="ledger_entries_run_id_key"),
    )
    op.create_table(
        "ledger_keys",
        sa.Column("key_id", sa.String(32), primary_key=True),
        sa.Column("public_key", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
    )
    op.create_table(
        "ledger_checkpoints",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column(
            "model_id", sa.Uuid(), sa.ForeignKey("models.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("head_hash", sa.LargeBinary(), nullable=False),
        sa.Column("signed_at", _TS, nullable=False),
        sa.Column("key_id", sa.String(32), sa.ForeignKey("ledger_keys.key_id"), nullable=False),
        sa.Column("signature", sa.LargeBinary(), nullable=False),
        sa.UniqueConstraint("model_id", "sequence", name="ledger_checkpoints_model_sequence_key"),
    )
    _chain_recorded_runs()


def _chain_recorded_runs() -> None:
    """Live runs recorded before the ledger existed become its first entries, in the order they
    were recorded, so their models' chains verify. Their payloads carry the runs' original
    recording times; the entries are stamped with the migration's time. (The payload format
    is `foretell.ledger.canonical`'s version 1, which these entries keep.)"""
    from datetime import UTC, datetime

    from sqlalchemy import text

    from foretell.ledger import canonical, chain

    bind = op.get_bind()
    ordered = bind.execute(
        text("SELECT id, model_id FROM runs WHERE kind = 'live' ORDER BY created_at, as_of, id")
    ).all()
    if not ordered:
        return
    ids = {"ids": [run_id for run_id, _model in ordered]}
    built = chain.build_payloads(
        bind.execute(chain.RUNS_BY_ID, ids).all(), bind.execute(chain.FORECASTS_BY_RUN, ids).all()
    )
    now = datetime.now(UTC)
    heads: dict[object, tuple[int, bytes]] = {}
    entries = []
    for run_id, model_id in ordered:
        sequence, previous = heads.get(model_id, (0, canonical.GENESIS))
        entry_hash = canonical.entry_hash(previous, built[run_id])
        entries.append(
            {
                "model_id": model_id, "sequence": sequence + 1, "run_id": run_id,
                "prev_hash": previous, "entry_hash": entry_hash, "now": now,
            }
        )  # fmt: skip
        heads[model_id] = (sequence + 1, entry_hash)
    bind.execute(
        text(
            "INSERT INTO ledger_entries (model_id, sequence, run_id, prev_hash, entry_hash,"
            " created_at) VALUES (:model_id, :sequence, :run_id, :prev_hash, :entry_hash, :now)"
        ),
        entries,
    )
    bind.execute(
        text(
            "INSERT INTO ledger_heads (model_id, sequence, head_hash)"
            " VALUES (:model_id, :sequence, :head_hash)"
        ),
        [{"model_id": m, "sequence": n, "head_hash": h} for m, (n, h) in heads.items()],
    )


def downgrade() -> None:
    op.drop_table("ledger_checkpoints")
    op.drop_table("ledger_keys")
    op.drop_table("ledger_entries")
    op.drop_table("ledger_heads")
    for table, trigger in (
        ("bars", "bars_data_revision"),
        ("forecasts", "forecasts_truncate_revision"),
        ("runs", "runs_truncate_revision"),
        ("forecasts", "forecasts_model_revision"),
        ("runs", "runs_model_revision"),
    ):
        op.execute(f"DROP TRIGGER {trigger} ON {table}")
    for function in (
        "foretell_bump_data_revision",
        "foretell_bump_all_models",
        "foretell_bump_model_revision",
    ):
        op.execute(f"DROP FUNCTION {function}()")
    op.drop_table("data_revisions")
    op.drop_table("model_revisions")
