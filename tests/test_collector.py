"""agentrt.pipeline.collector: batching, backpressure, group commit, outages and shutdown.

Real databases only. Outages on PostgreSQL go through :class:`Proxy`, a TCP forwarder in the
test that can be cut (live connections closed, new ones refused or left hanging) and
restored. Synchronisation uses events, ``wait_all_tasks_blocked()``, ``flush()`` (which
returns once a batch is written or spilled) and bounded polling of the collector's counters;
the only timers are the collector's own (its backoff and the runtime's shutdown deadline).
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import anyio
import pytest
from anyio.abc import SocketAttribute, SocketStream, TaskStatus
from anyio.lowlevel import checkpoint
from anyio.streams.buffered import BufferedByteReceiveStream
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url
from structlog.testing import capture_logs

from agentrt import Runtime, load_config
from agentrt.config import AgentRTConfig, DatabaseConfig
from agentrt.errors import BackpressureError, StorageError
from agentrt.pipeline.collector import ExperienceCollector, KnownDecisions
from agentrt.pipeline.spill import ExperienceRecord, SpillDirectory, read_spill
from agentrt.schemas import Decision, Feedback, Knowledge
from agentrt.storage import flat
from agentrt.storage.engine import Database
from agentrt.storage.migrate import ensure_schema
from agentrt.storage.tables import Base, DecisionRow, FeedbackRow, KnowledgeRow
from agentrt.types import ExperienceBatch, Processor

AGENT = "router"
ACTIONS = ("fast", "cheap")
HELPERS = Path(__file__).parent / "helpers"
WAIT_LIMIT = 20.0  # seconds; a backstop only, never reached when the code works


# -- helpers -------------------------------------------------------------------------------


def decision(step: int = 0, **changes: Any) -> Decision:
    fields: dict[str, Any] = {
        "agent_id": AGENT,
        "action": "cheap",
        "action_index": 1,
        "actions": ACTIONS,
        "context": {"step": step},
        "propensity": 0.5,
        "probabilities": (0.5, 0.5),
    }
    fields.update(changes)
    return Decision(**fields)


def reward(of: Decision, value: float = 1.0) -> Feedback:
    return Feedback(decision_id=of.id, reward=value, source="test")


def runtime_config(url: str, spill_dir: Path, **runtime: Any) -> AgentRTConfig:
    batch_size = runtime.pop("batch_size", 1000)
    return load_config(
        {
            "database": {"url": url},
            "runtime": {"auto_migrate": True, "spill_dir": str(spill_dir), **runtime},
            "agents": {AGENT: {"actions": list(ACTIONS)}},
            "experience_configuration": {"collection": {"batch_size": batch_size}},
        }
    )


async def record(rt: Runtime, step: int) -> uuid.UUID:
    return (await rt.record(AGENT, {"step": step}, "cheap", float(step))).id


async def stored_ids(url: str, row: type[DecisionRow] | type[FeedbackRow]) -> list[uuid.UUID]:
    """Every id in a table, duplicates kept (there must be none), through a fresh engine."""
    db = Database(DatabaseConfig(url=url))
    try:
        async with db.session() as session:
            return list((await session.execute(select(row.id))).scalars())
    finally:
        await db.dispose()


async def count(db: Database, row: type[Base]) -> int:
    async with db.session() as session:
        return (await session.execute(select(func.count()).select_from(row))).scalar_one()


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Yield to the event loop until ``predicate()`` holds (bounded by the caller's deadline).

    The collector changes its counters from its own task, which sets no event a test could
    wait on; polling at every checkpoint is the cheapest exact substitute.
    """
    with anyio.fail_after(WAIT_LIMIT):
        while not predicate():
            await checkpoint()


def spill_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("spill-*.jsonl")) if directory.is_dir() else []


def spilled_records(directory: Path) -> list[ExperienceRecord]:
    records: list[ExperienceRecord] = []
    for path in spill_files(directory):
        found, corrupt = read_spill(path)
        assert corrupt == 0
        records.extend(found)
    return records


