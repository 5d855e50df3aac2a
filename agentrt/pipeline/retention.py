"""Retention: old experience is deleted in bounded batches, after a Parquet archive if asked.

With ``experience_configuration.retention.policy: time_based``, the *cutoff* is ``now -
retention.duration`` and these rows go:

- decisions created before the cutoff, with their feedback (rewards and activations);
- episodes that ended before the cutoff and have no decisions left;
- knowledge rows whose window ended before the cutoff (created before it, when windowless);
- metrics recorded before the cutoff.

Policy versions and strategy updates are the history of what served and why; they are kept
however old. Feedback that names no stored decision (an orphan, or a reward that arrived after
its decision was pruned) is kept too: it is not part of any experience row.

Batches. Decisions go one agent at a time, oldest first, at most :data:`BATCH_ROWS` per batch;
each batch is one transaction that reads the batch's ids, archives it, deletes its feedback and
its decisions and commits. A prune of millions of rows therefore holds one batch in memory and
never one long transaction. The other tables are deleted in batches of the same size.

Archive. With ``experience_configuration.collection.storage_format: parquet``, every batch is
first written as experience rows (the columns of the ``experience`` view: the decision, its
combined reward, the latest outcome, the feedback count and the activation time; individual
feedback events are folded into them) to
``<archive_dir>/agent_id=<agent>/<first created_at>-<uuid>.parquet``, compressed as
``retention.compression`` says. The file is written under a hidden temporary name, fsynced and
renamed, and only then are the rows deleted: a write that fails deletes nothing and raises
:class:`~agentrt.errors.StorageError`. A relative ``archive_dir`` is relative to the working
directory of the process, like a relative SQLite path. The columns and their types are those of
``agentrt export --format parquet``; read a whole archive with
``pyarrow.parquet.read_table(archive_dir, partitioning=None)`` (the files carry ``agent_id``
themselves). Episodes, knowledge and metrics are not archived: steps and returns are in the
archived experience (``episode_id``, ``step``, ``reward``), knowledge is recomputed from
experience, and metrics are operational.

Concurrency. Runs are idempotent, and safe beside ingestion: new rows are newer than the cutoff,
and feedback is deleted by the ids read before the batch was archived, so a late reward is never
deleted unarchived. On PostgreSQL concurrent prunes take disjoint batches (``FOR UPDATE SKIP
LOCKED``); on SQLite run one prune at a time, or a batch may be archived twice. A batch whose
file was written but whose delete then failed is archived again by the next run, so readers of
an archive should treat ``decision_id`` as the key.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeAlias
from urllib.parse import quote

import anyio
from sqlalchemy import (
    JSON,
    Float,
    Integer,
    Select,
    Text,
    and_,
    cast,
    delete,
    func,
    select,
)
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from agentrt.config import AgentRTConfig
from agentrt.errors import AgentRTError, InvalidInputError, StorageError
from agentrt.log import get_logger
from agentrt.storage.engine import Database
from agentrt.storage.tables import (
    DecisionRow,
    EpisodeRow,
    FeedbackRow,
    KnowledgeRow,
    MetricRow,
    UTCDateTime,
    experience_view,
)

__all__ = [
    "BATCH_ROWS",
    "EXPERIENCE_COLUMNS",
    "TABLES",
    "RetentionProgress",
    "RetentionReport",
    "apply_retention",
    "arrow_columns",
    "arrow_schema",
    "count_expired",
    "retention_cutoff",
]

log = get_logger(__name__)

BATCH_ROWS = 5_000
# Ids per `IN (...)` list: far below the bound-parameter limits of SQLite and asyncpg (32766).
_IDS_PER_STATEMENT = 1_000
TABLES = ("decisions", "feedback", "episodes", "knowledge", "metrics")
EXPERIENCE_COLUMNS = tuple(column.name for column in experience_view.columns)
_JSON_COLUMNS = frozenset(
    column.name for column in experience_view.columns if isinstance(column.type, JSON)
)

RetentionProgress = Callable[[str, int], None]
"""Called after each committed batch with a table name and the rows just deleted from it."""


@dataclass
class RetentionReport:
    """What one retention run archived and deleted (for a dry run: what it would).

    Attributes:
        cutoff: rows older than this went; None when the policy is ``none``.
        deleted: rows deleted per table, every table of :data:`TABLES` included.
        archived: rows written to Parquet per table (``decisions``, one experience row each,
            and ``feedback``, folded into them); empty when there is no archive.
        files: the Parquet files written, oldest batch of each agent first.
        archive_dir: the absolute archive directory, or None when there is no archive.
        seconds: how long the run took.
        dry_run: True when nothing was changed (:func:`count_expired`).
    """

    cutoff: datetime | None
    deleted: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))
    archived: dict[str, int] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    archive_dir: Path | None = None
    seconds: float = 0.0
    dry_run: bool = False

    @property
    def total_deleted(self) -> int:
        """Rows deleted from every table together."""
        return sum(self.deleted.values())

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON values, for a log line or ``metrics.details`` (files counted)."""
        return {
            "cutoff": None if self.cutoff is None else self.cutoff.isoformat(),
            "deleted": dict(self.deleted),
            "archived": dict(self.archived),
            "files": len(self.files),
            "archive_dir": None if self.archive_dir is None else str(self.archive_dir),
            "seconds": round(self.seconds, 3),
            "dry_run": self.dry_run,
        }


