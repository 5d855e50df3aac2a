"""KnowledgeExtractor: each learning cycle stores what the newest experience says.

A runtime on a real database takes decisions over three topics with the uniform baseline and
rewards them from a seeded simulation; the clock ticks one millisecond per reading, so every
decision has its own timestamp and the windows of the knowledge rows can be checked exactly.
Broken analyzers are plugins registered on the runtime's registry; nothing is mocked.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text
from structlog.testing import capture_logs

from agentrt.config import AgentRTConfig, DatabaseConfig, load_config
from agentrt.plugins import Plugin, PluginRegistry
from agentrt.runtime import Runtime
from agentrt.schemas import AgentCycle, Decision, Experience, Knowledge
from agentrt.storage.engine import Database
from agentrt.storage.tables import KnowledgeRow

ACTIONS = ("a", "b", "c")
BEST = {"t0": "a", "t1": "b", "t2": "c"}
ALL_KINDS = {
    "action_statistics",
    "exploration_health",
    "trend",
    "anomalies",
    "patterns",
    "temporal",
}
START = datetime(2030, 1, 1, tzinfo=UTC)


class TickingClock:
    """A clock that moves one millisecond on every reading: distinct, ordered timestamps."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now


def make_config(
    url: str,
    spill: Path,
    *,
    methods: Sequence[str] = (),
    batch_size: int | None = None,
) -> AgentRTConfig:
    experience: dict[str, Any] = {"analysis": {"methods": list(methods)}}
    if batch_size is not None:
        experience["collection"] = {"batch_size": batch_size}
    return load_config(
        {
            "database": {"url": url},
            "runtime": {
                "auto_migrate": True,
                "pipeline": "external",
                "seed": 7,
                "device": "cpu",
                "spill_dir": str(spill),
            },
            "agents": {"router": {"actions": list(ACTIONS), "learner": "linear"}},
            "experience_configuration": experience,
        }
    )


def runtime(config: AgentRTConfig, registry: PluginRegistry | None = None) -> Runtime:
    return Runtime(config, registry=registry, clock=TickingClock())


def by_action(i: int, decision: Decision) -> float:
    """The contextual task: 0.8 for the topic's best action, 0.2 for the others."""
    return 0.8 if decision.action == BEST[str(decision.context["topic"])] else 0.2


async def play(
    rt: Runtime,
    rounds: int,
    rng: random.Random,
    mean: Callable[[int, Decision], float] = by_action,
) -> list[Decision]:
    """Decide and reward ``rounds`` times; ``mean(i, decision)`` is the reward probability."""
    decisions = []
    for i in range(rounds):
        decision = await rt.decide("router", {"topic": f"t{i % 3}"})
        await rt.reward(decision, float(rng.random() < mean(i, decision)))
        decisions.append(decision)
    return decisions


async def cycle(rt: Runtime) -> AgentCycle:
    report = await rt.run_cycle()
    assert [c.agent_id for c in report.agents] == ["router"]
    return report["router"]


async def stored_knowledge(url: str) -> list[Knowledge]:
    """Every knowledge row, in insertion order."""
    db = Database(DatabaseConfig(url=url))
    try:
        async with db.session() as session:
            rows = (await session.scalars(select(KnowledgeRow).order_by(KnowledgeRow.id))).all()
            return [
                Knowledge(
                    agent_id=row.agent_id,
                    kind=row.kind,
                    payload=row.payload,
                    window_start=row.window_start,
                    window_end=row.window_end,
                    created_at=row.created_at,
                )
                for row in rows
            ]
    finally:
        await db.dispose()


def strict_json(value: Any) -> Any:
    return json.loads(json.dumps(value, allow_nan=False))


# -- what one cycle stores -----------------------------------------------------------------


