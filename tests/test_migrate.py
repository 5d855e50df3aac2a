"""Migrations: one head, a clean upgrade → downgrade → upgrade cycle, no autogenerate drift."""

from __future__ import annotations

import io
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, func, inspect, select, text

from agentrt.config import DatabaseConfig
from agentrt.errors import SchemaOutdatedError, StorageError
from agentrt.schemas import Decision, Feedback
from agentrt.storage.engine import Database
from agentrt.storage.migrate import (
    alembic_config,
    current_revision,
    downgrade,
    ensure_schema,
    head_revision,
    migrations_dir,
    upgrade,
)
from agentrt.storage.repositories import fetch_experience, insert_decisions, insert_feedback
from agentrt.storage.tables import DecisionRow, FeedbackRow, metadata

AGENTRT_TABLES = frozenset(metadata.tables)


@pytest.fixture
async def empty_db(db_url: str) -> AsyncIterator[Database]:
    """A database on the backend under test that has never been migrated."""
    db = Database(DatabaseConfig(url=db_url))
    try:
        yield db
    finally:
        await db.dispose()


def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def _schema_objects(connection: Connection) -> tuple[set[str], set[str]]:
    inspector = inspect(connection)
    return set(inspector.get_table_names()), set(inspector.get_view_names())


async def _schema(db: Database) -> tuple[set[str], set[str]]:
    async with db.connect() as connection:
        return await connection.run_sync(_schema_objects)


async def _insert_experience(db: Database, agent_id: str) -> Decision:
    decision = Decision(
        agent_id=agent_id,
        action="b",
        action_index=1,
        actions=("a", "b"),
        context={"user": "u1", "load": 0.5},
        propensity=0.5,
        probabilities=(0.5, 0.5),
    )
    rewards = [Feedback(decision_id=decision.id, reward=value) for value in (1.0, 3.0)]
    async with db.session() as session:
        await insert_decisions(session, [decision])
        await insert_feedback(session, rewards)
    return decision


async def _count(db: Database, row: type[DecisionRow] | type[FeedbackRow]) -> int:
    async with db.session() as session:
        return (await session.execute(select(func.count()).select_from(row))).scalar_one()


def _autogenerate_diff(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, metadata))


# --- the scripts ---------------------------------------------------------------------------


def test_scripts_have_exactly_one_head() -> None:
    heads = _scripts().get_heads()

    assert len(heads) == 1
    assert heads[0] == head_revision()


def test_history_is_linear_down_to_a_single_base() -> None:
    revisions = list(_scripts().walk_revisions())

    assert len(_scripts().get_bases()) == 1
    assert all(not revision.is_merge_point for revision in revisions)
    assert revisions[-1].down_revision is None


def test_migrations_dir_holds_env_and_versions() -> None:
    directory = migrations_dir()

    assert (directory / "env.py").is_file()
    assert (directory / "versions").is_dir()


def test_alembic_config_keeps_percent_signs_in_the_url() -> None:
    url = "postgresql+asyncpg://agent:p%40ss%25word@db.example/agentrt"

    config = alembic_config(url)

    assert config.get_main_option("sqlalchemy.url") == url
    assert config.get_main_option("script_location") == str(migrations_dir())
    assert alembic_config().get_main_option("sqlalchemy.url") is None


@pytest.mark.parametrize(
    ("url", "dialect_sql"),
    [
        ("postgresql+asyncpg://agent@db.example/agentrt", "JSONB"),
        ("sqlite+aiosqlite:///agentrt.db", "CREATE TABLE decisions"),
    ],
)
def test_offline_mode_renders_the_whole_schema_as_sql(url: str, dialect_sql: str) -> None:
    buffer = io.StringIO()
    config = alembic_config(url)
    config.output_buffer = buffer

    command.upgrade(config, "head", sql=True)

    sql = buffer.getvalue()
    assert dialect_sql in sql
    assert "CREATE VIEW experience" in sql
    assert f"'{head_revision()}'" in sql


def test_alembic_command_line_path_migrates_through_its_own_engine(sqlite_url: str) -> None:
    # Without a connection in config.attributes, env.py builds its own engine from the URL
    # (this is what the plain `alembic` command does).
    config = alembic_config(sqlite_url)
    path = Path(sqlite_url.removeprefix("sqlite+aiosqlite:///"))

    command.upgrade(config, "head")
    with sqlite3.connect(path) as connection:
        version = connection.execute("SELECT version_num FROM alembic_version").fetchall()
    command.downgrade(config, "base")
    with sqlite3.connect(path) as connection:
        names = {
            name for (name,) in connection.execute("SELECT name FROM sqlite_master").fetchall()
        }

    assert version == [(head_revision(),)]
    assert names.isdisjoint(AGENTRT_TABLES | {"experience"})


# --- upgrade and downgrade, on both backends ------------------------------------------------


async def test_current_revision_is_none_before_and_head_after_upgrade(
    empty_db: Database,
) -> None:
    assert await current_revision(empty_db) is None

    await upgrade(empty_db)

    assert await current_revision(empty_db) == head_revision()


