"""The collector's write path: experience batches through each driver's fastest idempotent path.

SQLite: multi-row ``INSERT ... VALUES (...), (...) ON CONFLICT (id) DO NOTHING`` statements,
the whole batch and its commit in one call to the driver's thread. ``executemany`` releases the
GIL around every row and takes it back after: while the event loop's thread runs Python (the
application's calls, the next batch being encoded), each of those waits lasts up to the
interpreter's switch interval, and the write slowed to half its speed; a multi-row statement
waits once.

PostgreSQL: a batch whose ids are new (every first attempt) is copied straight into its tables
with binary ``COPY``; when a row's id is already stored (a retried batch whose earlier commit
did happen, a replayed spill file, an id twice in one batch) that transaction fails as a whole
with a unique violation and the batch is written again through a temporary staging table and
``INSERT ... SELECT ... ON CONFLICT (id) DO NOTHING``. Either way a row is stored once.

Rows are encoded exactly as SQLAlchemy's column types encode them, so the ORM and the
``experience`` view read them back unchanged.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import sqlite3
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import anyio
import orjson
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from agentrt.errors import StorageError
from agentrt.schemas import Decision, Episode, Feedback
from agentrt.storage import flat
from agentrt.storage.engine import Database, storage_errors
from agentrt.storage.flat import DECISION_COLUMNS, FEEDBACK_COLUMNS
from agentrt.storage.tables import DecisionRow

__all__ = [
    "DECISION_COLUMNS",
    "EPISODE_COLUMNS",
    "FEEDBACK_COLUMNS",
    "EncodedBatch",
    "ExperienceWriter",
    "encode_batch",
    "existing_decision_ids",
    "join_encoded",
    "write_experience",
]


def _dumps(value: object) -> str:
    """Strict JSON text: orjson when it can, the json module for what orjson cannot encode
    (integers beyond 64 bits); NaN and infinities raise ValueError (orjson would write null)."""
    try:
        text = orjson.dumps(value)
    except orjson.JSONEncodeError:
        return json.dumps(value, allow_nan=False, separators=(",", ":"))
    if b"null" in text and _has_non_finite(value):
        raise ValueError(f"JSON value {value!r:.80} holds NaN or an infinite number")
    return text.decode()


def _has_non_finite(value: object) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_has_non_finite(item) for item in value.values())
    if isinstance(value, list | tuple):
        return any(_has_non_finite(item) for item in value)
    return False


EPISODE_COLUMNS = (
    "id", "agent_id", "started_at", "ended_at", "status", "episode_return", "length", "error",
)  # fmt: skip


class _Encoder:
    """Encodes the values that repeat across a batch once: a decision and its reward share
    their ``created_at``, and an agent's decisions share one ``actions`` tuple."""

    __slots__ = ("_actions", "_actions_text", "_moment", "_moment_text")

    def __init__(self) -> None:
        self._actions: object = None
        self._actions_text = ""
        self._moment: datetime | None = None
        self._moment_text = ""

    def actions(self, actions: tuple[str, ...]) -> str:
        if actions is not self._actions:
            self._actions_text = _dumps(actions)
            self._actions = actions
        return self._actions_text

    def sqlite_time(self, value: datetime) -> str:
        if value is not self._moment:
            moment = value if value.tzinfo is UTC else value.astimezone(UTC)
            self._moment_text = moment.isoformat(" ", "microseconds")[:26]
            self._moment = value
        return self._moment_text


def _sqlite_time(value: datetime | None) -> str | None:
    """The text SQLAlchemy's SQLite DateTime stores: always with microseconds, in UTC."""
    if value is None:
        return None
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.isoformat(" ", "microseconds")[:26]


def _hex(value: int | None) -> str | None:
    return None if value is None else f"{value:032x}"


def _json(value: object) -> str | None:
    return None if value is None else _dumps(value)


def _same(value: datetime) -> datetime:
    return value


_Time = Callable[[datetime], object]


def _text(value: object) -> str | None:
    """A JSON column's text: flat records carry it already (a str), models a dict."""
    return value if value is None or type(value) is str else _dumps(value)