def retention_cutoff(config: AgentRTConfig, now: datetime) -> datetime | None:
    """The time before which experience goes, or None when the policy is ``none``.

    Raises:
        InvalidInputError: ``now`` is a naive datetime.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise InvalidInputError("now", now, "must be an aware datetime (UTC)")
    retention = config.experience_configuration.retention
    if retention.policy == "none":
        return None
    return now.astimezone(UTC) - retention.duration


async def apply_retention(
    db: Database,
    config: AgentRTConfig,
    now: datetime,
    *,
    progress: RetentionProgress | None = None,
) -> RetentionReport:
    """Archive (when configured) and delete the experience that the retention policy expires.

    Policy versions and strategy updates are history and are never deleted. See the module
    documentation for what goes, the archive layout and the guarantees.

    Args:
        db: the database.
        config: the configuration (``experience_configuration.retention`` and
            ``experience_configuration.collection.storage_format``).
        now: the current time (aware); the cutoff is ``now - retention.duration``.
        progress: called after each committed batch (see :data:`RetentionProgress`).

    Returns:
        What was archived and deleted; with policy ``none``, an empty report.

    Raises:
        StorageError: the database failed, or an archive file could not be written (that
            batch and every later one are left in place; earlier batches stay deleted).
        AgentRTError: the archive is configured but pyarrow is not installed (nothing deleted).
        InvalidInputError: ``now`` is a naive datetime.
    """
    started = time.perf_counter()
    cutoff = retention_cutoff(config, now)
    report = RetentionReport(cutoff)
    if cutoff is None:
        return report
    archive = _Archive.from_config(config)
    if archive is not None:
        report.archive_dir = archive.directory
        report.archived = {"decisions": 0, "feedback": 0}
    advance = progress or _ignore_progress
    for agent_id in await _agents_with_decisions_before(db, cutoff):
        selected = BATCH_ROWS
        while selected == BATCH_ROWS:
            batch = await _prune_decisions(db, agent_id, cutoff, archive)
            selected = batch.selected
            report.deleted["decisions"] += batch.decisions
            report.deleted["feedback"] += batch.feedback
            if batch.path is not None:
                report.archived["decisions"] += batch.selected
                report.archived["feedback"] += batch.feedback
                report.files.append(batch.path)
            advance("decisions", batch.decisions)
            advance("feedback", batch.feedback)
    for table, entity, expired in _expired_rows(cutoff):
        deleted = BATCH_ROWS
        while deleted == BATCH_ROWS:
            deleted = await _delete_batch(db, entity, expired)
            report.deleted[table] += deleted
            advance(table, deleted)
    report.seconds = time.perf_counter() - started
    # The caller (the learning loop, `agentrt prune`) reports the run; this is for debugging.
    log.debug("retention_done", **report.as_dict())
    return report


async def count_expired(db: Database, config: AgentRTConfig, now: datetime) -> RetentionReport:
    """What :func:`apply_retention` would archive and delete now, changing nothing.

    Raises:
        StorageError: the database failed.
        InvalidInputError: ``now`` is a naive datetime.
    """
    started = time.perf_counter()
    cutoff = retention_cutoff(config, now)
    report = RetentionReport(cutoff, dry_run=True)
    if cutoff is None:
        return report
    d, f, e = DecisionRow, FeedbackRow, EpisodeRow
    kept = select(d.id).where(d.episode_id == e.id, d.created_at >= cutoff).exists()
    queries: dict[str, Select[Any]] = {
        "decisions": select(func.count()).where(d.created_at < cutoff),
        "feedback": select(func.count())
        .select_from(f)
        .join(d, d.id == f.decision_id)
        .where(d.created_at < cutoff),
        # Episodes whose decisions all go now go too.
        "episodes": select(func.count()).where(e.ended_at < cutoff, ~kept),
    }
    for table, entity, expired in _expired_rows(cutoff)[1:]:  # knowledge, metrics
        queries[table] = select(func.count()).select_from(entity).where(expired)
    async with db.connect() as connection:
        for table, query in queries.items():
            report.deleted[table] = int((await connection.execute(query)).scalar_one())
    if config.experience_configuration.collection.storage_format == "parquet":
        report.archive_dir = _archive_directory(config)
        report.archived = {table: report.deleted[table] for table in ("decisions", "feedback")}
    report.seconds = time.perf_counter() - started
    return report


# -- decisions and feedback ------------------------------------------------------------------


@dataclass(frozen=True)
class _Batch:
    selected: int
    decisions: int
    feedback: int
    path: Path | None


def _ignore_progress(table: str, rows: int) -> None:
    """The default progress callback: nobody is watching."""


def _chunks(ids: Sequence[uuid.UUID]) -> Iterator[Sequence[uuid.UUID]]:
    for start in range(0, len(ids), _IDS_PER_STATEMENT):
        yield ids[start : start + _IDS_PER_STATEMENT]


async def _agents_with_decisions_before(db: Database, cutoff: datetime) -> list[str]:
    query = (
        select(DecisionRow.agent_id)
        .where(DecisionRow.created_at < cutoff)
        .distinct()
        .order_by(DecisionRow.agent_id)
    )
    async with db.connect() as connection:
        return list((await connection.execute(query)).scalars())


async def _prune_decisions(
    db: Database, agent_id: str, cutoff: datetime, archive: _Archive | None
) -> _Batch:
    """One batch of an agent's oldest expired decisions: read, archive, delete, commit."""
    d, f = DecisionRow, FeedbackRow
    oldest = (
        select(d.id, d.created_at)
        .where(d.agent_id == agent_id, d.created_at < cutoff)
        .order_by(d.created_at, d.id)
        .limit(BATCH_ROWS)
        .with_for_update(skip_locked=True)  # PostgreSQL: concurrent prunes take other rows
    )
    async with db.connect() as connection:
        rows = (await connection.execute(oldest)).all()
        if not rows:
            return _Batch(0, 0, 0, None)
        decision_ids = [row.id for row in rows]
        # Read before the experience rows: a reward committed in between is archived (in the
        # combined reward) but not deleted, never the reverse.
        feedback_ids: list[uuid.UUID] = []
        for chunk in _chunks(decision_ids):
            feedback_ids += (
                await connection.execute(select(f.id).where(f.decision_id.in_(chunk)))
            ).scalars()
        path = None
        if archive is not None:
            experience: list[RowMapping] = []
            for chunk in _chunks(decision_ids):
                experience += (await connection.execute(_experience_of(chunk))).mappings()
            path = await archive.write(agent_id, rows[0].created_at, experience)
        deleted_feedback = await _delete_ids(connection, f, feedback_ids)
        deleted_decisions = await _delete_ids(connection, d, decision_ids)
    log.debug(
        "retention_batch",
        agent=agent_id,
        decisions=deleted_decisions,
        feedback=deleted_feedback,
        file=None if path is None else str(path),
    )
    return _Batch(len(decision_ids), deleted_decisions, deleted_feedback, path)


