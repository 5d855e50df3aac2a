"""Ingest throughput: rows/s through ``record()`` against the raw driver's bulk path.

For each backend the same rows are written twice in the same run:

- the ceiling: the raw driver's bulk path on pre-encoded rows (stdlib ``sqlite3.executemany``
  in 1,000-row transactions; asyncpg ``copy_records_to_table`` in 1,000-row batches), into a
  fresh agentrt schema (same tables, same indexes);
- agentrt: ``await rt.record(...)`` for every execution (one decision row and one feedback row
  each), from one producer in ``buffered`` mode, and from 100 concurrent producers in ``sync``
  mode, timed until everything is committed.

The three measurements run in rounds (``--rounds``, default 3): ceiling, buffered, sync, then
again, so that a burst of other work on the machine does not land on one of them only. Each
figure is the best round (the least disturbed one); every round's figures and ratios are
printed too. Prints rows/s, the ratio to the ceiling and the CPU seconds the process spent per
10k rows, and writes ``bench/results/ingest.json``. Targets: >= 0.6 of the ceiling buffered,
>= 0.3 sync with 100 callers.

    python bench/ingest.py                 # SQLite and PostgreSQL (if it answers), 50k executions
    python bench/ingest.py --rows 200000 --backends sqlite --rounds 1
    python bench/ingest.py --memory        # 1M executions, resident memory every 100k
    python bench/ingest.py --gc-freeze     # as an application that calls gc.freeze() after start
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sqlite3
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio

from agentrt import Runtime, load_config
from agentrt.config import DatabaseConfig
from agentrt.schemas import Decision, Feedback
from agentrt.storage import bulk
from agentrt.storage.engine import Database
from agentrt.storage.migrate import ensure_schema

ACTIONS = ("search", "sql", "ask_human")
TOPICS = ("billing", "outage", "account", "refund")
PG_ADMIN = os.environ.get(
    "AGENTRT_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
RESULTS = Path(__file__).resolve().parent / "results"


def context(i: int) -> dict[str, Any]:
    return {"topic": TOPICS[i % 4], "len": 100 + i % 900, "vip": i % 7 == 0}


def rows(n: int) -> tuple[list[Decision], list[Feedback]]:
    start = datetime.now(UTC)
    decisions, feedback = [], []
    for i in range(n):
        d = Decision(
            agent_id="router",
            action=ACTIONS[i % 3],
            action_index=i % 3,
            actions=ACTIONS,
            context=context(i),
            propensity=1 / 3,
            probabilities=(1 / 3,) * 3,
            exploration={"method": "recorded"},
            created_at=start + timedelta(microseconds=i),
        )
        decisions.append(d)
        feedback.append(
            Feedback(decision_id=d.id, reward=float(i % 2), outcome={"latency_ms": i % 50})
        )
    return decisions, feedback


def config(url: str, durability: str, buffer_size: int = 10_000) -> Any:
    return load_config(
        None,
        {
            "database": {"url": url},
            "runtime": {
                "durability": durability,
                "auto_migrate": True,
                "buffer_size": buffer_size,
                "seed": 1,
                # Only ingest is measured: no learning loop in the background.
                "pipeline": "external",
            },
            "agents": {"router": {"actions": list(ACTIONS)}},
            "experience_configuration": {"collection": {"batch_size": 1000}},
        },
    )


async def migrated(url: str) -> None:
    db = Database(DatabaseConfig(url=url))
    try:
        await ensure_schema(db, auto_migrate=True)
    finally:
        await db.dispose()


# -- ceilings ----------------------------------------------------------------------------


def encoded_rows(
    dialect: str, decisions: list[Decision], feedback: list[Feedback]
) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    """The rows as agentrt's bulk path encodes them (the ceiling writes the same rows)."""
    (_, _, decision_rows), (_, _, feedback_rows) = bulk.encode_batch(dialect, decisions, feedback)
    return decision_rows, feedback_rows


def insert_statement(table: str, columns: tuple[str, ...]) -> str:
    marks = ", ".join("?" for _ in columns)
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks}) "  # noqa: S608 (fixed names)
        "ON CONFLICT (id) DO NOTHING"
    )


