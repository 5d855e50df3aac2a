"""``agentrt demo``: what the project can do today, end to end, on an embedded SQLite file.

At this stage of the project the demo exercises the foundation: configuration, migrations,
idempotent experience storage and the ``experience`` view. It simulates a support-ticket
router that picks tools uniformly at random (the baseline every later learner must beat) and
prints what was stored, with the SQL to inspect it yourself.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Annotated

import anyio
import typer
from rich.progress import Progress
from rich.table import Table
from sqlalchemy import text

from agentrt.cli.common import DEFAULT_CONFIG, ConfigOption, console, handle_errors, load
from agentrt.config import AgentConfig
from agentrt.schemas import Decision, Feedback
from agentrt.storage import migrate, repositories
from agentrt.storage.engine import Database

TOOLS = ("search", "sql", "ask_human")
TOPICS = ("billing", "outage", "account")
# Probability that a tool resolves a ticket of a topic: the structure a learner should find.
SUCCESS = {
    ("billing", "search"): 0.35,
    ("billing", "sql"): 0.85,
    ("billing", "ask_human"): 0.6,
    ("outage", "search"): 0.8,
    ("outage", "sql"): 0.2,
    ("outage", "ask_human"): 0.55,
    ("account", "search"): 0.4,
    ("account", "sql"): 0.45,
    ("account", "ask_human"): 0.9,
}
QUERY = (
    "SELECT json_extract(context, '$.topic') AS topic, action, COUNT(*) AS n, "
    "ROUND(AVG(reward), 3) AS mean_reward FROM experience GROUP BY 1, 2 ORDER BY 1, 4 DESC"
)


@handle_errors
def demo(
    config: ConfigOption = DEFAULT_CONFIG,
    out: Annotated[Path, typer.Option(help="Directory for the demo database.")] = Path(
        "agentrt-demo"
    ),
    seed: Annotated[int, typer.Option(help="Random seed.")] = 7,
    fast: Annotated[bool, typer.Option(help="Fewer decisions, for tests.")] = False,
) -> None:
    """Run the demo on an SQLite file in --out and print what was stored.

    Example: agentrt demo --out /tmp/agentrt-demo --seed 7
    """
    base = load(config)
    out.mkdir(parents=True, exist_ok=True)
    database = base.database.model_copy(update={"url": f"sqlite+aiosqlite:///{out / 'demo.db'}"})
    db = Database(database)
    rng = random.Random(seed)
    count = 200 if fast else 3000

    async def run() -> list[tuple[object, ...]]:
        try:
            await migrate.ensure_schema(db, auto_migrate=True)
            async with db.session() as session:
                await repositories.upsert_agents(
                    session, {"router": AgentConfig(actions=list(TOOLS))}
                )
            with Progress(console=console, transient=True) as progress:
                task = progress.add_task("router: uniform baseline", total=count)
                for start in range(0, count, 100):
                    decisions, feedback = [], []
                    for _ in range(min(100, count - start)):
                        topic = rng.choice(TOPICS)
                        index = rng.randrange(len(TOOLS))
                        decision = Decision(
                            agent_id="router",
                            context={"topic": topic},
                            actions=TOOLS,
                            action=TOOLS[index],
                            action_index=index,
                            propensity=1 / len(TOOLS),
                            probabilities=(1 / len(TOOLS),) * len(TOOLS),
                            exploration={"method": "uniform"},
                        )
                        reward = 1.0 if rng.random() < SUCCESS[(topic, TOOLS[index])] else 0.0
                        decisions.append(decision)
                        feedback.append(Feedback(decision_id=decision.id, reward=reward))
                    async with db.session() as session:
                        await repositories.insert_decisions(session, decisions)
                        await repositories.insert_feedback(session, feedback)
                    progress.advance(task, len(decisions))
            async with db.connect() as connection:
                return [tuple(row) for row in await connection.execute(text(QUERY))]
        finally:
            await db.dispose()

    rows = anyio.run(run)
    table = Table(title=f"router: {count} decisions by the uniform baseline (seed {seed})")
    for column in ("topic", "action", "n", "mean reward"):
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(value) for value in row))
    console.print(table)
    console.print(f"Stored in {out / 'demo.db'}. Inspect it with SQL, for example:", markup=False)
    console.print(
        f'  sqlite3 {out / "demo.db"} "{QUERY}"', highlight=False, soft_wrap=True, markup=False
    )
