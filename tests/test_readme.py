"""The README's examples are executed: every SQL query on both backends, and the error sample."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from agentrt.clock import utcnow
from agentrt.config import AgentConfig, load_config
from agentrt.errors import ConfigError
from agentrt.schemas import (
    Decision,
    Episode,
    Feedback,
    Knowledge,
    PolicyVersion,
    StrategyUpdate,
)
from agentrt.storage import repositories
from agentrt.storage.engine import Database

README = Path(__file__).resolve().parent.parent / "README.md"
_SQL_BLOCK = re.compile(r"<!-- sql: (both|sqlite|postgresql) -->\s*```sql\n(.*?)```", re.DOTALL)


def readme_queries() -> list[tuple[str, str]]:
    text_ = README.read_text(encoding="utf-8")
    blocks = _SQL_BLOCK.findall(text_)
    # Every sql block must carry a backend marker, so none escapes the test.
    assert len(blocks) == text_.count("```sql"), "a ```sql block in the README lacks its marker"
    return [(dialect, sql.strip()) for dialect, sql in blocks]


async def populate(db: Database) -> None:
    now = utcnow()
    actions = ("search", "sql", "ask_human")
    decisions: list[Decision] = []
    feedback: list[Feedback] = []
    episode_id = uuid.uuid4()
    for i in range(30):
        index = i % 3
        decision = Decision(
            agent_id="router",
            action=actions[index],
            action_index=index,
            actions=actions,
            context={"topic": ("billing", "outage")[i % 2], "len": 100 + i},
            propensity=None if i % 10 == 0 else 1 / 3,
            probabilities=None if i % 10 == 0 else (1 / 3,) * 3,
            episode_id=episode_id if i < 5 else None,
            step=i if i < 5 else None,
            created_at=now - timedelta(minutes=30 - i),
        )
        decisions.append(decision)
        if i % 4 != 3:  # some decisions stay unrewarded
            feedback.append(
                Feedback(
                    decision_id=decision.id,
                    reward=float(index == i % 2),
                    outcome={"latency_ms": 10 * i},
                    created_at=decision.created_at + timedelta(seconds=5),
                )
            )
    async with db.session() as session:
        await repositories.upsert_agents(session, {"router": AgentConfig(actions=list(actions))})
        await repositories.insert_decisions(session, decisions)
        await repositories.insert_feedback(session, feedback)
        await repositories.insert_episodes(
            session,
            [
                Episode(
                    id=episode_id,
                    agent_id="router",
                    started_at=now - timedelta(minutes=30),
                    ended_at=now - timedelta(minutes=25),
                    status="completed",
                    episode_return=3.0,
                    length=5,
                )
            ],
        )
        await repositories.store_policy_version(
            session,
            PolicyVersion(
                agent_id="router", version=1, learner="neural", artifact=b"x", sha256="0" * 64
            ),
        )
        await repositories.insert_knowledge(
            session,
            [
                Knowledge(
                    agent_id="router",
                    kind="patterns",
                    payload={"rules": [{"text": "when topic=billing, action sql succeeds"}]},
                    window_start=now - timedelta(minutes=30),
                    window_end=now,
                )
            ],
        )
        await repositories.append_strategy_update(
            session,
            StrategyUpdate(
                agent_id="router",
                kind="promote",
                previous={"active_version": None},
                updated={"active_version": 1},
                details={"reason": "validated"},
            ),
        )


async def test_every_readme_query_runs_on_both_backends(database: Database, backend: str) -> None:
    await populate(database)
    queries = [sql for dialect, sql in readme_queries() if dialect in ("both", backend)]
    assert len(queries) >= 9
    async with database.connect() as connection:
        for sql in queries:
            rows = (await connection.execute(text(sql))).all()
            assert rows, f"README query returned no rows on {backend}:\n{sql}"


async def test_readme_reward_per_action_matches_the_data(database: Database) -> None:
    await populate(database)
    first = next(sql for dialect, sql in readme_queries() if "mean_reward DESC" in sql)
    async with database.connect() as connection:
        rows = (await connection.execute(text(first))).all()
    by_action = {row.action: (row.decisions, row.mean_reward) for row in rows}
    # Action index i%3 is rewarded 1 when it equals i%2; decisions with i%4 == 3 have no reward.
    expected: dict[str, list[float]] = {}
    for i in range(30):
        if i % 4 != 3:
            expected.setdefault(("search", "sql", "ask_human")[i % 3], []).append(
                float(i % 3 == i % 2)
            )
    for action, rewards in expected.items():
        count, mean = by_action[action]
        assert count == len(rewards)
        assert mean == pytest.approx(sum(rewards) / len(rewards))


def test_readme_error_sample_is_what_validation_prints(tmp_path: Path) -> None:
    sample = README.read_text(encoding="utf-8").split("$ agentrt config validate bad.yaml\n")[1]
    shown = [line.strip() for line in sample.split("```")[0].splitlines()[1:] if line.strip()]
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "database: {pool_sise: 3}\n"
        "runtime: {flush_interval: 30x}\n"
        "agents: {router: {exploration: {epsilon: 1.5}}}\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as caught:
        load_config(bad)
    assert sorted(shown) == sorted(caught.value.lines)
