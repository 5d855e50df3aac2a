"""Migrations: one head, a clean upgrade → downgrade → upgrade cycle, no autogenerate drift."""

from __future__ import annotations

import io
import random
import sqlite3
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
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
from agentrt.storage.tables import (
    EXPERIENCE_VIEW_SQL,
    AgentRow,
    DecisionRow,
    FeedbackRow,
    metadata,
)

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


RULES = ("last", "sum", "mean", "max")
# Multiples of 1/4: sums and means are exact whatever order a plan adds them in.
REWARDS = (None, -1.5, 0.0, 0.25, 1.0, 2.75, 8.0)
T0 = datetime(2030, 1, 1, tzinfo=UTC)


def _view_sql(revision: str, name: str = "EXPERIENCE_VIEW") -> str:
    """The frozen view SQL that a migration script carries."""
    script = _scripts().get_revision(revision)
    assert script is not None
    sql: str = getattr(script.module, name)
    return sql


def _decision(agent_id: str, mode: str) -> Decision:
    return Decision(
        agent_id=agent_id,
        action="a",
        action_index=0,
        actions=("a", "b"),
        mode=mode,
        created_at=T0,
    )


def _new_id(rng: random.Random) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)


async def _fill_random(db: Database, seed: int, decisions: int = 150) -> None:
    """Decisions of an agent per reward rule (and of one with no `agents` row, which combines
    by "last"), in every mode, with 0-4 rewards from a few timestamps (so ties in created_at
    go by id), NULL rewards and outcomes, activations (also of non-deferred decisions, which
    the view ignores) and orphan feedback."""
    rng = random.Random(seed)
    rows: list[Decision] = []
    feedback: list[Feedback] = []
    for _ in range(decisions):
        decision = Decision(
            id=_new_id(rng),
            agent_id=rng.choice((*RULES, "unregistered")),
            action="a",
            action_index=0,
            actions=("a", "b"),
            context={"x": rng.randrange(3)},
            propensity=0.5,
            policy_version=rng.choice((None, 1, 2)),
            mode=rng.choice(("live", "live", "shadow", "deferred")),
            created_at=T0 + timedelta(seconds=rng.randrange(40)),
        )
        rows.append(decision)
        for _ in range(rng.choice((0, 1, 1, 2, 3, 4))):
            feedback.append(
                Feedback(
                    id=_new_id(rng),
                    decision_id=decision.id,
                    reward=rng.choice(REWARDS),
                    outcome=rng.choice((None, {"n": rng.randrange(100)})),
                    created_at=decision.created_at + timedelta(seconds=rng.choice((1, 2, 2, 3))),
                )
            )
        for _ in range(rng.choice((0, 0, 1, 2))):
            feedback.append(
                Feedback(
                    id=_new_id(rng),
                    decision_id=decision.id,
                    kind="activation",
                    created_at=decision.created_at + timedelta(seconds=rng.randrange(1, 4)),
                )
            )
    orphan = Feedback(id=_new_id(rng), decision_id=_new_id(rng), reward=1.0, created_at=T0)
    async with db.session() as session:
        session.add_all(AgentRow(agent_id=rule, reward_combine=rule, config={}) for rule in RULES)
        await insert_decisions(session, rows)
        await insert_feedback(session, [*feedback, orphan])


async def _view_rows(db: Database, view: str = "experience") -> list[dict[str, Any]]:
    """Every row of a view as the driver returns it (no type conversion), by decision id."""
    async with db.connect() as connection:
        result = await connection.execute(text(f"SELECT * FROM {view} ORDER BY decision_id"))
        return [dict(row) for row in result.mappings()]


def _view_columns(connection: Connection, view: str) -> list[tuple[str, str]]:
    return [
        (column["name"], str(column["type"])) for column in inspect(connection).get_columns(view)
    ]


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


def test_the_newest_migration_of_the_view_applies_the_models_view_sql() -> None:
    # The package queries the view of tables.EXPERIENCE_VIEW_SQL; the database has the one
    # that the newest migration creating the view froze. They must be the same text.
    creating = [
        script
        for script in _scripts().walk_revisions()
        if hasattr(script.module, "EXPERIENCE_VIEW")
    ]

    assert creating[0].module.EXPERIENCE_VIEW == EXPERIENCE_VIEW_SQL


