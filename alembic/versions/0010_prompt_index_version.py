"""PostgreSQL: a one-row version counter of ``prompt_index``, bumped by every change to it.

Each search first asks whether the prompt index changed since it last looked. Reading
``count(*)`` and ``max(updated_at)`` of 100,000 entries costs PostgreSQL milliseconds per
search; reading the counter row by its primary key costs one index probe. A statement-level
trigger sets the counter to a fresh value of a sequence before every INSERT, UPDATE, DELETE
(cascaded ones from ``assets`` included) or TRUNCATE of ``prompt_index``, in the writer's
transaction: readers see the new value exactly when they see the changed rows.

A sequence, not ``version + 1``: sequence values are never handed out twice, even by a
transaction that rolls back, so a value names one state of the index (a ``version + 1`` of a
rolled-back writer would be reused by the next one, for different rows). The trigger fires
*before* the statement so that concurrent writers queue on the counter row before taking any
row lock of ``prompt_index`` (after it, two writers could each hold a row the other wants).

SQLite is unchanged: ``PRAGMA data_version`` already tells a connection, for free, whether
another one committed anything.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30 02:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of storage.schema's names: a migration must not change when the code does.
TABLE = "prompt_index_version"
SEQUENCE = "prompt_index_version_seq"
FUNCTION = "prompt_index_bump_version"
TRIGGER = "prompt_index_version_bump"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"CREATE SEQUENCE {SEQUENCE}")
    op.execute(
        f"CREATE TABLE {TABLE} (id integer PRIMARY KEY CHECK (id = 1), version bigint NOT NULL)"
    )
    op.execute(f"INSERT INTO {TABLE} (id, version) VALUES (1, nextval('{SEQUENCE}'))")
    op.execute(
        f"CREATE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"UPDATE {TABLE} SET version = nextval('{SEQUENCE}') WHERE id = 1; RETURN NULL; END $$"
    )
    op.execute(
        f"CREATE TRIGGER {TRIGGER} BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE "
        f"ON prompt_index FOR EACH STATEMENT EXECUTE FUNCTION {FUNCTION}()"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"DROP TRIGGER IF EXISTS {TRIGGER} ON prompt_index")
    op.execute(f"DROP FUNCTION IF EXISTS {FUNCTION}()")
    op.execute(f"DROP TABLE IF EXISTS {TABLE}")
    op.execute(f"DROP SEQUENCE IF EXISTS {SEQUENCE}")
