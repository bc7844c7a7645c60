"""stage_runs.status may be ``abandoned``: a run still open when its asset finished.

A database outage can leave a stage run ``running`` after its worker moved on; releasing the
asset now closes such runs as ``abandoned`` instead of leaving them open forever.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29 21:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD = "status IN ('running', 'succeeded', 'failed', 'skipped')"
NEW = "status IN ('running', 'succeeded', 'failed', 'skipped', 'abandoned')"


def _replace_check(condition: str) -> None:
    # stage_runs is referenced by no table, so SQLite's batch rebuild of it cascades nothing.
    with op.batch_alter_table("stage_runs", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("ck_stage_runs_status"), type_="check")
        batch_op.create_check_constraint(batch_op.f("ck_stage_runs_status"), condition)


def upgrade() -> None:
    _replace_check(NEW)


def downgrade() -> None:
    op.execute("UPDATE stage_runs SET status = 'failed' WHERE status = 'abandoned'")
    _replace_check(OLD)
