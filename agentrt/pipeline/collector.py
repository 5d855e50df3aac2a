"""ExperienceCollector: the hot path's bounded buffer and the batched, durable writes behind it.

The application's calls put records into a bounded anyio memory stream and return (buffered
mode) or wait for their commit (sync mode). The collector drains the stream in batches, runs
the configured processors and encodes each batch for its driver while the batch before is being
written; batches that arrive while the writer is busy join the next transaction (up to the
buffer's size). Each transaction is idempotent by id.

The collector writes through one connection that it keeps between batches
(:class:`~agentrt.storage.bulk.ExperienceWriter`). While the database is unreachable the batch
is retried with exponential backoff; when the buffer fills up meanwhile, records go to the
local spill file (fsynced) and are replayed after the database is back. A record the database
refuses for good (it should never happen: inputs are validated first) is written to a
``rejected-*.jsonl`` file beside the spill files, logged and counted. Nothing acknowledged is
lost, and nothing is written twice.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, cast

import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from agentrt.errors import BackpressureError, StorageError
from agentrt.ids import uuid_from_int
from agentrt.log import get_logger
from agentrt.pipeline.spill import ExperienceRecord, SpillDirectory, SpillFile
from agentrt.schemas import Decision, Episode, Feedback, Knowledge
from agentrt.storage import bulk, flat, repositories
from agentrt.storage.engine import Database
from agentrt.types import ExperienceBatch, Processor

__all__ = ["CollectorStats", "ExperienceCollector", "KnownDecisions"]

log = get_logger(__name__)

_BACKOFF_START = 0.05
_BACKOFF_MAX = 5.0


@dataclass
class CollectorStats:
    """Counters of the collector since the runtime started."""

    enqueued: int = 0
    written: int = 0
    batches: int = 0
    retries: int = 0
    spilled: int = 0
    replayed: int = 0
    orphan_feedback: int = 0
    rejected: int = 0
    processor_errors: int = 0


class KnownDecisions:
    """A bounded memory of recent decision ids and their agents: the newest ``capacity`` ids
    at most, and at least the newest ``capacity // 2``.

    Two generations of half the capacity each: when the young one is full it becomes the old
    one and the old one is dropped, so adding costs the same however many ids came before.
    (Evicting the oldest key of one dict, one key per add, costs a scan over every key deleted
    before it: tens of microseconds per call once the memory is full.)

    Ids are kept as their 128-bit integers, with one shared ``(agent_id, mode)`` tuple per
    pair: integers and strings are not tracked by the cyclic garbage collector, so neither
    are these dicts, and a full memory adds nothing to the application's collections (UUID
    objects would be 200,000 more objects in every full collection).
    """

    def __init__(self, capacity: int = 200_000) -> None:
        self.capacity = capacity
        self._generation = max(1, capacity // 2)
        self._young: dict[int, tuple[str, str]] = {}
        self._old: dict[int, tuple[str, str]] = {}
        self._pairs: dict[tuple[str, str], tuple[str, str]] = {}

    def add(self, decision_id: uuid.UUID, agent_id: str, mode: str) -> None:
        pair = (agent_id, mode)
        shared = self._pairs.get(pair)
        if shared is None:
            shared = self._pairs.setdefault(pair, pair) if len(self._pairs) < 4096 else pair
        young = self._young
        young[decision_id.int] = shared
        if len(young) >= self._generation:
            self._old = young
            self._young = {}

    def get(self, decision_id: uuid.UUID) -> tuple[str, str] | None:
        key = decision_id.int
        found = self._young.get(key)
        return found if found is not None else self._old.get(key)

    def has_int(self, key: int) -> bool:
        """Whether the id whose 128-bit integer is ``key`` is known."""
        return key in self._young or key in self._old

    def __contains__(self, decision_id: object) -> bool:
        if not isinstance(decision_id, uuid.UUID):
            return False
        key = decision_id.int
        return key in self._young or key in self._old


@dataclass(slots=True)
class _Waiter:
    """Records whose caller waits for their commit (sync mode, or a flush)."""

    records: Sequence[ExperienceRecord]
    done: anyio.Event
    error: BaseException | None = None


# What the stream carries. Buffered calls send their records without a wrapper: the caller's
# own tuple of models, one model, or a flat record (agentrt.storage.flat) from record() and
# reward().
_Records = tuple[ExperienceRecord, ...] | ExperienceRecord | flat.FlatRecord
_Entry = _Records | _Waiter


def _count(entry: _Records) -> int:
    if isinstance(entry, tuple):
        return flat.size(entry) if flat.is_flat(entry) else len(entry)
    return 1


@dataclass(slots=True)
class _Batch:
    records: list[ExperienceRecord] = field(default_factory=list)
    flat: list[flat.FlatRecord] = field(default_factory=list)
    waiters: list[_Waiter] = field(default_factory=list)
    size: int = 0  # records, flat ones included

    def add(self, entry: _Entry) -> int:
        """Take an entry's records; returns how many."""
        count = 1
        if type(entry) is tuple:
            if entry and type(entry[0]) is str:  # flat.is_flat(), inline: once per record
                self.flat.append(entry)
                count = 2 if entry[0] is flat.EXECUTION else 1
            else:
                self.records += entry
                count = len(entry)
        elif isinstance(entry, _Waiter):
            self.waiters.append(entry)
            self.records += entry.records
            count = len(entry.records)
        else:
            self.records.append(cast("ExperienceRecord", entry))
        self.size += count
        return count

    def materialize(self) -> list[ExperienceRecord]:
        """Every record of the batch as a model; the flat ones become models for good."""
        if self.flat:
            for entry in self.flat:
                self.records += flat.records_of(entry)
            self.flat = []
        return self.records

    @property
    def urgent(self) -> bool:
        """Someone waits on this batch (sync mode or a flush): write without delay."""
        return bool(self.waiters)

    def settle(self, error: BaseException | None = None) -> None:
        for waiter in self.waiters:
            waiter.error = error
            waiter.done.set()