# Rows are built from the flat values of agentrt.storage.flat (a model's values are flattened
# first; its JSON fields are then dicts, which are encoded here). PostgreSQL rows carry ids as
# hex text too, which asyncpg parses in C: a uuid.UUID costs a call of its Python ``bytes``
# property per id.


def _decision_row(time: _Time, encode: _Encoder, values: tuple[Any, ...]) -> tuple[object, ...]:
    (
        id_, agent_id, episode_id, step, created_at, context, actions, action, action_index,
        propensity, probabilities, policy_version, exploration, mode, policy_action,
    ) = values  # fmt: skip
    return (
        f"{id_:032x}", agent_id, _hex(episode_id), step, time(created_at), _text(context),
        encode.actions(actions), action, action_index, propensity, _json(probabilities),
        policy_version, _text(exploration), mode, policy_action,
    )  # fmt: skip


def _feedback_row(time: _Time, values: tuple[Any, ...]) -> tuple[object, ...]:
    id_, decision_id, kind, reward, outcome, source, created_at = values
    return (
        f"{id_:032x}", f"{decision_id:032x}", kind, reward, _text(outcome), source,
        time(created_at),
    )  # fmt: skip


def _episode_row(sqlite: bool, e: Episode) -> tuple[object, ...]:
    started, ended = (
        (_sqlite_time(e.started_at), _sqlite_time(e.ended_at))
        if sqlite
        else (e.started_at, e.ended_at)
    )
    return (
        f"{e.id.int:032x}", e.agent_id, started, ended, e.status, e.episode_return, e.length,
        e.error,
    )  # fmt: skip


# Multi-row INSERTs: one statement binds its values and runs with one release of the GIL by the
# driver's thread, where executemany releases and takes it back once per row (and waits for it
# while the event loop's thread runs Python). Statements hold a power of two of rows, at most
# 2,048 (30,720 values with the 15 columns of decisions: SQLite's default limit is 32,766), so
# that a handful of statement texts serve every batch from the connection's statement cache.
_SQLITE_MAX_ROWS_LOG2 = 11


@functools.lru_cache(maxsize=64)
def _sqlite_insert_rows(table: str, columns: tuple[str, ...], count: int) -> str:
    row = "(" + ", ".join("?" for _ in columns) + ")"
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES "  # noqa: S608 (fixed names)
        + ", ".join(row for _ in range(count))
        + " ON CONFLICT (id) DO NOTHING"
    )


def _sqlite_statements(
    table: str, columns: Sequence[str], rows: list[tuple[object, ...]]
) -> list[tuple[str, list[object]]]:
    """Multi-row INSERT statements and their flat parameters for ``rows``."""
    names = tuple(columns)
    statements = []
    start = 0
    for power in range(_SQLITE_MAX_ROWS_LOG2, -1, -1):
        size = 1 << power
        while len(rows) - start >= size:
            chunk = rows[start : start + size]
            statements.append(
                (_sqlite_insert_rows(table, names, size), list(itertools.chain(*chunk)))
            )
            start += size
    return statements


def _sqlite_write_batch(connection: sqlite3.Connection, encoded: EncodedBatch) -> None:
    """The batch and its commit, in the driver's thread."""
    try:
        for table, columns, rows in encoded:
            for statement, parameters in _sqlite_statements(table, columns, rows):
                connection.execute(statement, parameters)
        connection.commit()
    except BaseException:
        connection.rollback()
        raise


async def _sqlite_write(driver: Any, encoded: EncodedBatch) -> None:
    """Write the batch in one transaction on an aiosqlite connection.

    aiosqlite runs each call in the connection's thread and hands its result back through the
    event loop; the whole batch goes as one call through its ``_execute`` (not public API,
    present since its first releases). A version without it gets the same statements one
    call at a time (which waits for the event loop between statements).
    """
    run_in_thread = getattr(driver, "_execute", None)
    connection = getattr(driver, "_connection", None)
    if run_in_thread is not None and isinstance(connection, sqlite3.Connection):
        await run_in_thread(_sqlite_write_batch, connection, encoded)
        return
    for table, columns, rows in encoded:
        for statement, parameters in _sqlite_statements(table, columns, rows):
            await driver.execute(statement, parameters)
    await driver.commit()


