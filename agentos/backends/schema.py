"""Schema versions: which revision a database is at, and Alembic to bring it to this release's.

The migrations live in ``backends/migrations/`` (Alembic; ``versions/`` holds one revision per
schema change since the first release). The revision a database is at is kept in the table
``agentos_schema_version`` (Alembic's version table under a name of our own, so an application
that keeps its own Alembic history in the same database is not disturbed).

At start-up (:func:`ensure`, inside the store's schema transaction, which on PostgreSQL holds an
advisory lock so instances take turns)::

    no agentos table           -> create the tables of this release (create_all), stamp HEAD
    at HEAD                    -> go on
    older (or no version table
      but agentos tables:       -> db_auto_upgrade ? upgrade : refuse (SchemaOutdated names
      before migrations)           `agentos db upgrade`)
    a revision we do not know  -> refuse (SchemaUnknown): a newer release wrote it

A database made before migrations existed has tables but no version table; its revision is read
off its tables (``agentos_messages`` came with revision 0002) and stamped before upgrading.

Alembic is synchronous: the store runs these functions on its async connection through
``AsyncConnection.run_sync``, which works the same for aiosqlite and asyncpg.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.engine import Connection

from agentos.errors import SchemaOutdated, SchemaUnknown

__all__ = ["HEAD", "VERSION_TABLE", "current_revision", "ensure", "upgrade"]

#: The revision this release's code needs (the newest in ``migrations/versions``; a test keeps
#: the two equal).
HEAD = "0007"
#: Alembic's version table, under our name.
VERSION_TABLE = "agentos_schema_version"
_MIGRATIONS = Path(__file__).parent / "migrations"


def _config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def script_head() -> str | None:
    """The newest revision in ``migrations/versions``."""
    return ScriptDirectory(str(_MIGRATIONS)).get_current_head()


def current_revision(connection: Connection) -> str | None:
    """The revision the database is at: from the version table, or (a database made before
    migrations existed) read off its tables; None for a database without agentos tables."""
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    revision = context.get_current_revision()
    if revision is not None:
        return revision
    tables = set(sa.inspect(connection).get_table_names())
    if "agentos_runs" not in tables:
        return None
    return "0002" if "agentos_messages" in tables else "0001"


def ensure(
    connection: Connection, *, auto_upgrade: bool, create_all: Callable[[Connection], None]
) -> None:
    """Make sure the database has this release's schema, or refuse (see the module docstring)."""
    revision = current_revision(connection)
    if revision is None:
        create_all(connection)
        command.stamp(_config(connection), HEAD)
        return
    if revision == HEAD:
        return
    _check_known(revision)
    if not auto_upgrade:
        raise SchemaOutdated(revision, HEAD)
    upgrade(connection)


def upgrade(connection: Connection) -> tuple[str | None, str]:
    """Run the migrations up to HEAD; returns the revision before and after."""
    config = _config(connection)
    before = current_revision(connection)
    if before is not None:
        _check_known(before)
        stored = MigrationContext.configure(
            connection, opts={"version_table": VERSION_TABLE}
        ).get_current_revision()
        if stored is None:  # made before migrations existed: say where it stands
            command.stamp(config, before)
    command.upgrade(config, "head")
    return before, HEAD


def _check_known(revision: str) -> None:
    try:
        found = ScriptDirectory(str(_MIGRATIONS)).get_revision(revision)
    except CommandError:
        found = None
    if found is None:
        raise SchemaUnknown(revision)
