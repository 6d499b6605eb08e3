"""Tasks and schedules: the table ``agentos_tasks`` (``agentos/tasks.py``).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "agentos_tasks",
        sa.Column("task_id", sa.String(200), primary_key=True),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("component_id", sa.String(200), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("schedule", sa.Text(), nullable=False),
        sa.Column("timeout", sa.Double(), nullable=True),
        sa.Column("retry_policy", sa.Text(), nullable=True),
        sa.Column("overlap_policy", sa.String(20), nullable=False),
        sa.Column("session_policy", sa.String(20), nullable=False),
        sa.Column("session_id", sa.String(200), nullable=True),
        sa.Column("catchup", sa.String(20), nullable=False),
        sa.Column("catchup_window", sa.Double(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("tags", sa.Text(), nullable=False),
        sa.Column("user_id", sa.String(200), nullable=True),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.Column("next_fire_at", sa.Double(), nullable=True),
        sa.Column("queued_at", sa.Double(), nullable=True),
        sa.Column("last_fired_at", sa.Double(), nullable=True),
        sa.Column("last_run_id", sa.String(200), nullable=True),
        sa.Column("fired", sa.Integer(), nullable=False),
        sa.Column("skipped", sa.Integer(), nullable=False),
        sa.Column("claimed_by", sa.String(200), nullable=True),
        sa.Column("claim_until", sa.Double(), nullable=True),
    )
    op.create_index("ix_agentos_tasks_next_fire_at", "agentos_tasks", ["next_fire_at"])


def downgrade() -> None:
    op.drop_index("ix_agentos_tasks_next_fire_at", "agentos_tasks")
    op.drop_table("agentos_tasks")
