"""The commands that read experience (`sql`, `versions`, `status`, `export`) and `init`.

Run in-process with typer's CliRunner against a database filled through agentrt's
repositories: once on an SQLite file and once on PostgreSQL (``db_url``). The tests are plain
``def`` functions because the commands call ``anyio.run`` themselves; the ``anyio_backend``
fixture lets anyio's plugin set up the async fixtures behind them.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import anyio
import pyarrow.parquet as pq
import pytest
import structlog
import yaml
from sqlalchemy import text
from typer.testing import CliRunner, Result

from agentrt.cli import app
from agentrt.cli import export as export_module
from agentrt.cli.init import STARTER_CONFIG
from agentrt.cli.sql import run_query, split_statements
from agentrt.cli.status import trend
from agentrt.cli.versions import validation_summary
from agentrt.clock import utcnow
from agentrt.config import AgentConfig, DatabaseConfig, load_config
from agentrt.errors import StorageError
from agentrt.schemas import Decision, Feedback, Knowledge, PolicyVersion, StrategyUpdate
from agentrt.storage import repositories
from agentrt.storage.engine import Database
from agentrt.storage.migrate import ensure_schema
from agentrt.storage.tables import experience_view

REPO = Path(__file__).resolve().parent.parent
ACTIONS = ("a", "b", "c")
EXPERIENCE_COLUMNS = [column.name for column in experience_view.columns]

# (age, reward) of the router's decisions; None: no reward yet.
ROUTER = [
    *[(timedelta(minutes=10), reward) for reward in (1.0, 0.0, None)],
    *[(timedelta(hours=5), reward) for reward in (1.0, 1.0, 0.5, None)],
    *[(timedelta(days=3), reward) for reward in (0.0, 0.0, 1.0, 0.5, None)],
]


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


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def write_config(directory: Path, url: str, agents: dict[str, Any] | None = None) -> str:
    path = directory / "agentrt.yaml"
    document = {"database": {"url": url}, "logging": {"format": "json"}, "agents": agents or {}}
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return str(path)


def scalar(url: str, query: str) -> object:
    """One value read with a connection of its own (the command's are closed by then)."""

    async def run() -> object:
        db = Database(DatabaseConfig(url=url))
        try:
            async with db.connect() as connection:
                return (await connection.execute(text(query))).scalar_one()
        finally:
            await db.dispose()

    return anyio.run(run)


def _table_rows(output: str) -> list[list[str]]:
    """The cells of a rich table's body rows."""
    return [
        [cell.strip() for cell in line.split("│")[1:-1]]
        for line in output.splitlines()
        if line.startswith("│")
    ]


class Seeded(NamedTuple):
    url: str
    config: str
    now: datetime


def _decision(agent_id: str, index: int, created_at: datetime) -> Decision:
    action = index % len(ACTIONS)
    return Decision(
        agent_id=agent_id,
        action=ACTIONS[action],
        action_index=action,
        actions=ACTIONS,
        context={"topic": f"t{index % 2}", "n": index},
        propensity=1 / 3,
        probabilities=(1 / 3, 1 / 3, 1 / 3),
        created_at=created_at,
    )


def _version(version: int, status: str, validation: dict[str, Any], **fields: Any) -> PolicyVersion:
    artifact = f"weights v{version}".encode()
    return PolicyVersion.model_validate(
        {
            "agent_id": "router",
            "version": version,
            "learner": "linear",
            "artifact": artifact,
            "sha256": hashlib.sha256(artifact).hexdigest(),
            "status": status,
            "validation": validation,
            **fields,
        }
    )


@pytest.fixture
async def seeded(database: Database, tmp_path: Path) -> Seeded:
    """The router's experience, three policy versions, learning cycles and a strategy update;
    a second agent with two decisions that no router query may return."""
    now = utcnow()
    decisions, feedback = [], []
    for index, (age, reward) in enumerate(ROUTER):
        # A second apart within each group, so that the oldest row is always index 7.
        decision = _decision("router", index, now - age + timedelta(seconds=index))
        decisions.append(decision)
        if reward is not None:
            feedback.append(
                Feedback(
                    decision_id=decision.id,
                    reward=reward,
                    outcome={"ok": reward > 0},
                    created_at=now - age + timedelta(seconds=1),
                )
            )
    decisions += [_decision("helper", index, now - timedelta(minutes=1)) for index in range(2)]
    # v1 carries the first report format, v2 and v3 the report of run_validators.
    old_format = {"sanity": {"passed": True, "checks": {"weights_finite": True}}}
    passed = {
        "passed": True,
        "reasons": [],
        "validators": {
            "sanity": {"passed": True, "reason": "finite", "details": {"weights_finite": True}},
            "ope": {"passed": True, "reason": "better", "details": {"rows": 80}},
        },
    }
    failed = {
        "passed": False,
        "reasons": ["sanity: failed: weights_finite"],
        "validators": {
            "sanity": {
                "passed": False,
                "reason": "failed: weights_finite",
                "details": {"weights_finite": False, "estimates_finite": True},
            }
        },
    }
    async with database.session() as session:
        agents = {"router": AgentConfig(actions=list(ACTIONS)), "helper": AgentConfig()}
        await repositories.upsert_agents(session, agents)
        await repositories.insert_decisions(session, decisions)
        await repositories.insert_feedback(session, feedback)
        versions = [
            _version(
                1,
                "retired",
                old_format,
                metrics={"rows": 40, "holdout_mse": 0.123456},
                status_reason="superseded by v2",
                created_at=now - timedelta(hours=3),
                activated_at=now - timedelta(hours=3),
            ),
            _version(
                2,
                "active",
                passed,
                parent_version=1,
                metrics={"rows": 50, "holdout_mse": 0.05},
                created_at=now - timedelta(hours=2),
                activated_at=now - timedelta(hours=2),
            ),
            _version(
                3,
                "rejected",
                failed,
                parent_version=2,
                status_reason="sanity checks failed",
                created_at=now - timedelta(hours=1),
            ),
        ]
        for version in versions:
            await repositories.store_policy_version(session, version)
        health = {
            "normalized_entropy": 0.87,
            "coverage": 1.0,
            "min_propensity": 0.0333,
            "reward_staleness_seconds": 12.0,
        }
        await repositories.insert_knowledge(
            session, [Knowledge(agent_id="router", kind="exploration_health", payload=health)]
        )
        for status in ("activated", "rejected"):
            await repositories.record_metric(
                session,
                "learning_cycle",
                0.5,
                agent_id="router",
                stage="updater",
                details={"status": status, "rows": 9},
            )
        await repositories.append_strategy_update(
            session,
            StrategyUpdate(
                agent_id="router",
                kind="exploration",
                previous={"epsilon": 0.1},
                updated={"epsilon": 0.09},
                created_at=now - timedelta(minutes=30),
            ),
        )
    agents_config = {"router": {"actions": list(ACTIONS)}, "helper": {}}
    return Seeded(database.url, write_config(tmp_path, database.url, agents_config), now)


# --- help ------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["sql", "versions", "status", "export", "init"])
def test_help_has_an_example(command: str) -> None:
    result = invoke(command, "--help")
    assert result.exit_code == 0, result.output
    assert "Example:" in result.stdout
    assert "--config" in result.stdout


# --- sql -------------------------------------------------------------------------------------


@pytest.mark.usefixtures("anyio_backend")
def test_sql_prints_the_rows_of_a_select(seeded: Seeded) -> None:
    query = (
        "SELECT action, COUNT(*) AS n, SUM(reward) AS total FROM experience "
        "WHERE agent_id = 'router' GROUP BY action ORDER BY action"
    )
    as_csv = invoke("sql", query, "--format", "csv", "--config", seeded.config)
    assert as_csv.exit_code == 0, as_csv.output
    rows = list(csv.reader(io.StringIO(as_csv.stdout)))
    assert rows[0] == ["action", "n", "total"]
    # Actions go round a, b, c by index; the sums follow from ROUTER.
    sums = {action: 0.0 for action in ACTIONS}
    for index, (_, reward) in enumerate(ROUTER):
        sums[ACTIONS[index % 3]] += reward or 0.0
    assert sums == {"a": 3.0, "b": 1.5, "c": 0.5}
    assert [(row[0], int(row[1]), float(row[2])) for row in rows[1:]] == [
        (action, 4, total) for action, total in sums.items()
    ]

    as_table = invoke("sql", query, "--config", seeded.config)
    assert as_table.exit_code == 0, as_table.output
    assert _table_rows(as_table.stdout) == [["a", "4", "3.0"], ["b", "4", "1.5"], ["c", "4", "0.5"]]
    assert "3 rows" in as_table.stdout


@pytest.mark.usefixtures("anyio_backend")
def test_sql_json_output(seeded: Seeded) -> None:
    query = (
        "SELECT agent_id, COUNT(*) AS n, MAX(feedback_count) AS n, NULL AS missing "
        "FROM experience GROUP BY agent_id ORDER BY agent_id"
    )
    result = invoke("sql", query, "-f", "json", "-c", seeded.config)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [
        {"agent_id": "helper", "n": 2, "n_2": 0, "missing": None},
        {"agent_id": "router", "n": 12, "n_2": 1, "missing": None},
    ]


@pytest.mark.usefixtures("anyio_backend")
def test_sql_caps_rows_at_the_limit(seeded: Seeded) -> None:
    query = "SELECT id FROM decisions"
    result = invoke("sql", query, "--limit", "5", "--format", "csv", "--config", seeded.config)
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 1 + 5
    assert result.stderr.strip() == (
        "note: only the first 5 rows are shown; raise --limit to see more"
    )
    whole = invoke("sql", query, "--limit", "14", "--format", "csv", "--config", seeded.config)
    assert len(whole.stdout.splitlines()) == 1 + 14
    assert whole.stderr == ""


WRITES = [
    "INSERT INTO agents (agent_id, reward_combine, config, updated_at) "
    "VALUES ('intruder', 'last', '{}', CURRENT_TIMESTAMP)",
    "UPDATE decisions SET action = 'zzz'",
    "DELETE FROM decisions",
    "WITH doomed AS (SELECT id FROM decisions) DELETE FROM decisions WHERE id IN "
    "(SELECT id FROM doomed)",
    "CREATE TABLE scratch (x INTEGER)",
    "DROP VIEW experience",
    "DROP TABLE feedback",
    "ALTER TABLE decisions ADD COLUMN extra INTEGER",
]


@pytest.mark.usefixtures("anyio_backend")
@pytest.mark.parametrize("statement", WRITES, ids=lambda s: " ".join(s.split()[:2]))
def test_sql_refuses_writes(seeded: Seeded, statement: str) -> None:
    before = (
        scalar(seeded.url, "SELECT COUNT(*) FROM decisions"),
        scalar(seeded.url, "SELECT COUNT(*) FROM agents"),
        scalar(seeded.url, "SELECT COUNT(*) FROM experience"),
        scalar(seeded.url, "SELECT COUNT(*) FROM decisions WHERE action = 'zzz'"),
    )
    result = invoke("sql", statement, "--config", seeded.config)

    assert result.exit_code == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: agentrt sql is read-only: ")
    after = (
        scalar(seeded.url, "SELECT COUNT(*) FROM decisions"),
        scalar(seeded.url, "SELECT COUNT(*) FROM agents"),
        scalar(seeded.url, "SELECT COUNT(*) FROM experience"),
        scalar(seeded.url, "SELECT COUNT(*) FROM decisions WHERE action = 'zzz'"),
    )
    assert after == before == (14, 2, 14, 0)
    assert "Traceback" not in result.output


@pytest.mark.usefixtures("anyio_backend")
@pytest.mark.parametrize(
    "statements",
    [
        "SELECT 1; SELECT 2",
        "SELECT 1; INSERT INTO agents (agent_id, reward_combine, config, updated_at) "
        "VALUES ('x', 'last', '{}', CURRENT_TIMESTAMP)",
        "SELECT ';'; DELETE FROM decisions; -- done",
    ],
)
def test_sql_refuses_several_statements(seeded: Seeded, statements: str) -> None:
    result = invoke("sql", statements, "--config", seeded.config)
    assert result.exit_code == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: agentrt sql runs one statement at a time")
    assert scalar(seeded.url, "SELECT COUNT(*) FROM decisions") == 14
    assert scalar(seeded.url, "SELECT COUNT(*) FROM agents") == 2


@pytest.mark.usefixtures("anyio_backend")
@pytest.mark.parametrize(
    ("statement", "refusal"),
    [
        ("SELECT 1; DELETE FROM decisions", "agentrt sql runs one statement at a time"),
        ("DELETE FROM decisions", "agentrt sql is read-only: "),
    ],
)
def test_the_database_itself_refuses(seeded: Seeded, statement: str, refusal: str) -> None:
    # Past the statement splitter: the driver and the database refuse on their own.
    with pytest.raises(StorageError, match=f"^{refusal}"):
        anyio.run(run_query, DatabaseConfig(url=seeded.url), statement, 10)
    assert scalar(seeded.url, "SELECT COUNT(*) FROM decisions") == 14


@pytest.mark.usefixtures("anyio_backend")
def test_sql_accepts_a_trailing_semicolon_and_comments(seeded: Seeded) -> None:
    query = "-- how many?\nSELECT COUNT(*) AS n /* all agents */ FROM decisions;  -- the end\n"
    result = invoke("sql", query, "--format", "csv", "--config", seeded.config)
    assert result.exit_code == 0, result.output
    assert result.stdout == "n\n14\n"


@pytest.mark.usefixtures("anyio_backend")
def test_sql_reports_bad_sql_in_one_line(seeded: Seeded) -> None:
    result = invoke("sql", "SELEC nothing FROM nowhere", "--config", seeded.config)
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: database ")
    assert "Traceback" not in result.output


def test_sql_needs_a_statement(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'none.db'}")
    result = invoke("sql", "  -- nothing\n", "--config", config)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: agentrt sql needs a statement")


def _migrated_sqlite(tmp_path: Path) -> Path:
    path = tmp_path / "agentrt.db"

    async def run() -> None:
        db = Database(DatabaseConfig(url=f"sqlite+aiosqlite:///{path}"))
        try:
            await ensure_schema(db, auto_migrate=True)
        finally:
            await db.dispose()

    anyio.run(run)
    return path


@pytest.mark.parametrize(
    "statement",
    [
        "ATTACH DATABASE 'attached.db' AS other",
        "VACUUM INTO 'copy.db'",
        "VACUUM",
        "PRAGMA user_version = 42",
        "BEGIN",
    ],
)
def test_sql_on_sqlite_writes_no_file(tmp_path: Path, statement: str) -> None:
    database = _migrated_sqlite(tmp_path)
    config = write_config(tmp_path, f"sqlite:///{database}")
    files = {path.name for path in tmp_path.iterdir()}
    result = invoke("sql", statement, "--config", config)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: agentrt sql is read-only: ")
    assert not {"attached.db", "copy.db"} & {path.name for path in tmp_path.iterdir()}
    assert {path.name for path in tmp_path.iterdir()} <= files | {
        "agentrt.db-wal",
        "agentrt.db-shm",
    }
    assert scalar(f"sqlite+aiosqlite:///{database}", "PRAGMA user_version") == 0


def test_sql_on_a_missing_sqlite_file_creates_nothing(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'data' / 'missing.db'}")
    result = invoke("sql", "SELECT 1", "--config", config)
    assert result.exit_code == 1
    assert "missing.db does not exist" in result.stderr
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("SELECT 1", ["SELECT 1"]),
        ("SELECT 1;", ["SELECT 1"]),
        (" ; ;SELECT 1;; ", ["SELECT 1"]),
        ("SELECT 1; SELECT 2", ["SELECT 1", "SELECT 2"]),
        ("SELECT 'a;b', \"c;d\", `e;f`", ["SELECT 'a;b', \"c;d\", `e;f`"]),
        ("SELECT 'it''s; fine'", ["SELECT 'it''s; fine'"]),
        ("SELECT E'it\\'s; fine'", ["SELECT E'it\\'s; fine'"]),
        ("SELECT 'back\\'; SELECT 2", ["SELECT 'back\\'", "SELECT 2"]),
        ("SELECT 1 -- one; two\n", ["SELECT 1 -- one; two"]),
        ("SELECT /* ; */ 1", ["SELECT /* ; */ 1"]),
        ("SELECT $$a;b$$, $tag$c;$$d$tag$", ["SELECT $$a;b$$, $tag$c;$$d$tag$"]),
        ("SELECT $1; SELECT 2", ["SELECT $1", "SELECT 2"]),
        ("-- only a comment", []),
        ("/* only; a comment */ ;", []),
        ("", []),
    ],
)
def test_split_statements(text: str, expected: list[str]) -> None:
    assert split_statements(text) == expected