def release_files(collector: ExperienceCollector) -> None:
    # Works around the collector never closing its spill and rejected files (see
    # test_the_runtime_releases_its_spill_file_on_exit): an open handle warns and keeps the
    # flock, which would stop a later runtime in this process from replaying the file.
    collector.spill.current.close()
    collector.rejected.close()


@asynccontextmanager
async def open_runtime(config: AgentRTConfig) -> AsyncIterator[Runtime]:
    """``async with Runtime(config)``, releasing the collector's files after it stopped."""
    collector: ExperienceCollector | None = None
    try:
        async with Runtime(config) as rt:
            collector = rt.collector
            yield rt
    finally:
        if collector is not None:
            release_files(collector)


@pytest.fixture
async def sqlite_db(sqlite_url: str) -> AsyncIterator[Database]:
    db = Database(DatabaseConfig(url=sqlite_url))
    await ensure_schema(db, auto_migrate=True)
    try:
        yield db
    finally:
        await db.dispose()


def make_collector(
    db: Database,
    tmp_path: Path,
    *,
    buffer_size: int = 100,
    batch_size: int = 1000,
    flush_interval: float = 60.0,
    backpressure: Literal["block", "error"] = "block",
    processors: tuple[Processor, ...] = (),
) -> ExperienceCollector:
    return ExperienceCollector(
        db,
        buffer_size=buffer_size,
        batch_size=batch_size,
        flush_interval=flush_interval,
        backpressure=backpressure,
        spill=SpillDirectory(tmp_path / "spill", "test"),
        processors=processors,
    )


@asynccontextmanager
async def running(collector: ExperienceCollector) -> AsyncIterator[ExperienceCollector]:
    """The collector's task, started and ready; on exit closed and drained."""
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(collector.run)
            try:
                yield collector
            finally:
                collector.close()
    finally:
        release_files(collector)


# -- the TCP proxy -------------------------------------------------------------------------


