"""The asset state ``needs_review``: finished, but its metrics missed the quality verdict.

The state's CHECK constraint gains ``'needs_review'``. PostgreSQL replaces the constraint.
SQLite cannot alter a constraint, and rebuilding ``assets`` would run the ON DELETE CASCADE of
every table that points at it, so (as in 0007) the table's stored definition is edited in
place, the way SQLite documents for changing a CHECK
(https://www.sqlite.org/lang_altertable.html, "otheralter"): no row moves. Downgrading first
turns ``needs_review`` assets into ``failed`` ones (their reasons stay their last error), the
state the older schema retries, so the narrower constraint holds for every row.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29 22:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_STATES = "state IN ('pending', 'running', 'succeeded', 'failed')"
NEW_STATES = "state IN ('pending', 'running', 'succeeded', 'failed', 'needs_review')"
CONSTRAINT = "ck_assets_state"


def upgrade() -> None:
    _set_state_check(OLD_STATES, NEW_STATES)


def downgrade() -> None:
    op.execute("UPDATE assets SET state = 'failed' WHERE state = 'needs_review'")
    _set_state_check(NEW_STATES, OLD_STATES)


def _set_state_check(old: str, new: str) -> None:
    connection = op.get_bind()
    if connection.dialect.name != "sqlite":
        op.drop_constraint(op.f(CONSTRAINT), "assets", type_="check")
        op.create_check_constraint(op.f(CONSTRAINT), "assets", sa.text(new))
        return
    sql = connection.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'assets'"
    ).scalar()
    if old not in sql:
        raise RuntimeError(f"assets table has no constraint {old!r} to change")
    version = connection.exec_driver_sql("PRAGMA schema_version").scalar()
    connection.exec_driver_sql("PRAGMA writable_schema = ON")
    connection.exec_driver_sql(
        "UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = 'assets'",
        (sql.replace(old, new),),
    )
    # A new schema version makes every connection re-read the definition.
    connection.exec_driver_sql(f"PRAGMA schema_version = {int(version) + 1}")
    connection.exec_driver_sql("PRAGMA writable_schema = OFF")
    if connection.exec_driver_sql("PRAGMA integrity_check").scalar() != "ok":
        raise RuntimeError("SQLite integrity check failed after changing the state constraint")