EncodedBatch = list[tuple[str, Sequence[str], list[tuple[object, ...]]]]
"""A batch as its driver takes it: (table, columns, rows) per table that has rows."""

_TABLE_ORDER = {"decisions": 0, "feedback": 1, "episodes": 2}


def encode_batch(
    dialect: str,
    decisions: Sequence[Decision],
    feedback: Sequence[Feedback],
    episodes: Sequence[Episode] = (),
    flat_records: Sequence[flat.FlatRecord] = (),
) -> EncodedBatch:
    """Encode a batch for :meth:`ExperienceWriter.write_encoded`: models, and the flat records
    of :mod:`agentrt.storage.flat` (the same rows as their models would give).

    Raises:
        StorageError: a record's JSON fields cannot be stored (not transient).
    """
    sqlite = dialect == "sqlite"
    encoder = _Encoder()
    time: _Time = encoder.sqlite_time if sqlite else _same
    try:
        decision_rows = [_decision_row(time, encoder, flat.decision_values(d)) for d in decisions]
        feedback_rows = [_feedback_row(time, flat.feedback_values(f)) for f in feedback]
        for entry in flat_records:
            if entry[0] is flat.EXECUTION:
                decision_rows.append(_decision_row(time, encoder, entry[1:16]))
                feedback_rows.append(_feedback_row(time, entry[16:23]))
            else:
                feedback_rows.append(_feedback_row(time, entry[1:8]))
        episode_rows = [_episode_row(sqlite, e) for e in episodes]
    except (TypeError, ValueError) as exc:
        raise StorageError(f"a record cannot be stored as JSON: {exc}", transient=False) from exc
    return [
        (table, columns, rows)
        for table, columns, rows in (
            ("decisions", DECISION_COLUMNS, decision_rows),
            ("feedback", FEEDBACK_COLUMNS, feedback_rows),
            ("episodes", EPISODE_COLUMNS, episode_rows),
        )
        if rows
    ]


def join_encoded(first: EncodedBatch, second: EncodedBatch) -> EncodedBatch:
    """One batch of both batches' rows (tables in the same order)."""
    rows: dict[str, tuple[Sequence[str], list[tuple[object, ...]]]] = {}
    for table, columns, table_rows in (*first, *second):
        if table in rows:
            rows[table][1].extend(table_rows)
        else:
            rows[table] = (columns, list(table_rows))
    return [
        (table, columns, table_rows)
        for table, (columns, table_rows) in sorted(
            rows.items(), key=lambda item: _TABLE_ORDER[item[0]]
        )
    ]


async def write_experience(
    db: Database,
    decisions: Sequence[Decision],
    feedback: Sequence[Feedback],
    episodes: Sequence[Episode] = (),
    *,
    fresh: bool = True,
) -> None:
    """Write one batch in one transaction, on a connection from the pool; ids already stored
    are skipped.

    Args:
        db: the database.
        decisions, feedback, episodes: the batch.
        fresh: whether the ids are probably new (the first attempt at a batch). PostgreSQL
            then copies the rows straight into their tables and falls back to the staging
            path only when an id turns out to be stored; a retry or a replay passes False and
            takes the staging path at once. The result is the same either way.

    Raises:
        StorageError: the database refused or could not be reached; nothing of the batch is
            committed.
    """
    encoded = encode_batch(db.dialect, decisions, feedback, episodes)
    if not encoded:
        return
    async with db.connect() as connection:
        raw = await connection.get_raw_connection()
        driver: Any = raw.driver_connection
        if db.dialect == "sqlite":
            await _sqlite_write(driver, encoded)
        else:
            await _pg_write(driver, encoded, fresh=fresh)