async def test_a_cycle_stores_one_row_of_every_default_kind(
    sqlite_url: str, tmp_path: Path
) -> None:
    async with runtime(make_config(sqlite_url, tmp_path / "spill")) as rt:
        decisions = await play(rt, 240, random.Random(1))
        report = await cycle(rt)

    assert report.status == "activated", report.reason
    assert set(report.knowledge) == ALL_KINDS
    stored = await stored_knowledge(sqlite_url)
    assert sorted(k.kind for k in stored) == sorted(ALL_KINDS)
    first, last = decisions[0].created_at, decisions[-1].created_at
    for item in stored:
        assert item.agent_id == "router"
        assert (item.window_start, item.window_end) == (first, last), item.kind
        assert item.payload == strict_json(report.knowledge[item.kind])

    payloads = report.knowledge
    statistics = payloads["action_statistics"]
    assert (statistics["decisions"], statistics["rewarded"]) == (240, 240)
    assert set(statistics["actions"]) == set(ACTIONS)
    assert sum(a["count"] for a in statistics["actions"].values()) == 240
    rewards = {a: stats["mean_reward"] for a, stats in statistics["actions"].items()}
    assert all(0.2 < r < 0.6 for r in rewards.values()), rewards  # each action: 0.8 1/3 of the time
    health = payloads["exploration_health"]
    assert health["decisions"] == 240
    assert health["min_propensity"] == pytest.approx(1 / 3)
    assert (health["coverage"], health["unknown_propensity_share"]) == (1.0, 0.0)
    assert health["normalized_entropy"] > 0.95
    assert payloads["trend"]["rewarded"] == 240
    assert payloads["trend"]["alarm_count"] == 0
    assert payloads["anomalies"]["metrics"]["reward"]["count"] == 240
    assert payloads["anomalies"]["flagged_decisions"] == 0  # 0/1 rewards are not scored
    assert payloads["patterns"]["rewarded"] == 240
    assert payloads["temporal"]["decisions_without_episode"] == 240
    assert payloads["temporal"]["hours_total"] == 1


@pytest.mark.parametrize(
    ("methods", "kinds"),
    [
        (["trend_analysis"], {"action_statistics", "exploration_health", "trend"}),
        (
            ["temporal_aggregation", "anomaly_detection", "action_statistics"],
            {"action_statistics", "exploration_health", "temporal", "anomalies"},
        ),
    ],
    ids=["trend", "several"],
)
async def test_configured_methods_choose_the_analyzers(
    sqlite_url: str, tmp_path: Path, methods: list[str], kinds: set[str]
) -> None:
    config = make_config(sqlite_url, tmp_path / "spill", methods=methods)
    async with runtime(config) as rt:
        await play(rt, 90, random.Random(2))
        report = await cycle(rt)
    assert set(report.knowledge) == kinds
    stored = await stored_knowledge(sqlite_url)
    assert sorted(k.kind for k in stored) == sorted(kinds)


# -- windows -------------------------------------------------------------------------------


def windows(stored: Sequence[Knowledge]) -> list[tuple[datetime | None, datetime | None, int]]:
    """Per extraction of the three always-on kinds: its window and how many decisions it read."""
    out = []
    for i in range(0, len(stored), 3):
        group = stored[i : i + 3]
        assert [k.kind for k in group] == ["action_statistics", "exploration_health", "trend"]
        assert len({(k.window_start, k.window_end) for k in group}) == 1
        assert group[2].payload["rewarded"] == group[0].payload["decisions"]
        out.append((group[0].window_start, group[0].window_end, group[0].payload["decisions"]))
    return out


async def test_each_window_is_the_new_rows_of_this_cycle_and_the_previous_one(
    sqlite_url: str, tmp_path: Path
) -> None:
    rng = random.Random(3)
    config = make_config(sqlite_url, tmp_path / "spill", methods=["trend_analysis"])
    async with runtime(config) as rt:
        first = await play(rt, 120, rng)
        reports = [await cycle(rt)]
        second = await play(rt, 90, rng)
        reports.append(await cycle(rt))
        third = await play(rt, 60, rng)
        reports.append(await cycle(rt))
        reports.append(await cycle(rt))  # nothing new: the previous cycle's new rows again
        reports.append(await cycle(rt))  # nothing new twice: nothing to analyse

    assert [r.rows for r in reports] == [120, 210, 270, 270, 270]  # training reads everything
    counts = [r.knowledge.get("action_statistics", {}).get("decisions") for r in reports]
    assert counts == [120, 210, 150, 60, None]
    assert reports[-1].knowledge == {}
    assert windows(await stored_knowledge(sqlite_url)) == [
        (first[0].created_at, first[-1].created_at, 120),
        (first[0].created_at, second[-1].created_at, 210),
        (second[0].created_at, third[-1].created_at, 150),
        (third[0].created_at, third[-1].created_at, 60),
    ]