class Proxy:
    """Forwards 127.0.0.1:<port> to the PostgreSQL server; ``cut`` simulates an outage.

    While cut, live connections are closed and new ones are either closed at once
    (``refuse``) or accepted and never answered (``hang``).
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self.mode: Literal["up", "refuse", "hang"] = "up"
        self.connections = 0
        self._live: set[anyio.CancelScope] = set()
        self._restored = anyio.Event()

    def url(self, database_url: str) -> str:
        return (
            make_url(database_url)
            .set(host="127.0.0.1", port=self.port)
            .render_as_string(hide_password=False)
        )

    async def serve(self, *, task_status: TaskStatus[None]) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        self.port = listener.extra(SocketAttribute.local_port)  # noqa: S610 (anyio, not Django)
        async with listener:
            task_status.started()
            await listener.serve(self._handle)

    def cut(self, mode: Literal["refuse", "hang"] = "refuse") -> None:
        self.mode = mode
        self._restored = anyio.Event()
        for scope in list(self._live):
            scope.cancel()

    def restore(self) -> None:
        self.mode = "up"
        self._restored.set()

    async def _handle(self, client: SocketStream) -> None:
        async with client:
            if self.mode == "refuse":
                return
            if self.mode == "hang":
                await self._restored.wait()
                return  # a connection from the outage is never served
            self.connections += 1
            with anyio.CancelScope() as scope:
                self._live.add(scope)  # before connecting: a cut also ends a half-open one
                try:
                    async with (
                        await anyio.connect_tcp(self.target_host, self.target_port) as upstream,
                        anyio.create_task_group() as tg,
                    ):
                        tg.start_soon(self._pipe, client, upstream, tg.cancel_scope)
                        tg.start_soon(self._pipe, upstream, client, tg.cancel_scope)
                finally:
                    self._live.discard(scope)

    @staticmethod
    async def _pipe(source: SocketStream, sink: SocketStream, both: anyio.CancelScope) -> None:
        try:
            async for chunk in source:
                await sink.send(chunk)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        finally:
            both.cancel()  # one side ended: end the other


@asynccontextmanager
async def proxied(pg_url: str) -> AsyncIterator[tuple[Proxy, str]]:
    """A running proxy in front of PostgreSQL and the database URL through it."""
    target = make_url(pg_url)
    proxy = Proxy(target.host or "127.0.0.1", target.port or 5432)
    async with anyio.create_task_group() as tg:
        await tg.start(proxy.serve)
        try:
            yield proxy, proxy.url(pg_url)
        finally:
            tg.cancel_scope.cancel()


# -- backpressure --------------------------------------------------------------------------


async def test_backpressure_error_refuses_when_the_buffer_is_full(
    sqlite_db: Database, tmp_path: Path
) -> None:
    collector = make_collector(sqlite_db, tmp_path, buffer_size=1, backpressure="error")
    first, second = decision(0), decision(1)
    # The collector task is not running: nothing drains the buffer.
    await collector.submit(first)
    with pytest.raises(BackpressureError, match="buffer is full"):
        await collector.submit(second)
    assert collector.stats.enqueued == 1
    assert collector.buffered == 1

    # Nothing is silently dropped: the accepted record is written, the refused one was the
    # caller's to keep.
    async with running(collector):
        await collector.flush()
    assert await stored_ids(sqlite_db.url, DecisionRow) == [first.id]
    assert collector.stats.written == 1


async def test_backpressure_block_waits_until_the_collector_drains(
    sqlite_db: Database, tmp_path: Path
) -> None:
    collector = make_collector(sqlite_db, tmp_path, buffer_size=1, backpressure="block")
    first, second = decision(0), decision(1)
    await collector.submit(first)
    accepted = anyio.Event()

    async def submit_second() -> None:
        await collector.submit(second)
        accepted.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(submit_second)
        await anyio.wait_all_tasks_blocked()
        assert not accepted.is_set()
        assert collector.stats.enqueued == 1

        async with running(collector):
            with anyio.fail_after(10):
                await accepted.wait()
            await collector.flush()

    assert sorted(await stored_ids(sqlite_db.url, DecisionRow)) == sorted([first.id, second.id])
    assert collector.stats.enqueued == collector.stats.written == 2


async def test_submit_after_close_raises_storage_error(sqlite_db: Database, tmp_path: Path) -> None:
    collector = make_collector(sqlite_db, tmp_path)
    async with running(collector):
        pass
    with pytest.raises(StorageError, match="closed"):
        await collector.submit(decision())
    with pytest.raises(StorageError, match="closed"):
        await collector.submit_and_wait(decision())


# -- batching and group commit -------------------------------------------------------------


async def test_a_full_batch_is_written_without_waiting_for_the_interval(
    sqlite_db: Database, tmp_path: Path
) -> None:
    collector = make_collector(sqlite_db, tmp_path, batch_size=4, flush_interval=3600.0)
    async with running(collector):
        for step in range(4):
            await collector.submit(decision(step))
        await wait_until(lambda: collector.stats.written == 4)
        assert collector.stats.batches == 1
        assert await count(sqlite_db, DecisionRow) == 4


@pytest.mark.parametrize(("buffer_size", "batches"), [(100, 2), (30, 3)])
async def test_batches_that_wait_for_a_busy_writer_join_one_transaction(
    sqlite_url: str, tmp_path: Path, buffer_size: int, batches: int
) -> None:
    """While a batch is written, the batches waiting behind it are written next as one
    transaction, of at most the buffer's size in records."""
    # Waits for the lock below instead of failing: the test releases it.
    db = Database(DatabaseConfig(url=sqlite_url, sqlite_pragmas={"busy_timeout": "1h"}))
    await ensure_schema(db, auto_migrate=True)
    collector = make_collector(db, tmp_path, buffer_size=buffer_size, batch_size=10)
    executions = [flat.execution(decision(step), 1.0, None, None) for step in range(35)]
    blocker = sqlite3.connect(sqlite_url.split("///", 1)[1], isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the database
    try:
        async with running(collector):
            try:
                for execution in executions[:5]:
                    assert collector.offer(execution)
                await anyio.wait_all_tasks_blocked()  # the first batch waits for the lock
                for execution in executions[5:]:
                    assert collector.offer(execution)
                await anyio.wait_all_tasks_blocked()
                # The waiting batches joined, up to the buffer's size, and wait for the writer.
                assert collector.buffered == (0 if buffer_size == 100 else 15)
            finally:
                blocker.execute("ROLLBACK")
            await wait_until(lambda: collector.stats.written == 70)
            assert collector.stats.batches == batches
        assert await count(db, DecisionRow) == await count(db, FeedbackRow) == 35
    finally:
        blocker.close()
        await db.dispose()


async def test_concurrent_sync_callers_share_transactions(
    database: Database, tmp_path: Path
) -> None:
    callers = 40
    collector = make_collector(database, tmp_path, flush_interval=3600.0)
    pairs = [(d, reward(d)) for d in (decision(step) for step in range(callers))]
    async with running(collector):
        async with anyio.create_task_group() as tg:
            for pair in pairs:
                tg.start_soon(collector.submit_and_wait, *pair)
        # Each caller returned only after its records committed.
        assert await count(database, DecisionRow) == callers
        assert await count(database, FeedbackRow) == callers
    assert collector.stats.written == 2 * callers
    assert 1 <= collector.stats.batches < callers


async def test_runtime_sync_mode_group_commits_concurrent_records(
    db_url: str, tmp_path: Path
) -> None:
    calls = 30
    async with open_runtime(runtime_config(db_url, tmp_path / "spill", durability="sync")) as rt:
        ids: list[uuid.UUID] = []

        async def one(step: int) -> None:
            ids.append(await record(rt, step))

        async with anyio.create_task_group() as tg:
            for step in range(calls):
                tg.start_soon(one, step)
        # Acknowledged means committed: readable through another engine right away.
        assert sorted(await stored_ids(db_url, DecisionRow)) == sorted(ids)
        assert rt.stats.written == 2 * calls
        assert rt.stats.batches < calls


async def test_an_execution_is_written_as_its_decision_and_its_reward(
    database: Database, tmp_path: Path
) -> None:
    collector = make_collector(database, tmp_path)
    made = decision(1)
    async with running(collector):
        assert collector.offer(flat.execution(made, 0.25, {"latency_ms": 12}, "app"))
        await collector.flush()
    assert collector.stats.enqueued == 2
    assert collector.stats.written == 2
    async with database.session() as session:
        stored = (await session.execute(select(FeedbackRow))).scalars().one()
    assert stored.decision_id == made.id
    assert (stored.kind, stored.reward, stored.outcome, stored.source) == (
        "reward",
        0.25,
        {"latency_ms": 12},
        "app",
    )
    assert stored.created_at == made.created_at
    assert await stored_ids(database.url, DecisionRow) == [made.id]


async def test_single_records_tuples_and_executions_share_one_buffer(
    sqlite_db: Database, tmp_path: Path
) -> None:
    collector = make_collector(sqlite_db, tmp_path, buffer_size=3, backpressure="error")
    first, second, third = decision(1), decision(2), decision(3)
    assert collector.offer(first)
    assert collector.offer((second, reward(second)))
    assert collector.offer(flat.execution(third, 1.0, None, None))
    # Three entries fill a buffer of three, whatever each holds.
    with pytest.raises(BackpressureError):
        collector.offer(decision(4))
    assert collector.buffered == 3
    async with running(collector):
        await collector.flush()
    assert collector.stats.written == 5
    assert sorted(await stored_ids(sqlite_db.url, DecisionRow)) == sorted(
        [first.id, second.id, third.id]
    )
    assert await count(sqlite_db, FeedbackRow) == 2


async def test_enqueue_waits_for_room_when_blocking(sqlite_db: Database, tmp_path: Path) -> None:
    collector = make_collector(sqlite_db, tmp_path, buffer_size=1)
    queued = flat.execution(decision(1), 1.0, None, None)
    assert collector.offer(queued)
    enqueued = anyio.Event()

    async def enqueue_one_more() -> None:
        await collector.enqueue(flat.execution(decision(2), 0.0, None, None))
        enqueued.set()

    async with running(collector), anyio.create_task_group() as tg:
        tg.start_soon(enqueue_one_more)
        with anyio.fail_after(WAIT_LIMIT):
            await enqueued.wait()
        await collector.flush()
    assert collector.stats.enqueued == 4
    assert await count(sqlite_db, DecisionRow) == 2
    assert await count(sqlite_db, FeedbackRow) == 2


@pytest.mark.postgres
async def test_a_batch_after_the_server_dropped_the_collectors_connection_is_written(
    pg_url: str, tmp_path: Path
) -> None:
    # asyncpg reports each idle connection that the server ended to the event loop's exception
    # handler ("unexpected connection_lost() call"): the ending is what this test does.
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()

    def ended_sessions_are_expected(
        loop: asyncio.AbstractEventLoop, context: dict[str, Any]
    ) -> None:
        error = context.get("exception")
        if isinstance(error, ConnectionError) and "connection_lost" in str(error):
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(ended_sessions_are_expected)
    db = Database(DatabaseConfig(url=pg_url))
    await ensure_schema(db, auto_migrate=True)
    collector = make_collector(db, tmp_path)
    try:
        async with running(collector):
            await collector.submit_and_wait(decision(1))
            # The server ends every other session of the database: the connection the
            # collector keeps between batches is among them.
            name = make_url(pg_url).database
            async with db.session() as session:
                await session.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :name AND pid <> pg_backend_pid()"
                    ),
                    {"name": name},
                )
            await collector.submit_and_wait(decision(2))
        assert collector.stats.written == 2
        assert collector.stats.retries == 0
        assert collector.stats.spilled == 0
        assert len(await stored_ids(pg_url, DecisionRow)) == 2
    finally:
        await db.dispose()
        loop.set_exception_handler(previous)


