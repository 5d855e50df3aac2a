"""Retention (``agentrt.pipeline.retention``) and ``agentrt prune``.

Experience goes in through the public Runtime with a fake clock: an *old* phase at START and a
*new* one 40 days later; the tests prune at NOW (41 days after START) with a 30-day duration, so
the cutoff falls between the phases. Every storage test runs once on SQLite and once on
PostgreSQL (``db_url``); the Parquet file-format tests run on SQLite only.
"""

from __future__ import annotations

import hashlib
import json
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import anyio
import pyarrow.parquet as pq
import pytest
import structlog
import yaml
from sqlalchemy import func, select
from typer.testing import CliRunner, Result

from agentrt.cli import app
from agentrt.config import AgentRTConfig, DatabaseConfig, load_config
from agentrt.errors import AgentRTError, InvalidInputError, StorageError
from agentrt.pipeline import retention
from agentrt.pipeline.retention import (
    EXPERIENCE_COLUMNS,
    RetentionReport,
    apply_retention,
    count_expired,
)
from agentrt.runtime import Runtime
from agentrt.schemas import Knowledge, PolicyVersion, StrategyUpdate
from agentrt.storage import repositories
from agentrt.storage.engine import Database
from agentrt.storage.tables import (
    DecisionRow,
    EpisodeRow,
    FeedbackRow,
    KnowledgeRow,
    MetricRow,
    PolicyVersionRow,
    StrategyUpdateRow,
    experience_view,
)

START = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
NEW = START + timedelta(days=40)
NOW = START + timedelta(days=41)
CUTOFF = NOW - timedelta(days=30)

# One agent per reward rule, so that the archive is compared with the view on each of them.
AGENTS: dict[str, Any] = {
    "namer": {"actions": ["a", "b"]},
    "picker": {"actions": ["a", "b"], "reward": {"combine": "max"}},
    "router": {"actions": ["a", "b", "c"], "reward": {"combine": "mean"}},
    "sorter": {"actions": ["x", "y"], "reward": {"combine": "sum"}},
}
JSON_COLUMNS = {"context", "actions", "probabilities", "exploration", "outcome"}
TABLES = {
    "decisions": DecisionRow.__table__,
    "feedback": FeedbackRow.__table__,
    "episodes": EpisodeRow.__table__,
    "knowledge": KnowledgeRow.__table__,
    "metrics": MetricRow.__table__,
    "policy_versions": PolicyVersionRow.__table__,
    "strategy_updates": StrategyUpdateRow.__table__,
}


