"""Event groups: one row of ``agentos_events`` may hold several consecutive events of a run.

A row of one event is as before (``last_index`` and ``layout`` NULL), so the rows of older
releases are read as they are and nothing is rewritten. A row of several events holds the
first index in ``event_index``, the last in ``last_index``, their JSON texts joined by the
character U+001E in ``data`` and their names in ``layout`` (``agentos/backends/eventrows.py``).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("agentos_events", sa.Column("last_index", sa.Integer(), nullable=True))
    op.add_column("agentos_events", sa.Column("layout", sa.Text(), nullable=True))


def downgrade() -> None:
    """Split every row of several events back into rows of one, then drop the columns."""
    events = sa.table(
        "agentos_events",
        sa.column("run_id", sa.String),
        sa.column("event_index", sa.Integer),
        sa.column("name", sa.String),
        sa.column("terminal", sa.Boolean),
        sa.column("data", sa.Text),
        sa.column("layout", sa.Text),
    )
    conn = op.get_bind()
    key = (events.c.run_id, events.c.event_index)
    grouped = (
        sa.select(*key, events.c.terminal, events.c.data, events.c.layout)
        .where(events.c.layout.is_not(None))
        .order_by(*key)
        .limit(100)
    )
    # A hundred rows at a time, in key order from the last one split: one pass over the
    # primary key (the rows a split writes have no layout), however many rows there are.
    rows_of_groups = conn.execute(grouped).all()
    while rows_of_groups:
        for row in rows_of_groups:
            _split(conn, events, *row)
        after = sa.tuple_(*key) > sa.tuple_(*map(sa.literal, rows_of_groups[-1][:2]))
        rows_of_groups = conn.execute(grouped.where(after)).all()
    with op.batch_alter_table("agentos_events") as batch:
        batch.drop_column("layout")
        batch.drop_column("last_index")


def _split(
    conn: sa.Connection,
    events: sa.TableClause,
    run_id: str,
    first: int,
    terminal: bool,
    data: str,
    layout: str,
) -> None:
    """Replace the row of several events ``(run_id, first)`` with one row per event."""
    texts = data.split("\x1e")
    names = [name for name, count in json.loads(layout) for _ in range(count)]
    rows = [
        {"run_id": run_id, "event_index": first + i, "name": names[i], "terminal": False,
         "data": text}
        for i, text in enumerate(texts)
    ]  # fmt: skip
    rows[-1]["terminal"] = bool(terminal)
    conn.execute(events.delete().where(events.c.run_id == run_id, events.c.event_index == first))
    conn.execute(events.insert(), rows)
