"""The report: its HTML file, its PNG charts and ``agentrt report``.

A learning agent is played through the public Runtime API (decide, reward, run_cycle, a
rollback by hand) once on SQLite and once on PostgreSQL, and its report is checked against
what the database holds. The command line runs in-process with typer's CliRunner on
experience stored through the repositories, which is quicker to make.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import random
import re
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import matplotlib.image
import pytest
import structlog
import yaml
from sqlalchemy import select
from typer.testing import CliRunner, Result

from agentrt.cli import app
from agentrt.config import AgentConfig, AgentRTConfig, DatabaseConfig, load_config
from agentrt.errors import InvalidInputError
from agentrt.report import CHART_DPI, CHART_SIZE, CHARTS, HTML_NAME, write_report
from agentrt.report.data import MAX_BUCKETS, read_agent
from agentrt.runtime import Runtime
from agentrt.schemas import Decision, Feedback, PolicyVersion, StrategyUpdate
from agentrt.storage import repositories
from agentrt.storage.engine import Database
from agentrt.storage.migrate import ensure_schema
from agentrt.storage.tables import KnowledgeRow, PolicyVersionRow

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_SHAPE = (round(CHART_SIZE[1] * CHART_DPI), round(CHART_SIZE[0] * CHART_DPI), 4)
ACTIONS = ("a", "b", "c")
BEST = {"t0": "a", "t1": "b", "t2": "c"}
IMAGE = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def agents_config() -> dict[str, Any]:
    return {
        "router": {"actions": list(ACTIONS), "learner": "linear", "training": {"min_rows": 50}},
        "idle": {"actions": ["x", "y"]},
    }


def runtime_config(url: str, spill: Path) -> AgentRTConfig:
    return load_config(
        {
            "database": {"url": url},
            "runtime": {"auto_migrate": True, "seed": 7, "device": "cpu", "spill_dir": str(spill)},
            "agents": agents_config(),
            "experience_configuration": {"analysis": {"pattern_min_support": 10}},
        }
    )


async def play(config: AgentRTConfig) -> None:
    """Two rounds of decisions and rewards, each followed by a learning cycle, then a rollback
    by hand. Each round has one decision with an outlying latency (an anomaly)."""
    rng = random.Random(3)
    async with Runtime(config) as rt:
        for _ in range(2):
            for i in range(100):
                topic = f"t{i % 3}"
                decision = await rt.decide("router", {"topic": topic, "n": i})
                won = rng.random() < (0.85 if decision.action == BEST[topic] else 0.15)
                latency = 5000.0 if i == 77 else 100.0 + 10.0 * rng.random()
                await rt.reward(decision, float(won), outcome={"latency_ms": latency})
            await rt.run_cycle("router")
        await rt.rollback("router")


def images_of(document: str) -> list[bytes]:
    return [base64.b64decode(encoded) for encoded in IMAGE.findall(document)]


def section_of(document: str, agent: str) -> str:
    start = document.index(f'<section id="{agent}">')
    return document[start : document.index("</section>", start)]


def check_png(data: bytes) -> None:
    assert data.startswith(PNG_SIGNATURE)
    pixels = matplotlib.image.imread(io.BytesIO(data), format="png")
    assert pixels.shape == PNG_SHAPE


# --- a learning agent, on both databases -----------------------------------------------------


async def test_report_of_a_learning_agent(db_url: str, tmp_path: Path) -> None:
    config = runtime_config(db_url, tmp_path / "spill")
    await play(config)
    db = Database(config.database)
    steps: list[tuple[str, int, int]] = []
    try:
        paths = await write_report(
            db,
            config,
            tmp_path / "out",
            progress=lambda description, done, total: steps.append((description, done, total)),
        )
        async with db.connect() as connection:
            versions = (
                await connection.execute(
                    select(PolicyVersionRow.version, PolicyVersionRow.status)
                    .where(PolicyVersionRow.agent_id == "router")
                    .order_by(PolicyVersionRow.version)
                )
            ).all()
            knowledge = {
                kind: payload
                for kind, payload in await connection.execute(
                    select(KnowledgeRow.kind, KnowledgeRow.payload)
                    .where(KnowledgeRow.agent_id == "router")
                    .order_by(KnowledgeRow.created_at, KnowledgeRow.id)
                )
            }
    finally:
        await db.dispose()

    assert paths.html == tmp_path / "out" / HTML_NAME
    assert paths.images["idle"] == ()
    assert paths.images["router"] == tuple(
        tmp_path / "out" / f"router-{chart}.png" for chart in CHARTS
    )
    assert paths.all == [paths.html, *paths.images["router"]]
    assert steps[-1][1:] == (5, 5)  # read and drew two agents, wrote the page
    document = paths.html.read_text(encoding="utf-8")

    # Self-contained: every image is embedded, nothing is fetched.
    assert not re.search(r"https?:", document, re.IGNORECASE)
    assert "<script" not in document
    assert "<link" not in document
    assert re.findall(r'src="([^"]{0,22})', document) == ["data:image/png;base64,"] * 3
    embedded = images_of(section_of(document, "router"))
    assert embedded == [path.read_bytes() for path in paths.images["router"]]
    for png in embedded:
        check_png(png)
    assert "No decisions stored" in section_of(document, "idle")

    # The version history lists every stored version, its status and its validation.
    router = section_of(document, "router")
    assert [version for version, _ in versions] == [1, 2]
    history = router[router.index("<h3>Version history</h3>") :]
    for version, status in versions:
        assert f"<td>v{version}</td>" in history
        assert f">{status}</span>" in history
    assert "sanity passed" in history
    assert "rolled back by hand to v1" in router

    # The patterns and anomalies found are shown.
    rules = knowledge["patterns"]["rules"]
    assert rules
    for rule in rules:
        assert html.escape(rule["rule"]) in router
    flagged = knowledge["anomalies"]["metrics"]["latency_ms"]["decision_ids"]
    assert flagged
    for decision_id in flagged[:5]:
        assert decision_id in router


# --- reading: bounded, filtered, and any agent id --------------------------------------------


def decision(agent_id: str, index: int, at: datetime, version: int | None = None) -> Decision:
    action = index % len(ACTIONS) if index % 4 else 0
    return Decision(
        agent_id=agent_id,
        action=ACTIONS[action],
        action_index=action,
        actions=ACTIONS,
        context={"topic": f"t{index % 3}"},
        propensity=0.5 if version else 1 / 3,
        probabilities=(0.5, 0.25, 0.25) if version else (1 / 3, 1 / 3, 1 / 3),
        policy_version=version,
        created_at=at,
    )


@pytest.fixture
async def sqlite_db(sqlite_url: str) -> AsyncIterator[Database]:
    """A migrated SQLite database, for the tests whose queries the PostgreSQL ones cover."""
    db = Database(DatabaseConfig(url=sqlite_url))
    await ensure_schema(db, auto_migrate=True)
    try:
        yield db
    finally:
        await db.dispose()


class Stored(NamedTuple):
    start: datetime
    decisions: int


async def store(db: Database, agent_id: str, count: int) -> Stored:
    """``count`` decisions a second apart, rewarded 0/1; the second half served by v1."""
    start = datetime(2030, 1, 1, tzinfo=UTC)
    half = count // 2
    decisions = [
        decision(agent_id, i, start + timedelta(seconds=i), 1 if i >= half else None)
        for i in range(count)
    ]
    feedback = [
        Feedback(decision_id=d.id, reward=float(i % 2), created_at=d.created_at)
        for i, d in enumerate(decisions)
    ]
    artifact = b"weights"
    async with db.session() as session:
        await repositories.insert_decisions(session, decisions)
        await repositories.insert_feedback(session, feedback)
        await repositories.store_policy_version(
            session,
            PolicyVersion(
                agent_id=agent_id,
                version=1,
                learner="linear",
                artifact=artifact,
                sha256=hashlib.sha256(artifact).hexdigest(),
                status="active",
                validation={"passed": True, "validators": {"ope": {"passed": True}}},
                activated_at=start + timedelta(seconds=half),
            ),
        )
        await repositories.append_strategy_update(
            session,
            StrategyUpdate(
                agent_id=agent_id,
                kind="promote",
                previous={"active_version": None},
                updated={"active_version": 1},
                details={"candidate_version": 1},
                created_at=start + timedelta(seconds=half),
            ),
        )
    return Stored(start, count)


async def test_decisions_are_read_in_at_most_a_hundred_buckets(database: Database) -> None:
    stored = await store(database, "busy", 4320)
    async with database.connect() as connection:
        data = await read_agent(connection, "busy", 0, None)
    assert data.decisions == stored.decisions
    assert len(data.buckets) == MAX_BUCKETS
    assert sum(bucket.decisions for bucket in data.buckets) == stored.decisions
    assert sum(sum(bucket.counts.values()) for bucket in data.buckets) == stored.decisions
    assert all(
        left.end <= right.start for left, right in zip(data.buckets, data.buckets[1:], strict=False)
    )
    assert data.actions == ["a", "b", "c"]  # most chosen first
    assert data.live[None].decisions == data.live[1].decisions == stored.decisions // 2
    assert [(marker.kind, marker.label) for marker in data.markers] == [("promote", "v1")]


async def test_since_leaves_out_older_decisions(sqlite_db: Database) -> None:
    stored = await store(sqlite_db, "router", 200)
    since = stored.start + timedelta(seconds=150)
    async with sqlite_db.connect() as connection:
        data = await read_agent(connection, "router", 3, since)
    assert data.decisions == 50
    assert data.first == since
    assert set(data.live) == {1}
    assert data.markers == []  # the promotion came before


async def test_an_agent_without_knowledge_and_with_an_odd_id(
    sqlite_db: Database, tmp_path: Path
) -> None:
    agent = "team/router $cost$ <b>"
    await store(sqlite_db, agent, 30)
    config = load_config({"database": {"url": sqlite_db.url}})
    paths = await write_report(sqlite_db, config, tmp_path)
    document = paths.html.read_text(encoding="utf-8")
    assert html.escape(agent) in document
    assert agent not in document
    (images,) = paths.images.values()
    assert len(images) == len(CHARTS)
    for path in images:
        assert path.parent == tmp_path
        assert path.name.startswith("team_router")
        check_png(path.read_bytes())
    assert "No exploration_health knowledge yet" in document


async def test_unknown_agent_is_refused_before_anything_is_written(
    sqlite_db: Database, tmp_path: Path
) -> None:
    await store(sqlite_db, "router", 10)
    config = load_config({"database": {"url": sqlite_db.url}, "agents": {"idle": {}}})
    with pytest.raises(InvalidInputError, match=r"known agents: idle, router \(got 'nope'\)"):
        await write_report(sqlite_db, config, tmp_path / "out", ["router", "nope"])
    assert not (tmp_path / "out").exists()
    paths = await write_report(sqlite_db, config, tmp_path / "out", ["router", "idle", "router"])
    assert list(paths.images) == ["router", "idle"]


async def test_naive_since_is_refused(sqlite_db: Database, tmp_path: Path) -> None:
    config = load_config({"database": {"url": sqlite_db.url}})
    with pytest.raises(InvalidInputError, match="since"):
        await write_report(sqlite_db, config, tmp_path, since=datetime(2030, 1, 1))


# --- the command line ------------------------------------------------------------------------


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """An empty working directory and no configuration from the environment."""
    monkeypatch.delenv("AGENTRT_CONFIG", raising=False)
    monkeypatch.delenv("AGENTRT_DATABASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    # The commands configure structlog to write to the runner's (now closed) stderr.
    structlog.reset_defaults()


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def write_config(directory: Path, url: str) -> str:
    path = directory / "agentrt.yaml"
    document = {"database": {"url": url}, "logging": {"format": "json"}}
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return str(path)


@pytest.fixture
async def stored_config(sqlite_db: Database, tmp_path: Path) -> str:
    """A configuration naming no agent, for a database holding ``router``'s experience."""
    await store(sqlite_db, "router", 120)
    return write_config(tmp_path, sqlite_db.url)


