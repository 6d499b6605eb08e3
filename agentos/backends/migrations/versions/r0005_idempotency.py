"""Idempotency keys: a create's ``Idempotency-Key`` and the run it made.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "agentos_idempotency",
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("component_id", sa.String(200), nullable=False),
        sa.Column("user_scope", sa.String(200), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("run_id", sa.String(200), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("token", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("key", "kind", "component_id", "user_scope"),
    )
    op.create_index("ix_agentos_idempotency_created_at", "agentos_idempotency", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_agentos_idempotency_created_at", "agentos_idempotency")
    op.drop_table("agentos_idempotency")
