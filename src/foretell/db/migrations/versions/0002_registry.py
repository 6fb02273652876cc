"""Registry: models and their immutable versions.

The immutability of versions is enforced here, in the database, as well as in code: the
triggers hold for every session, including a person with psql.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)

# SQLSTATE FT001 is raised by the guards; the service maps it to FAILED_PRECONDITION.
# One statement per string: asyncpg runs each as a prepared statement.
_VERSION_GUARD = """
CREATE FUNCTION foretell_version_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'DELETE' THEN
    IF OLD.published_at IS NOT NULL THEN
      RAISE EXCEPTION 'version % of model % was published and cannot be deleted',
        OLD.number, OLD.model_id USING ERRCODE = 'FT001';
    END IF;
    RETURN OLD;
  END IF;
  -- What a version is never changes: its identity, content and manifest.
  IF NEW.id IS DISTINCT FROM OLD.id
     OR NEW.model_id IS DISTINCT FROM OLD.model_id
     OR NEW.number IS DISTINCT FROM OLD.number
     OR NEW.digest IS DISTINCT FROM OLD.digest
     OR NEW.bundle_size IS DISTINCT FROM OLD.bundle_size
     OR NEW.manifest IS DISTINCT FROM OLD.manifest
     OR NEW.created_at IS DISTINCT FROM OLD.created_at THEN
    RAISE EXCEPTION 'version % of model % is immutable', OLD.number, OLD.model_id
      USING ERRCODE = 'FT001';
  END IF;
  -- A built image is set once. A READY version's build record is final.
  IF OLD.image_digest IS NOT NULL AND NEW.image_digest IS DISTINCT FROM OLD.image_digest THEN
    RAISE EXCEPTION 'the image of version % of model % is immutable', OLD.number, OLD.model_id
      USING ERRCODE = 'FT001';
  END IF;
  IF OLD.build_state = 'ready' AND (
       NEW.build_state IS DISTINCT FROM OLD.build_state
       OR NEW.failure_reason IS DISTINCT FROM OLD.failure_reason
       OR NEW.build_finished_at IS DISTINCT FROM OLD.build_finished_at
       OR NEW.build_log IS DISTINCT FROM OLD.build_log) THEN
    RAISE EXCEPTION 'the build of version % of model % is final', OLD.number, OLD.model_id
      USING ERRCODE = 'FT001';
  END IF;
  -- The first publication time is history.
  IF OLD.published_at IS NOT NULL AND NEW.published_at IS DISTINCT FROM OLD.published_at THEN
    RAISE EXCEPTION 'version % of model % was published at %', OLD.number, OLD.model_id,
      OLD.published_at USING ERRCODE = 'FT001';
  END IF;
  RETURN NEW;
END;
$$
"""
_VERSION_TRIGGER = """
CREATE TRIGGER versions_immutable
  BEFORE UPDATE OR DELETE ON versions
  FOR EACH ROW EXECUTE FUNCTION foretell_version_guard()
"""
# TRUNCATE skips row triggers: refuse it outright.
_NO_TRUNCATE = """
CREATE FUNCTION foretell_no_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'table % cannot be truncated', TG_TABLE_NAME USING ERRCODE = 'FT001';
END;
$$
"""
_TRUNCATE_TRIGGER = """
CREATE TRIGGER versions_no_truncate
  BEFORE TRUNCATE ON versions
  FOR EACH STATEMENT EXECUTE FUNCTION foretell_no_truncate()
"""


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("name", sa.String(40), nullable=False, unique=True),
        sa.Column("owner_id", sa.Uuid(), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("title", sa.String(120), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("symbols", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("resolution", sa.String(4), nullable=False),
        sa.Column("horizon", sa.Integer(), nullable=False),
        sa.Column("tags", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("visibility", sa.String(8), nullable=False),
        sa.Column("live_version", sa.Integer(), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.CheckConstraint("name ~ '^[a-z][a-z0-9-]{2,39}$'", name="models_name_check"),
        sa.CheckConstraint("resolution IN ('1h', '4h', '1d')", name="models_resolution_check"),
        sa.CheckConstraint("visibility IN ('private', 'public')", name="models_visibility_check"),
        sa.CheckConstraint("horizon BETWEEN 1 AND 1000", name="models_horizon_check"),
    )
    op.create_index("models_owner_idx", "models", ["owner_id"])
    op.create_table(
        "versions",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column(
            "model_id", sa.Uuid(), sa.ForeignKey("models.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(71), nullable=False),
        sa.Column("bundle_size", sa.BigInteger(), nullable=False),
        sa.Column("manifest", postgresql.JSONB(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("build_state", sa.String(8), nullable=False),
        sa.Column("failure_reason", sa.Text(), nullable=False),
        sa.Column("image_digest", sa.String(71), nullable=True),
        sa.Column("build_finished_at", _TS, nullable=True),
        sa.Column("build_log", sa.Text(), nullable=False),
        sa.Column("published_at", _TS, nullable=True),
        sa.UniqueConstraint("model_id", "number", name="versions_model_number_key"),
        sa.UniqueConstraint("model_id", "digest", name="versions_model_digest_key"),
        sa.CheckConstraint(
            "build_state IN ('queued', 'building', 'ready', 'failed')",
            name="versions_build_state_check",
        ),
        sa.CheckConstraint("digest ~ '^sha256:[0-9a-f]{64}$'", name="versions_digest_check"),
    )
    # A model's live version is one of its own, and only a READY one (checked in code too).
    op.create_foreign_key(
        "models_live_version_fkey",
        "models",
        "versions",
        ["id", "live_version"],
        ["model_id", "number"],
    )
    for statement in (_VERSION_GUARD, _VERSION_TRIGGER, _NO_TRUNCATE, _TRUNCATE_TRIGGER):
        op.execute(statement)


def downgrade() -> None:
    op.drop_constraint("models_live_version_fkey", "models")
    op.drop_table("versions")
    op.execute("DROP FUNCTION foretell_version_guard()")
    op.execute("DROP FUNCTION foretell_no_truncate()")
    op.drop_table("models")
