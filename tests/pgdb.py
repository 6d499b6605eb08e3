"""PostgreSQL for tests: a scratch database per test session, dropped afterwards.

The server is the one of CI (``AGENTOS_TEST_PG_URL``, default
``postgresql+asyncpg://postgres@127.0.0.1:5432/test``). Each session creates its own database
``agentos_test_<random>`` on it, so parallel test runs never see each other's rows. Without a
server the PostgreSQL tests are skipped, except in CI (``CI=true``) where they fail loudly.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

BASE_URL = os.environ.get(
    "AGENTOS_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _dsn(url: str) -> str:
    parsed = make_url(url)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def require(what: str, problem: str | None) -> None:
    """Skip (or, in CI, fail) when a needed service is missing."""
    if problem is None:
        return
    if IN_CI:
        pytest.fail(f"{what} is required in CI: {problem}")
    pytest.skip(f"{what} is not available: {problem}")


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(_dsn(BASE_URL), timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _reachable() -> str | None:
    try:
        asyncio.run(_admin("SELECT 1"))
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        return f"{BASE_URL}: {type(exc).__name__}: {exc}"
    return None


def _new_name() -> tuple[str, str]:
    name = f"agentos_test_{uuid.uuid4().hex[:12]}"
    return name, make_url(BASE_URL).set(database=name).render_as_string(hide_password=False)


@contextlib.contextmanager
def scratch_database() -> Iterator[str]:
    """A new empty database on the test server; yields its SQLAlchemy URL, drops it after."""
    require("PostgreSQL", _reachable())
    name, url = _new_name()
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield url
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextlib.asynccontextmanager
async def ascratch_database() -> AsyncIterator[str]:
    """:func:`scratch_database` for async tests."""
    try:
        await _admin("SELECT 1")
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        require("PostgreSQL", f"{BASE_URL}: {type(exc).__name__}: {exc}")
    name, url = _new_name()
    await _admin(f'CREATE DATABASE "{name}"')
    try:
        yield url
    finally:
        await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """URL of this session's scratch PostgreSQL database."""
    with scratch_database() as url:
        yield url


async def truncate(url: str) -> None:
    """Empty the agentos tables of a scratch database (if they exist yet)."""
    conn = await asyncpg.connect(_dsn(url), timeout=5)
    try:
        await conn.execute(
            "DO $$ BEGIN "
            "IF to_regclass('agentos_runs') IS NOT NULL THEN "
            "TRUNCATE agentos_runs, agentos_events; END IF; "
            "IF to_regclass('agentos_messages') IS NOT NULL THEN "
            "TRUNCATE agentos_messages; END IF; "
            "IF to_regclass('agentos_components') IS NOT NULL THEN "
            "TRUNCATE agentos_components, agentos_leases; END IF; "
            "IF to_regclass('agentos_tasks') IS NOT NULL THEN TRUNCATE agentos_tasks; END IF; "
            "IF to_regclass('agentos_idempotency') IS NOT NULL THEN "
            "TRUNCATE agentos_idempotency; END IF; END $$"
        )
    finally:
        await conn.close()


BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database URL: SQLite in tmp_path, or this session's PostgreSQL scratch database."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}"
    url: str = request.getfixturevalue("pg_url")
    asyncio.run(truncate(url))
    return url