async def test_known_decisions_keep_the_newest_ids_within_their_capacity() -> None:
    known = KnownDecisions(capacity=10)
    ids = [uuid.uuid4() for _ in range(25)]
    for number, decision_id in enumerate(ids):
        known.add(decision_id, f"agent-{number % 2}", "live")
    remembered = [decision_id for decision_id in ids if decision_id in known]
    # At most the capacity, at least half of it, always the newest.
    assert 5 <= len(remembered) <= 10
    assert remembered == ids[-len(remembered) :]
    assert known.get(ids[-1]) == ("agent-0", "live")
    assert known.get(ids[0]) is None
    assert str(ids[-1]) not in known
    known.add(ids[-1], "agent-0", "deferred")
    assert known.get(ids[-1]) == ("agent-0", "deferred")


# -- processors ----------------------------------------------------------------------------


class Exploding:
    def process(self, batch: ExperienceBatch) -> ExperienceBatch:
        raise RuntimeError("boom")


class Doubling:
    def process(self, batch: ExperienceBatch) -> ExperienceBatch:
        doubled = [
            f.model_copy(update={"reward": None if f.reward is None else 2 * f.reward})
            for f in batch.feedback
        ]
        return batch._replace(feedback=doubled)


class Noting:
    def process(self, batch: ExperienceBatch) -> ExperienceBatch:
        note = Knowledge(agent_id=AGENT, kind="batch_seen", payload={"n": len(batch.decisions)})
        return batch._replace(knowledge=[note])