async def sqlite_ceiling(path: Path, n: int) -> float:
    await migrated(f"sqlite+aiosqlite:///{path}")
    decisions, feedback = rows(n)
    drows, frows = encoded_rows("sqlite", decisions, feedback)
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    d_sql = insert_statement("decisions", bulk.DECISION_COLUMNS)
    f_sql = insert_statement("feedback", bulk.FEEDBACK_COLUMNS)
    started = time.perf_counter()
    for s in range(0, n, 500):  # 500 executions = 1,000 rows per transaction
        with connection:
            connection.executemany(d_sql, drows[s : s + 500])
            connection.executemany(f_sql, frows[s : s + 500])
    elapsed = time.perf_counter() - started
    connection.close()
    return 2 * n / elapsed


async def pg_ceiling(url: str, n: int) -> float:
    import asyncpg

    await migrated(url)
    decisions, feedback = rows(n)
    drows, frows = encoded_rows("postgresql", decisions, feedback)
    connection = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    try:
        started = time.perf_counter()
        for s in range(0, n, 500):
            async with connection.transaction():
                await connection.copy_records_to_table(
                    "decisions", records=drows[s : s + 500], columns=list(bulk.DECISION_COLUMNS)
                )
                await connection.copy_records_to_table(
                    "feedback", records=frows[s : s + 500], columns=list(bulk.FEEDBACK_COLUMNS)
                )
        elapsed = time.perf_counter() - started
    finally:
        await connection.close()
    return 2 * n / elapsed


# -- agentrt -----------------------------------------------------------------------------


def settle_heap(freeze: bool) -> None:
    """``--gc-freeze``: what an application may opt into once it has started (agentrt never
    does it): the objects alive now leave the cyclic collector's generations for good, so
    that its full collections no longer walk the whole start-up heap."""
    if freeze:
        gc.collect()
        gc.freeze()


async def agentrt_buffered(url: str, n: int, *, freeze: bool = False) -> float:
    contexts = [context(i) for i in range(n)]
    async with Runtime(config(url, "buffered")) as rt:
        settle_heap(freeze)
        started = time.perf_counter()
        for i in range(n):
            await rt.record(
                "router", contexts[i], ACTIONS[i % 3], float(i % 2),
                propensity=1 / 3, outcome={"latency_ms": i % 50},
            )  # fmt: skip
        await rt.flush()
        elapsed = time.perf_counter() - started
    return 2 * n / elapsed


async def agentrt_sync(url: str, n: int, callers: int = 100, *, freeze: bool = False) -> float:
    per_caller = n // callers

    async with Runtime(config(url, "sync")) as rt:
        settle_heap(freeze)

        async def caller(k: int) -> None:
            for j in range(per_caller):
                i = k * per_caller + j
                await rt.record(
                    "router", context(i), ACTIONS[i % 3], float(i % 2), propensity=1 / 3
                )

        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for k in range(callers):
                tg.start_soon(caller, k)
        elapsed = time.perf_counter() - started
    return 2 * per_caller * callers / elapsed


def rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


async def memory_profile(url: str, n: int) -> list[tuple[int, float]]:
    samples = []
    async with Runtime(config(url, "buffered")) as rt:
        for i in range(n):
            await rt.record("router", context(i), ACTIONS[i % 3], float(i % 2), propensity=1 / 3)
            if i % 100_000 == 0:
                samples.append((i, rss_mib()))
        await rt.flush()
        samples.append((n, rss_mib()))
    return samples


# -- driver --------------------------------------------------------------------------------


async def fresh_pg_database() -> str | None:
    try:
        import asyncpg
    except ImportError:
        return None
    admin_dsn = PG_ADMIN.replace("postgresql+asyncpg", "postgresql")
    try:
        admin = await asyncpg.connect(admin_dsn, timeout=5)
    except (OSError, asyncpg.PostgresError):
        return None
    name = f"agentrt_bench_{uuid.uuid4().hex[:8]}"
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"


async def drop_pg_database(url: str) -> None:
    import asyncpg

    admin = await asyncpg.connect(PG_ADMIN.replace("postgresql+asyncpg", "postgresql"))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
    finally:
        await admin.close()


LABELS = ("ceiling", "buffered", "sync_100")


