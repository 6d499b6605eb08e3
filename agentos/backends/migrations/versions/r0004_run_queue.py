"""The run queue: attempts, retry policies, timeouts, and the columns claims order by.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_COLUMNS: list[sa.Column[Any]] = [
    sa.Column("attempt", sa.Integer(), nullable=False, server_default="1"),
    sa.Column("started_at", sa.Double(), nullable=True),
    sa.Column("retry_policy", sa.Text(), nullable=True),
    sa.Column("timeout", sa.Double(), nullable=True),
    sa.Column("multitask", sa.String(20), nullable=True),
    sa.Column("not_before", sa.Double(), nullable=True),
    sa.Column("attempts", sa.Text(), nullable=True),
    sa.Column("task_id", sa.String(200), nullable=True),
    sa.Column("occurrence", sa.String(200), nullable=True),
]


def upgrade() -> None:
    with op.batch_alter_table("agentos_runs") as batch:
        for column in _COLUMNS:
            batch.add_column(column)
    op.create_index("ix_agentos_runs_task_id", "agentos_runs", ["task_id"])


def downgrade() -> None:
    op.drop_index("ix_agentos_runs_task_id", "agentos_runs")
    with op.batch_alter_table("agentos_runs") as batch:
        for column in reversed(_COLUMNS):
            batch.drop_column(column.name)
