"""The first release's schema: runs and their events.

Revision ID: 0001
Revises: none
Create Date: the first release (commit ac83c13), tables as SQLModel's create_all made them
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "agentos_runs",
        sa.Column("run_id", sa.String(200), primary_key=True),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("component_id", sa.String(200), nullable=False),
        sa.Column("session_id", sa.String(200), nullable=False),
        sa.Column("user_id", sa.String(200), nullable=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("input", sa.Text(), nullable=False),
        sa.Column("content", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.Column("event_count", sa.Integer(), nullable=False),
        sa.Column("instance_id", sa.String(200), nullable=True),
        sa.Column("lease_until", sa.Double(), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    for column in ("component_id", "created_at", "instance_id", "session_id", "status"):
        op.create_index(f"ix_agentos_runs_{column}", "agentos_runs", [column])
    op.create_table(
        "agentos_events",
        sa.Column("run_id", sa.String(200), primary_key=True),
        sa.Column("event_index", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("terminal", sa.Boolean(), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("agentos_events")
    op.drop_table("agentos_runs")
