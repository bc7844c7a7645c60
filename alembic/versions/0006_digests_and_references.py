"""Size and sha256 of every object an asset's stages wrote, recorded at write time, so
``foundry3d verify`` can tell a corrupt object from a good one (older rows: existence and size
from the store only); and each manifest row's image or bundle reference as written, so ``show``
and search name the user's file, not only its content hash.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29 20:45:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("assets") as batch:
        batch.add_column(sa.Column("object_digests", sa.JSON(), nullable=True))
    with op.batch_alter_table("batch_items") as batch:
        batch.add_column(sa.Column("reference", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("batch_items") as batch:
        batch.drop_column("reference")
    with op.batch_alter_table("assets") as batch:
        batch.drop_column("object_digests")