class FakeClock:
    """A clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now

    def tick(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


class Filled(NamedTuple):
    """What the old phase wrote, read back before any prune."""

    old_experience: list[dict[str, Any]]  # the view's rows of the old decisions, oldest first
    old_feedback: int
    new_decisions: set[uuid.UUID]
    kept_episode: uuid.UUID  # ended before the cutoff, but one of its decisions is new


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """An empty working directory, no configuration from the environment, a wide terminal."""
    monkeypatch.delenv("AGENTRT_CONFIG", raising=False)
    monkeypatch.delenv("AGENTRT_DATABASE_URL", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.chdir(tmp_path)
    yield
    # The commands configure structlog to write to the runner's (now closed) stderr.
    structlog.reset_defaults()


def settings(
    url: str,
    tmp_path: Path,
    *,
    storage_format: str = "database",
    policy: str = "time_based",
    compression: str = "snappy",
    archive_dir: str | None = None,
) -> dict[str, Any]:
    return {
        "database": {"url": url},
        "runtime": {
            "auto_migrate": True,
            "durability": "buffered",
            "seed": 1,
            "spill_dir": str(tmp_path / "spill"),
        },
        "logging": {"format": "json"},
        "agents": AGENTS,
        "experience_configuration": {
            "collection": {"storage_format": storage_format},
            "retention": {
                "policy": policy,
                "duration": "30d",
                "compression": compression,
                "archive_dir": archive_dir or str(tmp_path / "archive"),
            },
        },
    }


def configure(url: str, tmp_path: Path, **options: Any) -> AgentRTConfig:
    return load_config(settings(url, tmp_path, **options))


async def experience_phase(rt: Runtime, clock: FakeClock, episode_id: uuid.UUID | None) -> None:
    """Decisions of every agent with 0, 1 and 2 rewards, a recorded execution, deferred
    decisions (activated or not) and an episode; ``episode_id``: one more step of that one."""
    for agent_id, agent in AGENTS.items():
        for index in range(3):
            clock.tick()
            decision = await rt.decide(agent_id, {"i": index, "topic": f"t{index % 2}"})
            for reward in range(index):
                clock.tick()
                await rt.reward(decision, float(reward + index), outcome={"n": reward})
        clock.tick()
        await rt.record(agent_id, {"i": 9}, agent["actions"][0], 0.5, outcome={"ms": 12})
    clock.tick()
    deferred = await rt.decide("router", {"i": 5}, mode="deferred")
    await rt.decide("router", {"i": 6}, mode="deferred")
    clock.tick()
    await rt.activate(deferred)
    await rt.reward(deferred, 1.0)
    async with rt.episode("sorter") as episode:
        for step in range(2):
            clock.tick()
            await episode.decide({"step": step})
            await episode.reward(1.0)
    if episode_id is not None:
        clock.tick()
        await rt.decide("sorter", {"late": True}, episode_id=episode_id, step=7)


async def fill(db: Database, tmp_path: Path) -> Filled:
    """Old and new experience through the Runtime, plus history, knowledge and metrics."""
    clock = FakeClock()
    # The runtime's own learning loop would apply retention on the fake clock: not here.
    config = configure(db.url, tmp_path, policy="none")
    async with Runtime(config, clock=clock) as rt:
        await experience_phase(rt, clock, None)
        await rt.flush()
        async with db.connect() as connection:
            kept_episode = (await connection.execute(select(EpisodeRow.id))).scalar_one()
        clock.now = NEW
        await experience_phase(rt, clock, kept_episode)
        await rt.flush()
    artifact = b"weights"
    async with db.session() as session:
        await repositories.store_policy_version(
            session,
            PolicyVersion(
                agent_id="router",
                version=1,
                learner="linear",
                artifact=artifact,
                sha256=hashlib.sha256(artifact).hexdigest(),
                created_at=START,
            ),
        )
        await repositories.append_strategy_update(
            session,
            StrategyUpdate(
                agent_id="router", kind="promote", previous={}, updated={}, created_at=START
            ),
        )
        await repositories.insert_knowledge(
            session,
            [
                Knowledge(
                    agent_id="router", kind="stats", payload={}, window_end=START, created_at=NEW
                ),
                Knowledge(
                    agent_id="router", kind="stats", payload={}, window_end=NEW, created_at=NEW
                ),
                Knowledge(agent_id="router", kind="note", payload={}, created_at=START),
            ],
        )
        session.add_all(
            [
                MetricRow(name="learning_cycle", value=1.0, created_at=START),
                MetricRow(name="learning_cycle", value=2.0, created_at=NEW),
            ]
        )
    view = experience_view
    old = (
        select(view)
        .where(view.c.created_at < CUTOFF)
        .order_by(view.c.created_at, view.c.decision_id)
    )
    new = select(DecisionRow.id).where(DecisionRow.created_at >= CUTOFF)
    async with db.connect() as connection:
        old_experience = [dict(row) for row in (await connection.execute(old)).mappings()]
        new_decisions = set((await connection.execute(new)).scalars())
    old_ids = [row["decision_id"] for row in old_experience]
    feedback = select(func.count()).where(FeedbackRow.decision_id.in_(old_ids))
    async with db.connect() as connection:
        old_feedback = int((await connection.execute(feedback)).scalar_one())
    return Filled(old_experience, old_feedback, new_decisions, kept_episode)


async def counts(db: Database) -> dict[str, int]:
    found: dict[str, int] = {}
    async with db.connect() as connection:
        for name, table in TABLES.items():
            query = select(func.count()).select_from(table)
            found[name] = int((await connection.execute(query)).scalar_one())
    return found


def archived_rows(directory: Path) -> list[dict[str, Any]]:
    """The archive's rows as the view returns them (JSON parsed, ids as UUIDs), oldest first."""
    table = pq.read_table(directory, partitioning=None)
    assert table.column_names == list(EXPERIENCE_COLUMNS)
    rows = []
    for row in table.to_pylist():
        for name in JSON_COLUMNS:
            row[name] = None if row[name] is None else json.loads(row[name])
        for name in ("decision_id", "episode_id"):
            row[name] = None if row[name] is None else uuid.UUID(row[name])
        rows.append(row)
    return sorted(rows, key=lambda row: (row["created_at"], row["decision_id"]))


def archive_files(directory: Path) -> list[Path]:
    return sorted(directory.rglob("*.parquet"))


