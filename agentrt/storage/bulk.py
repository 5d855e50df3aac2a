"""The collector's write path: experience batches through each driver's fastest idempotent path.

SQLite: ``executemany`` of ``INSERT ... ON CONFLICT(id) DO NOTHING`` on the raw connection, in one
transaction per batch. PostgreSQL: ``COPY`` into a temporary staging table, then
``INSERT ... SELECT ... ON CONFLICT (id) DO NOTHING`` in the same transaction. Rows are encoded
exactly as SQLAlchemy's column types encode them, so the ORM and the ``experience`` view read
them back unchanged.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import select

from agentrt.errors import StorageError
from agentrt.schemas import Decision, Episode, Feedback
from agentrt.storage.engine import Database
from agentrt.storage.tables import DecisionRow

__all__ = ["existing_decision_ids", "write_experience"]


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


DECISION_COLUMNS = (
    "id", "agent_id", "episode_id", "step", "created_at", "context", "actions", "action",
    "action_index", "propensity", "probabilities", "policy_version", "exploration", "mode",
    "policy_action",
)  # fmt: skip
FEEDBACK_COLUMNS = ("id", "decision_id", "kind", "reward", "outcome", "source", "created_at")
EPISODE_COLUMNS = (
    "id", "agent_id", "started_at", "ended_at", "status", "episode_return", "length", "error",
)  # fmt: skip
_JSON_COLUMNS = frozenset({"context", "actions", "probabilities", "exploration", "outcome"})


def _sqlite_time(value: datetime | None) -> str | None:
    """The text SQLAlchemy's SQLite DateTime stores: always with microseconds, in UTC."""
    if value is None:
        return None
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.isoformat(" ", "microseconds")[:26]


def _sqlite_uuid(value: uuid.UUID | None) -> str | None:
    return None if value is None else value.hex


def _json(value: object) -> str | None:
    return None if value is None else _dumps(value)


def _sqlite_decision(d: Decision) -> tuple[object, ...]:
    return (
        d.id.hex, d.agent_id, _sqlite_uuid(d.episode_id), d.step, _sqlite_time(d.created_at),
        _dumps(d.context), _dumps(d.actions), d.action, d.action_index, d.propensity,
        _json(d.probabilities), d.policy_version, _json(d.exploration), d.mode, d.policy_action,
    )  # fmt: skip


def _sqlite_feedback(f: Feedback) -> tuple[object, ...]:
    return (
        f.id.hex, f.decision_id.hex, f.kind, f.reward, _json(f.outcome), f.source,
        _sqlite_time(f.created_at),
    )  # fmt: skip


def _sqlite_episode(e: Episode) -> tuple[object, ...]:
    return (
        e.id.hex, e.agent_id, _sqlite_time(e.started_at), _sqlite_time(e.ended_at), e.status,
        e.episode_return, e.length, e.error,
    )  # fmt: skip


def _pg_decision(d: Decision) -> tuple[object, ...]:
    return (
        d.id, d.agent_id, d.episode_id, d.step, d.created_at, _dumps(d.context), _dumps(d.actions),
        d.action, d.action_index, d.propensity, _json(d.probabilities), d.policy_version,
        _json(d.exploration), d.mode, d.policy_action,
    )  # fmt: skip


def _pg_feedback(f: Feedback) -> tuple[object, ...]:
    return (f.id, f.decision_id, f.kind, f.reward, _json(f.outcome), f.source, f.created_at)


def _pg_episode(e: Episode) -> tuple[object, ...]:
    return (
        e.id, e.agent_id, e.started_at, e.ended_at, e.status, e.episode_return, e.length, e.error,
    )  # fmt: skip


def _sqlite_insert(table: str, columns: Sequence[str]) -> str:
    marks = ", ".join("?" for _ in columns)
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks}) "  # noqa: S608 (fixed names)
        "ON CONFLICT (id) DO NOTHING"
    )


_SQLITE_PLAN: tuple[tuple[str, Sequence[str], Callable[[Any], tuple[object, ...]], int], ...] = (
    ("decisions", DECISION_COLUMNS, _sqlite_decision, 0),
    ("feedback", FEEDBACK_COLUMNS, _sqlite_feedback, 1),
    ("episodes", EPISODE_COLUMNS, _sqlite_episode, 2),
)
_PG_PLAN: tuple[tuple[str, Sequence[str], Callable[[Any], tuple[object, ...]], int], ...] = (
    ("decisions", DECISION_COLUMNS, _pg_decision, 0),
    ("feedback", FEEDBACK_COLUMNS, _pg_feedback, 1),
    ("episodes", EPISODE_COLUMNS, _pg_episode, 2),
)


async def write_experience(
    db: Database,
    decisions: Sequence[Decision],
    feedback: Sequence[Feedback],
    episodes: Sequence[Episode] = (),
) -> None:
    """Write one batch in one transaction; ids already stored are skipped.

    Raises:
        StorageError: the database refused or could not be reached; nothing of the batch is
            committed.
    """
    groups: tuple[Sequence[Any], ...] = (decisions, feedback, episodes)
    if not any(groups):
        return
    plan = _SQLITE_PLAN if db.dialect == "sqlite" else _PG_PLAN
    try:
        encoded = [
            (table, columns, [encode(r) for r in groups[index]])
            for table, columns, encode, index in plan
            if groups[index]
        ]
    except (TypeError, ValueError) as exc:
        raise StorageError(f"a record cannot be stored as JSON: {exc}", transient=False) from exc
    async with db.connect() as connection:
        raw = await connection.get_raw_connection()
        driver: Any = raw.driver_connection
        if db.dialect == "sqlite":
            for table, columns, rows in encoded:
                await driver.executemany(_sqlite_insert(table, columns), rows)
        else:
            # Statements on the raw driver bypass SQLAlchemy's lazy BEGIN: open our own
            # transaction so that the batch commits (or fails) as one.
            async with driver.transaction():
                for table, columns, rows in encoded:
                    await _pg_copy_upsert(driver, table, columns, rows)


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