async def test_a_window_holds_at_most_ten_batches_the_newest(
    sqlite_url: str, tmp_path: Path
) -> None:
    rng = random.Random(4)
    config = make_config(sqlite_url, tmp_path / "spill", methods=["trend_analysis"], batch_size=10)
    async with runtime(config) as rt:
        decisions = await play(rt, 150, rng)
        await cycle(rt)
        decisions += await play(rt, 30, rng)
        await cycle(rt)

    assert windows(await stored_knowledge(sqlite_url)) == [
        (decisions[50].created_at, decisions[149].created_at, 100),
        # Since the first window's start (decision 50) there are 130: the newest 100 are read.
        (decisions[80].created_at, decisions[179].created_at, 100),
    ]


async def test_a_skipped_cycle_still_stores_its_knowledge(sqlite_url: str, tmp_path: Path) -> None:
    config = make_config(sqlite_url, tmp_path / "spill", methods=["trend_analysis"])
    async with runtime(config) as rt:
        await play(rt, 20, random.Random(5))
        report = await cycle(rt)
    assert report.status == "skipped"
    stored = await stored_knowledge(sqlite_url)
    assert {k.kind for k in stored} == {"action_statistics", "exploration_health", "trend"}
    assert all(k.payload["decisions"] == 20 for k in stored if k.kind != "trend")


async def test_a_skipped_cycle_reports_the_knowledge_it_stored(
    sqlite_url: str, tmp_path: Path
) -> None:
    config = make_config(sqlite_url, tmp_path / "spill", methods=["trend_analysis"])
    async with runtime(config) as rt:
        await play(rt, 20, random.Random(5))
        report = await cycle(rt)
    assert report.status == "skipped"
    assert set(report.knowledge) == {"action_statistics", "exploration_health", "trend"}


# -- a failing analyzer ----------------------------------------------------------------------


class BrokenAnalyzer:
    """An analyzer plugin that always raises."""

    def __init__(self, config: AgentRTConfig) -> None:
        self.config = config

    def analyze(self, agent_id: str, rows: Sequence[Experience]) -> list[Knowledge]:
        raise ValueError(f"cannot read {len(rows)} rows")


async def test_an_analyzer_that_raises_is_logged_and_the_others_are_stored(
    sqlite_url: str, tmp_path: Path
) -> None:
    registry = PluginRegistry()
    registry.register(Plugin("analyzer", "broken", BrokenAnalyzer, "always raises"))
    methods = ["broken", "trend_analysis"]  # trend runs after the broken one
    config = make_config(sqlite_url, tmp_path / "spill", methods=methods)
    async with runtime(config, registry) as rt:
        await play(rt, 90, random.Random(6))
        with capture_logs() as logs:
            report = await cycle(rt)

    assert report.status == "activated", report.reason
    assert set(report.knowledge) == {"action_statistics", "exploration_health", "trend"}
    failures = [e for e in logs if e["event"] == "analyzer_failed"]
    assert failures == [
        {
            "event": "analyzer_failed",
            "log_level": "error",
            "stage": "extractor",
            "agent": "router",
            "analyzer": "broken",
            "error": "ValueError('cannot read 90 rows')",
        }
    ]
    stored = await stored_knowledge(sqlite_url)
    assert sorted(k.kind for k in stored) == ["action_statistics", "exploration_health", "trend"]


# -- a planted drift -------------------------------------------------------------------------


def drops_at(change: int) -> Callable[[int, Decision], float]:
    """Every action earns 0.8 before decision ``change`` and 0.2 from it on."""
    return lambda i, decision: 0.8 if i < change else 0.2