async def measure(
    backend: str, label: str, n: int, workdir: Path, *, freeze: bool
) -> tuple[float, float] | None:
    """(rows/s, CPU seconds of this process per 10k rows) of one measurement, on a new database."""
    gc.collect()
    path = workdir / f"{label}-{uuid.uuid4().hex[:8]}.db"
    url = f"sqlite+aiosqlite:///{path}" if backend == "sqlite" else await fresh_pg_database()
    if url is None:
        return None
    cpu = time.process_time()
    try:
        if label == "ceiling":
            if backend == "sqlite":
                rate = await sqlite_ceiling(path, n)
            else:
                rate = await pg_ceiling(url, n)
        elif label == "buffered":
            rate = await agentrt_buffered(url, n, freeze=freeze)
        else:
            rate = await agentrt_sync(url, n, freeze=freeze)
    finally:
        gc.unfreeze()
        if backend != "sqlite":
            await drop_pg_database(url)
    # Includes the setup (schema, encoding the ceiling's rows): compare like with like only.
    return rate, (time.process_time() - cpu) / (2 * n) * 10_000


async def run_backend(
    backend: str, n: int, rounds: int, workdir: Path, *, freeze: bool = False
) -> dict[str, Any] | None:
    runs: dict[str, list[tuple[float, float]]] = {label: [] for label in LABELS}
    for number in range(rounds):
        for label in LABELS:
            result = await measure(backend, label, n, workdir, freeze=freeze)
            if result is None:
                print(f"{backend}: no server answers; skipped")
                return None
            runs[label].append(result)
        figures = {label: runs[label][-1][0] for label in LABELS}
        print(
            f"{backend}: round {number + 1}: ceiling {figures['ceiling']:,.0f} rows/s, "
            f"buffered {figures['buffered']:,.0f} "
            f"({figures['buffered'] / figures['ceiling']:.2f}), "
            f"sync_100 {figures['sync_100']:,.0f} "
            f"({figures['sync_100'] / figures['ceiling']:.2f})"
        )
    results: dict[str, Any] = {"rounds": {label: runs[label] for label in LABELS}}
    for label in LABELS:
        best = max(runs[label])
        results[label] = best[0]
        results[f"{label}_cpu_s_per_10k_rows"] = best[1]
    return results


async def main(args: argparse.Namespace) -> None:
    report: dict[str, Any] = {
        "executions": args.rows,
        "python": sys.version.split()[0],
        "gc_freeze": args.gc_freeze,
    }
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for backend in args.backends:
            results = await run_backend(
                backend, args.rows, args.rounds, workdir, freeze=args.gc_freeze
            )
            if results is None:
                continue
            ceiling = results["ceiling"]
            print(
                f"{backend}: ceiling (raw bulk path) {ceiling:,.0f} rows/s  "
                f"(cpu {results['ceiling_cpu_s_per_10k_rows']:.2f} s/10k rows, with setup)"
            )
            for label, target in (("buffered", 0.6), ("sync_100", 0.3)):
                ratio = results[label] / ceiling
                mark = "ok" if ratio >= target else "BELOW TARGET"
                print(
                    f"{backend}: agentrt {label:<9} {results[label]:>10,.0f} rows/s  "
                    f"ratio {ratio:.2f} (target {target}) {mark}  "
                    f"(cpu {results[f'{label}_cpu_s_per_10k_rows']:.2f} s/10k rows)"
                )
                results[f"{label}_ratio"] = ratio
            report[backend] = results
        if args.memory:
            samples = await memory_profile(
                f"sqlite+aiosqlite:///{workdir / 'memory.db'}", 1_000_000
            )
            print("memory while ingesting 1M executions into SQLite (executions: RSS MiB):")
            print("  " + ", ".join(f"{i:,}: {mib:.0f}" for i, mib in samples))
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"  peak RSS of the whole run: {peak:.0f} MiB")
            report["memory_mib"] = samples
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ingest.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=50_000, help="executions per measurement")
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"])
    parser.add_argument(
        "--rounds", type=int, default=3, help="measurements of each kind; the best one counts"
    )
    parser.add_argument(
        "--memory", action="store_true", help="also profile memory over 1M executions"
    )
    parser.add_argument(
        "--gc-freeze",
        action="store_true",
        help="gc.freeze() once each runtime has started, as an application may opt to",
    )
    anyio.run(main, parser.parse_args())