async def test_a_failing_processor_is_logged_and_the_batch_still_written(
    sqlite_db: Database, tmp_path: Path
) -> None:
    collector = make_collector(sqlite_db, tmp_path, processors=(Exploding(), Doubling()))
    first = decision()
    with capture_logs() as logs:
        async with running(collector):
            await collector.submit_and_wait(first, reward(first, 1.5))

    assert collector.stats.processor_errors == 1
    failures = [entry for entry in logs if entry["event"] == "processor_failed"]
    assert len(failures) == 1
    assert failures[0]["log_level"] == "error"
    assert failures[0]["processor"] == "Exploding"
    assert "boom" in failures[0]["error"]
    assert failures[0]["records"] == 2
    async with sqlite_db.session() as session:
        stored = (await session.execute(select(FeedbackRow))).scalars().all()
    # The processors after the failing one still ran.
    assert [(row.decision_id, row.reward) for row in stored] == [(first.id, 3.0)]
    assert await count(sqlite_db, DecisionRow) == 1


async def test_knowledge_from_processors_is_stored_after_the_batch(
    sqlite_db: Database, tmp_path: Path
) -> None:
    collector = make_collector(sqlite_db, tmp_path, processors=(Noting(),))
    async with running(collector):
        await collector.submit_and_wait(decision(0), decision(1))
    async with sqlite_db.session() as session:
        notes = (await session.execute(select(KnowledgeRow))).scalars().all()
    assert [(n.kind, n.payload) for n in notes] == [("batch_seen", {"n": 2})]
    assert await count(sqlite_db, DecisionRow) == 2