@dataclass(slots=True)
class _Prepared:
    """A batch taken from the stream, processed, and encoded for the driver (None: it cannot
    be encoded as a whole, and goes record by record)."""

    batch: _Batch
    encoded: bulk.EncodedBatch | None

    def join(self, other: _Prepared) -> None:
        """Take ``other``'s records into this batch (one transaction for both)."""
        self.batch.records += other.batch.records
        self.batch.flat += other.batch.flat
        self.batch.waiters += other.batch.waiters
        self.batch.size += other.batch.size
        if self.encoded is None or other.encoded is None:
            self.encoded = None
        else:
            self.encoded = bulk.join_encoded(self.encoded, other.encoded)

    def __len__(self) -> int:
        return self.batch.size


class ExperienceCollector:
    """Buffers experience from the hot path and writes it in batches.

    Args:
        db: the database.
        buffer_size: records held in memory before backpressure applies.
        batch_size: most records written in one transaction.
        flush_interval: longest a buffered record waits before its batch is written (seconds).
        backpressure: ``block`` waits for room when the buffer is full, ``error`` raises
            :class:`BackpressureError`.
        spill: where records go while the database is unreachable and the buffer is full.
        processors: run on every batch, in order, before it is written.
        known: recent decision ids, shared with the runtime (for orphan detection).
    """

    def __init__(
        self,
        db: Database,
        *,
        buffer_size: int,
        batch_size: int,
        flush_interval: float,
        backpressure: Literal["block", "error"],
        spill: SpillDirectory,
        processors: Sequence[Processor] = (),
        known: KnownDecisions | None = None,
    ) -> None:
        self.db = db
        self.buffer_size = buffer_size
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.backpressure = backpressure
        self.spill = spill
        self.rejected = SpillFile(spill.directory / f"rejected-{spill.current.path.stem[6:]}.jsonl")
        self.processors = list(processors)
        self.known = known if known is not None else KnownDecisions()
        # Most records in one transaction when batches waited for the writer.
        self.write_limit = max(batch_size, buffer_size)
        self.stats = CollectorStats()
        self._writer = bulk.ExperienceWriter(db)
        self._send: MemoryObjectSendStream[_Entry]
        self._receive: MemoryObjectReceiveStream[_Entry]
        self._send, self._receive = anyio.create_memory_object_stream[_Entry](buffer_size)
        self._outage_since: float | None = None
        self._closing = False
        self._knowledge: list[Knowledge] = []

    # -- the hot path --------------------------------------------------------------------

    def offer(self, records: _Records) -> bool:
        """Enqueue records (a tuple of them, one record, or an execution) if there is room now
        (no await: the cheapest path).

        Returns:
            False when the buffer is full and ``backpressure`` is ``block`` (call :meth:`submit`).

        Raises:
            BackpressureError: the buffer is full and ``backpressure`` is ``error``.
        """
        try:
            self._send.send_nowait(records)
        except anyio.WouldBlock:
            if self.backpressure == "error":
                raise BackpressureError(
                    f"the experience buffer is full ({self.buffer_size} records): the database "
                    "is not keeping up; raise runtime.buffer_size or use backpressure: block"
                ) from None
            return False
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            raise StorageError("the runtime is closed: experience is no longer accepted") from None
        self.stats.enqueued += _count(records)
        return True

    async def enqueue(self, entry: _Records) -> None:
        """Enqueue an entry as :meth:`offer` takes it and return (buffered mode), waiting for
        room if ``block``."""
        if self.offer(entry):
            return
        try:
            await self._send.send(entry)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            raise StorageError("the runtime is closed: experience is no longer accepted") from None
        self.stats.enqueued += _count(entry)

    async def submit(self, *records: ExperienceRecord) -> None:
        """Enqueue records and return (buffered mode), waiting for room if ``block``."""
        await self.enqueue(records)

    async def submit_and_wait(self, *records: ExperienceRecord) -> None:
        """Enqueue records and return once they are committed (or safe in the spill file).

        Concurrent callers share one transaction (group commit).

        Raises:
            StorageError: the database refused the records for good.
        """
        waiter = _Waiter(records, anyio.Event())
        try:
            try:
                # No checkpoint when there is room: the wait for the commit below is one.
                self._send.send_nowait(waiter)
            except anyio.WouldBlock:
                await self._send.send(waiter)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            raise StorageError("the runtime is closed: experience is no longer accepted") from None
        self.stats.enqueued += len(records)
        await waiter.done.wait()
        if waiter.error is not None:
            raise waiter.error

    async def flush(self) -> None:
        """Return once everything enqueued before this call is written (or spilled)."""
        await self.submit_and_wait()

    def close(self) -> None:
        """Accept no more records; the collector drains what is buffered and stops."""
        self._closing = True
        self._send.close()

    def _spill_remaining(self) -> int:
        batch = _Batch()
        while True:
            try:
                batch.add(self._receive.receive_nowait())
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                break
        records = batch.materialize()
        if records:
            self._spill(records)
        batch.settle()
        return len(records)

    @property
    def buffered(self) -> int:
        """Records waiting in memory."""
        return self._receive.statistics().current_buffer_used

    # -- the collector task --------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Drain the stream until it is closed, then write what is left.

        Two stages: this task takes each batch from the stream and encodes it while the
        writer task writes the one before (the driver's thread works without the GIL most of
        that time), then hands it over. At most one encoded batch waits for the writer.
        """
        handoff, prepared_batches = anyio.create_memory_object_stream[_Prepared](0)
        async with self._receive:
            task_status.started()
            try:
                await self._replay_spill()
                async with anyio.create_task_group() as group:
                    group.start_soon(self._write_prepared, prepared_batches)
                    async with handoff:
                        await self._prepare_batches(handoff)
            except anyio.get_cancelled_exc_class():
                # Shutdown ran out of time: what is still buffered goes to disk, not away.
                self._spill_remaining()
                raise
            finally:
                self.spill.current.close()
                self.rejected.close()
                await self._close_writer()

    async def _prepare_batches(self, handoff: MemoryObjectSendStream[_Prepared]) -> None:
        """Take batches from the stream and hand them to the writer. While the writer is busy
        with the one before, batches that are already waiting join the one held here, up to
        :attr:`write_limit` records: under a backlog, transactions grow (a commit, and the
        driver thread's turns at the GIL, are paid per transaction, not per row)."""
        held: _Prepared | None = None
        closed = False
        try:
            while True:
                if held is None:
                    batch, closed = await self._next_batch()
                    if batch.size or batch.waiters:
                        held = self._prepare(batch)
                elif not closed and len(held) < self.write_limit and self.buffered:
                    batch, closed = self._take_waiting(self.write_limit - len(held))
                    if batch.size or batch.waiters:
                        held.join(self._prepare(batch))
                if held is not None:
                    try:
                        handoff.send_nowait(held)  # the writer is waiting for it
                    except anyio.WouldBlock:
                        if not closed and len(held) < self.write_limit and self.buffered:
                            continue  # join what is waiting
                        await handoff.send(held)
                    held = None
                if closed:
                    return
        except anyio.get_cancelled_exc_class():
            # Not handed over (a cancelled send delivers nothing): keep it on disk.
            if held is not None:
                self._spill(held.batch.materialize())
                held.batch.settle()
            raise

    async def _write_prepared(self, prepared_batches: MemoryObjectReceiveStream[_Prepared]) -> None:
        async with prepared_batches:
            async for prepared in prepared_batches:
                await self._write(prepared)

    async def _next_batch(self) -> tuple[_Batch, bool]:
        """The next batch: by size, or whatever arrived within the flush interval."""
        batch = _Batch()
        try:
            count = batch.add(await self._receive.receive())
        except anyio.EndOfStream:
            return batch, True
        deadline = anyio.current_time() + self.flush_interval
        while count < self.batch_size:
            try:
                item = self._receive.receive_nowait()
            except anyio.EndOfStream:
                return batch, True
            except anyio.WouldBlock:
                if batch.urgent or self._closing:
                    break
                try:
                    waited = await self._receive_until(deadline)
                except anyio.EndOfStream:
                    return batch, True
                if waited is None:
                    break
                item = waited
            count += batch.add(item)
        return batch, False

    def _take_waiting(self, limit: int) -> tuple[_Batch, bool]:
        """What the stream holds now, up to about ``limit`` records (without waiting)."""
        batch = _Batch()
        count = 0
        while count < limit:
            try:
                count += batch.add(self._receive.receive_nowait())
            except anyio.WouldBlock:
                break
            except anyio.EndOfStream:
                return batch, True
        return batch, False

    async def _receive_until(self, deadline: float) -> _Entry | None:
        with anyio.move_on_after(max(0.0, deadline - anyio.current_time())):
            return await self._receive.receive()
        return None

    def _prepare(self, batch: _Batch) -> _Prepared:
        if self.processors:
            batch.records = self._process(batch.materialize())
            batch.size = len(batch.records)
        try:
            encoded: bulk.EncodedBatch | None = self._encode(batch.records, batch.flat)
        except StorageError as exc:
            log.error("batch_refused", stage="collector", error=str(exc), records=batch.size)
            encoded = None
        return _Prepared(batch, encoded)

    async def _write(self, prepared: _Prepared) -> None:
        batch, encoded = prepared.batch, prepared.encoded
        if encoded is None:
            await self._insert_one_by_one(batch.materialize(), batch)
            return
        backoff = _BACKOFF_START
        fresh = True
        while True:
            try:
                await self._writer.write_encoded(encoded, fresh=fresh)
            except anyio.get_cancelled_exc_class():
                # Shutdown ran out of time mid-write: keep the batch on disk (replay is idempotent).
                self._spill(batch.materialize())
                batch.settle()
                raise
            except StorageError as exc:
                if not exc.transient:
                    log.error(
                        "batch_refused", stage="collector", error=str(exc), records=batch.size
                    )
                    await self._insert_one_by_one(batch.materialize(), batch)
                    return
                self._note_outage(exc)
                if self._closing or self.buffered >= self.buffer_size:
                    self._spill(batch.materialize())
                    batch.settle()
                    return
                self.stats.retries += 1
                # The failed attempt may have committed before the connection broke.
                fresh = False
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)
                continue
            self.stats.written += batch.size
            self.stats.batches += 1
            # Before settling, so that a flush returns with the batch's knowledge rows, orphan
            # counts and any spill replay done too.
            await self._write_knowledge()
            await self._after_commit(batch)
            batch.settle()
            return

    def _process(self, records: list[ExperienceRecord]) -> list[ExperienceRecord]:
        if not self.processors:
            return records
        batch = ExperienceBatch(
            [r for r in records if isinstance(r, Decision)],
            [r for r in records if isinstance(r, Feedback)],
            [r for r in records if isinstance(r, Episode)],
        )
        for processor in self.processors:
            try:
                batch = processor.process(batch)
                if batch.knowledge:
                    self._knowledge.extend(batch.knowledge)
                    batch = batch._replace(knowledge=())
            except Exception as exc:  # a plugin may raise anything; the batch must still land
                self.stats.processor_errors += 1
                log.error(
                    "processor_failed",
                    stage="collector",
                    processor=type(processor).__name__,
                    error=repr(exc),
                    records=len(records),
                )
        return [*batch.decisions, *batch.feedback, *batch.episodes]

    def _encode(
        self, records: Sequence[ExperienceRecord], flat_records: Sequence[flat.FlatRecord] = ()
    ) -> bulk.EncodedBatch:
        decisions: list[Decision] = []
        feedback: list[Feedback] = []
        episodes: list[Episode] = []
        for record in records:
            kind = type(record)
            if kind is Decision:
                decisions.append(record)  # type: ignore[arg-type]
            elif kind is Feedback:
                feedback.append(record)  # type: ignore[arg-type]
            else:
                episodes.append(record)  # type: ignore[arg-type]
        return bulk.encode_batch(self.db.dialect, decisions, feedback, episodes, flat_records)

    async def _insert(self, records: Sequence[ExperienceRecord], *, fresh: bool) -> None:
        await self._writer.write_encoded(self._encode(records), fresh=fresh)

    async def _close_writer(self) -> None:
        try:
            await self._writer.close()
        except StorageError as exc:
            log.warning("writer_not_closed", stage="collector", error=str(exc))

    def _note_outage(self, exc: StorageError) -> None:
        if self._outage_since is None:
            self._outage_since = anyio.current_time()
            log.warning("database_unreachable", stage="collector", error=str(exc))

    def _spill(self, records: Sequence[ExperienceRecord]) -> None:
        self.spill.current.append(records)
        self.stats.spilled += len(records)
        log.warning(
            "experience_spilled",
            stage="collector",
            records=len(records),
            path=str(self.spill.current.path),
        )

    async def _insert_one_by_one(self, records: Sequence[ExperienceRecord], batch: _Batch) -> None:
        """Write a refused batch one record at a time; keep the refused ones in a file.

        Each waiting caller learns about its own records only: one refused record does not
        fail the callers whose records were committed in the same batch.
        """
        refused: dict[uuid.UUID, StorageError] = {}
        for record in records:
            try:
                await self._insert([record], fresh=False)
                self.stats.written += 1
            except StorageError as exc:
                if exc.transient:
                    self._spill([record])
                    continue
                refused[record.id] = exc
                self.rejected.append([record])
                self.stats.rejected += 1
                log.error(
                    "record_rejected",
                    stage="collector",
                    record_id=str(record.id),
                    kind=type(record).__name__,
                    error=str(exc),
                    path=str(self.rejected.path),
                )
        for waiter in batch.waiters:
            errors = [refused[r.id] for r in waiter.records if r.id in refused]
            waiter.error = errors[0] if errors else None
            waiter.done.set()

    async def _write_knowledge(self) -> None:
        """Write the knowledge rows the processors added; losing them never fails a batch."""
        if not self._knowledge:
            return
        pending, self._knowledge = self._knowledge, []
        try:
            async with self.db.session() as session:
                await repositories.insert_knowledge(session, pending)
        except StorageError as exc:
            log.warning(
                "knowledge_not_recorded", stage="collector", rows=len(pending), error=str(exc)
            )

    async def _after_commit(self, batch: _Batch) -> None:
        if self._outage_since is not None:
            seconds = anyio.current_time() - self._outage_since
            self._outage_since = None
            log.info("database_reachable", stage="collector", outage_seconds=round(seconds, 3))
            await self._replay_spill()
            await self._record_metric("collector_outage_seconds", seconds)
        orphans = await self._count_orphans(batch)
        if orphans:
            self.stats.orphan_feedback += orphans
            log.warning("orphan_feedback", stage="collector", count=orphans)
            await self._record_metric("orphan_feedback", float(orphans))

    async def _count_orphans(self, batch: _Batch) -> int:
        # Decisions made through the runtime are known from decide() on; replayed ones not.
        # A flat execution's reward is for its own decision, known since record().
        known = self.known
        rewarded: list[uuid.UUID] = []
        for record in batch.records:
            if isinstance(record, Feedback):
                rewarded.append(record.decision_id)
            elif isinstance(record, Decision) and record.id not in known:
                known.add(record.id, record.agent_id, record.mode)
        unknown = {decision_id for decision_id in rewarded if decision_id not in known}
        for entry in batch.flat:
            if entry[0] is flat.FEEDBACK and not known.has_int(entry[2]):
                unknown.add(uuid_from_int(entry[2]))
        if not unknown:
            return 0
        try:
            found = await bulk.existing_decision_ids(self.db, list(unknown))
        except StorageError as exc:
            log.warning("orphan_check_failed", stage="collector", error=str(exc))
            return 0
        return len(unknown) - len(found)

    async def _record_metric(self, name: str, value: float) -> None:
        if not math.isfinite(value):
            return
        try:
            async with self.db.session() as session:
                await repositories.record_metric(session, name, value, stage="collector")
        except StorageError as exc:
            log.warning("metric_not_recorded", stage="collector", metric=name, error=str(exc))

    async def _replay_spill(self) -> None:
        for path in self.spill.pending():
            with self.spill.claim(path) as records:
                if records is None:
                    continue
                try:
                    for start in range(0, len(records), self.batch_size):
                        await self._insert(records[start : start + self.batch_size], fresh=False)
                except StorageError as exc:
                    log.warning(
                        "spill_replay_failed", stage="collector", path=str(path), error=str(exc)
                    )
                    return
                self.spill.remove(path)
                self.stats.replayed += len(records)
                log.info("spill_replayed", stage="collector", path=str(path), records=len(records))


def default_spill_dir(db: Database, configured: str | None) -> Path:
    """The spill directory: configured, else beside the SQLite file, else ``.agentrt-spill``."""
    if configured:
        return Path(configured)
    if db.sqlite_path is not None:
        return db.sqlite_path.with_name(db.sqlite_path.name + ".spill")
    return Path(".agentrt-spill")


def process_owner() -> str:
    """A spill-file name unique to this process."""
    return f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
