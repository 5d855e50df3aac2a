"""``agentrt demo``: watch agents learn, on an embedded SQLite file, in about a minute."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import anyio
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import text

from agentrt.cli.common import DEFAULT_CONFIG, ConfigOption, console, handle_errors, load
from agentrt.config import DatabaseConfig, load_config
from agentrt.demo import DemoResult, RoundResult, demo_config, run_demo
from agentrt.report import ReportPaths, write_report
from agentrt.storage.engine import Database

__all__ = ["demo"]

QUERIES = (
    (
        "reward per agent and version",
        "SELECT agent_id, policy_version, COUNT(*) AS decisions, ROUND(AVG(reward), 3) AS reward "
        "FROM experience GROUP BY agent_id, policy_version ORDER BY agent_id, policy_version",
    ),
    (
        "which tool works for which topic",
        "SELECT context->>'topic' AS topic, action, COUNT(*) AS n, ROUND(AVG(reward), 3) AS reward "
        "FROM experience WHERE agent_id = 'router' GROUP BY 1, 2 ORDER BY 1, 4 DESC",
    ),
    (
        "the version history",
        "SELECT agent_id, version, status, status_reason, activated_at FROM policy_versions "
        "ORDER BY agent_id, version",
    ),
)


@handle_errors
def demo(
    config: ConfigOption = DEFAULT_CONFIG,
    out: Annotated[Path, typer.Option(help="Directory for the demo database.")] = Path(
        "agentrt-demo"
    ),
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same run.")] = 7,
    fast: Annotated[bool, typer.Option(help="A short run, for tests.")] = False,
) -> None:
    """Simulated applications learn with agentrt; prints their progress and what was stored.

    A support-ticket router picks tools, a second agent picks prompt templates and a third
    walks a corridor in episodes (dqn), all through agentrt's public API. Each round they
    decide and report rewards, then a learning cycle trains and hot-swaps new versions. Midway
    the `sql` tool degrades for billing tickets, and the router has to adapt.

    Example: agentrt demo --out /tmp/agentrt-demo --seed 7
    """
    load(config)  # validates --config and configures logging like every command
    rounds, per_round, episodes = (6, 150, 30) if fast else (10, 500, 40)
    table = Table(title=f"agentrt demo (seed {seed}): mean reward per round")
    for column in (
        "round",
        "router",
        "router version",
        "prompt",
        "prompt version",
        "navigator reached",
        "navigator version",
        "note",
    ):
        table.add_column(column)

    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("learning rounds", total=rounds)

        def on_round(result: RoundResult) -> None:
            note = (
                "drift: sql degrades for billing"
                if result.drifted and result.index == rounds // 2
                else ""
            )
            table.add_row(
                str(result.index),
                f"{result.rewards['router']:.3f}",
                _version(result.versions["router"]),
                f"{result.rewards['prompt']:.3f}",
                _version(result.versions["prompt"]),
                f"{result.rewards['navigator']:.2f}",
                _version(result.versions["navigator"]),
                note,
            )
            progress.advance(task)

        result = anyio.run(
            lambda: run_demo(
                out,
                seed=seed,
                rounds=rounds,
                decisions_per_round=per_round,
                episodes_per_round=episodes,
                on_round=on_round,
            )
        )
    console.print(table)
    console.print(_summary(result))
    report = anyio.run(_report, result.database, out, seed)
    console.print(f"\nReport: {report.html}", markup=False, highlight=False, soft_wrap=True)
    for images in report.images.values():
        for image in images:
            console.print(f"  {image}", markup=False, highlight=False, soft_wrap=True)
    inspect = out / "agentrt.yaml"
    inspect.write_text(f"database:\n  url: sqlite+aiosqlite:///{result.database.resolve()}\n")
    console.print(f"\nStored in {result.database}. Inspect it with `agentrt sql`:", markup=False)
    for title, query in QUERIES:
        console.print(f"  # {title}", markup=False, highlight=False)
        console.print(
            f'  agentrt sql --config {inspect} "{query}"',
            markup=False,
            highlight=False,
            soft_wrap=True,
        )


async def _report(database: Path, out: Path, seed: int) -> ReportPaths:
    """The HTML report and PNG charts of the run, in ``out/report``."""
    config = load_config(demo_config(database, seed))
    db = Database(config.database)
    try:
        return await write_report(db, config, out / "report")
    finally:
        await db.dispose()


def _version(version: int | None) -> str:
    return "baseline" if version is None else f"v{version}"


def _summary(result: DemoResult) -> Table:
    counts = anyio.run(_counts, result.database)
    table = Table(title="summary per agent")
    for column in (
        "agent",
        "baseline reward",
        "learned (before drift)",
        "after drift",
        "versions active/retired/rejected",
        "decisions",
        "rows stored",
    ):
        table.add_column(column)
    for agent in ("router", "prompt", "navigator"):
        statuses = counts["versions"].get(agent, {})
        table.add_row(
            agent,
            f"{result.baseline_reward(agent):.3f}",
            f"{result.learned_reward(agent):.3f}",
            f"{result.after_drift_reward(agent):.3f}",
            "/".join(str(statuses.get(s, 0)) for s in ("active", "retired", "rejected")),
            str(counts["decisions"].get(agent, 0)),
            str(counts["rows"].get(agent, 0)),
        )
    return table


_COUNT_SQL = {
    "decisions": "SELECT agent_id, COUNT(*) FROM decisions GROUP BY agent_id",
    "feedback": "SELECT d.agent_id, COUNT(*) FROM decisions d JOIN feedback f "
    "ON f.decision_id = d.id GROUP BY d.agent_id",
}
_VERSIONS_SQL = "SELECT agent_id, status, COUNT(*) FROM policy_versions GROUP BY agent_id, status"


async def _counts(database: Path) -> dict[str, dict[str, Any]]:
    db = Database(DatabaseConfig(url=f"sqlite+aiosqlite:///{database}"))
    found: dict[str, dict[str, int]] = {}
    versions: dict[str, dict[str, int]] = {}
    try:
        async with db.connect() as connection:
            for name, sql in _COUNT_SQL.items():
                result = await connection.execute(text(sql))
                found[name] = {agent: count for agent, count in result}
            for agent, status, count in await connection.execute(text(_VERSIONS_SQL)):
                versions.setdefault(agent, {})[status] = count
    finally:
        await db.dispose()
    decisions = found["decisions"]
    rows = {agent: decisions.get(agent, 0) + n for agent, n in found["feedback"].items()}
    return {"decisions": decisions, "rows": rows, "versions": versions}