# -- records the database refuses for good -------------------------------------------------


def refused_decision() -> Decision:
    return Decision.model_construct(**{**dict(decision(99)), "id": uuid.uuid4(), "propensity": 2.0})


async def test_a_refused_record_goes_to_the_rejected_file_and_the_rest_is_written(
    sqlite_db: Database, tmp_path: Path
) -> None:
    collector = make_collector(sqlite_db, tmp_path)
    good = [decision(0), decision(1)]
    bad = refused_decision()
    with capture_logs() as logs:
        async with running(collector):
            with pytest.raises(StorageError) as caught:
                await collector.submit_and_wait(good[0], bad, good[1])
    assert not caught.value.transient
    assert sorted(await stored_ids(sqlite_db.url, DecisionRow)) == sorted(d.id for d in good)
    assert collector.stats.rejected == 1
    rejected, corrupt = read_spill(collector.rejected.path)
    assert ([r.id for r in rejected], corrupt) == ([bad.id], 0)
    assert [e["record_id"] for e in logs if e["event"] == "record_rejected"] == [str(bad.id)]
    assert spill_files(tmp_path / "spill") == []


async def test_a_refused_record_fails_only_its_own_caller(
    sqlite_db: Database, tmp_path: Path
) -> None:
    collector = make_collector(sqlite_db, tmp_path)
    innocent = decision(0)
    outcomes: dict[str, BaseException | None] = {}

    async def submit(name: str, *records: ExperienceRecord) -> None:
        try:
            await collector.submit_and_wait(*records)
        except StorageError as exc:
            outcomes[name] = exc
        else:
            outcomes[name] = None

    async with running(collector), anyio.create_task_group() as tg:
        # Both items are queued before the collector wakes: they share one batch.
        tg.start_soon(submit, "innocent", innocent)
        tg.start_soon(submit, "guilty", refused_decision())
    assert await stored_ids(sqlite_db.url, DecisionRow) == [innocent.id]
    assert isinstance(outcomes["guilty"], StorageError)
    assert outcomes["innocent"] is None


# -- shutdown ------------------------------------------------------------------------------


async def test_closing_writes_every_buffered_record(sqlite_url: str, tmp_path: Path) -> None:
    config = runtime_config(sqlite_url, tmp_path / "spill", flush_interval="1h")
    async with open_runtime(config) as rt:
        ids = [await record(rt, step) for step in range(50)]
        stats = rt.stats
        # Neither the batch size nor the flush interval was reached: all still in memory.
        assert stats.written == 0
        assert rt.collector.buffered == 50
    assert sorted(await stored_ids(sqlite_url, DecisionRow)) == sorted(ids)
    assert len(await stored_ids(sqlite_url, FeedbackRow)) == 50
    assert stats.written == 100
    assert stats.spilled == 0
    assert spill_files(tmp_path / "spill") == []


