"""The ``agentrt`` command line, run in-process with typer's CliRunner.

These tests are plain ``def`` functions: the commands call ``anyio.run`` themselves.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
import yaml
from alembic.script import ScriptDirectory
from typer.core import TyperGroup
from typer.main import get_command
from typer.testing import CliRunner, Result

from agentrt.cli import app
from agentrt.config import load_config, mask_url
from agentrt.storage.migrate import alembic_config, head_revision

REPO = Path(__file__).resolve().parent.parent
SHIPPED_CONFIGS = sorted((REPO / "config").glob("*.yaml"))

INVALID_CONFIG = """\
runtime:
  buffer_size: -1
  durabilty: sync
agents:
  router:
    actions: [search, search]
"""


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Each command runs in an empty directory, with no configuration from the environment."""
    monkeypatch.delenv("AGENTRT_CONFIG", raising=False)
    monkeypatch.delenv("AGENTRT_DATABASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    yield
    # The commands configure structlog to write to the runner's (now closed) stderr.
    structlog.reset_defaults()


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def write_config(directory: Path, url: str, name: str = "agentrt.yaml") -> Path:
    path = directory / name
    path.write_text(
        yaml.safe_dump({"database": {"url": url}, "logging": {"format": "json"}}),
        encoding="utf-8",
    )
    return path


def table_names(database: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(database)) as connection:
        rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {str(row[0]) for row in rows}


def count_rows(database: Path, table: str) -> int:
    with contextlib.closing(sqlite3.connect(database)) as connection:
        (count,) = connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
        return int(count)


# --- config validate -------------------------------------------------------------------------


def test_shipped_configs_are_found() -> None:
    names = {path.name for path in SHIPPED_CONFIGS}
    assert {"agentrt.yaml", "full.yaml", "postgres.yaml"} <= names


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda path: path.name)
def test_validate_shipped_config(path: Path) -> None:
    result = invoke("config", "validate", str(path))
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"{path}: valid (")
    assert "agent" in lines[0]
    assert "database " in lines[0]


def test_validate_summary_counts_agents_and_masks_the_url(tmp_path: Path) -> None:
    path = tmp_path / "two.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "database": {"url": "postgresql+asyncpg://app:hunter2@db.internal/prod"},
                "agents": {"a": {"actions": ["x", "y"]}, "b": {"actions": ["x", "y"]}},
            }
        ),
        encoding="utf-8",
    )
    result = invoke("config", "validate", str(path))
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        f"{path}: valid (2 agents, database postgresql+asyncpg://app:***@db.internal/prod)\n"
    )
    assert "hunter2" not in result.output


def test_validate_reports_every_problem_with_its_key_path(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(INVALID_CONFIG, encoding="utf-8")
    result = invoke("config", "validate", str(path))

    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0] == f"3 configuration problems in {path}:"
    problems = [line.strip() for line in lines[1:]]
    assert len(problems) == 3
    assert "runtime.buffer_size: must be > 0 (got -1)" in problems
    assert any(
        line.startswith("runtime.durabilty: unknown key; did you mean 'durability'?")
        for line in problems
    )
    assert any(line.startswith("agents.router.actions: ") for line in problems)
    assert "Traceback" not in result.output


def test_validate_reports_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("runtime: [\n", encoding="utf-8")
    result = invoke("config", "validate", str(path))
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert lines[0] == f"1 configuration problem in {path}:"
    assert "invalid YAML" in lines[1]
    assert "line 2" in lines[1]


def test_validate_missing_file(tmp_path: Path) -> None:
    result = invoke("config", "validate", "--config", str(tmp_path / "nowhere.yaml"))
    assert result.exit_code == 2
    assert "cannot read the file" in result.stderr
    assert "Traceback" not in result.output


def test_validate_without_a_file_uses_the_defaults() -> None:
    # No config/agentrt.yaml in the working directory and no AGENTRT_CONFIG: all defaults.
    result = invoke("config", "validate")
    assert result.exit_code == 0, result.output
    assert "valid (0 agents, database sqlite+aiosqlite:///agentrt.db)" in result.stdout


def test_validate_reads_the_default_file_of_the_working_directory(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "agentrt.yaml").write_text(INVALID_CONFIG, encoding="utf-8")
    result = invoke("config", "validate")
    assert result.exit_code == 2
    assert "3 configuration problems in config/agentrt.yaml:" in result.stderr


def test_validate_prints_paths_verbatim(tmp_path: Path) -> None:
    directory = tmp_path / "[bold]configs"
    directory.mkdir()
    path = directory / "agentrt.yaml"
    path.write_text("agents: {}\n", encoding="utf-8")
    result = invoke("config", "validate", str(path))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"{path}: valid")