@pytest.mark.usefixtures("anyio_backend")
def test_cli_writes_the_report_and_prints_its_paths(cli: Path, stored_config: str) -> None:
    result = invoke("report", "--config", stored_config, "--out", "site", "--agent", "router")
    assert result.exit_code == 0, result.output
    expected = [Path("site") / HTML_NAME, *(Path("site") / f"router-{c}.png" for c in CHARTS)]
    for path in expected:
        assert str(path) in result.stdout
        assert (cli / path).is_file()
    assert len(images_of((cli / expected[0]).read_text(encoding="utf-8"))) == len(CHARTS)


@pytest.mark.usefixtures("anyio_backend")
def test_cli_since_without_decisions_still_writes_a_report(cli: Path, stored_config: str) -> None:
    result = invoke("report", "-c", stored_config, "--since", "2031-01-01")
    assert result.exit_code == 0, result.output
    assert "router: no decisions" in result.stdout
    document = (cli / "agentrt-report" / HTML_NAME).read_text(encoding="utf-8")
    assert "decisions since 2031-01-01 00:00:00 UTC" in document
    assert "No decisions stored" in document


@pytest.mark.usefixtures("anyio_backend")
def test_cli_unknown_agent_fails_in_one_line(cli: Path, stored_config: str) -> None:
    result = invoke("report", "--config", stored_config, "--agent", "nope")
    assert result.exit_code == 1
    assert result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: agent: not configured and not in the database")
    assert "'nope'" in line
    assert not (cli / "agentrt-report").exists()