@pytest.mark.postgres
@pytest.mark.parametrize("outage", ["refuse", "hang"])
@pytest.mark.parametrize("batch_size", [1000, 8])
async def test_records_buffered_when_the_database_is_down_at_shutdown_are_spilled(
    pg_url: str, tmp_path: Path, outage: Literal["refuse", "hang"], batch_size: int
) -> None:
    """With a small batch size the writer holds one batch, the next batches wait for it
    joined, and the rest stays in the buffer: all of it is spilled."""
    spill_dir = tmp_path / "spill"
    async with proxied(pg_url) as (proxy, url):
        config = runtime_config(
            url, spill_dir, flush_interval="1h", shutdown_timeout="300ms", batch_size=batch_size
        )
        with capture_logs() as logs:
            async with open_runtime(config) as rt:
                ids = [await record(rt, step) for step in range(30)]
                stats = rt.stats
                proxy.cut(outage)
            proxy.restore()

    assert stats.written == 0
    assert stats.spilled == 60
    spilled = spilled_records(spill_dir)
    assert sorted(r.id for r in spilled if isinstance(r, Decision)) == sorted(ids)
    assert len([r for r in spilled if isinstance(r, Feedback)]) == 30
    assert await stored_ids(pg_url, DecisionRow) == []
    if outage == "hang":
        # The write never returned: the shutdown deadline cancelled it and spilled the batch.
        assert any(entry["event"] == "shutdown_deadline_exceeded" for entry in logs)


@pytest.mark.postgres
async def test_the_runtime_releases_its_spill_file_on_exit(pg_url: str, tmp_path: Path) -> None:
    spill_dir = tmp_path / "spill"
    async with proxied(pg_url) as (proxy, url):
        config = runtime_config(url, spill_dir, flush_interval="1h")
        rt = Runtime(config)
        async with rt:
            collector = rt.collector
            await record(rt, 0)
            proxy.cut()
    try:
        [path] = spill_files(spill_dir)
        with SpillDirectory(spill_dir, "next").claim(path) as claimed:
            assert claimed is not None
            assert len(claimed) == 2
    finally:
        release_files(collector)


# -- outages on PostgreSQL -----------------------------------------------------------------


@pytest.mark.postgres
async def test_an_outage_is_retried_and_every_record_written_once(
    pg_url: str, tmp_path: Path
) -> None:
    async with proxied(pg_url) as (proxy, url):
        config = runtime_config(url, tmp_path / "spill", flush_interval="10ms")
        async with open_runtime(config) as rt:
            before = [await record(rt, step) for step in range(20)]
            await rt.flush()
            assert rt.stats.written == 40
            assert proxy.connections >= 1  # the runtime really goes through the proxy

            proxy.cut()
            during = [await record(rt, step) for step in range(20, 50)]
            # The collector keeps the records in memory and retries.
            await wait_until(lambda: rt.stats.retries >= 2)
            assert rt.stats.written == 40
            assert rt.stats.spilled == 0

            proxy.restore()
            await rt.flush()
            stats = rt.stats
            assert stats.written == 100

    decisions = await stored_ids(pg_url, DecisionRow)
    assert len(decisions) == len(set(decisions)) == 50
    assert set(decisions) == set(before + during)
    assert len(await stored_ids(pg_url, FeedbackRow)) == 50
    assert stats.spilled == 0
    assert stats.replayed == 0