# --- versions --------------------------------------------------------------------------------


@pytest.mark.usefixtures("anyio_backend")
def test_versions_lists_lineage_metrics_and_validation(seeded: Seeded) -> None:
    result = invoke("versions", "router", "--config", seeded.config)
    assert result.exit_code == 0, result.output
    assert "router: 3 policy versions, active v2" in result.stdout
    rows = _table_rows(result.stdout)
    assert [row[:5] for row in rows] == [
        ["v1", "-", "linear", "retired", "superseded by v2"],
        ["v2", "v1", "linear", "active", "-"],
        ["v3", "v2", "linear", "rejected", "sanity checks failed"],
    ]
    assert [row[7:] for row in rows] == [
        ["40", "0.1235", "passed: sanity"],
        ["50", "0.05", "passed: ope, sanity"],
        ["-", "-", "failed: sanity (weights_finite)"],
    ]
    created = seeded.now - timedelta(hours=2)
    assert rows[1][5] == created.strftime("%Y-%m-%d %H:%M:%S")
    assert rows[1][6] == created.strftime("%Y-%m-%d %H:%M:%S")
    assert rows[2][6] == "-"


@pytest.mark.usefixtures("anyio_backend")
def test_versions_of_an_agent_without_any(seeded: Seeded) -> None:
    result = invoke("versions", "helper", "--config", seeded.config)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.strip() == (
        "error: agent 'helper' has no policy versions yet; its baseline serves"
    )