# --- apply_retention -------------------------------------------------------------------------


async def test_time_based_deletes_old_experience_and_keeps_the_rest(
    database: Database, db_url: str, tmp_path: Path
) -> None:
    config = configure(db_url, tmp_path)
    filled = await fill(database, tmp_path)
    before = await counts(database)
    old = len(filled.old_experience)
    assert old == 20

    # Policy none: nothing goes, nothing is archived.
    keep = configure(db_url, tmp_path, storage_format="parquet", policy="none")
    kept = await apply_retention(database, keep, NOW)
    assert (kept.cutoff, kept.total_deleted, kept.files) == (None, 0, [])
    assert (await count_expired(database, keep, NOW)).total_deleted == 0
    assert await counts(database) == before
    assert not (tmp_path / "archive").exists()

    expected = await count_expired(database, config, NOW)
    report = await apply_retention(database, config, NOW)

    assert report.cutoff == CUTOFF
    assert report.deleted == {
        "decisions": old,
        "feedback": filled.old_feedback,
        "episodes": 0,  # the old episode still has its new step
        "knowledge": 2,  # the window that ended, and the windowless row created before
        "metrics": 1,
    }
    assert expected.dry_run
    assert expected.deleted == report.deleted
    assert (report.archived, report.files, report.archive_dir) == ({}, [], None)
    after = await counts(database)
    assert after == {
        **before,
        **{table: before[table] - report.deleted[table] for table in report.deleted},
    }
    assert after["policy_versions"] == before["policy_versions"] == 1
    assert after["strategy_updates"] == before["strategy_updates"] == 1
    async with database.connect() as connection:
        decisions = set((await connection.execute(select(DecisionRow.id))).scalars())
        decision = select(DecisionRow.id).where(DecisionRow.id == FeedbackRow.decision_id)
        orphans = select(func.count()).select_from(FeedbackRow).where(~decision.exists())
        orphan_feedback = (await connection.execute(orphans)).scalar_one()
        episodes = set((await connection.execute(select(EpisodeRow.id))).scalars())
    assert decisions == filled.new_decisions
    assert orphan_feedback == 0
    assert filled.kept_episode in episodes
    assert len(episodes) == 2
    assert not (tmp_path / "archive").exists()

    again = await apply_retention(database, config, NOW)
    assert again.total_deleted == 0
    # Once the new step is gone too, the old episode goes.
    later = await apply_retention(database, config, NEW + timedelta(days=31))
    assert later.deleted["decisions"] == len(filled.new_decisions)
    assert later.deleted["episodes"] == 2
    assert (await counts(database))["decisions"] == 0


async def test_parquet_archive_holds_exactly_the_deleted_rows(
    database: Database, db_url: str, tmp_path: Path
) -> None:
    config = configure(db_url, tmp_path, storage_format="parquet")
    filled = await fill(database, tmp_path)

    report = await apply_retention(database, config, NOW)

    archive = tmp_path / "archive"
    assert report.archive_dir == archive
    old = len(filled.old_experience)
    assert report.archived == {"decisions": old, "feedback": filled.old_feedback}
    assert report.deleted["decisions"] == old
    assert archived_rows(archive) == filled.old_experience
    files = archive_files(archive)
    assert files == sorted(report.files)
    assert {file.parent.name for file in files} == {f"agent_id={agent}" for agent in AGENTS}
    for file in files:
        first = pq.read_table(file).column("created_at")[0].as_py()
        assert file.name.startswith(first.strftime("%Y%m%dT%H%M%SZ-"))
        assert len(file.name) == len("20300101T120001Z-") + 32 + len(".parquet")
    assert not [path for path in archive.rglob("*") if path.name.startswith(".")]
    assert filled.old_experience[0]["context"] == {"i": 0, "topic": "t0"}
    assert {row["reward"] for row in filled.old_experience if row["agent_id"] == "sorter"} >= {
        None,
        1.0,
        2.0 + 3.0,
    }

    again = await apply_retention(database, config, NOW)
    assert (again.total_deleted, again.files) == (0, [])
    assert archive_files(archive) == files


