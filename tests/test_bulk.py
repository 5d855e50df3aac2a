"""agentrt.storage.bulk: the collector's write path, on SQLite and on PostgreSQL.

Most tests use the ``database`` fixture, so they run once per backend against a freshly
migrated database. What the bulk path writes must read back through the ORM and the
``experience`` view exactly as the objects that went in; a batch is all or nothing, and
writing it again changes nothing.
"""

from __future__ import annotations

import gc
import json
import math
import socket
import sqlite3
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url

from agentrt.config import AgentConfig, DatabaseConfig, SQLitePragmasConfig
from agentrt.errors import StorageError
from agentrt.schemas import Decision, Episode, Feedback
from agentrt.storage import flat, repositories
from agentrt.storage.bulk import (
    DECISION_COLUMNS,
    ExperienceWriter,
    _sqlite_statements,
    _sqlite_write,
    encode_batch,
    existing_decision_ids,
    join_encoded,
    write_experience,
)
from agentrt.storage.engine import Database, storage_errors
from agentrt.storage.migrate import ensure_schema
from agentrt.storage.tables import Base, DecisionRow, EpisodeRow, FeedbackRow

AGENT = "router"
ACTIONS = ("fast", "cheap", "careful")
# Microseconds on purpose, and an offset other than UTC: both must survive the bulk path.
T0 = datetime(2025, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)
PLUS_TWO = timezone(timedelta(hours=2))
JSON_COLUMNS = frozenset({"context", "actions", "probabilities", "exploration"})


def at(seconds: float, zone: timezone = UTC) -> datetime:
    return (T0 + timedelta(seconds=seconds)).astimezone(zone)


def full_decision(seconds: float = 0.0, **changes: Any) -> Decision:
    """A decision with every optional field set."""
    fields: dict[str, Any] = {
        "agent_id": AGENT,
        "action": "cheap",
        "action_index": 1,
        "actions": ACTIONS,
        "context": {
            "load": 0.1,
            "tier": "gold ✓ 金",
            "count": 7,
            "flag": True,
            "missing": None,
            "tags": ["a", "b"],
            "sizes": [1, 2.5, False],
        },
        "propensity": 0.3,
        "probabilities": (0.5, 0.3, 0.2),
        "policy_version": 3,
        "exploration": {"method": "epsilon_greedy", "epsilon": 0.1, "nested": {"k": [1, None]}},
        "mode": "shadow",
        "episode_id": uuid.uuid4(),
        "step": 4,
        "policy_action": "fast",
        "created_at": at(seconds, PLUS_TWO),
    }
    fields.update(changes)
    return Decision(**fields)


def bare_decision(seconds: float = 0.0) -> Decision:
    """A decision with every optional field left None."""
    return Decision(
        agent_id=AGENT,
        action="fast",
        action_index=0,
        actions=ACTIONS,
        context={},
        created_at=at(seconds),
    )


def feedback_for(decision: Decision, seconds: float = 1.0, **changes: Any) -> Feedback:
    fields: dict[str, Any] = {
        "decision_id": decision.id,
        "reward": 0.75,
        "outcome": {"latency_ms": 12.5, "ok": True, "error": None, "path": ["x", 1]},
        "source": "test",
        "created_at": at(seconds, PLUS_TWO),
    }
    fields.update(changes)
    return Feedback(**fields)


def episode(seconds: float = 0.0) -> Episode:
    return Episode(
        agent_id=AGENT,
        started_at=at(seconds, PLUS_TWO),
        ended_at=at(seconds + 5),
        status="failed",
        episode_return=2.5,
        length=3,
        error="ValueError: boom",
    )


def bare_episode(seconds: float = 0.0) -> Episode:
    return Episode(agent_id=AGENT, started_at=at(seconds), status="running")


def row_fields(row: Base) -> dict[str, Any]:
    return {column.key: getattr(row, column.key) for column in row.__table__.columns}


def is_utc(moment: datetime | None) -> bool:
    return moment is not None and moment.utcoffset() == timedelta(0)


async def count(database: Database, row: type[Base]) -> int:
    async with database.session() as session:
        return (await session.execute(select(func.count()).select_from(row))).scalar_one()


