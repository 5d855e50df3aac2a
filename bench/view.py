"""The ``experience`` view on filtered and full queries: the 0001 view against the current one.

For each backend a fresh database is migrated to head and filled with N decisions of five
agents (about two feedback rows each: 0-4 rewards, ties in ``created_at`` included, and
activations of deferred decisions). The 0001 view's frozen SQL, taken from that migration, is
created beside it as ``experience_old``; the same SQLAlchemy queries then run on both views:

- one decision by id, and 1,000 random decision ids (``WHERE decision_id IN (...)``);
- ``live_rewards`` (the learning cycle's per-version aggregate of one agent's live rewards)
  for an agent with 2,000 decisions and for one with about N/4 (the learning cycle's
  regression check reads all of an agent's live decisions);
- the training window: ``fetch_experience(limit=1000, rewarded_only=True)`` of that agent;
- an aggregate of every row (every feedback column evaluated).

PostgreSQL runs three times: never analyzed (autovacuum is off on the bench tables, as on a
database just filled, where the 0001 view got quadratic plans), after ``ANALYZE``, and after
``ANALYZE`` with ``jit = off`` (the server's JIT compiles every correlated subquery of a
query whose estimated cost passes ``jit_above_cost``, which dominates some timings). Each
query runs ``--repeat`` times (once when it takes over 10 s) and the best time is reported;
on PostgreSQL a query past ``--timeout`` is cancelled and shown as such. Both views' results
are compared (aggregates to 1e-9) to make sure they answer the same.

    python bench/view.py                     # 200k decisions, SQLite and PostgreSQL
    python bench/view.py --quick             # 20k decisions
    python bench/view.py --decisions 50000 --backends sqlite --json /tmp/view.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, Select, Table, func, select, text
from sqlalchemy.engine import make_url

from agentrt.config import DatabaseConfig
from agentrt.errors import StorageError
from agentrt.schemas import Decision, Feedback
from agentrt.storage.bulk import write_experience
from agentrt.storage.engine import Database
from agentrt.storage.migrate import alembic_config, ensure_schema
from agentrt.storage.tables import AgentRow, experience_view

PG_ADMIN = os.environ.get(
    "AGENTRT_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
# agent -> (reward rule, share of the decisions); "canary" gets exactly SMALL_AGENT of them.
AGENTS = {
    "router": "last",
    "ranker": "mean",
    "picker": "max",
    "sorter": "sum",
    "canary": "last",
}
SMALL_AGENT = 2_000
ACTIONS = ("a", "b", "c")
START = datetime(2030, 1, 1, tzinfo=UTC)
BATCH = 5_000
SLOW_S = 10.0

OLD_VIEW = experience_view.to_metadata(MetaData(), name="experience_old")


def old_view_sql() -> str:
    """The 0001 view, frozen in its migration, renamed to ``experience_old``."""
    script = ScriptDirectory.from_config(alembic_config()).get_revision("0001")
    if script is None or script.module is None:
        raise SystemExit("migration 0001 is missing")
    sql: str = script.module.EXPERIENCE_VIEW
    return sql.replace("CREATE VIEW experience AS", "CREATE VIEW experience_old AS", 1)


# -- data --------------------------------------------------------------------------------------


def agent_of(i: int, n: int) -> str:
    # One decision in every `step`, at a shifting offset (so that it has every mode and rule).
    step = n // SMALL_AGENT
    if i % step == (i // step) % step:
        return "canary"
    return ("router", "ranker", "picker", "sorter")[i % 4]


def batch(start: int, stop: int, n: int) -> tuple[list[Decision], list[Feedback]]:
    """Decisions start..stop-1 with their feedback: deterministic, about 2 rows each."""
    decisions, feedback = [], []
    for i in range(start, stop):
        mode = "deferred" if i % 10 == 7 else "shadow" if i % 10 == 3 else "live"
        created = START + timedelta(milliseconds=10 * i)
        decision = Decision(
            agent_id=agent_of(i, n),
            action=ACTIONS[i % 3],
            action_index=i % 3,
            actions=ACTIONS,
            context={"topic": f"t{i % 7}", "load": (i % 100) / 100},
            propensity=1 / 3,
            probabilities=(1 / 3,) * 3,
            policy_version=None if i % 5 == 0 else 1 + i % 3,
            mode=mode,
            created_at=created,
        )
        decisions.append(decision)
        if mode == "deferred" and i % 3:
            feedback.append(
                Feedback(
                    decision_id=decision.id, kind="activation", created_at=created + timedelta(1)
                )
            )
        # 0-4 rewards; the second and third share a timestamp (ties go by id).
        for j, offset in enumerate((1, 2, 2, 3)[: i % 5]):
            feedback.append(
                Feedback(
                    decision_id=decision.id,
                    reward=float((i * 7 + j) % 11) / 10,
                    outcome={"j": j},
                    created_at=created + timedelta(seconds=offset),
                )
            )
    return decisions, feedback


async def fill(db: Database, n: int) -> tuple[int, list[uuid.UUID]]:
    """Write the agents and n decisions; return the feedback rows written and every id."""
    async with db.session() as session:
        session.add_all(
            AgentRow(agent_id=agent, reward_combine=rule, config={})
            for agent, rule in AGENTS.items()
        )
    ids: list[uuid.UUID] = []
    rows = 0
    for start in range(0, n, BATCH):
        decisions, feedback = batch(start, min(start + BATCH, n), n)
        await write_experience(db, decisions, feedback)
        ids += [decision.id for decision in decisions]
        rows += len(feedback)
    return rows, ids


# -- queries -----------------------------------------------------------------------------------


def live_rewards(view: Table, agent_id: str) -> Select[Any]:
    """The query of agentrt.pipeline.adapter.live_rewards, on either view."""
    return (
        select(
            view.c.policy_version,
            func.count(view.c.reward),
            func.avg(view.c.reward),
            func.avg(view.c.reward * view.c.reward),
        )
        .where(view.c.agent_id == agent_id, view.c.mode == "live", view.c.reward.is_not(None))
        .group_by(view.c.policy_version)
        .order_by(view.c.policy_version)
    )


def full_scan(view: Table) -> Select[Any]:
    return (
        select(
            view.c.agent_id,
            func.count(),
            func.count(view.c.reward),
            func.avg(view.c.reward),
            func.sum(view.c.feedback_count),
            func.max(view.c.rewarded_at),
            func.count(view.c.activated_at),
            func.count(view.c.outcome),
        )
        .group_by(view.c.agent_id)
        .order_by(view.c.agent_id)
    )


def training_window(view: Table, agent_id: str, rows: int) -> Select[Any]:
    """The query of fetch_experience(limit=rows, rewarded_only=True): the training window."""
    newest = (view.c.created_at.desc(), view.c.decision_id.desc())
    return (
        select(view)
        .where(view.c.agent_id == agent_id, view.c.feedback_count > 0)
        .order_by(*newest)
        .limit(rows)
    )


def queries(view: Table, one: uuid.UUID, many: list[uuid.UUID]) -> dict[str, Select[Any]]:
    by_id = (view.c.created_at, view.c.decision_id)
    return {
        "one decision by id": select(view).where(view.c.decision_id == one),
        "1,000 decision ids": select(view).where(view.c.decision_id.in_(many)).order_by(*by_id),
        f"live_rewards, {SMALL_AGENT:,} decisions": live_rewards(view, "canary"),
        "live_rewards, ~N/4 decisions": live_rewards(view, "router"),
        "newest 1,000 rewarded, ~N/4": training_window(view, "router", 1_000),
        "full scan aggregate": full_scan(view),
    }


def same(a: Sequence[Any], b: Sequence[Any]) -> bool:
    if len(a) != len(b):
        return False
    for row_a, row_b in zip(a, b, strict=True):
        for x, y in zip(row_a, row_b, strict=True):
            if isinstance(x, float) and isinstance(y, float):
                if not math.isclose(x, y, rel_tol=1e-9):
                    return False
            elif x != y:
                return False
    return True


async def timed(
    db: Database, query: Select[Any], repeat: int, timeout_s: float, jit: bool
) -> tuple[float | None, list[Any]]:
    """Best seconds of the query (None: cancelled at the timeout) and its rows."""
    times: list[float] = []
    rows: list[Any] = []
    for _ in range(repeat):
        try:
            async with db.connect() as connection:
                if db.dialect == "postgresql":
                    ms = int(timeout_s * 1000)
                    await connection.execute(text(f"SET LOCAL statement_timeout = {ms}"))
                    if not jit:
                        await connection.execute(text("SET LOCAL jit = off"))
                started = time.perf_counter()
                rows = list((await connection.execute(query)).all())
                times.append(time.perf_counter() - started)
        except StorageError as exc:
            if "cancel" not in str(exc).lower() and "timeout" not in str(exc).lower():
                raise
            return None, []
        if times[-1] > SLOW_S:
            break
    return min(times), rows


async def measure(
    db: Database, ids: list[uuid.UUID], repeat: int, timeout_s: float, jit: bool = True
) -> list[dict[str, Any]]:
    rng = random.Random(7)
    one = ids[len(ids) // 2]
    many = rng.sample(ids, min(1_000, len(ids)))
    results = []
    old_queries = queries(OLD_VIEW, one, many)
    new_queries = queries(experience_view, one, many)
    for name, old_query in old_queries.items():
        old_s, old_rows = await timed(db, old_query, repeat, timeout_s, jit)
        new_s, new_rows = await timed(db, new_queries[name], repeat, timeout_s, jit)
        results.append(
            {
                "query": name,
                "old_s": old_s,
                "new_s": new_s,
                "rows": len(new_rows),
                "same": None if old_s is None else same(old_rows, new_rows),
            }
        )
    return results


# -- backends ----------------------------------------------------------------------------------


async def prepared(url: str, n: int, label: str) -> tuple[Database, list[uuid.UUID]]:
    db = Database(DatabaseConfig(url=url))
    await ensure_schema(db, auto_migrate=True)
    async with db.connect() as connection:
        await connection.execute(text(old_view_sql()))
        if db.dialect == "postgresql":
            for table in ("agents", "decisions", "feedback"):
                # A database just filled: no statistics until the bench asks for them.
                await connection.execute(
                    text(f"ALTER TABLE {table} SET (autovacuum_enabled = off)")
                )
    started = time.perf_counter()
    feedback, ids = await fill(db, n)
    print(
        f"{label}: {n:,} decisions and {feedback:,} feedback rows written "
        f"in {time.perf_counter() - started:.1f} s"
    )
    return db, ids


async def fresh_pg_database() -> str | None:
    import asyncpg

    dsn = make_url(PG_ADMIN).set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        admin = await asyncpg.connect(dsn, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"postgresql: {make_url(PG_ADMIN)} does not answer ({exc}); skipped")
        return None
    name = f"agentrt_bench_view_{uuid.uuid4().hex[:8]}"
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    finally:
        await admin.close()
    return make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False)


async def drop_pg_database(url: str) -> None:
    import asyncpg

    dsn = make_url(PG_ADMIN).set(drivername="postgresql").render_as_string(hide_password=False)
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')
    finally:
        await admin.close()


async def run_sqlite(args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    db, ids = await prepared(f"sqlite+aiosqlite:///{workdir / 'view.db'}", args.decisions, "sqlite")
    try:
        results = await measure(db, ids, args.repeat, args.timeout)
    finally:
        await db.dispose()
    return [{"backend": "sqlite", **row} for row in results]


async def run_postgresql(args: argparse.Namespace) -> list[dict[str, Any]]:
    url = await fresh_pg_database()
    if url is None:
        return []
    try:
        db, ids = await prepared(url, args.decisions, "postgresql")
        try:
            results = [
                {"backend": "pg, no ANALYZE", **row}
                for row in await measure(db, ids, args.repeat, args.timeout)
            ]
            async with db.connect() as connection:
                await connection.execute(text("ANALYZE agents, decisions, feedback"))
            results += [
                {"backend": "pg, ANALYZEd", **row}
                for row in await measure(db, ids, args.repeat, args.timeout)
            ]
            results += [
                {"backend": "pg, jit=off", **row}
                for row in await measure(db, ids, args.repeat, args.timeout, jit=False)
            ]
        finally:
            await db.dispose()
    finally:
        await drop_pg_database(url)
    return results


def seconds(value: float | None, timeout_s: float) -> str:
    if value is None:
        return f">{timeout_s:g} s"
    return f"{value * 1000:,.1f} ms" if value < 1 else f"{value:,.2f} s"


def show(results: list[dict[str, Any]], timeout_s: float) -> None:
    header = (
        f"{'backend':<16} {'query':<30} {'rows':>6} {'0001 view':>12} {'new view':>12} "
        f"{'old/new':>9}  same"
    )
    print(header)
    print("-" * len(header))
    for row in results:
        old, new = row["old_s"], row["new_s"]
        if new is None:
            ratio = "-"
        elif old is None:
            ratio = f">{timeout_s / new:,.0f}x"
        else:
            ratio = f"{old / new:,.1f}x"
        same_text = {True: "yes", False: "NO", None: "-"}[row["same"]]
        print(
            f"{row['backend']:<16} {row['query']:<30} {row['rows']:>6} "
            f"{seconds(old, timeout_s):>12} {seconds(new, timeout_s):>12} {ratio:>9}  {same_text}"
        )


async def main(args: argparse.Namespace) -> None:
    if args.quick:
        args.decisions = 20_000
    if args.decisions < 2 * SMALL_AGENT:
        raise SystemExit(f"--decisions must be at least {2 * SMALL_AGENT:,}")
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        if "sqlite" in args.backends:
            results += await run_sqlite(args, Path(tmp))
        if "postgresql" in args.backends:
            results += await run_postgresql(args)
    print()
    show(results, args.timeout)
    if args.json is not None:
        report = {"decisions": args.decisions, "repeat": args.repeat, "results": results}
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--decisions", type=int, default=200_000, help="decisions to write")
    parser.add_argument("--quick", action="store_true", help="20k decisions")
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"])
    parser.add_argument("--repeat", type=int, default=3, help="runs per query (the best counts)")
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="PostgreSQL statement timeout, seconds"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    anyio.run(main, parser.parse_args())