async def test_upgrade_from_empty_creates_every_table_and_the_experience_view(
    empty_db: Database,
) -> None:
    await upgrade(empty_db)

    tables, views = await _schema(empty_db)
    assert tables == AGENTRT_TABLES | {"alembic_version"}
    assert "experience" in views


async def test_upgrade_downgrade_upgrade_with_data_present(empty_db: Database) -> None:
    await upgrade(empty_db)
    await _insert_experience(empty_db, "before")
    assert await _count(empty_db, DecisionRow) == 1
    assert await _count(empty_db, FeedbackRow) == 2

    # Step down one revision at a time, each with the experience rows still in place.
    for script in _scripts().walk_revisions():
        assert await current_revision(empty_db) == script.revision
        await downgrade(empty_db, "-1")
        assert await current_revision(empty_db) == script.down_revision

    tables, views = await _schema(empty_db)
    assert tables <= {"alembic_version"}
    assert "experience" not in views

    await upgrade(empty_db)
    decision = await _insert_experience(empty_db, "after")
    async with empty_db.session() as session:
        experience = await fetch_experience(session, "after")

    assert await current_revision(empty_db) == head_revision()
    assert [item.decision_id for item in experience] == [decision.id]
    assert experience[0].reward == 3.0  # the default combine rule keeps the last reward
    assert experience[0].feedback_count == 2


async def test_downgrade_to_base_leaves_no_agentrt_objects(empty_db: Database) -> None:
    await upgrade(empty_db)
    await _insert_experience(empty_db, "agent")

    await downgrade(empty_db, "base")

    tables, views = await _schema(empty_db)
    assert tables.isdisjoint(AGENTRT_TABLES)
    assert views.isdisjoint({"experience"})
    assert await current_revision(empty_db) is None


async def test_autogenerate_finds_no_difference_after_upgrade(database: Database) -> None:
    async with database.connect() as connection:
        diff = await connection.run_sync(_autogenerate_diff)

    assert diff == []


# --- ensure_schema ---------------------------------------------------------------------------


@pytest.mark.parametrize("auto_migrate", [None, True])
async def test_ensure_schema_upgrades_an_empty_sqlite_file(
    sqlite_url: str, auto_migrate: bool | None
) -> None:
    db = Database(DatabaseConfig(url=sqlite_url))
    try:
        head = await ensure_schema(db, auto_migrate=auto_migrate)

        assert head == head_revision()
        assert await current_revision(db) == head
        assert "experience" in (await _schema(db))[1]
    finally:
        await db.dispose()


async def test_ensure_schema_refuses_an_empty_database_without_auto_migrate(
    empty_db: Database,
) -> None:
    with pytest.raises(SchemaOutdatedError) as caught:
        await ensure_schema(empty_db, auto_migrate=False)

    assert caught.value.current is None
    assert caught.value.head == head_revision()
    assert caught.value.url == empty_db.masked_url
    assert "`agentrt db upgrade`" in str(caught.value)
    assert await current_revision(empty_db) is None
    assert (await _schema(empty_db))[0].isdisjoint(AGENTRT_TABLES)


async def test_ensure_schema_refuses_a_database_one_revision_behind(
    empty_db: Database,
) -> None:
    await upgrade(empty_db)
    await downgrade(empty_db, "-1")
    behind = _scripts().get_revision(head_revision())
    assert behind is not None

    with pytest.raises(SchemaOutdatedError) as caught:
        await ensure_schema(empty_db, auto_migrate=False)

    assert caught.value.current == behind.down_revision
    assert caught.value.head == head_revision()
    assert "`agentrt db upgrade`" in str(caught.value)


@pytest.mark.postgres
async def test_ensure_schema_does_not_migrate_postgresql_by_default(pg_url: str) -> None:
    db = Database(DatabaseConfig(url=pg_url))
    try:
        with pytest.raises(SchemaOutdatedError) as caught:
            await ensure_schema(db, auto_migrate=None)

        assert caught.value.current is None
        assert caught.value.head == head_revision()
        assert await current_revision(db) is None
    finally:
        await db.dispose()


async def test_ensure_schema_does_not_migrate_in_memory_sqlite_by_default() -> None:
    db = Database(DatabaseConfig(url="sqlite+aiosqlite:///:memory:"))
    try:
        with pytest.raises(SchemaOutdatedError):
            await ensure_schema(db, auto_migrate=None)
    finally:
        await db.dispose()


async def test_ensure_schema_accepts_a_database_at_head_whatever_auto_migrate_says(
    database: Database,
) -> None:
    for auto_migrate in (None, False, True):
        assert await ensure_schema(database, auto_migrate=auto_migrate) == head_revision()

    assert await current_revision(database) == head_revision()


async def test_ensure_schema_refuses_a_revision_newer_than_this_agentrt(
    database: Database,
) -> None:
    async with database.connect() as connection:
        await connection.execute(text("UPDATE alembic_version SET version_num = 'ffff_future'"))

    for auto_migrate in (None, False, True):
        with pytest.raises(StorageError, match="newer than this agentrt") as caught:
            await ensure_schema(database, auto_migrate=auto_migrate)

        assert not isinstance(caught.value, SchemaOutdatedError)
        assert "ffff_future" in str(caught.value)
    assert await current_revision(database) == "ffff_future"