async def counts(database: Database) -> tuple[int, int, int]:
    return (
        await count(database, DecisionRow),
        await count(database, FeedbackRow),
        await count(database, EpisodeRow),
    )


async def add_agent(database: Database) -> None:
    async with database.session() as session:
        await repositories.upsert_agents(session, {AGENT: AgentConfig(actions=list(ACTIONS))})


# -- round trip ----------------------------------------------------------------------------


async def test_decisions_read_back_through_the_orm_unchanged(database: Database) -> None:
    decisions = [full_decision(0), bare_decision(1)]
    await write_experience(database, decisions, [])

    async with database.session() as session:
        for decision in decisions:
            row = await session.get(DecisionRow, decision.id)
            assert row is not None
            stored = row_fields(row)
            assert isinstance(stored["id"], uuid.UUID)
            assert is_utc(stored["created_at"])
            assert stored["created_at"] == decision.created_at
            # Field names match column names: the row validates back into an equal Decision.
            assert Decision.model_validate(stored) == decision


async def test_feedback_and_episodes_read_back_through_the_orm_unchanged(
    database: Database,
) -> None:
    decision = full_decision()
    feedback = [
        feedback_for(decision),
        Feedback(decision_id=decision.id, kind="activation", created_at=at(2)),
    ]
    episodes = [episode(), bare_episode(10)]
    await write_experience(database, [decision], feedback, episodes)

    async with database.session() as session:
        for item in feedback:
            feedback_row = await session.get(FeedbackRow, item.id)
            assert feedback_row is not None
            assert is_utc(feedback_row.created_at)
            assert Feedback.model_validate(row_fields(feedback_row)) == item
        for ep in episodes:
            episode_row = await session.get(EpisodeRow, ep.id)
            assert episode_row is not None
            assert is_utc(episode_row.started_at)
            assert episode_row.ended_at is None or is_utc(episode_row.ended_at)
            assert Episode.model_validate(row_fields(episode_row)) == ep


async def test_the_experience_view_reads_bulk_rows_like_orm_rows(database: Database) -> None:
    await add_agent(database)
    via_bulk = full_decision(0)
    via_orm = via_bulk.model_copy(
        update={"id": uuid.uuid4(), "created_at": via_bulk.created_at + timedelta(hours=1)}
    )
    bare = bare_decision(7200)
    await write_experience(
        database, [via_bulk, bare], [feedback_for(via_bulk, 3), feedback_for(bare, 7203)]
    )
    async with database.session() as session:
        await repositories.insert_decisions(session, [via_orm])
        await repositories.insert_feedback(session, [feedback_for(via_orm, 3603)])
        rows = await repositories.fetch_experience(session, AGENT)

    assert [row.decision_id for row in rows] == [via_bulk.id, via_orm.id, bare.id]
    for row, decision in zip(rows, [via_bulk, via_orm, bare], strict=True):
        assert row.created_at == decision.created_at
        assert is_utc(row.created_at)
        assert row.episode_id == decision.episode_id
        assert row.context == decision.context
        assert row.actions == decision.actions
        assert row.probabilities == decision.probabilities
        assert row.exploration == decision.exploration
        assert row.propensity == decision.propensity
        assert row.policy_action == decision.policy_action
        assert row.step == decision.step
        assert row.reward == 0.75
        assert row.outcome == {"latency_ms": 12.5, "ok": True, "error": None, "path": ["x", 1]}
        assert row.feedback_count == 1
        assert is_utc(row.rewarded_at)
    # The bulk row and the ORM row differ only where their inputs differ.
    moments = {"decision_id", "created_at", "rewarded_at", "activated_at"}
    assert rows[0].model_dump(exclude=moments) == rows[1].model_dump(exclude=moments)


