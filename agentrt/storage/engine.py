"""The database handle: one object owns the async engine and the session factory.

There is no module-level engine: a :class:`Database` is built from the configuration and
passed to whatever needs it. Driver errors are translated to :class:`StorageError` here, once.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    DBAPIError,
    DisconnectionError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as SATimeoutError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from agentrt.config import DatabaseConfig, mask_url
from agentrt.errors import StorageError

__all__ = ["Database", "storage_errors"]

# JSON stored by agentrt must be valid for every backend: no NaN or Infinity.
_dumps = partial(json.dumps, allow_nan=False, separators=(",", ":"))


class Database:
    """An async engine and its session factory, configured for SQLite or PostgreSQL.

    Args:
        config: the ``database`` section of the configuration.
    """

    def __init__(self, config: DatabaseConfig) -> None:
        self.config = config
        self.url = config.url
        self.masked_url = mask_url(config.url)
        self.dialect = "sqlite" if config.is_sqlite else "postgresql"
        self.engine: AsyncEngine = _create_engine(config)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite file, or None for PostgreSQL and in-memory SQLite."""
        if self.dialect != "sqlite":
            return None
        database = make_url(self.url).database
        return None if not database or database == ":memory:" else Path(database)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session inside one transaction: committed on success, rolled back on error."""
        with storage_errors(self.masked_url):
            async with self.sessions() as session, session.begin():
                yield session

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncConnection]:
        """A connection inside one transaction, for Core statements and bulk paths."""
        with storage_errors(self.masked_url):
            async with self.engine.begin() as connection:
                yield connection

    async def dispose(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()

    def __repr__(self) -> str:
        return f"Database({self.masked_url!r})"


def _driver_errors() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """(errors worth retrying, errors that retrying cannot fix) raised by the raw drivers."""
    transient: list[type[BaseException]] = [OSError, TimeoutError, sqlite3.OperationalError]
    permanent: list[type[BaseException]] = [sqlite3.Error]
    try:
        import asyncpg
    except ImportError:  # the postgres extra is not installed
        pass
    else:
        transient += [
            asyncpg.PostgresConnectionError,
            asyncpg.InterfaceError,
            asyncpg.CannotConnectNowError,
            asyncpg.TooManyConnectionsError,
            asyncpg.AdminShutdownError,
            asyncpg.ConnectionDoesNotExistError,
            # The protocol lost track of the connection's state: on a connection kept open
            # while the server ended its session, a new operation can fail this way first.
            asyncpg.InternalClientError,
        ]
        permanent.append(asyncpg.PostgresError)
    return tuple(transient), tuple(permanent)


_TRANSIENT_DRIVER, _PERMANENT_DRIVER = _driver_errors()
_TRANSLATED: tuple[type[BaseException], ...] = (
    SQLAlchemyError,
    *_TRANSIENT_DRIVER,
    *_PERMANENT_DRIVER,
)
_TRANSIENT_SQLALCHEMY = (OperationalError, InterfaceError, DisconnectionError, SATimeoutError)


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    detail = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    if isinstance(detail, _TRANSIENT_DRIVER) or isinstance(exc, _TRANSIENT_SQLALCHEMY):
        return True
    return not isinstance(detail, _PERMANENT_DRIVER) and not isinstance(exc, DBAPIError)


@contextmanager
def storage_errors(masked_url: str) -> Iterator[None]:
    """Translate driver and SQLAlchemy errors into :class:`StorageError` (URL masked).

    The error's ``transient`` attribute says whether retrying may succeed (a lost connection,
    a lock timeout) or cannot (a constraint violation, bad SQL).
    """
    try:
        yield
    except StorageError:
        raise
    except _TRANSLATED as exc:
        detail = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
        # SQLAlchemy's asyncpg adapter wraps the driver's own, more specific error.
        detail = detail.__cause__ or detail
        text = str(detail).strip()
        first_line = text.splitlines()[0] if text else type(detail).__name__
        raise StorageError(
            f"database {masked_url}: {type(detail).__name__}: {first_line}",
            transient=_is_transient(exc),
        ) from exc


def _create_engine(config: DatabaseConfig) -> AsyncEngine:
    url = make_url(config.url)
    options: dict[str, Any] = {"echo": config.echo, "json_serializer": _dumps}
    if config.is_sqlite:
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, **options)
        _apply_pragmas(engine, config)
        return engine
    return create_async_engine(
        url,
        pool_size=config.pool_size,
        max_overflow=config.max_overflow,
        pool_timeout=config.pool_timeout.total_seconds(),
        pool_pre_ping=True,
        # JIT compilation costs more than it saves on the experience view's per-row subqueries.
        connect_args={"server_settings": {"application_name": "agentrt", "jit": "off"}},
        **options,
    )


def _apply_pragmas(engine: AsyncEngine, config: DatabaseConfig) -> None:
    pragmas = config.sqlite_pragmas
    statements = [
        f"PRAGMA journal_mode={pragmas.journal_mode.upper()}",
        f"PRAGMA synchronous={pragmas.synchronous.upper()}",
        f"PRAGMA busy_timeout={pragmas.busy_timeout // timedelta(milliseconds=1)}",
        f"PRAGMA foreign_keys={'ON' if pragmas.foreign_keys else 'OFF'}",
    ]
    if pragmas.cache_size is not None:
        statements.append(f"PRAGMA cache_size={int(pragmas.cache_size)}")

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            for statement in statements:
                cursor.execute(statement)
        finally:
            cursor.close()
