"""Index prompt_index.updated_at: the freshness stamp of the cached semantic search matrix.

storage.search keeps a per-process copy of the prompt embeddings and checks it on every query
with ``SELECT count(*), max(updated_at) FROM prompt_index``; with this index both are answered
from a small b-tree instead of a scan of the embedding rows.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 08:50:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A plain CREATE INDEX, not a batch operation: rebuilding prompt_index on SQLite would
    # renumber the rowids that the FTS5 table points at.
    op.create_index(op.f("ix_prompt_index_updated_at"), "prompt_index", ["updated_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_prompt_index_updated_at"), table_name="prompt_index")