def test_validation_summary() -> None:
    assert validation_summary(None) == "-"
    assert validation_summary({}) == "-"
    assert validation_summary({"sanity": {"passed": True}}) == "passed: sanity"
    assert (
        validation_summary(
            {
                "sanity": {"passed": False, "checks": {"a": False, "b": True, "c": False}},
                "offline": {"passed": False},
                "notes": "not a report",
            }
        )
        == "failed: offline, sanity (a, c)"
    )
    report = {
        "passed": False,
        "reasons": ["ope: worse than the baseline"],
        "validators": {
            "sanity": {"passed": True, "reason": "finite", "details": {"weights_finite": True}},
            "ope": {"passed": False, "reason": "worse than the baseline", "details": {"n": 9}},
            "latency": {"passed": False, "reason": "slow", "details": {"fast": False}},
        },
    }
    assert validation_summary(report) == "failed: latency (fast), ope; passed: sanity"


# --- status ----------------------------------------------------------------------------------


def _status_fields(output: str) -> dict[str, dict[str, str]]:
    """{agent: {field: value}} from the per-agent tables."""
    agents: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for line in output.splitlines():
        if line.strip() and not line.startswith(("│", "┏", "┡", "└", "┌", "├", "╭", "╰")):
            name = line.strip()
            if " at " not in name:  # the header line names the database
                current = agents.setdefault(name, {})
        elif line.startswith("│"):
            field, value = (cell.strip() for cell in line.split("│")[1:-1])
            current[field] = value
    return agents


