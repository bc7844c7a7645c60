"""assets.mesh_ref / assets.mesh_sha256 and the asset kind ``mesh``: requests that enhance, edit
or retexture an input mesh (generator ``kiss3dgen-mesh``).

The kind's CHECK constraint gains ``'mesh'``. PostgreSQL replaces the constraint. SQLite cannot
alter a constraint, and rebuilding ``assets`` would run the ON DELETE CASCADE of every table that
points at it, so the table's stored definition is edited in place, the way SQLite documents for
loosening a CHECK (https://www.sqlite.org/lang_altertable.html, "otheralter"): no row moves, and
every existing row satisfies the wider constraint. Downgrading refuses while mesh assets exist.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29 21:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_KINDS = "kind IN ('prompt', 'image', 'bundle')"
NEW_KINDS = "kind IN ('prompt', 'image', 'bundle', 'mesh')"
CONSTRAINT = "ck_assets_kind"


def upgrade() -> None:
    op.add_column("assets", sa.Column("mesh_ref", sa.Text(), nullable=True))
    op.add_column("assets", sa.Column("mesh_sha256", sa.String(length=64), nullable=True))
    _set_kind_check(OLD_KINDS, NEW_KINDS)


def downgrade() -> None:
    connection = op.get_bind()
    meshes = connection.execute(sa.text("SELECT count(*) FROM assets WHERE kind = 'mesh'"))
    if meshes.scalar():
        raise RuntimeError(
            "cannot downgrade below 0007: the database holds mesh assets; delete them first"
        )
    _set_kind_check(NEW_KINDS, OLD_KINDS)
    op.drop_column("assets", "mesh_sha256")
    op.drop_column("assets", "mesh_ref")


def _set_kind_check(old: str, new: str) -> None:
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
        raise RuntimeError("SQLite integrity check failed after changing the kind constraint")