class ExperienceWriter:
    """Writes batches as :func:`write_experience` does, on one connection kept between them.

    A connection checked out of the pool for every batch costs the pool's liveness ping (three
    round trips on PostgreSQL) and its bookkeeping, a large share of a small batch's time
    (sync mode writes one batch per group commit). The writer pays them once. Whenever a
    write fails the connection is dropped; a batch that fails on a connection kept from an
    earlier batch with a transient error (a server restart, an idle timeout: what the ping
    would have caught) is tried once more, at once, on a new connection.

    Args:
        db: the database.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self._connection: AsyncConnection | None = None

    async def write(
        self,
        decisions: Sequence[Decision],
        feedback: Sequence[Feedback],
        episodes: Sequence[Episode] = (),
        *,
        fresh: bool = True,
    ) -> None:
        """Write one batch in one transaction; see :func:`write_experience`.

        Raises:
            StorageError: the database refused or could not be reached; nothing of the batch
                is committed.
        """
        await self.write_encoded(
            encode_batch(self.db.dialect, decisions, feedback, episodes), fresh=fresh
        )

    async def write_encoded(self, encoded: EncodedBatch, *, fresh: bool = True) -> None:
        """Write a batch :func:`encode_batch` encoded, as :meth:`write` does.

        Raises:
            StorageError: the database refused or could not be reached; nothing of the batch
                is committed.
        """
        if not encoded:
            return
        kept = self._connection is not None
        try:
            await self._write(encoded, fresh=fresh)
        except StorageError as exc:
            if not (kept and exc.transient):
                raise
            # The attempt may have committed before the connection broke: no fast path.
            await self._write(encoded, fresh=False)

    async def _write(self, encoded: EncodedBatch, *, fresh: bool) -> None:
        with storage_errors(self.db.masked_url):
            if self._connection is None:
                self._connection = await self.db.engine.connect()
            connection = self._connection
            try:
                raw = await connection.get_raw_connection()
                driver: Any = raw.driver_connection
                if self.db.dialect == "sqlite":
                    await _sqlite_write(driver, encoded)
                else:
                    await _pg_write(driver, encoded, fresh=fresh)
            except BaseException:
                # Whatever state the connection is in (an open transaction, a broken socket),
                # nobody uses it again.
                self._connection = None
                with anyio.CancelScope(shield=True):
                    await connection.invalidate()
                    await connection.close()
                raise

    async def close(self) -> None:
        """Return the connection to the pool."""
        connection, self._connection = self._connection, None
        if connection is not None:
            with anyio.CancelScope(shield=True), storage_errors(self.db.masked_url):
                await connection.close()


async def _pg_write(driver: Any, encoded: EncodedBatch, *, fresh: bool) -> None:
    if fresh and await _pg_copy(driver, encoded):
        return
    # Statements on the raw driver bypass SQLAlchemy's lazy BEGIN: open our own
    # transaction so that the batch commits (or fails) as one.
    async with driver.transaction():
        for table, columns, rows in encoded:
            await _pg_copy_upsert(driver, table, columns, rows)


async def _pg_copy(driver: Any, groups: EncodedBatch) -> bool:
    """COPY the batch straight into its tables; False (nothing written) when an id is stored."""
    from asyncpg.exceptions import UniqueViolationError

    try:
        if len(groups) == 1:  # one statement commits or fails on its own
            table, columns, rows = groups[0]
            await driver.copy_records_to_table(table, records=rows, columns=columns)
        else:
            async with driver.transaction():
                for table, columns, rows in groups:
                    await driver.copy_records_to_table(table, records=rows, columns=columns)
    except UniqueViolationError:
        return False
    return True


async def _pg_copy_upsert(
    driver: Any, table: str, columns: Sequence[str], rows: list[tuple[object, ...]]
) -> None:
    stage = f"agentrt_stage_{table}"
    names = ", ".join(columns)
    # A per-connection temporary table that empties itself at every commit.
    await driver.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS {stage} "
        f"(LIKE {table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
    )
    await driver.copy_records_to_table(stage, records=rows, columns=list(columns))
    await driver.execute(
        f"INSERT INTO {table} ({names}) SELECT {names} FROM {stage} "  # noqa: S608 (fixed names)
        "ON CONFLICT (id) DO NOTHING"
    )


async def existing_decision_ids(db: Database, ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    """The subset of ``ids`` that are stored decisions."""
    found: set[uuid.UUID] = set()
    async with db.session() as session:
        for start in range(0, len(ids), 500):
            chunk = list(ids[start : start + 500])
            query = select(DecisionRow.id).where(DecisionRow.id.in_(chunk))
            found.update((await session.execute(query)).scalars())
    return found