async def _store_canary(url: str) -> None:
    db = Database(DatabaseConfig(url=url))
    try:
        async with db.session() as session:
            canary = _version(4, "canary", {"passed": True}, parent_version=2)
            await repositories.store_policy_version(session, canary)
    finally:
        await db.dispose()


@pytest.mark.usefixtures("anyio_backend")
def test_status_of_each_configured_agent(seeded: Seeded) -> None:
    anyio.run(_store_canary, seeded.url)
    result = invoke("status", "--config", seeded.config)
    assert result.exit_code == 0, result.output
    agents = _status_fields(result.stdout)
    assert set(agents) == {"router", "helper"}
    router = agents["router"]
    assert router["policy"] == "v2 (linear)"
    assert router["canary"] == "v4 (linear), 10% of decisions"
    assert router["exploration health"] == (
        "entropy 0.87 of 1, coverage 100%, min propensity 0.0333, reward staleness 12 s"
    )
    assert router["decisions"] == "3 (1h) · 7 (24h) · 12 (all)"
    assert router["rewarded"] == "9 of 12 (75.0%)"
    rewards = [reward for _, reward in ROUTER if reward is not None]
    assert router["mean reward"] == f"{sum(rewards) / len(rewards):.4g} (last 9)"
    assert router["last learning cycle"].startswith("rejected, ")
    update = seeded.now - timedelta(minutes=30)
    assert router["last strategy update"] == f"exploration, {update:%Y-%m-%d %H:%M:%S}"
    helper = agents["helper"]
    assert helper == {
        "policy": "baseline",
        "canary": "-",
        "exploration health": "-",
        "decisions": "2 (1h) · 2 (24h) · 2 (all)",
        "rewarded": "0 of 2 (0.0%)",
        "mean reward": "-",
        "last learning cycle": "-",
        "last strategy update": "-",
    }