async def test_bulk_rows_are_encoded_like_orm_rows(database: Database) -> None:
    """Stored values compare equal in SQL too (SQLite compares timestamps and ids as text)."""
    via_bulk = full_decision(0)
    via_orm = via_bulk.model_copy(update={"id": uuid.uuid4()})
    await write_experience(database, [via_bulk], [feedback_for(via_bulk)])
    async with database.session() as session:
        await repositories.insert_decisions(session, [via_orm])
        await repositories.insert_feedback(session, [feedback_for(via_orm)])
    plain = [c for c in DECISION_COLUMNS if c not in JSON_COLUMNS and c != "id"]
    documents = [c for c in DECISION_COLUMNS if c in JSON_COLUMNS]
    async with database.connect() as connection:
        # Raw values, without SQLAlchemy's type processing: what another client sees.
        raw = (await connection.execute(text(f"SELECT {', '.join(plain)} FROM decisions"))).all()
        json_values = (
            await connection.execute(text(f"SELECT {', '.join(documents)} FROM decisions"))
        ).all()
        ids = (await connection.execute(text("SELECT id FROM decisions ORDER BY id"))).scalars()
        rewarded = (
            await connection.execute(
                text(
                    "SELECT COUNT(*) FROM feedback f JOIN decisions d ON d.id = f.decision_id "
                    "WHERE f.created_at > d.created_at"
                )
            )
        ).scalar_one()
        raw_ids = list(ids)
    assert len(raw) == 2
    assert raw[0] == raw[1]
    assert [parse_json(v) for v in json_values[0]] == [parse_json(v) for v in json_values[1]]
    assert sorted(str(i).replace("-", "") for i in raw_ids) == sorted(
        [via_bulk.id.hex, via_orm.id.hex]
    )
    assert rewarded == 2


def parse_json(value: object) -> object:
    return json.loads(value) if isinstance(value, str) else value


async def test_absent_json_values_are_stored_as_sql_null(database: Database) -> None:
    decision = bare_decision()
    reward = Feedback(decision_id=decision.id, reward=None, outcome=None, created_at=at(1))
    await write_experience(database, [decision], [reward])
    async with database.connect() as connection:
        nulls = (
            await connection.execute(
                text(
                    "SELECT probabilities IS NULL, exploration IS NULL, episode_id IS NULL, "
                    "propensity IS NULL FROM decisions"
                )
            )
        ).one()
        outcome_null = (
            await connection.execute(text("SELECT outcome IS NULL, reward IS NULL FROM feedback"))
        ).one()
    assert tuple(bool(value) for value in nulls) == (True, True, True, True)
    assert tuple(bool(value) for value in outcome_null) == (True, True)


# -- idempotence ---------------------------------------------------------------------------


async def test_writing_the_same_batch_twice_leaves_one_copy(database: Database) -> None:
    decisions = [full_decision(i) for i in range(5)]
    feedback = [feedback_for(d) for d in decisions]
    episodes = [episode()]
    await write_experience(database, decisions, feedback, episodes)
    await write_experience(database, decisions, feedback, episodes)
    assert await counts(database) == (5, 5, 1)


async def test_a_repeated_id_inside_one_batch_is_written_once(database: Database) -> None:
    decision = full_decision()
    reward = feedback_for(decision)
    await write_experience(database, [decision, decision], [reward, reward])
    assert await counts(database) == (1, 1, 0)


async def test_stored_ids_are_skipped_and_new_ones_written(database: Database) -> None:
    first = full_decision(0)
    await write_experience(database, [first], [])
    # Same id, other content: the stored row wins (DO NOTHING), the new decision lands.
    changed = first.model_copy(update={"action": "fast", "action_index": 0})
    second = full_decision(1)
    await write_experience(database, [changed, second], [])
    async with database.session() as session:
        stored = await session.get(DecisionRow, first.id)
        assert stored is not None
        assert stored.action == "cheap"
        assert await session.get(DecisionRow, second.id) is not None
    assert await count(database, DecisionRow) == 2


async def test_an_empty_batch_writes_nothing(database: Database) -> None:
    await write_experience(database, [], [], [])
    assert await counts(database) == (0, 0, 0)


# -- atomicity -----------------------------------------------------------------------------


def bad_decision() -> Decision:
    # Validation would refuse it; model_construct lets it reach the CHECK constraint.
    good = full_decision(99)
    return Decision.model_construct(**{**dict(good), "id": uuid.uuid4(), "propensity": 2.0})


def bad_episode() -> Episode:
    good = episode(99)
    return Episode.model_construct(**{**dict(good), "id": uuid.uuid4(), "status": "lost"})