async def _delete_ids(
    connection: AsyncConnection,
    entity: type[DecisionRow] | type[FeedbackRow],
    ids: Sequence[uuid.UUID],
) -> int:
    deleted = 0
    for chunk in _chunks(ids):
        result = await connection.execute(delete(entity).where(entity.id.in_(chunk)))
        deleted += result.rowcount
    return deleted


def _experience_of(decision_ids: Sequence[uuid.UUID]) -> Select[Any]:
    """The ``experience`` view's rows of these decisions, oldest first (JSON columns as JSON
    text). The view reads the feedback of the selected decisions only, so a batch costs what
    its own rows cost however large the database is."""
    view = experience_view
    columns = [
        cast(column, Text).label(column.name) if column.name in _JSON_COLUMNS else column
        for column in view.columns
    ]
    return (
        select(*columns)
        .where(view.c.decision_id.in_(decision_ids))
        .order_by(view.c.created_at, view.c.decision_id)
    )


# -- episodes, knowledge, metrics ------------------------------------------------------------


_Entity: TypeAlias = type[EpisodeRow] | type[KnowledgeRow] | type[MetricRow]


def _expired_rows(cutoff: datetime) -> list[tuple[str, _Entity, ColumnElement[bool]]]:
    e, k, m = EpisodeRow, KnowledgeRow, MetricRow
    remaining = select(DecisionRow.id).where(DecisionRow.episode_id == e.id).exists()
    return [
        ("episodes", e, and_(e.ended_at < cutoff, ~remaining)),
        ("knowledge", k, func.coalesce(k.window_end, k.created_at) < cutoff),
        ("metrics", m, m.created_at < cutoff),
    ]