@pytest.mark.usefixtures("anyio_backend", "database")
def test_status_on_an_empty_database(db_url: str, tmp_path: Path) -> None:
    config = write_config(tmp_path, db_url, {"router": {"actions": ["a", "b"]}})
    result = invoke("status", "--config", config)
    assert result.exit_code == 0, result.output
    assert _status_fields(result.stdout) == {
        "router": {
            "policy": "baseline",
            "canary": "-",
            "exploration health": "-",
            "decisions": "0 (1h) · 0 (24h) · 0 (all)",
            "rewarded": "0 of 0",
            "mean reward": "-",
            "last learning cycle": "-",
            "last strategy update": "-",
        }
    }


@pytest.mark.usefixtures("anyio_backend", "database")
def test_status_without_configured_agents(db_url: str, tmp_path: Path) -> None:
    config = write_config(tmp_path, db_url)
    result = invoke("status", "--config", config)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"no agents: configure them under `agents` in {config}"


@pytest.mark.usefixtures("anyio_backend")
def test_status_falls_back_to_the_agents_in_the_database(seeded: Seeded, tmp_path: Path) -> None:
    config = write_config(tmp_path, seeded.url)
    result = invoke("status", "--config", config)
    assert result.exit_code == 0, result.output
    assert set(_status_fields(result.stdout)) == {"helper", "router"}