@pytest.mark.usefixtures("anyio_backend")
def test_cli_bad_since_fails_in_one_line(cli: Path, stored_config: str) -> None:
    result = invoke("report", "--config", stored_config, "--since", "last tuesday")
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: --since: must be an ISO 8601 time")


def test_cli_missing_database_fails_in_one_line(cli: Path) -> None:
    config = write_config(cli, f"sqlite+aiosqlite:///{cli / 'absent.db'}")
    result = invoke("report", "--config", config)
    assert result.exit_code == 1
    (line,) = result.stderr.strip().splitlines()
    assert "absent.db does not exist" in line
    assert not (cli / "absent.db").exists()


def test_cli_help_has_an_example() -> None:
    result = invoke("report", "--help")
    assert result.exit_code == 0
    assert "Example: agentrt report" in result.stdout
    for option in ("--config", "--out", "--agent", "--since"):
        assert option in result.stdout


async def test_the_same_data_gives_the_same_charts(sqlite_db: Database, tmp_path: Path) -> None:
    await store(sqlite_db, "router", 60)
    config = load_config({"database": {"url": sqlite_db.url}, "agents": {"router": AgentConfig()}})
    first = await write_report(sqlite_db, config, tmp_path / "one")
    second = await write_report(sqlite_db, config, tmp_path / "two")
    for one, two in zip(first.images["router"], second.images["router"], strict=True):
        assert one.read_bytes() == two.read_bytes()