def test_0002_downgrade_restores_the_0001_view_exactly() -> None:
    assert _view_sql("0002", "PREVIOUS_EXPERIENCE_VIEW") == _view_sql("0001")
    assert _view_sql("0002") == EXPERIENCE_VIEW_SQL != _view_sql("0001")


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


async def test_experience_written_before_0002_reads_the_same_through_it(
    empty_db: Database,
) -> None:
    await upgrade(empty_db, "0001")
    await _fill_random(empty_db, seed=1)
    before = await _view_rows(empty_db)
    assert len(before) == 150

    await upgrade(empty_db, "0002")
    assert await _view_rows(empty_db) == before

    # And back: 0002's downgrade restores the 0001 view, and a second upgrade changes nothing.
    await downgrade(empty_db, "0001")
    assert await _view_rows(empty_db) == before
    await upgrade(empty_db, "0002")
    assert await _view_rows(empty_db) == before
    assert await current_revision(empty_db) == "0002"


@pytest.mark.parametrize("seed", [0, 1, 2])
async def test_experience_view_matches_the_0001_view_on_random_experience(
    database: Database, seed: int
) -> None:
    old_view = _view_sql("0001").replace(
        "CREATE VIEW experience AS", "CREATE VIEW experience_0001 AS", 1
    )
    async with database.connect() as connection:
        await connection.execute(text(old_view))
    await _fill_random(database, seed, decisions=300)

    rows = await _view_rows(database)
    async with database.connect() as connection:
        columns = await connection.run_sync(_view_columns, "experience")
        old_columns = await connection.run_sync(_view_columns, "experience_0001")

    assert len(rows) == 300
    assert rows == await _view_rows(database, "experience_0001")
    assert columns == old_columns


async def test_experience_view_combines_rewards_by_each_agents_rule(database: Database) -> None:
    # Three rewards (id, seconds, reward), the last two at the same instant: "last" is the
    # one with the larger id. Every rule (and every wrong tie-break) gives another value.
    rewards = ((3, 1, 0.5), (1, 2, 4.0), (2, 2, 1.5))
    decisions = {rule: _decision(rule, "live") for rule in RULES}
    feedback = [
        Feedback(
            id=uuid.UUID(int=16 * index + n, version=4),
            decision_id=decision.id,
            reward=value,
            outcome={"n": n},
            created_at=T0 + timedelta(seconds=seconds),
        )
        for index, decision in enumerate(decisions.values())
        for n, seconds, value in rewards
    ]
    activated, waiting, live = (
        _decision("last", mode) for mode in ("deferred", "deferred", "live")
    )
    for decision, seconds in ((activated, 5), (activated, 3), (live, 4)):
        feedback.append(
            Feedback(
                decision_id=decision.id,
                kind="activation",
                created_at=T0 + timedelta(seconds=seconds),
            )
        )
    async with database.session() as session:
        session.add_all(AgentRow(agent_id=rule, reward_combine=rule, config={}) for rule in RULES)
        await insert_decisions(session, [*decisions.values(), activated, waiting, live])
        await insert_feedback(session, feedback)
    async with database.session() as session:
        found = {
            agent: {row.decision_id: row for row in await fetch_experience(session, agent)}
            for agent in RULES
        }

    expected = {"last": 1.5, "sum": 6.0, "mean": 2.0, "max": 4.0}
    for rule, decision in decisions.items():
        row = found[rule][decision.id]
        assert (row.reward, row.feedback_count) == (expected[rule], 3)
        assert row.outcome == {"n": 2}
        assert row.rewarded_at == T0 + timedelta(seconds=2)
        assert row.activated_at == decision.created_at
    unrewarded = found["last"][activated.id]
    assert (unrewarded.reward, unrewarded.outcome, unrewarded.rewarded_at) == (None, None, None)
    assert unrewarded.feedback_count == 0
    assert unrewarded.activated_at == T0 + timedelta(seconds=3)  # the first activation
    assert found["last"][waiting.id].activated_at is None
    assert found["last"][live.id].activated_at == live.created_at


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