@pytest.mark.usefixtures("anyio_backend")
def test_status_needs_the_schema(db_url: str, tmp_path: Path) -> None:
    if db_url.startswith("sqlite"):
        (tmp_path / "agentrt.db").touch()  # an existing file, without agentrt's tables
    config = write_config(tmp_path, db_url, {"router": {}})
    result = invoke("status", "--config", config)
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert "no agentrt schema" in lines[0]
    assert "agentrt db upgrade" in lines[0]


def test_status_on_a_missing_sqlite_file_creates_nothing(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'missing.db'}", {"router": {}})
    result = invoke("status", "--config", config)
    assert result.exit_code == 1
    assert "missing.db does not exist" in result.stderr
    assert "agentrt db upgrade" in result.stderr
    assert not (tmp_path / "missing.db").exists()


def test_trend() -> None:
    assert trend([], []) == ""
    assert trend([1.0, 0.0], [1.0]) == ""
    assert trend([1.0, 1.0, 0.9, 1.0], [0.0, 0.1, 0.0, 0.0]) == "↑"
    assert trend([0.0, 0.1, 0.0, 0.0], [1.0, 1.0, 0.9, 1.0]) == "↓"
    assert trend([1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]) == "→"
    assert trend([0.5, 0.5], [0.5, 0.5]) == "→"


# --- export ----------------------------------------------------------------------------------