@pytest.mark.parametrize("broken", ["decision", "episode"])
async def test_one_refused_row_rolls_the_whole_batch_back(database: Database, broken: str) -> None:
    decisions = [full_decision(i) for i in range(4)]
    feedback = [feedback_for(d) for d in decisions]
    episodes = [episode(0)]
    if broken == "decision":
        # Last of its group: the rows before it were already sent in the same transaction.
        decisions.append(bad_decision())
    else:
        # The episodes go last: decisions and feedback were already inserted.
        episodes.append(bad_episode())

    with pytest.raises(StorageError) as caught:
        await write_experience(database, decisions, feedback, episodes)

    assert caught.value.transient is False
    assert await counts(database) == (0, 0, 0)
    # The connection went back to the pool usable: the valid part writes on its own.
    await write_experience(database, decisions[:4], feedback, episodes[:1])
    assert await counts(database) == (4, 4, 1)


async def test_a_refused_batch_leaves_earlier_rows_alone(database: Database) -> None:
    kept = full_decision(0)
    await write_experience(database, [kept], [feedback_for(kept)])
    with pytest.raises(StorageError) as caught:
        await write_experience(database, [full_decision(1), bad_decision()], [])
    assert not caught.value.transient
    async with database.session() as session:
        ids = set((await session.execute(select(DecisionRow.id))).scalars())
    assert ids == {kept.id}


# -- flat records ----------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_flat_records_encode_to_the_rows_of_their_models(dialect: str) -> None:
    decisions = [full_decision(0), bare_decision(1)]
    entries = [flat.execution(d, 0.5, {"latency_ms": 3}, "app") for d in decisions]
    reported = feedback_for(decisions[0])
    entries.append(flat.feedback(reported))
    models = [record for entry in entries for record in flat.records_of(entry)]
    assert models[0] == decisions[0]
    assert models[2] == decisions[1]
    assert models[-1] == reported
    execution_reward = models[1]
    assert isinstance(execution_reward, Feedback)
    assert (execution_reward.decision_id, execution_reward.reward) == (decisions[0].id, 0.5)
    assert execution_reward.created_at == decisions[0].created_at
    # The same ids every time: a spilled or retried execution is stored once.
    assert flat.records_of(entries[0]) == models[:2]

    from_models = encode_batch(
        dialect,
        [m for m in models if isinstance(m, Decision)],
        [m for m in models if isinstance(m, Feedback)],
    )
    assert encode_batch(dialect, [], [], flat_records=entries) == from_models


def test_a_buffered_execution_leaves_the_garbage_collectors_generations() -> None:
    """What record() and reward() buffer is untracked at the next collection, whatever the
    models they return hold (the hot path's tail latency depends on it)."""
    made = full_decision(0)  # lists in its context, a nested exploration
    entries = [
        flat.execution(made, 1.0, {"latency_ms": 12, "path": ["x", 1]}, None),
        flat.feedback(feedback_for(made)),
    ]
    gc.collect()
    assert [gc.is_tracked(entry) for entry in entries] == [False, False]
    # Rebuilt models are equal to the originals, and each has its own dicts.
    rebuilt = flat.records_of(entries[0])[0]
    assert rebuilt == made
    assert isinstance(rebuilt, Decision)
    assert rebuilt.exploration is not made.exploration


# -- large batches -------------------------------------------------------------------------


async def test_a_batch_of_thousands_of_rows_lands_whole_and_equal(database: Database) -> None:
    decisions = [full_decision(i / 1000) for i in range(2500)]
    feedback = [feedback_for(d) for d in decisions]
    writer = ExperienceWriter(database)
    try:
        await writer.write(decisions, feedback, [episode(i) for i in range(300)])
    finally:
        await writer.close()
    assert await counts(database) == (2500, 2500, 300)
    async with database.session() as session:
        stored = {row.id: row for row in (await session.execute(select(DecisionRow))).scalars()}
    assert all(Decision.model_validate(row_fields(stored[d.id])) == d for d in decisions)


