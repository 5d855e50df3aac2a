"""The Database handle (engine, PRAGMAs, error translation) and the UTCDateTime column type."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import Dialect, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError, StatementError

from agentrt.config import DatabaseConfig, SQLitePragmasConfig
from agentrt.errors import StorageError
from agentrt.storage.engine import Database, storage_errors
from agentrt.storage.tables import KnowledgeRow, MetricRow, UTCDateTime

PASSWORD = "s3cret-Pa55"  # noqa: S105 (a test credential that must never be shown)

# 23:30 at UTC+05:30 is 18:00 UTC; the microseconds must survive too.
INDIA = timezone(timedelta(hours=5, minutes=30))
AWARE = datetime(2024, 3, 10, 23, 30, 15, 123456, tzinfo=INDIA)
AWARE_UTC = datetime(2024, 3, 10, 18, 0, 15, 123456, tzinfo=UTC)

SQLITE = "sqlite+aiosqlite://"
POSTGRESQL = "postgresql+asyncpg://"


@pytest.fixture
async def sqlite_db(sqlite_url: str) -> AsyncIterator[Database]:
    """An unmigrated SQLite database with the default configuration."""
    db = Database(DatabaseConfig(url=sqlite_url))
    try:
        yield db
    finally:
        await db.dispose()


def _dialect(url: str) -> Dialect:
    return make_url(url).get_dialect()()


def _with_password(url: str) -> str:
    return make_url(url).set(password=PASSWORD).render_as_string(hide_password=False)


async def _pragma(db: Database, name: str) -> object:
    async with db.connect() as connection:
        return (await connection.execute(text(f"PRAGMA {name}"))).scalar_one()


async def _metric_count(db: Database) -> int:
    async with db.session() as session:
        return (await session.execute(select(func.count()).select_from(MetricRow))).scalar_one()


# --- SQLite connections ---------------------------------------------------------------------


async def test_sqlite_connections_get_the_default_pragmas(sqlite_db: Database) -> None:
    assert await _pragma(sqlite_db, "journal_mode") == "wal"
    assert await _pragma(sqlite_db, "synchronous") == 1  # NORMAL
    assert await _pragma(sqlite_db, "busy_timeout") == 5000
    assert await _pragma(sqlite_db, "foreign_keys") == 1


async def test_sqlite_pragmas_follow_the_configuration(sqlite_url: str) -> None:
    pragmas = SQLitePragmasConfig(
        journal_mode="delete",
        synchronous="full",
        busy_timeout=timedelta(milliseconds=1500),
        foreign_keys=False,
        cache_size=-4000,
    )
    db = Database(DatabaseConfig(url=sqlite_url, sqlite_pragmas=pragmas))
    try:
        assert await _pragma(db, "journal_mode") == "delete"
        assert await _pragma(db, "synchronous") == 2  # FULL
        assert await _pragma(db, "busy_timeout") == 1500
        assert await _pragma(db, "foreign_keys") == 0
        assert await _pragma(db, "cache_size") == -4000
    finally:
        await db.dispose()


@pytest.mark.parametrize(
    ("busy_timeout", "milliseconds"),
    [
        ("250ms", 250),
        ("2s", 2000),
        ("1001ms", 1001),
    ],
)
async def test_sqlite_busy_timeout_is_set_in_milliseconds(
    sqlite_url: str, busy_timeout: str, milliseconds: int
) -> None:
    pragmas = SQLitePragmasConfig.model_validate({"busy_timeout": busy_timeout})
    db = Database(DatabaseConfig(url=sqlite_url, sqlite_pragmas=pragmas))
    try:
        assert await _pragma(db, "busy_timeout") == milliseconds
    finally:
        await db.dispose()


async def test_every_pooled_sqlite_connection_gets_the_pragmas(sqlite_db: Database) -> None:
    async with sqlite_db.connect() as first, sqlite_db.connect() as second:
        values = [
            (await connection.execute(text("PRAGMA foreign_keys"))).scalar_one()
            for connection in (first, second)
        ]

    assert values == [1, 1]


async def test_missing_parent_directories_of_the_sqlite_file_are_created(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "deeper" / "agentrt.db"
    db = Database(DatabaseConfig(url=f"sqlite+aiosqlite:///{path}"))
    try:
        assert path.parent.is_dir()
        async with db.connect() as connection:
            await connection.execute(text("CREATE TABLE probe (x INTEGER)"))

        assert path.is_file()
        assert db.sqlite_path == path
    finally:
        await db.dispose()


async def test_in_memory_sqlite_has_no_file() -> None:
    db = Database(DatabaseConfig(url="sqlite+aiosqlite:///:memory:"))
    try:
        assert db.sqlite_path is None
        assert db.dialect == "sqlite"
    finally:
        await db.dispose()


# --- URLs and PostgreSQL settings ---------------------------------------------------------------


async def test_masked_url_and_repr_hide_the_password() -> None:
    db = Database(DatabaseConfig(url=f"postgresql://agent:{PASSWORD}@db.example:5433/agentrt"))
    try:
        assert db.masked_url == "postgresql+asyncpg://agent:***@db.example:5433/agentrt"
        assert PASSWORD not in repr(db)
        assert db.masked_url in repr(db)
        assert db.url == f"postgresql+asyncpg://agent:{PASSWORD}@db.example:5433/agentrt"
        assert db.dialect == "postgresql"
        assert db.sqlite_path is None
    finally:
        await db.dispose()


@pytest.mark.postgres
async def test_postgresql_connections_name_the_application(pg_url: str) -> None:
    db = Database(DatabaseConfig(url=pg_url))
    try:
        async with db.connect() as connection:
            name = (await connection.execute(text("SHOW application_name"))).scalar_one()
    finally:
        await db.dispose()

    assert name == "agentrt"


# --- error translation --------------------------------------------------------------------------


async def test_unreachable_postgresql_raises_storage_error_without_the_password() -> None:
    url = f"postgresql+asyncpg://postgres:{PASSWORD}@127.0.0.1:1/test"
    db = Database(DatabaseConfig(url=url))
    try:
        with pytest.raises(StorageError) as caught:
            async with db.connect() as connection:
                await connection.execute(text("SELECT 1"))
    finally:
        await db.dispose()

    message = str(caught.value)
    assert PASSWORD not in message
    assert "postgres:***@127.0.0.1:1/test" in message
    assert isinstance(caught.value.__cause__, OSError)


@pytest.mark.postgres
async def test_missing_postgresql_database_raises_storage_error(pg_url: str) -> None:
    url = make_url(_with_password(pg_url)).set(database="agentrt_no_such_database")
    db = Database(DatabaseConfig(url=url.render_as_string(hide_password=False)))
    try:
        with pytest.raises(StorageError, match="agentrt_no_such_database") as caught:
            async with db.session() as session:
                await session.execute(text("SELECT 1"))
    finally:
        await db.dispose()

    assert PASSWORD not in str(caught.value)
    assert isinstance(caught.value.__cause__, DBAPIError)


async def test_failing_statement_raises_storage_error_chained_from_the_driver(
    db_url: str,
) -> None:
    url = _with_password(db_url) if db_url.startswith("postgresql") else db_url
    db = Database(DatabaseConfig(url=url))
    try:
        with pytest.raises(StorageError, match="no_such_table") as in_connect:
            async with db.connect() as connection:
                await connection.execute(text("SELECT * FROM no_such_table"))
        with pytest.raises(StorageError, match="no_such_table") as in_session:
            async with db.session() as session:
                await session.execute(text("SELECT * FROM no_such_table"))
    finally:
        await db.dispose()

    for caught in (in_connect, in_session):
        message = str(caught.value)
        assert message.startswith(f"database {db.masked_url}: ")
        assert "\n" not in message
        assert PASSWORD not in message
        assert isinstance(caught.value.__cause__, DBAPIError)
        assert not isinstance(caught.value, SQLAlchemyError)


async def test_session_commits_on_success(database: Database) -> None:
    async with database.session() as session:
        session.add(MetricRow(name="committed", value=1.0))

    assert await _metric_count(database) == 1


async def test_session_rolls_back_when_a_statement_fails(database: Database) -> None:
    async def write_then_fail() -> None:
        async with database.session() as session:
            session.add(MetricRow(name="lost", value=1.0))
            await session.flush()
            await session.execute(text("SELECT * FROM no_such_table"))

    with pytest.raises(StorageError):
        await write_then_fail()

    assert await _metric_count(database) == 0


async def test_errors_of_the_caller_pass_through_untranslated_and_roll_back(
    database: Database,
) -> None:
    class Boom(Exception):
        pass

    async def write_then_fail() -> None:
        async with database.session() as session:
            session.add(MetricRow(name="lost", value=1.0))
            await session.flush()
            raise Boom

    with pytest.raises(Boom):
        await write_then_fail()

    assert await _metric_count(database) == 0


async def test_json_documents_refuse_nan(database: Database) -> None:
    with pytest.raises(StorageError, match="JSON") as caught:
        async with database.session() as session:
            session.add(MetricRow(name="nan", value=None, details={"loss": math.nan}))

    assert isinstance(caught.value.__cause__, StatementError)
    assert await _metric_count(database) == 0


def test_storage_errors_translates_sqlalchemy_errors_with_their_first_line() -> None:
    original = OperationalError("SELECT 1", {}, Exception("disk I/O error\nsecond line"))

    with pytest.raises(StorageError) as caught, storage_errors("sqlite+aiosqlite:///x.db"):
        raise original

    assert str(caught.value) == "database sqlite+aiosqlite:///x.db: Exception: disk I/O error"
    assert caught.value.__cause__ is original


def test_storage_errors_translates_os_errors() -> None:
    original = ConnectionRefusedError(111, "Connect call failed")

    with (
        pytest.raises(StorageError, match="ConnectionRefusedError") as caught,
        storage_errors("postgresql+asyncpg://u:***@h/db"),
    ):
        raise original

    assert caught.value.__cause__ is original


def test_storage_errors_passes_storage_errors_through_unchanged() -> None:
    original = StorageError("already translated")

    with pytest.raises(StorageError) as caught, storage_errors("sqlite+aiosqlite:///x.db"):
        raise original

    assert caught.value is original


def test_storage_errors_leaves_other_errors_alone() -> None:
    with pytest.raises(KeyError), storage_errors("sqlite+aiosqlite:///x.db"):
        raise KeyError("not a storage problem")


# --- UTCDateTime ------------------------------------------------------------------------------


async def test_aware_datetimes_round_trip_as_the_same_instant_in_utc_and_null_as_null(
    database: Database,
) -> None:
    async with database.session() as session:
        session.add(MetricRow(name="tz", value=1.0, created_at=AWARE))
        session.add(KnowledgeRow(agent_id="a", kind="k", payload={}, window_start=None))

    async with database.session() as session:
        stored = (await session.execute(select(MetricRow.created_at))).scalar_one()
        no_window = (await session.execute(select(KnowledgeRow.window_start))).scalar_one()

    assert stored == AWARE
    assert stored.tzinfo == UTC
    assert (stored.year, stored.month, stored.day, stored.hour) == (2024, 3, 10, 18)
    assert stored == AWARE_UTC
    assert no_window is None


async def test_comparisons_use_the_instant_not_the_wall_clock(database: Database) -> None:
    async with database.session() as session:
        session.add(MetricRow(name="tz", value=1.0, created_at=AWARE_UTC))

    same_instant_elsewhere = AWARE.astimezone(timezone(timedelta(hours=-7)))
    query = select(func.count()).select_from(MetricRow)
    async with database.session() as session:
        at_or_after = await session.execute(
            query.where(MetricRow.created_at >= same_instant_elsewhere)
        )
        after = await session.execute(query.where(MetricRow.created_at > same_instant_elsewhere))

    assert at_or_after.scalar_one() == 1
    assert after.scalar_one() == 0


async def test_binding_a_naive_datetime_is_refused(database: Database) -> None:
    naive = datetime(2024, 3, 10, 18, 0, 15)

    with pytest.raises(StorageError, match="naive datetime") as caught:
        async with database.session() as session:
            session.add(MetricRow(name="naive", value=1.0, created_at=naive))

    statement_error = caught.value.__cause__
    assert isinstance(statement_error, StatementError)
    assert isinstance(statement_error.orig, ValueError)
    assert await _metric_count(database) == 0


@pytest.mark.parametrize("url", [SQLITE, POSTGRESQL], ids=["sqlite", "postgresql"])
def test_naive_datetimes_are_refused_by_every_dialect(url: str) -> None:
    with pytest.raises(ValueError, match="aware datetime"):
        UTCDateTime().process_bind_param(datetime(2024, 1, 1), _dialect(url))


@pytest.mark.parametrize(
    ("url", "expected"),
    [(SQLITE, datetime(2024, 3, 10, 18, 0, 15, 123456)), (POSTGRESQL, AWARE_UTC)],
    ids=["sqlite", "postgresql"],
)
def test_bound_values_are_utc_and_naive_only_for_sqlite(url: str, expected: datetime) -> None:
    bound = UTCDateTime().process_bind_param(AWARE, _dialect(url))

    assert bound == expected
    assert bound is not None
    assert bound.tzinfo == expected.tzinfo