@pytest.mark.usefixtures("anyio_backend")
def test_export_csv(seeded: Seeded, tmp_path: Path) -> None:
    out = tmp_path / "exports" / "router.csv"
    result = invoke("export", "--agent", "router", "--out", str(out), "--config", seeded.config)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"12 rows of router written to {out} (csv)"
    with out.open(newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == EXPERIENCE_COLUMNS
    assert len(rows) == 12
    assert {row["agent_id"] for row in rows} == {"router"}
    created = [datetime.fromisoformat(row["created_at"]) for row in rows]
    assert created == sorted(created)
    assert created[0].utcoffset() == timedelta(0)
    first = rows[0]
    assert json.loads(first["context"]) == {"topic": "t1", "n": 7}
    assert json.loads(first["actions"]) == list(ACTIONS)
    assert first["reward"] == "0.0"
    assert json.loads(first["outcome"]) == {"ok": False}
    unrewarded = [row for row in rows if row["feedback_count"] == "0"]
    assert len(unrewarded) == 3
    assert all(row["reward"] == "" and row["outcome"] == "" for row in unrewarded)
    assert not list(tmp_path.joinpath("exports").glob(".*partial"))


@pytest.mark.usefixtures("anyio_backend")
def test_export_parquet_in_chunks(
    seeded: Seeded, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export_module, "CHUNK_ROWS", 5)
    out = tmp_path / "router.parquet"
    result = invoke("export", "-a", "router", "-o", str(out), "-c", seeded.config)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"12 rows of router written to {out} (parquet)"
    assert pq.ParquetFile(out).metadata.num_row_groups == 3
    table = pq.read_table(out)
    assert table.num_rows == 12
    assert table.column_names == EXPERIENCE_COLUMNS
    assert str(table.schema.field("created_at").type) == "timestamp[us, tz=UTC]"
    assert str(table.schema.field("reward").type) == "double"
    assert str(table.schema.field("context").type) == "string"
    rows = table.to_pylist()
    assert json.loads(rows[0]["context"]) == {"topic": "t1", "n": 7}
    assert json.loads(rows[0]["probabilities"]) == pytest.approx([1 / 3] * 3)
    assert sorted(row["reward"] for row in rows if row["reward"] is not None) == sorted(
        reward for _, reward in ROUTER if reward is not None
    )
    created = [row["created_at"] for row in rows]
    assert created == sorted(created)


@pytest.mark.usefixtures("anyio_backend")
@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_export_a_time_range(seeded: Seeded, tmp_path: Path, kind: str) -> None:
    since = (seeded.now - timedelta(days=1)).isoformat()
    until = (seeded.now - timedelta(hours=1)).replace(tzinfo=None).isoformat()  # naive: UTC
    out = tmp_path / "range.out"
    result = invoke(
        "export", "--agent", "router", "--since", since, "--until", until,
        "--format", kind, "--out", str(out), "--config", seeded.config,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("4 rows of router")
    if kind == "parquet":
        assert pq.read_table(out).num_rows == 4
    else:
        assert len(out.read_text(encoding="utf-8").splitlines()) == 1 + 4


@pytest.mark.usefixtures("anyio_backend")
@pytest.mark.parametrize("name", ["empty.csv", "empty.parquet"])
def test_export_nothing_writes_an_empty_file(seeded: Seeded, tmp_path: Path, name: str) -> None:
    out = tmp_path / name
    result = invoke("export", "--agent", "nobody", "--out", str(out), "--config", seeded.config)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"0 rows of nobody written to {out} ({out.suffix[1:]})"
    if out.suffix == ".parquet":
        table = pq.read_table(out)
        assert (table.num_rows, table.column_names) == (0, EXPERIENCE_COLUMNS)
    else:
        assert out.read_text(encoding="utf-8") == ",".join(EXPERIENCE_COLUMNS) + "\n"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--since", "yesterday"], "--since: must be an ISO 8601 time"),
        (["--since", "2030-02-01", "--until", "2030-01-01"], "must be before --until"),
        (["--out", "router.txt"], "pass --format parquet or csv"),
    ],
)
def test_export_refuses_bad_arguments(tmp_path: Path, arguments: list[str], message: str) -> None:
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'agentrt.db'}")
    out = [] if "--out" in arguments else ["--out", "router.csv"]
    result = invoke("export", "--agent", "router", *out, *arguments, "--config", config)
    assert result.exit_code == 2
    assert message in result.stderr
    assert not list(tmp_path.glob("router*"))


