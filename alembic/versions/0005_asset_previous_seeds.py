"""assets.previous_seeds: the seeds a ``retry --reseed`` replaced, out of the generator params.

Before this revision the retry flow appended the old seed to ``assets.params["previous_seeds"]``,
where every generator's parameter check rejects it (a reseeded ``kiss3dgen`` asset could never
run again). The history moves to its own JSON list column; rows that carry it in ``params`` are
moved over.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 20:10:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A frozen copy of the table's shape as this migration needs it.
assets = sa.table(
    "assets",
    sa.column("id", sa.String),
    sa.column("params", sa.JSON),
    sa.column("previous_seeds", sa.JSON),
)


def upgrade() -> None:
    # A plain ADD COLUMN, not a batch operation: rebuilding assets on SQLite would run the
    # ON DELETE CASCADE of every table that points at it.
    op.add_column(
        "assets",
        sa.Column("previous_seeds", sa.JSON(), nullable=False, server_default=sa.text("'[]'")),
    )
    connection = op.get_bind()
    rows = connection.execute(sa.select(assets.c.id, assets.c.params)).all()
    for asset_id, params in rows:
        if isinstance(params, dict) and "previous_seeds" in params:
            params = dict(params)
            seeds = list(params.pop("previous_seeds") or [])
            connection.execute(
                assets.update()
                .where(assets.c.id == asset_id)
                .values(params=params, previous_seeds=seeds)
            )


def downgrade() -> None:
    connection = op.get_bind()
    rows = connection.execute(
        sa.select(assets.c.id, assets.c.params, assets.c.previous_seeds)
    ).all()
    for asset_id, params, seeds in rows:
        if seeds:
            connection.execute(
                assets.update()
                .where(assets.c.id == asset_id)
                .values(params={**(params or {}), "previous_seeds": list(seeds)})
            )
    op.drop_column("assets", "previous_seeds")
