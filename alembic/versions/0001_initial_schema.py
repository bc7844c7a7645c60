"""Initial schema: batches, assets, batch items, stage runs, metrics, prompt search index.

Revision ID: 0001
Revises:
Create Date: 2026-11-21 08:07:33.416236
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op
from storage.schema import (
    EMBEDDING_DIM,
    PG_FTS_INDEX,
    PG_VECTOR_COLUMN,
    PG_VECTOR_INDEX,
    SQLITE_FTS_TABLE,
)

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "assets",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=True),
        sa.Column("image_ref", sa.Text(), nullable=True),
        sa.Column("image_sha256", sa.String(length=64), nullable=True),
        sa.Column("bundle_ref", sa.Text(), nullable=True),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("variant", sa.Integer(), nullable=False),
        sa.Column("generator", sa.String(length=64), nullable=False),
        sa.Column("init", sa.String(length=64), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("current_stage", sa.String(length=32), nullable=True),
        sa.Column("lease_owner", sa.String(length=128), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error_class", sa.String(length=128), nullable=True),
        sa.Column("last_error_message", sa.Text(), nullable=True),
        sa.Column("output_keys", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("kind IN ('prompt', 'image', 'bundle')", name=op.f("ck_assets_kind")),
        sa.CheckConstraint(
            "state IN ('pending', 'running', 'succeeded', 'failed')", name=op.f("ck_assets_state")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_assets")),
    )
    with op.batch_alter_table("assets", schema=None) as batch_op:
        batch_op.create_index("ix_assets_state_updated_at", ["state", "updated_at"], unique=False)

    op.create_table(
        "batches",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("manifest_path", sa.Text(), nullable=False),
        sa.Column("manifest_sha256", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=True),
        sa.CheckConstraint(
            "status IN ('running', 'finished', 'failed')", name=op.f("ck_batches_status")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batches")),
    )
    op.create_table(
        "batch_items",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("batch_id", sa.String(length=32), nullable=False),
        sa.Column("line", sa.Integer(), nullable=False),
        sa.Column("item_id", sa.String(length=256), nullable=True),
        sa.Column("asset_id", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("raw", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "status IN ('accepted', 'rejected')", name=op.f("ck_batch_items_status")
        ),
        sa.ForeignKeyConstraint(
            ["asset_id"], ["assets.id"], name=op.f("fk_batch_items_asset_id_assets")
        ),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["batches.id"],
            name=op.f("fk_batch_items_batch_id_batches"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batch_items")),
        sa.UniqueConstraint(
            "batch_id", "line", "asset_id", name=op.f("uq_batch_items_batch_id_line_asset_id")
        ),
    )
    with op.batch_alter_table("batch_items", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_batch_items_asset_id"), ["asset_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_batch_items_batch_id"), ["batch_id"], unique=False)

    op.create_table(
        "metrics",
        sa.Column("asset_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("value", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(
            ["asset_id"], ["assets.id"], name=op.f("fk_metrics_asset_id_assets"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("asset_id", "name", name=op.f("pk_metrics")),
    )
    op.create_table(
        "prompt_index",
        sa.Column("asset_id", sa.String(length=64), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("embedding", sa.LargeBinary(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["asset_id"],
            ["assets.id"],
            name=op.f("fk_prompt_index_asset_id_assets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("asset_id", name=op.f("pk_prompt_index")),
    )
    op.create_table(
        "stage_runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("asset_id", sa.String(length=64), nullable=False),
        sa.Column("stage", sa.String(length=32), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("params_hash", sa.String(length=64), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("duration_s", sa.Double(), nullable=True),
        sa.Column("host", sa.String(length=256), nullable=True),
        sa.Column("device", sa.String(length=64), nullable=True),
        sa.Column("peak_memory_mb", sa.Double(), nullable=True),
        sa.Column("error_class", sa.String(length=128), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("flow_run_id", sa.String(length=64), nullable=True),
        sa.Column("output_keys", sa.JSON(), nullable=False),
        sa.CheckConstraint(
            "status IN ('running', 'succeeded', 'failed', 'skipped')",
            name=op.f("ck_stage_runs_status"),
        ),
        sa.ForeignKeyConstraint(
            ["asset_id"],
            ["assets.id"],
            name=op.f("fk_stage_runs_asset_id_assets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stage_runs")),
        sa.UniqueConstraint(
            "asset_id", "stage", "attempt", name=op.f("uq_stage_runs_asset_id_stage_attempt")
        ),
    )
    with op.batch_alter_table("stage_runs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_stage_runs_asset_id"), ["asset_id"], unique=False)

    _create_search_objects()


def downgrade() -> None:
    _drop_search_objects()
    with op.batch_alter_table("stage_runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_stage_runs_asset_id"))

    op.drop_table("stage_runs")
    op.drop_table("prompt_index")
    op.drop_table("metrics")
    with op.batch_alter_table("batch_items", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_batch_items_batch_id"))
        batch_op.drop_index(batch_op.f("ix_batch_items_asset_id"))

    op.drop_table("batch_items")
    op.drop_table("batches")
    with op.batch_alter_table("assets", schema=None) as batch_op:
        batch_op.drop_index("ix_assets_state_updated_at")

    op.drop_table("assets")


# --- dialect-specific search objects (kept out of the ORM metadata; see storage.schema) -------


def _create_search_objects() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        # External-content FTS5 table over prompt_index (rowid-linked), kept in sync by triggers.
        # A later batch migration that rebuilds prompt_index must run
        # INSERT INTO prompt_fts(prompt_fts) VALUES('rebuild') afterwards (rowids change).
        op.execute(
            f"CREATE VIRTUAL TABLE {SQLITE_FTS_TABLE} USING fts5("
            "text, content='prompt_index', content_rowid='rowid', tokenize='porter unicode61')"
        )
        op.execute(
            f"CREATE TRIGGER {SQLITE_FTS_TABLE}_ai AFTER INSERT ON prompt_index BEGIN "
            f"INSERT INTO {SQLITE_FTS_TABLE}(rowid, text) VALUES (new.rowid, new.text); END"
        )
        op.execute(
            f"CREATE TRIGGER {SQLITE_FTS_TABLE}_ad AFTER DELETE ON prompt_index BEGIN "
            f"INSERT INTO {SQLITE_FTS_TABLE}({SQLITE_FTS_TABLE}, rowid, text) "
            "VALUES ('delete', old.rowid, old.text); END"
        )
        op.execute(
            f"CREATE TRIGGER {SQLITE_FTS_TABLE}_au AFTER UPDATE OF text ON prompt_index BEGIN "
            f"INSERT INTO {SQLITE_FTS_TABLE}({SQLITE_FTS_TABLE}, rowid, text) "
            "VALUES ('delete', old.rowid, old.text); "
            f"INSERT INTO {SQLITE_FTS_TABLE}(rowid, text) VALUES (new.rowid, new.text); END"
        )
    elif bind.dialect.name == "postgresql":
        # Expression index: storage.search queries exactly to_tsvector('english', text).
        op.execute(
            f"CREATE INDEX {PG_FTS_INDEX} ON prompt_index USING gin (to_tsvector('english', text))"
        )
        if _try_create_vector_extension(bind):
            op.execute(
                f"ALTER TABLE prompt_index ADD COLUMN {PG_VECTOR_COLUMN} vector({EMBEDDING_DIM})"
            )
            op.execute(
                f"CREATE INDEX {PG_VECTOR_INDEX} ON prompt_index "
                f"USING hnsw ({PG_VECTOR_COLUMN} vector_cosine_ops)"
            )


def _try_create_vector_extension(bind: sa.Connection) -> bool:
    """Enable pgvector when the server has it; a server without it gets exact search only.

    Offline (``alembic upgrade --sql``) there is no server to ask, so the script leaves pgvector
    out; run ``foundry3d db upgrade`` against the server to get it.
    """
    if op.get_context().as_sql:
        return False
    try:
        with bind.begin_nested():
            bind.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS vector")
    except sa.exc.DBAPIError:
        return False
    return True


def _drop_search_objects() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        for suffix in ("ai", "ad", "au"):
            op.execute(f"DROP TRIGGER IF EXISTS {SQLITE_FTS_TABLE}_{suffix}")
        op.execute(f"DROP TABLE IF EXISTS {SQLITE_FTS_TABLE}")
    elif bind.dialect.name == "postgresql":
        op.execute(f"DROP INDEX IF EXISTS {PG_VECTOR_INDEX}")
        op.execute(f"DROP INDEX IF EXISTS {PG_FTS_INDEX}")