async def test_a_planted_drift_raises_a_change_point_alarm(sqlite_url: str, tmp_path: Path) -> None:
    config = make_config(sqlite_url, tmp_path / "spill", methods=["trend_analysis"])
    async with runtime(config) as rt:
        decisions = await play(rt, 600, random.Random(7), drops_at(300))
        report = await cycle(rt)

    trend = report.knowledge["trend"]
    assert trend["change_detection"] == {
        "method": "page_hinkley",
        "delta": 0.25,
        "threshold": 25.0,
        "min_samples": 30,
    }
    assert trend["alarm_count"] == 1, trend["alarms"]
    (alarm,) = trend["alarms"]
    assert alarm["direction"] == "decrease"
    assert 300 < alarm["index"] <= 360  # fired soon after the change
    assert 270 <= alarm["change_index"] <= 330  # and placed its start near it
    assert alarm["change_index"] <= alarm["index"]
    # Every decision is rewarded, so positions in the reward stream are positions in the log.
    fired, began = decisions[alarm["index"]], decisions[alarm["change_index"]]
    assert alarm["decision_id"] == str(fired.id)
    assert alarm["at"] == fired.created_at.isoformat()
    assert alarm["change_decision_id"] == str(began.id)
    assert alarm["mean_before"] == pytest.approx(0.8, abs=0.08)
    assert alarm["mean_after"] == pytest.approx(0.2, abs=0.08)
    assert trend["slope"]["ci_high"] < 0
    stored = await stored_knowledge(sqlite_url)
    (row,) = [k for k in stored if k.kind == "trend"]
    assert row.payload["alarms"] == [alarm]


async def test_a_steady_stream_raises_no_alarm(sqlite_url: str, tmp_path: Path) -> None:
    config = make_config(sqlite_url, tmp_path / "spill", methods=["trend_analysis"])
    async with runtime(config) as rt:
        await play(rt, 600, random.Random(7), lambda i, decision: 0.5)
        report = await cycle(rt)
    trend = report.knowledge["trend"]
    assert (trend["alarm_count"], trend["alarms"]) == (0, [])
    assert trend["slope"]["ci_low"] < 0 < trend["slope"]["ci_high"]


# -- SQL on both backends --------------------------------------------------------------------

_SQL = {
    "sqlite": {
        "count": "CAST(json_extract(payload, '$.decisions') AS INTEGER)",
        "action": "CAST(json_extract(payload, '$.actions.' || :action || '.count') AS INTEGER)",
        "propensity": "json_extract(payload, '$.min_propensity')",
        "alarms": "json_array_length(json_extract(payload, '$.alarms'))",
    },
    "postgresql": {
        "count": "(payload->>'decisions')::int",
        "action": "(payload->'actions'->CAST(:action AS text)->>'count')::int",
        "propensity": "(payload->>'min_propensity')::float",
        "alarms": "jsonb_array_length(payload->'alarms')",
    },
}


async def test_knowledge_rows_are_queryable_with_sql(
    backend: str, db_url: str, tmp_path: Path
) -> None:
    config = make_config(db_url, tmp_path / "spill", methods=["trend_analysis"])
    async with runtime(config) as rt:
        decisions = await play(rt, 90, random.Random(8))
        await cycle(rt)
    counts = {a: sum(d.action == a for d in decisions) for a in ACTIONS}

    sql = _SQL[backend]
    db = Database(DatabaseConfig(url=db_url))
    try:
        async with db.session() as session:
            decided = await session.execute(
                text(
                    f"SELECT kind, {sql['count']} FROM knowledge "
                    "WHERE agent_id = :agent AND kind <> 'trend' ORDER BY kind"
                ),
                {"agent": "router"},
            )
            assert [tuple(row) for row in decided] == [
                ("action_statistics", 90),
                ("exploration_health", 90),
            ]
            for action, count in counts.items():
                chosen = await session.scalar(
                    text(f"SELECT {sql['action']} FROM knowledge WHERE kind = 'action_statistics'"),
                    {"action": action},
                )
                assert chosen == count
            lowest = await session.scalar(
                text(f"SELECT {sql['propensity']} FROM knowledge WHERE kind = 'exploration_health'")
            )
            assert lowest == pytest.approx(1 / 3)
            alarms = await session.scalar(
                text(f"SELECT {sql['alarms']} FROM knowledge WHERE kind = 'trend'")
            )
            assert alarms == 0
    finally:
        await db.dispose()
