"""PostgreSQL: keyword search ranks a stored tsvector column instead of re-parsing the text.

``ts_rank`` over the expression ``to_tsvector('english', text)`` parses the prompt of every
matching row again on each query (thousands of rows for a common word); a stored generated
column is parsed once, when the row is written. The GIN index moves from the expression to the
column (same index name). SQLite is unchanged (FTS5 already stores its index).

Adding a stored generated column rewrites the table (and rebuilds its indexes, the HNSW one
included): minutes on a database with 100,000 prompts and pgvector, instant on a new one.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21 10:45:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of storage.schema's names: a migration must not change when the code does.
FTS_COLUMN = "text_tsv"
FTS_INDEX = "ix_prompt_index_text_tsv"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"DROP INDEX IF EXISTS {FTS_INDEX}")
    op.execute(
        f"ALTER TABLE prompt_index ADD COLUMN {FTS_COLUMN} tsvector "
        "GENERATED ALWAYS AS (to_tsvector('english', text)) STORED"
    )
    op.execute(f"CREATE INDEX {FTS_INDEX} ON prompt_index USING gin ({FTS_COLUMN})")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"ALTER TABLE prompt_index DROP COLUMN IF EXISTS {FTS_COLUMN}")  # and its index
    op.execute(
        f"CREATE INDEX {FTS_INDEX} ON prompt_index USING gin (to_tsvector('english', text))"
    )