@pytest.mark.parametrize(
    ("compression", "recorded"),
    [("snappy", "SNAPPY"), ("zstd", "ZSTD"), ("none", "UNCOMPRESSED")],
)
async def test_archive_compression_is_the_configured_one(
    sqlite_url: str, tmp_path: Path, compression: str, recorded: str
) -> None:
    config = configure(sqlite_url, tmp_path, storage_format="parquet", compression=compression)
    db = Database(config.database)
    try:
        await fill(db, tmp_path)
        report = await apply_retention(db, config, NOW)
    finally:
        await db.dispose()
    assert len(report.files) == len(AGENTS)
    for file in report.files:
        metadata = pq.ParquetFile(file).metadata
        assert metadata.num_rows > 0
        row_group = metadata.row_group(0)
        assert {row_group.column(i).compression for i in range(row_group.num_columns)} == {recorded}


async def test_large_prunes_go_in_batches(
    database: Database, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retention, "BATCH_ROWS", 4)
    monkeypatch.setattr(retention, "_IDS_PER_STATEMENT", 3)
    config = configure(db_url, tmp_path, storage_format="parquet")
    filled = await fill(database, tmp_path)
    calls: list[tuple[str, int]] = []

    report = await apply_retention(
        database, config, NOW, progress=lambda table, rows: calls.append((table, rows))
    )

    per_agent = {
        agent: sum(row["agent_id"] == agent for row in filled.old_experience) for agent in AGENTS
    }
    assert per_agent == {"namer": 4, "picker": 4, "router": 6, "sorter": 6}
    batches = [rows for table, rows in calls if table == "decisions" and rows]
    assert batches == [4, 4, 4, 2, 4, 2]
    assert len(report.files) == 6
    assert [pq.read_metadata(file).num_rows for file in report.files] == batches
    assert sum(rows for table, rows in calls if table == "feedback") == filled.old_feedback
    assert sum(rows for table, rows in calls if table == "knowledge") == 2
    assert archived_rows(tmp_path / "archive") == filled.old_experience
    async with database.connect() as connection:
        left = select(func.count()).where(DecisionRow.created_at < CUTOFF)
        assert (await connection.execute(left)).scalar_one() == 0
    # Within an agent the files are in time order, and so are their names.
    router = [file for file in report.files if file.parent.name == "agent_id=router"]
    firsts = [pq.read_table(file).column("created_at")[0].as_py() for file in router]
    assert firsts == sorted(firsts)


async def test_a_failed_archive_deletes_nothing_of_its_batch(
    database: Database, db_url: str, tmp_path: Path
) -> None:
    archive = tmp_path / "archive"
    archive.write_text("not a directory", encoding="utf-8")
    config = configure(db_url, tmp_path, storage_format="parquet")
    filled = await fill(database, tmp_path)
    before = await counts(database)

    with pytest.raises(StorageError, match=r"cannot write the retention archive .*nothing"):
        await apply_retention(database, config, NOW)

    assert await counts(database) == before
    assert archive.read_text(encoding="utf-8") == "not a directory"

    # Only the second agent's folder is in the way: agents go in name order, so the first
    # one's batch is archived and deleted, and the failing batch and the later ones stay.
    archive.unlink()
    archive.mkdir()
    (archive / "agent_id=picker").write_text("in the way", encoding="utf-8")
    with pytest.raises(StorageError, match="agent_id=picker"):
        await apply_retention(database, config, NOW)

    namer = archived_rows(archive / "agent_id=namer")
    assert [row["agent_id"] for row in namer] == ["namer"] * 4
    query = (
        select(DecisionRow.agent_id, func.count())
        .where(DecisionRow.created_at < CUTOFF)
        .group_by(DecisionRow.agent_id)
    )
    async with database.connect() as connection:
        left = {agent: count for agent, count in await connection.execute(query)}
    assert left == {"picker": 4, "router": 6, "sorter": 6}
    assert (await counts(database))["decisions"] == before["decisions"] - 4
    assert len(filled.old_experience) == 20