async def _delete_batch(db: Database, entity: _Entity, expired: ColumnElement[bool]) -> int:
    # No ORDER BY: none of these tables has an index on its time alone, and the oldest rows
    # come first in a scan anyway.
    batch = select(entity.id).where(expired).limit(BATCH_ROWS)
    async with db.connect() as connection:
        result = await connection.execute(delete(entity).where(entity.id.in_(batch)))
    return result.rowcount


# -- the Parquet archive ---------------------------------------------------------------------


def _pyarrow() -> tuple[Any, Any]:
    """pyarrow and pyarrow.parquet, imported when an archive is written (an optional extra)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise AgentRTError(
            "the Parquet archive (experience_configuration.collection.storage_format: parquet) "
            "needs pyarrow: pip install 'agentrt[parquet]'; nothing was deleted"
        ) from None
    return pa, pq


def _arrow_type(pa: Any, column_type: object) -> Any:
    if isinstance(column_type, UTCDateTime):
        return pa.timestamp("us", tz="UTC")
    if isinstance(column_type, Integer):
        return pa.int64()
    if isinstance(column_type, Float):
        return pa.float64()
    return pa.string()  # ids, names, and JSON documents as JSON text


def arrow_schema() -> Any:
    """The Arrow schema of experience rows: the ``experience`` view's columns in order, times
    as UTC microsecond timestamps, ids as strings and JSON documents as JSON text.

    Raises:
        AgentRTError: pyarrow is not installed.
    """
    pa, _ = _pyarrow()
    return pa.schema(
        [(column.name, _arrow_type(pa, column.type)) for column in experience_view.columns]
    )


def _arrow_value(value: object) -> object:
    if value is None or isinstance(value, int | float | str | datetime):
        return value
    return str(value)  # UUIDs


def arrow_columns(rows: Sequence[RowMapping]) -> dict[str, list[object]]:
    """Experience rows (JSON columns read as text) as columns for :func:`arrow_schema`."""
    return {name: [_arrow_value(row[name]) for row in rows] for name in EXPERIENCE_COLUMNS}


def _archive_directory(config: AgentRTConfig) -> Path:
    return Path(config.experience_configuration.retention.archive_dir).expanduser().absolute()


def _fsync_directory(path: Path) -> None:
    """Make a rename in ``path`` durable (POSIX; elsewhere the rename is all there is)."""
    if os.name != "posix":
        return
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@dataclass(frozen=True)
class _Archive:
    """Where and how batches are archived before they are deleted."""

    directory: Path
    compression: str | None

    @classmethod
    def from_config(cls, config: AgentRTConfig) -> _Archive | None:
        """The configured archive, or None when experience is stored in the database only."""
        if config.experience_configuration.collection.storage_format != "parquet":
            return None
        _pyarrow()  # fail before the first batch, not after it
        compression = config.experience_configuration.retention.compression
        return cls(_archive_directory(config), None if compression == "none" else compression)

    async def write(self, agent_id: str, first: datetime, rows: Sequence[RowMapping]) -> Path:
        """Write one batch durably (fsync, rename, fsync of the folder) and return its path.

        Raises:
            StorageError: the file could not be written; nothing of it is left behind.
        """
        return await anyio.to_thread.run_sync(self._write, agent_id, first, rows)

    def _write(self, agent_id: str, first: datetime, rows: Sequence[RowMapping]) -> Path:
        pa, pq = _pyarrow()
        # Hive-style partition folders, percent-encoded as pyarrow's partitioning decodes them.
        folder = self.directory / f"agent_id={quote(agent_id, safe='')}"
        name = f"{first.astimezone(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex}.parquet"
        path = folder / name
        # Hidden, so that dataset readers skip it until it is complete.
        staging = folder / f".{name}.partial"
        try:
            table = pa.Table.from_pydict(arrow_columns(rows), schema=arrow_schema())
            folder.mkdir(parents=True, exist_ok=True)
            with staging.open("wb") as file:
                pq.write_table(table, file, compression=self.compression)
                file.flush()
                os.fsync(file.fileno())
            staging.replace(path)
            _fsync_directory(folder)
        except (OSError, pa.ArrowException) as exc:
            with contextlib.suppress(OSError):
                staging.unlink(missing_ok=True)
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise StorageError(
                f"cannot write the retention archive {path}: {reason}; nothing of this batch "
                "was deleted (check experience_configuration.retention.archive_dir)"
            ) from exc
        return path