@pytest.mark.usefixtures("anyio_backend")
def test_export_to_an_unwritable_place(seeded: Seeded, tmp_path: Path) -> None:
    (tmp_path / "occupied").write_text("a file, not a directory", encoding="utf-8")
    out = tmp_path / "occupied" / "router.csv"
    result = invoke("export", "--agent", "router", "--out", str(out), "--config", seeded.config)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: cannot write {out}: ")
    assert len(result.stderr.splitlines()) == 1


def test_export_needs_the_schema(tmp_path: Path) -> None:
    (tmp_path / "agentrt.db").touch()
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'agentrt.db'}")
    out = tmp_path / "router.csv"
    result = invoke("export", "--agent", "router", "--out", str(out), "--config", config)
    assert result.exit_code == 1
    assert "agentrt db upgrade" in result.stderr
    assert list(tmp_path.glob("*router*")) == []


# --- failures ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["sql", "SELECT 1"],
        ["versions", "router"],
        ["status"],
        ["export", "--agent", "router", "--out", "router.csv"],
    ],
    ids=lambda command: command[0],
)
def test_unreachable_database_fails_with_one_line(command: list[str], tmp_path: Path) -> None:
    url = "postgresql+asyncpg://agentrt:hunter2-secret@127.0.0.1:1/agentrt"
    config = write_config(tmp_path, url, {"router": {}})
    result = invoke(*command, "--config", config)

    assert result.exit_code == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: database postgresql+asyncpg://agentrt:***@127.0.0.1:1/")
    assert "hunter2-secret" not in result.output
    assert not list(tmp_path.glob("*router*"))


# --- init ------------------------------------------------------------------------------------


def test_init_writes_a_valid_config_and_refuses_to_overwrite(tmp_path: Path) -> None:
    result = invoke("init")
    path = tmp_path / "config" / "agentrt.yaml"
    assert result.exit_code == 0, result.output
    assert path.read_text(encoding="utf-8") == STARTER_CONFIG
    assert result.stdout.strip() == (
        "wrote config/agentrt.yaml; check it with `agentrt config validate config/agentrt.yaml`"
    )

    validated = invoke("config", "validate")
    assert validated.exit_code == 0, validated.output
    assert validated.stdout.startswith("config/agentrt.yaml: valid (1 agent, database sqlite")

    path.write_text("# mine\n", encoding="utf-8")
    again = invoke("init")
    assert again.exit_code == 1
    assert again.stderr.strip() == (
        "error: config/agentrt.yaml already exists; pass --force to replace it"
    )
    assert path.read_text(encoding="utf-8") == "# mine\n"

    forced = invoke("init", "--force")
    assert forced.exit_code == 0, forced.output
    assert path.read_text(encoding="utf-8") == STARTER_CONFIG


def test_init_at_a_path(tmp_path: Path) -> None:
    path = tmp_path / "deploy" / "agents.yaml"
    result = invoke("init", str(path))
    assert result.exit_code == 0, result.output
    validated = invoke("config", "validate", str(path))
    assert validated.exit_code == 0, validated.output
    assert not (tmp_path / "config").exists()


def test_init_honours_the_config_option(tmp_path: Path) -> None:
    result = invoke("init", "--config", "elsewhere.yaml")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "elsewhere.yaml").read_text(encoding="utf-8") == STARTER_CONFIG


def test_init_refuses_a_directory(tmp_path: Path) -> None:
    (tmp_path / "somewhere").mkdir()
    result = invoke("init", "somewhere")
    assert result.exit_code == 1
    assert "is a directory" in result.stderr


def test_starter_config_is_the_shipped_default() -> None:
    # Wheels carry no config/ directory, so the starter is embedded; it must not drift.
    shipped = (REPO / "config" / "agentrt.yaml").read_text(encoding="utf-8")
    assert STARTER_CONFIG.endswith("\n\n" + shipped)
    header = STARTER_CONFIG.removesuffix(shipped)
    assert all(line.startswith("#") for line in header.strip().splitlines())
    assert load_config(yaml.safe_load(STARTER_CONFIG)) == load_config(REPO / "config/agentrt.yaml")
