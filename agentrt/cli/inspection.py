"""What the commands that read experience share: opening a database that must already exist,
reading it in one session, and rendering values for a terminal."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import anyio
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from agentrt.config import DatabaseConfig
from agentrt.errors import StorageError
from agentrt.storage import migrate
from agentrt.storage.engine import Database

__all__ = ["existing_database", "format_time", "read", "sqlite_file"]

T = TypeVar("T")


def sqlite_file(config: DatabaseConfig) -> Path | None:
    """The SQLite file the configuration names, or None for PostgreSQL and in-memory SQLite."""
    if not config.is_sqlite:
        return None
    database = make_url(config.url).database
    return None if not database or database == ":memory:" else Path(database)


def existing_database(config: DatabaseConfig) -> Database:
    """The configured database; an SQLite file that is not there is an error, not created.

    Raises:
        StorageError: the SQLite file does not exist.
    """
    path = sqlite_file(config)
    if path is not None and not path.is_file():
        raise StorageError(
            f"database file {path} does not exist: check database.url in the configuration, "
            "or create it with `agentrt db upgrade`"
        )
    return Database(config)


def read(config: DatabaseConfig, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run ``work`` in one session on a database whose schema is at the current revision.

    Raises:
        StorageError: the file is missing or the database cannot be read.
        SchemaOutdatedError: the schema is behind (the message names `agentrt db upgrade`).
    """
    db = existing_database(config)

    async def run() -> T:
        try:
            await migrate.ensure_schema(db, auto_migrate=False)
            async with db.session() as session:
                return await work(session)
        finally:
            await db.dispose()

    return anyio.run(run)


def format_time(value: datetime | None, empty: str = "-") -> str:
    """A timestamp in UTC to the second, as the tables print it."""
    if value is None:
        return empty
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