# --- config show -----------------------------------------------------------------------------


def test_show_prints_resolved_yaml_with_the_password_masked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hidden = "s3cr3t-Pa55word"
    monkeypatch.setenv("AGENTRT_TEST_DB_PASSWORD", hidden)
    path = tmp_path / "pg.yaml"
    path.write_text(
        "database:\n"
        "  url: postgresql+asyncpg://app:${AGENTRT_TEST_DB_PASSWORD}@db.internal:5432/prod\n"
        "agents:\n"
        "  router:\n"
        "    actions: [search, sql]\n",
        encoding="utf-8",
    )
    result = invoke("config", "show", str(path))

    assert result.exit_code == 0, result.output
    assert hidden not in result.output
    shown = yaml.safe_load(result.stdout)
    assert shown["database"]["url"] == "postgresql+asyncpg://app:***@db.internal:5432/prod"
    # Defaults are filled in and durations are rendered the way they are written.
    assert shown["runtime"]["durability"] == "buffered"
    assert shown["runtime"]["flush_interval"] == "100ms"
    assert shown["agents"]["router"]["actions"] == ["search", "sql"]
    # What `show` prints is itself a valid configuration.
    assert load_config(shown).agents["router"].actions == ["search", "sql"]


def test_show_masks_the_shipped_postgres_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGUSER", "agentrt_app")
    monkeypatch.setenv("PGPASSWORD", "correct-horse-battery")
    monkeypatch.setenv("PGHOST", "db.example")
    monkeypatch.setenv("PGPORT", "6543")
    monkeypatch.setenv("PGDATABASE", "prod")
    result = invoke("config", "show", str(REPO / "config" / "postgres.yaml"))
    assert result.exit_code == 0, result.output
    assert "correct-horse-battery" not in result.output
    shown = yaml.safe_load(result.stdout)
    assert shown["database"]["url"] == "postgresql+asyncpg://agentrt_app:***@db.example:6543/prod"
    assert shown["runtime"]["pipeline"] == "external"


def test_show_masks_a_password_given_as_a_query_parameter(tmp_path: Path) -> None:
    path = write_config(tmp_path, "postgresql+asyncpg://app@db.internal/prod?password=t0p-s3cret")
    result = invoke("config", "show", str(path))
    assert result.exit_code == 0, result.output
    assert "t0p-s3cret" not in result.output


def test_show_invalid_config_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(INVALID_CONFIG, encoding="utf-8")
    result = invoke("config", "show", str(path))
    assert result.exit_code == 2
    assert result.stdout == ""
    assert "runtime.buffer_size: must be > 0 (got -1)" in result.stderr


# --- choosing the file: --config and AGENTRT_CONFIG ------------------------------------------


@pytest.fixture
def two_configs(tmp_path: Path) -> tuple[Path, Path]:
    one = tmp_path / "one.yaml"
    one.write_text("agents:\n  solo:\n    actions: [a, b]\n", encoding="utf-8")
    two = tmp_path / "two.yaml"
    two.write_text(
        "agents:\n  first:\n    actions: [a, b]\n  second:\n    actions: [c, d]\n",
        encoding="utf-8",
    )
    return one, two


@pytest.mark.parametrize("option", ["--config", "-c"])
def test_config_option_selects_the_file(option: str, two_configs: tuple[Path, Path]) -> None:
    one, _ = two_configs
    result = invoke("config", "validate", option, str(one))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"{one}: valid (1 agent,")