@pytest.mark.postgres
async def test_a_full_buffer_spills_during_an_outage_and_replays_after_it(
    pg_url: str, tmp_path: Path
) -> None:
    spill_dir = tmp_path / "spill"
    async with proxied(pg_url) as (proxy, url):
        config = runtime_config(url, spill_dir, buffer_size=8, batch_size=2)
        with capture_logs() as logs:
            async with open_runtime(config) as rt:
                warm = await record(rt, 0)
                await rt.flush()

                proxy.cut()
                during = [await record(rt, step) for step in range(1, 41)]
                # The buffer (8 calls) filled up while the database was away: the overflow
                # is on disk, fsynced.
                assert rt.stats.spilled > 0
                on_disk = spilled_records(spill_dir)
                assert len(on_disk) == rt.stats.spilled
                assert {r.id for r in on_disk if isinstance(r, Decision)} <= set(during)

                proxy.restore()
                await rt.flush()
                # The replay follows the first successful write; then the file is gone.
                await wait_until(lambda: rt.stats.replayed == rt.stats.spilled)
                assert spill_files(spill_dir) == []
                stats = rt.stats

    decisions = await stored_ids(pg_url, DecisionRow)
    assert len(decisions) == len(set(decisions)) == 41
    assert set(decisions) == {warm, *during}
    feedback = await stored_ids(pg_url, FeedbackRow)
    assert len(feedback) == len(set(feedback)) == 41
    # Every record went in exactly once: written directly or replayed from the spill file.
    assert stats.written + stats.replayed == 82
    events = [entry["event"] for entry in logs]
    assert "database_unreachable" in events
    assert "experience_spilled" in events
    assert "spill_replayed" in events


@pytest.mark.postgres
async def test_records_spilled_at_shutdown_are_replayed_by_the_next_runtime(
    pg_url: str, tmp_path: Path
) -> None:
    spill_dir = tmp_path / "spill"
    async with proxied(pg_url) as (proxy, url):
        config = runtime_config(url, spill_dir, buffer_size=8, batch_size=2)
        async with open_runtime(config) as rt:
            proxy.cut()
            ids = [await record(rt, step) for step in range(25)]
        proxy.restore()
        assert len(spilled_records(spill_dir)) == 50
        assert await stored_ids(pg_url, DecisionRow) == []

        # A new process (here: a new runtime) replays the files it finds at start.
        async with open_runtime(config) as again:
            stats = again.stats
    assert stats.replayed == 50
    assert spill_files(spill_dir) == []
    decisions = await stored_ids(pg_url, DecisionRow)
    assert len(decisions) == len(set(decisions)) == 25
    assert set(decisions) == set(ids)
    assert len(set(await stored_ids(pg_url, FeedbackRow))) == 25


# -- crash durability ----------------------------------------------------------------------


async def read_acks(stream: BufferedByteReceiveStream, seen: list[uuid.UUID], until: int) -> None:
    while len(seen) < until:
        line = await stream.receive_until(b"\n", 200)
        if line.startswith(b"ack "):
            seen.append(uuid.UUID(line[4:].decode()))


@pytest.mark.slow
async def test_every_acknowledged_sync_record_survives_sigkill(db_url: str, tmp_path: Path) -> None:
    seen: list[uuid.UUID] = []
    stderr_path = tmp_path / "child-stderr.log"
    command = [sys.executable, str(HELPERS / "record_forever.py"), db_url, str(tmp_path / "spill")]
    with stderr_path.open("wb") as stderr:
        async with await anyio.open_process(
            command, stdout=subprocess.PIPE, stderr=stderr
        ) as process:
            assert process.stdout is not None
            stream = BufferedByteReceiveStream(process.stdout)
            try:
                with anyio.fail_after(60):
                    await read_acks(stream, seen, until=200)
            except (anyio.EndOfStream, anyio.IncompleteRead, TimeoutError):
                process.kill()
                await process.wait()
                pytest.fail(f"the child stopped early: {stderr_path.read_text()[-3000:]}")
            process.send_signal(signal.SIGKILL)
            assert await process.wait() == -signal.SIGKILL
            # Lines already in the pipe were acknowledged too.
            try:
                with anyio.fail_after(10):
                    await read_acks(stream, seen, until=sys.maxsize)
            except (anyio.EndOfStream, anyio.IncompleteRead):
                pass

    assert len(seen) >= 200
    assert len(set(seen)) == len(seen)
    decisions = set(await stored_ids(db_url, DecisionRow))
    missing = set(seen) - decisions
    assert not missing, f"{len(missing)} acknowledged decisions were lost"
    assert spill_files(tmp_path / "spill") == []
