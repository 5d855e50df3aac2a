"""Shared fixtures: real SQLite files and real PostgreSQL databases, one fresh per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from agentrt.config import DatabaseConfig
from agentrt.storage.engine import Database
from agentrt.storage.migrate import ensure_schema

PG_URL = os.environ.get("AGENTRT_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, bool]]:
    # SQLAlchemy's async layer runs on asyncio only.
    return ("asyncio", {"debug": True})


def _plain_dsn(url: str, database: str | None = None) -> str:
    parsed = make_url(url).set(drivername="postgresql")
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


async def _admin_connection() -> asyncpg.Connection:
    try:
        return await asyncpg.connect(_plain_dsn(PG_URL), timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        reason = f"PostgreSQL at {make_url(PG_URL).render_as_string()} does not answer: {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI=true requires PostgreSQL)")
        pytest.skip(f"{reason}; set AGENTRT_TEST_PG_URL to run the PostgreSQL tests")


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """The URL of a fresh, empty PostgreSQL database, dropped after the test."""
    name = f"agentrt_test_{uuid.uuid4().hex[:12]}"
    admin = await _admin_connection()
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    finally:
        await admin.close()
    yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    admin = await _admin_connection()
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
def sqlite_url(tmp_path: object) -> str:
    """The URL of a new SQLite file in the test's temporary directory."""
    return f"sqlite+aiosqlite:///{tmp_path}/agentrt.db"


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    """Runs a test once on SQLite and once on PostgreSQL."""
    if request.param == "postgresql":
        request.applymarker(pytest.mark.postgres)
    return str(request.param)


@pytest.fixture
def db_url(backend: str, request: pytest.FixtureRequest) -> str:
    """A fresh database URL on the backend under test."""
    if backend == "postgresql":
        return str(request.getfixturevalue("pg_url"))
    return str(request.getfixturevalue("sqlite_url"))


@pytest.fixture
async def database(db_url: str) -> AsyncIterator[Database]:
    """A migrated database on the backend under test."""
    db = Database(DatabaseConfig(url=db_url))
    await ensure_schema(db, auto_migrate=True)
    try:
        yield db
    finally:
        await db.dispose()


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Small models on a shared machine: one intra-op thread, restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