def test_environment_variable_selects_the_file(
    two_configs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, two = two_configs
    monkeypatch.setenv("AGENTRT_CONFIG", str(two))
    validated = invoke("config", "validate")
    assert validated.exit_code == 0, validated.output
    assert validated.stdout.startswith(f"{two}: valid (2 agents,")
    shown = invoke("config", "show")
    assert shown.exit_code == 0, shown.output
    assert set(yaml.safe_load(shown.stdout)["agents"]) == {"first", "second"}


def test_option_wins_over_the_environment_variable(
    two_configs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    one, two = two_configs
    monkeypatch.setenv("AGENTRT_CONFIG", str(two))
    result = invoke("config", "show", "--config", str(one))
    assert result.exit_code == 0, result.output
    assert set(yaml.safe_load(result.stdout)["agents"]) == {"solo"}


def test_environment_variable_naming_a_missing_file_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTRT_CONFIG", str(tmp_path / "missing.yaml"))
    result = invoke("config", "validate")
    assert result.exit_code == 2
    assert "missing.yaml" in result.stderr
    assert "cannot read the file" in result.stderr


def test_db_commands_honour_the_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = tmp_path / "from-env.db"
    monkeypatch.setenv("AGENTRT_CONFIG", str(write_config(tmp_path, f"sqlite:///{database}")))
    result = invoke("db", "upgrade")
    assert result.exit_code == 0, result.output
    assert "decisions" in table_names(database)


# --- db upgrade / current / downgrade --------------------------------------------------------


# anyio_backend lets anyio's pytest plugin set up the async pg_url fixture behind db_url for
# this synchronous test.
@pytest.mark.usefixtures("anyio_backend")
def test_db_lifecycle(db_url: str, tmp_path: Path) -> None:
    head = head_revision()
    shown = mask_url(db_url)
    config = str(write_config(tmp_path, db_url))

    before = invoke("db", "current", "--config", config)
    assert before.exit_code == 1
    assert before.stdout.strip() == (
        f"{shown}: revision none (head {head}, behind: run `agentrt db upgrade`)"
    )

    upgraded = invoke("db", "upgrade", "--config", config)
    assert upgraded.exit_code == 0, upgraded.output
    assert upgraded.stdout.strip() == f"{shown}: base -> {head}"

    current = invoke("db", "current", "--config", config)
    assert current.exit_code == 0, current.output
    assert current.stdout.strip() == f"{shown}: revision {head} (head {head}, up to date)"

    again = invoke("db", "upgrade", "--config", config)
    assert again.exit_code == 0, again.output
    assert again.stdout.strip() == f"{shown}: {head} -> {head}"

    downgraded = invoke("db", "downgrade", "base", "--config", config)
    assert downgraded.exit_code == 0, downgraded.output
    assert downgraded.stdout.strip() == f"{shown}: {head} -> base"

    after = invoke("db", "current", "--config", config)
    assert after.exit_code == 1
    assert "revision none" in after.stdout

    for result in (before, upgraded, current, again, downgraded, after):
        assert "Traceback" not in result.output


def test_db_upgrade_creates_and_downgrade_drops_the_tables(tmp_path: Path) -> None:
    database = tmp_path / "schema.db"
    config = str(write_config(tmp_path, f"sqlite+aiosqlite:///{database}"))

    assert invoke("db", "upgrade", "-c", config).exit_code == 0
    tables = table_names(database)
    assert {"agents", "decisions", "feedback", "episodes", "policy_versions"} <= tables

    assert invoke("db", "downgrade", "base", "-c", config).exit_code == 0
    assert not {"agents", "decisions", "feedback"} & table_names(database)


def test_db_upgrade_logs_one_structured_line(tmp_path: Path) -> None:
    config = str(write_config(tmp_path, f"sqlite:///{tmp_path / 'logged.db'}"))
    result = invoke("db", "upgrade", "-c", config)
    assert result.exit_code == 0, result.output
    events = [yaml.safe_load(line) for line in result.stderr.splitlines()]
    assert [event["event"] for event in events] == ["schema_upgraded"]
    assert events[0]["after"] == head_revision()


def test_db_downgrade_needs_a_revision() -> None:
    result = invoke("db", "downgrade")
    assert result.exit_code == 2
    assert "Missing argument 'revision'" in result.stderr


def _previous_revision() -> str:
    revision = ScriptDirectory.from_config(alembic_config()).get_revision(head_revision())
    assert revision is not None
    down = revision.down_revision
    assert down is None or isinstance(down, str)
    return down or "base"


def test_db_downgrade_one_step_after_double_dash(tmp_path: Path) -> None:
    config = str(write_config(tmp_path, f"sqlite:///{tmp_path / 'steps.db'}"))
    assert invoke("db", "upgrade", "-c", config).exit_code == 0
    result = invoke("db", "downgrade", "-c", config, "--", "-1")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().endswith(f": {head_revision()} -> {_previous_revision()}")


def test_db_downgrade_one_step(tmp_path: Path) -> None:
    config = str(write_config(tmp_path, f"sqlite:///{tmp_path / 'steps.db'}"))
    assert invoke("db", "upgrade", "-c", config).exit_code == 0
    result = invoke("db", "downgrade", "-1", "-c", config)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().endswith(f": {head_revision()} -> {_previous_revision()}")


@pytest.mark.parametrize(
    "command",
    [["db", "upgrade"], ["db", "current"], ["db", "downgrade", "base"]],
    ids=lambda command: command[1],
)
def test_unreachable_database_fails_with_one_line(command: list[str], tmp_path: Path) -> None:
    url = "postgresql+asyncpg://agentrt:hunter2-secret@127.0.0.1:1/agentrt"
    config = str(write_config(tmp_path, url))
    result = invoke(*command, "--config", config)

    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: database postgresql+asyncpg://agentrt:***@127.0.0.1:1/")
    assert "hunter2-secret" not in result.output
    assert "Traceback" not in result.output


def test_failing_command_with_an_invalid_config_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(INVALID_CONFIG, encoding="utf-8")
    result = invoke("db", "current", "--config", str(path))
    assert result.exit_code == 2
    assert "runtime.buffer_size: must be > 0 (got -1)" in result.stderr


# --- help ------------------------------------------------------------------------------------


def _command_paths() -> list[tuple[str, ...]]:
    paths: list[tuple[str, ...]] = []

    def walk(command: object, path: tuple[str, ...]) -> None:
        paths.append(path)
        if isinstance(command, TyperGroup):
            for name, child in sorted(command.commands.items()):
                walk(child, (*path, name))

    walk(get_command(app), ())
    return paths


# Bug: the `config` and `db` groups' help has no example.


def _help_cases() -> list[object]:
    return [
        pytest.param(
            path,
            id=" ".join(path) or "agentrt",
        )
        for path in _command_paths()
    ]


def test_every_command_is_walked() -> None:
    assert set(_command_paths()) == {
        (),
        ("config",),
        ("config", "show"),
        ("config", "validate"),
        ("db",),
        ("db", "current"),
        ("db", "downgrade"),
        ("db", "upgrade"),
        ("demo",),
        ("export",),
        ("init",),
        ("prune",),
        ("report",),
        ("rollback",),
        ("sql",),
        ("status",),
        ("versions",),
        ("worker",),
    }


@pytest.mark.parametrize("path", _help_cases())
def test_help_has_an_example(path: tuple[str, ...]) -> None:
    result = invoke(*path, "--help")
    assert result.exit_code == 0, result.output
    assert "Example:" in result.stdout


# --- demo ------------------------------------------------------------------------------------


def test_demo_fast(tmp_path: Path) -> None:
    out = tmp_path / "demo-out"
    result = invoke("demo", "--fast", "--out", str(out))
    assert result.exit_code == 0, result.output
    database = out / "demo.db"
    assert database.is_file()
    # --fast: 6 rounds of 150 tickets (one decision of the router and one of the prompt
    # each) and 30 navigator episodes of up to 20 steps; every decision is rewarded.
    decisions = count_rows(database, "decisions")
    assert 1800 + 180 <= decisions <= 1800 + 180 * 20
    assert count_rows(database, "feedback") == decisions
    assert count_rows(database, "episodes") == 180
    assert "summary per agent" in result.stdout
    # Learned versions earn more than the baseline (policy_version NULL) for every agent.
    query = (
        "SELECT agent_id, AVG(CASE WHEN policy_version IS NULL THEN reward END), "
        "AVG(CASE WHEN policy_version IS NOT NULL THEN reward END) FROM experience "
        "WHERE agent_id IN ('router', 'prompt') GROUP BY agent_id"
    )
    with contextlib.closing(sqlite3.connect(database)) as connection:
        for agent, baseline, learned in connection.execute(query):
            assert learned > baseline + 0.05, agent
    # The report: one self-contained HTML file and the PNG charts of every agent.
    html = (out / "report" / "report.html").read_text()
    for agent in ("router", "prompt", "navigator"):
        assert (out / "report" / f"{agent}-reward.png").is_file()
        assert agent in html
    assert "".join(f"Report: {out / 'report' / 'report.html'}".split()) in "".join(
        result.stdout.split()
    )
    assert "agentrt sql --config" in result.stdout
    # Rich wraps this line at the console width; compare without whitespace.
    assert "".join(f"Stored in {database}".split()) in "".join(result.stdout.split())


def test_demo_relative_out_is_under_the_working_directory(tmp_path: Path) -> None:
    result = invoke("demo", "--fast", "--out", "relative-out", "--seed", "3")
    assert result.exit_code == 0, result.output
    assert count_rows(tmp_path / "relative-out" / "demo.db", "episodes") == 180


def test_demo_is_reproducible_under_a_seed(tmp_path: Path) -> None:
    def table(out: str) -> list[str]:
        result = invoke("demo", "--fast", "--seed", "11", "--out", str(tmp_path / out))
        assert result.exit_code == 0, result.output
        return [line for line in result.stdout.splitlines() if "│" in line]

    first = table("first")
    assert first
    assert table("second") == first
