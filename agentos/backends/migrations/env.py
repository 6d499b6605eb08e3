"""Alembic's environment: runs the migrations on the connection ``backends/schema.py`` passes.

agentos runs Alembic itself (``agentos db upgrade``, ``schema.upgrade``), handing over a
synchronous view of an async connection (``AsyncConnection.run_sync``) in
``config.attributes["connection"]``, inside the transaction that holds the schema lock. Alembic's
own command line works too (``sqlalchemy.url`` set to an async URL): then the async engine
pattern below connects.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from agentos.backends.schema import VERSION_TABLE


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async(url: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_run)
    finally:
        await engine.dispose()


_connection = context.config.attributes.get("connection")
if _connection is not None:
    _run(_connection)
else:
    _url = context.config.get_main_option("sqlalchemy.url")
    if not _url:
        raise RuntimeError("set sqlalchemy.url, or run `agentos db upgrade --url URL`")
    asyncio.run(_run_async(_url))