async def test_without_pyarrow_the_archive_refuses_before_deleting(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = configure(sqlite_url, tmp_path, storage_format="parquet")
    db = Database(config.database)
    try:
        await fill(db, tmp_path)
        before = await counts(db)
        monkeypatch.setitem(sys.modules, "pyarrow", None)
        with pytest.raises(AgentRTError, match=r"pip install 'agentrt\[parquet\]'"):
            await apply_retention(db, config, NOW)
        assert await counts(db) == before
    finally:
        await db.dispose()


async def test_now_must_be_aware(sqlite_url: str, tmp_path: Path) -> None:
    config = configure(sqlite_url, tmp_path)
    db = Database(config.database)
    try:
        with pytest.raises(InvalidInputError, match="now: must be an aware datetime"):
            await apply_retention(db, config, NOW.replace(tzinfo=None))
    finally:
        await db.dispose()


# --- agentrt prune ---------------------------------------------------------------------------


class Prepared(NamedTuple):
    url: str
    config: str
    filled: Filled


@pytest.fixture
async def prepared(database: Database, db_url: str, tmp_path: Path) -> Prepared:
    """A configuration file (archive_dir: archive, relative) and a filled database."""
    document = settings(db_url, tmp_path, storage_format="parquet", archive_dir="archive")
    path = tmp_path / "agentrt.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    filled = await fill(database, tmp_path)
    return Prepared(db_url, str(path), filled)


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def table_rows(output: str) -> dict[str, list[str]]:
    """The body rows of a rich table, by their first cell."""
    rows = [
        [cell.strip() for cell in line.split("│")[1:-1]]
        for line in output.splitlines()
        if line.startswith("│")
    ]
    return {row[0]: row[1:] for row in rows}


def count_in(url: str) -> dict[str, int]:
    async def run() -> dict[str, int]:
        db = Database(DatabaseConfig(url=url))
        try:
            return await counts(db)
        finally:
            await db.dispose()

    return anyio.run(run)


@pytest.mark.usefixtures("anyio_backend")
def test_prune(prepared: Prepared, tmp_path: Path) -> None:
    before = count_in(prepared.url)
    old, feedback = len(prepared.filled.old_experience), prepared.filled.old_feedback
    archive = tmp_path / "archive"  # archive_dir: archive, relative to the working directory

    # A failure is one line, and deletes nothing.
    archive.write_text("not a directory", encoding="utf-8")
    failed = invoke("prune", "--now", NOW.isoformat(), "--config", prepared.config)
    assert failed.exit_code == 1
    lines = failed.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: cannot write the retention archive")
    assert "Traceback" not in failed.output
    assert count_in(prepared.url) == before
    archive.unlink()

    # --dry-run counts and changes nothing.
    counted = invoke("prune", "--dry-run", "--now", NOW.isoformat(), "--config", prepared.config)
    assert counted.exit_code == 0, counted.output
    assert table_rows(counted.stdout) == {
        "decisions": [str(old), str(old)],
        "feedback": [str(feedback), str(feedback)],
        "episodes": ["-", "0"],
        "knowledge": ["-", "2"],
        "metrics": ["-", "1"],
    }
    assert "would archive" in counted.stdout
    assert f"older than {CUTOFF:%Y-%m-%d %H:%M:%S} UTC (30d)" in counted.stdout
    assert "dry run: nothing was changed" in counted.stdout
    assert count_in(prepared.url) == before
    assert not archive.exists()

    # The prune itself; --now without a zone is UTC.
    now = NOW.replace(tzinfo=None).isoformat()
    result = invoke("prune", "--now", now, "--config", prepared.config)
    assert result.exit_code == 0, result.output
    assert "archived" in result.stdout
    rows = table_rows(result.stdout)
    assert rows["decisions"] == [str(old), str(old)]
    assert rows["metrics"] == ["-", "1"]
    assert f"4 archive files written under {archive.resolve()}" in result.stdout
    assert archived_rows(archive) == prepared.filled.old_experience
    assert count_in(prepared.url)["decisions"] == len(prepared.filled.new_decisions)

    again = invoke("prune", "--now", now, "--config", prepared.config)
    assert again.exit_code == 0, again.output
    assert table_rows(again.stdout)["decisions"] == ["0", "0"]


def test_prune_with_policy_none(tmp_path: Path) -> None:
    document = settings(f"sqlite+aiosqlite:///{tmp_path / 'none.db'}", tmp_path, policy="none")
    (tmp_path / "agentrt.yaml").write_text(yaml.safe_dump(document), encoding="utf-8")

    result = invoke("prune", "--config", "agentrt.yaml")

    assert result.exit_code == 0, result.output
    assert "retention policy is none: nothing to prune" in result.stdout
    assert not (tmp_path / "none.db").exists()


def test_prune_refuses_a_bad_now(tmp_path: Path) -> None:
    result = invoke("prune", "--now", "yesterday")
    assert result.exit_code == 2
    assert "--now: must be an ISO 8601 time" in result.stderr


def test_reports_add_up() -> None:
    report = RetentionReport(CUTOFF)
    report.deleted["decisions"] = 3
    report.deleted["metrics"] = 2
    assert report.total_deleted == 5