def test_sqlite_statements_keep_every_row_in_order_within_the_variable_limit() -> None:
    """SQLite's default build refuses a statement with more than 32,766 values."""
    rows: list[tuple[object, ...]] = [
        tuple(f"{row}.{column}" for column in range(15)) for row in range(5000)
    ]
    statements = _sqlite_statements("decisions", DECISION_COLUMNS, rows)
    assert [value for _, parameters in statements for value in parameters] == [
        value for row in rows for value in row
    ]
    assert all(len(parameters) <= 32_766 for _, parameters in statements)
    # A handful of statement texts, whatever the batch size: the driver caches them.
    sizes = {len(parameters) // 15 for _, parameters in statements}
    assert sizes <= {2**k for k in range(12)}
    assert len(statements) <= 2 + 11


class PublicCallsOnly:
    """An aiosqlite connection reached through its public coroutines only (as a version
    without ``_execute`` would be)."""

    def __init__(self, driver: Any) -> None:
        self._driver = driver

    async def execute(self, statement: str, parameters: list[object]) -> None:
        await self._driver.execute(statement, parameters)

    async def commit(self) -> None:
        await self._driver.commit()


async def test_sqlite_writes_the_same_rows_through_public_driver_calls(
    sqlite_url: str,
) -> None:
    database = Database(DatabaseConfig(url=sqlite_url))
    await ensure_schema(database, auto_migrate=True)
    try:
        decisions = [full_decision(0), bare_decision(1), *(bare_decision(2 + i) for i in range(99))]
        feedback = [feedback_for(d) for d in decisions[:2]]
        encoded = encode_batch("sqlite", decisions, feedback, [episode()])
        async with database.connect() as connection:
            raw = await connection.get_raw_connection()
            await _sqlite_write(PublicCallsOnly(raw.driver_connection), encoded)
        assert await counts(database) == (101, 2, 1)
        async with database.session() as session:
            row = await session.get(DecisionRow, decisions[0].id)
            assert row is not None
            assert Decision.model_validate(row_fields(row)) == decisions[0]
    finally:
        await database.dispose()


async def test_the_installed_aiosqlite_takes_a_batch_in_one_call(sqlite_url: str) -> None:
    """What the one-call path uses is there (without it writes fall back to one call per
    statement: the same rows, slower): an aiosqlite upgrade that removes it fails here."""
    database = Database(DatabaseConfig(url=sqlite_url))
    try:
        async with database.connect() as connection:
            driver = (await connection.get_raw_connection()).driver_connection
            assert callable(getattr(driver, "_execute", None))
            assert isinstance(getattr(driver, "_connection", None), sqlite3.Connection)
    finally:
        await database.dispose()


async def test_joined_batches_write_as_one(database: Database) -> None:
    first = [full_decision(0)]
    second = [bare_decision(1), bare_decision(2)]
    joined = join_encoded(
        encode_batch(database.dialect, first, [feedback_for(first[0])], [episode()]),
        encode_batch(database.dialect, second, [feedback_for(second[0])]),
    )
    assert [table for table, _, _ in joined] == ["decisions", "feedback", "episodes"]
    writer = ExperienceWriter(database)
    try:
        await writer.write_encoded(joined)
    finally:
        await writer.close()
    assert await counts(database) == (3, 2, 1)


# -- the collector's writer ----------------------------------------------------------------


async def test_the_writer_writes_batches_once_on_its_kept_connection(database: Database) -> None:
    writer = ExperienceWriter(database)
    try:
        first = [full_decision(i) for i in range(3)]
        await writer.write(first, [feedback_for(d) for d in first], [episode()])
        second = [bare_decision(10 + i) for i in range(2)]
        await writer.write(second, [feedback_for(d) for d in second])
        # A retried batch (its first attempt committed) and a replay: nothing is doubled.
        await writer.write(first, [feedback_for(first[0])], fresh=True)
        await writer.write(second, [], fresh=False)
    finally:
        await writer.close()
    assert await counts(database) == (5, 6, 1)


async def test_a_batch_refused_through_the_writer_leaves_nothing_and_the_writer_usable(
    database: Database,
) -> None:
    writer = ExperienceWriter(database)
    try:
        kept = full_decision(0)
        await writer.write([kept], [feedback_for(kept)])
        batch = [full_decision(1), bad_decision()]
        with pytest.raises(StorageError) as caught:
            await writer.write(batch, [feedback_for(batch[0])])
        assert caught.value.transient is False
        assert await counts(database) == (1, 1, 0)
        await writer.write(batch[:1], [feedback_for(batch[0])])
    finally:
        await writer.close()
    assert await counts(database) == (2, 2, 0)


@pytest.mark.parametrize("fresh", [True, False])
async def test_both_postgresql_paths_store_equal_rows(database: Database, fresh: bool) -> None:
    """The direct COPY (fresh ids) and the staging path (retries) store the same rows."""
    decisions = [full_decision(0), bare_decision(1)]
    feedback = [feedback_for(decisions[0]), feedback_for(decisions[1], outcome=None)]
    await write_experience(database, decisions, feedback, [episode()], fresh=fresh)
    async with database.session() as session:
        for decision in decisions:
            row = await session.get(DecisionRow, decision.id)
            assert row is not None
            assert Decision.model_validate(row_fields(row)) == decision
        for item in feedback:
            feedback_row = await session.get(FeedbackRow, item.id)
            assert feedback_row is not None
            assert Feedback.model_validate(row_fields(feedback_row)) == item
    assert await counts(database) == (2, 2, 1)


# -- existing_decision_ids -----------------------------------------------------------------


async def test_existing_decision_ids_returns_the_stored_subset(database: Database) -> None:
    stored = [bare_decision(i) for i in range(3)]
    await write_experience(database, stored, [])
    unknown = [uuid.uuid4() for _ in range(1200)]  # more than one 500-id chunk
    found = await existing_decision_ids(database, [*unknown[:700], stored[0].id, *unknown[700:]])
    assert found == {stored[0].id}
    assert await existing_decision_ids(database, [d.id for d in stored]) == {d.id for d in stored}
    assert await existing_decision_ids(database, []) == set()


# -- values JSON cannot hold ---------------------------------------------------------------


async def test_big_integers_in_json_round_trip(database: Database) -> None:
    decision = full_decision(context={"big": 2**70, "small": -(2**63)})
    await write_experience(database, [decision], [])
    async with database.session() as session:
        row = await session.get(DecisionRow, decision.id)
    assert row is not None
    assert row.context == {"big": 2**70, "small": -(2**63)}


async def test_a_non_finite_number_in_json_is_refused_not_rewritten(database: Database) -> None:
    decision = full_decision()
    reward = feedback_for(decision, outcome={"ratio": math.nan})
    with pytest.raises(StorageError) as caught:
        await write_experience(database, [decision], [reward])
    assert not caught.value.transient
    assert await counts(database) == (0, 0, 0)


# -- transient failures --------------------------------------------------------------------


async def test_a_locked_sqlite_database_raises_a_transient_error(sqlite_url: str) -> None:
    db = Database(
        DatabaseConfig(
            url=sqlite_url,
            sqlite_pragmas=SQLitePragmasConfig(busy_timeout=timedelta(milliseconds=10)),
        )
    )
    try:
        await ensure_schema(db, auto_migrate=True)
        path = db.sqlite_path
        assert path is not None
        decisions = [full_decision(0), full_decision(1)]
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # another writer holds the write lock
            with pytest.raises(StorageError) as caught:
                await write_experience(db, decisions, [])
            assert caught.value.transient is True
        finally:
            other.execute("ROLLBACK")
            other.close()
        # The lock is gone: the same batch now goes through, once.
        await write_experience(db, decisions, [])
        assert await count(db, DecisionRow) == 2
    finally:
        await db.dispose()


@pytest.mark.postgres
async def test_an_unreachable_postgresql_raises_a_transient_error(pg_url: str) -> None:
    # A bound socket that never listens: connections to its port are refused.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        url = make_url(pg_url).set(port=port).render_as_string(hide_password=False)
        db = Database(DatabaseConfig(url=url))
        try:
            with pytest.raises(StorageError) as caught:
                await write_experience(db, [full_decision()], [])
        finally:
            await db.dispose()
    assert caught.value.transient is True


def test_a_confused_driver_protocol_is_a_transient_error() -> None:
    # What asyncpg raises when a connection kept between batches lost its session under it
    # (seen after pg_terminate_backend): the writer must retry on a fresh connection, not die.
    import asyncpg

    message = "cannot switch to state 21; another operation (2) is in progress"
    with pytest.raises(StorageError) as caught, storage_errors("postgresql://db"):
        raise asyncpg.InternalClientError(message)
    assert caught.value.transient is True
    assert f"InternalClientError: {message}" in str(caught.value)
