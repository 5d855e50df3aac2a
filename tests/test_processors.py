"""agentrt.pipeline.processors: normalization, feature_extraction and temporal_aggregation."""

from __future__ import annotations

import copy
import json
import random
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select

from agentrt.config import AgentRTConfig, load_config
from agentrt.errors import InvalidInputError, PluginNotFoundError
from agentrt.pipeline.processors import (
    FeatureExtractionProcessor,
    NormalizationProcessor,
    RunningStats,
    TemporalAggregationProcessor,
)
from agentrt.plugins import PluginRegistry
from agentrt.runtime import Runtime
from agentrt.schemas import ContextValue, Decision, Episode, Feedback, Knowledge
from agentrt.storage.tables import KnowledgeRow
from agentrt.types import ExperienceBatch, Processor

T0 = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
NAMES = ["feature_extraction", "normalization", "temporal_aggregation"]


def decision(
    context: dict[str, ContextValue] | None = None,
    at: datetime = T0,
    agent_id: str = "router",
) -> Decision:
    return Decision(
        agent_id=agent_id,
        action="a",
        action_index=0,
        actions=("a", "b"),
        context=context or {},
        created_at=at,
    )


def reward(of: Decision, value: float, at: datetime | None = None) -> Feedback:
    return Feedback(decision_id=of.id, reward=value, created_at=at or of.created_at)


def batch(
    decisions: Sequence[Decision] = (),
    feedback: Sequence[Feedback] = (),
    episodes: Sequence[Episode] = (),
) -> ExperienceBatch:
    return ExperienceBatch(list(decisions), list(feedback), list(episodes))


def kinds(rows: Sequence[Knowledge]) -> Counter[str]:
    return Counter(row.kind for row in rows)


def assert_matches_numpy(summary: dict[str, Any], values: Sequence[float]) -> None:
    data = np.asarray(values, dtype=np.float64)
    assert summary["count"] == len(data)
    assert summary["mean"] == pytest.approx(float(np.mean(data)), rel=1e-12, abs=1e-12)
    assert summary["std"] == pytest.approx(float(np.std(data)), rel=1e-9, abs=1e-12)
    assert summary["min"] == float(np.min(data))
    assert summary["max"] == float(np.max(data))


def number(value: object) -> float:
    assert isinstance(value, int | float)
    return float(value)


def element(value: ContextValue, index: int) -> object:
    assert isinstance(value, list)
    return value[index]


# --- RunningStats ----------------------------------------------------------------------------


def test_running_stats_match_numpy() -> None:
    rng = random.Random(7)
    values = [rng.gauss(1e6, 3.0) for _ in range(1000)]
    stats = RunningStats()
    for value in values:
        stats.add(value)
    assert_matches_numpy(stats.summary(), values)


def test_empty_running_stats_are_json_nulls() -> None:
    assert RunningStats().summary() == {
        "count": 0,
        "mean": None,
        "std": None,
        "min": None,
        "max": None,
    }


def test_overflowing_values_give_nulls_not_errors() -> None:
    stats = RunningStats()
    for value in (1.7e308, -1.7e308, 1.0):
        stats.add(value)
    summary = stats.summary()
    assert summary["count"] == 3
    assert (summary["min"], summary["max"]) == (-1.7e308, 1.7e308)
    assert summary["std"] is None
    assert json.loads(json.dumps(summary, allow_nan=False)) == summary


# --- normalization ---------------------------------------------------------------------------


def numeric_decisions(count: int) -> tuple[list[Decision], list[Feedback]]:
    rng = random.Random(3)
    decisions, feedback = [], []
    for i in range(count):
        made = decision(
            {
                "x": rng.uniform(-5, 5),
                "n": rng.randrange(100),
                "flag": rng.random() < 0.5,
                "name": "alpha",
                "vec": [float(i), rng.random(), "skip"],
                "missing": None,
            },
            at=T0 + timedelta(seconds=i),
        )
        decisions.append(made)
        feedback.append(reward(made, rng.uniform(0, 1)))
    return decisions, feedback


def test_normalization_statistics_match_numpy() -> None:
    decisions, feedback = numeric_decisions(100)
    processor = NormalizationProcessor(every=50)

    first = processor.process(batch(decisions[:60], feedback[:60]))
    second = processor.process(batch(decisions[60:], feedback[60:]))

    assert kinds(first.knowledge) == {"running_statistics": 1}
    assert kinds(second.knowledge) == {"running_statistics": 1}
    for row, n in ((first.knowledge[0], 50), (second.knowledge[0], 100)):
        seen = decisions[:n]
        assert row.agent_id == "router"
        assert (row.window_start, row.window_end) == (T0, T0 + timedelta(seconds=n - 1))
        assert row.payload["decisions"] == n
        context = row.payload["context"]
        assert set(context) == {"x", "n", "vec[0]", "vec[1]"}  # no booleans, strings, None
        for key in ("x", "n"):
            assert_matches_numpy(context[key], [number(d.context[key]) for d in seen])
        for index in (0, 1):
            column = [number(element(d.context["vec"], index)) for d in seen]
            assert_matches_numpy(context[f"vec[{index}]"], column)
        # The reward recorded with the 50th (100th) decision is in its row.
        assert_matches_numpy(row.payload["reward"], [f.reward or 0.0 for f in feedback[:n]])


def test_one_row_per_multiple_even_within_one_batch() -> None:
    decisions, feedback = numeric_decisions(120)
    processor = NormalizationProcessor(every=50)
    rows = processor.process(batch(decisions, feedback)).knowledge
    assert [row.payload["decisions"] for row in rows] == [50, 100]
    assert [row.payload["reward"]["count"] for row in rows] == [50, 100]


def test_rewards_of_unseen_decisions_are_skipped_and_counted() -> None:
    processor = NormalizationProcessor(every=2)
    earlier = decision({"x": 1.0})
    processor.process(batch([earlier]))
    later = decision({"x": 3.0}, at=T0 + timedelta(seconds=1))
    stranger = decision({"x": 100.0}, agent_id="other")
    activation = Feedback(decision_id=earlier.id, kind="activation")

    out = processor.process(
        batch([later], [reward(earlier, 2.0), reward(stranger, 9.0), activation])
    )

    assert processor.unattributed_rewards == 1
    (row,) = out.knowledge
    assert row.payload["reward"]["count"] == 1
    assert row.payload["reward"]["mean"] == 2.0
    assert row.payload["context"]["x"]["mean"] == 2.0


def test_long_lists_are_summarised_up_to_32_elements() -> None:
    processor = NormalizationProcessor(every=1)
    (row,) = processor.process(batch([decision({"v": list(range(40))})])).knowledge
    assert "v[31]" in row.payload["context"]
    assert "v[32]" not in row.payload["context"]


def test_agents_are_counted_separately() -> None:
    processor = NormalizationProcessor(every=2)
    made = [decision({"x": float(i)}, agent_id=("a" if i % 3 else "b")) for i in range(6)]
    rows = processor.process(batch(made)).knowledge
    assert sorted((row.agent_id, row.payload["decisions"]) for row in rows) == [
        ("a", 2),
        ("a", 4),
        ("b", 2),
    ]


@pytest.mark.parametrize("factory", [NormalizationProcessor, FeatureExtractionProcessor])
def test_every_must_be_positive(factory: type[NormalizationProcessor]) -> None:
    with pytest.raises(InvalidInputError, match="every"):
        factory(0)


# --- feature extraction ----------------------------------------------------------------------


def test_feature_schema_types_presence_and_values() -> None:
    cities = ["paris"] * 5 + ["rome"] * 3 + ["oslo"] * 2 + ["lima", "kyiv", "bern"]
    made = [
        decision(
            {
                "latency": i * 1.5,
                "cached": i % 2 == 0,
                "city": city,
                "query": f"how far is {city}",
                "tags": ["a", "b"],
                "sometimes": 1 if i < 4 else None,
            },
            at=T0 + timedelta(seconds=i),
        )
        for i, city in enumerate(cities)
    ]
    processor = FeatureExtractionProcessor(every=len(made))

    (row,) = processor.process(batch(made)).knowledge

    assert row.kind == "feature_schema"
    assert row.payload["decisions"] == 13
    keys = row.payload["keys"]
    assert keys["latency"] == {"types": {"number": 13}, "presence": 1.0}
    assert keys["cached"] == {"types": {"bool": 13}, "presence": 1.0}
    assert keys["tags"] == {"types": {"list": 13}, "presence": 1.0}
    assert keys["sometimes"] == {"types": {"number": 4}, "presence": pytest.approx(4 / 13)}
    assert keys["city"]["types"] == {"string": 13}
    assert keys["city"]["distinct"] == 6
    assert keys["city"]["top"] == [["paris", 5], ["rome", 3], ["oslo", 2], ["bern", 1], ["kyiv", 1]]
    assert keys["query"]["types"] == {"text": 13}
    assert keys["query"]["distinct"] == 6
    assert row.payload["type_changes"] == []
    assert (row.window_start, row.window_end) == (T0, T0 + timedelta(seconds=12))


def test_type_change_is_flagged_once() -> None:
    processor = FeatureExtractionProcessor(every=5)
    made = [decision({"price": float(i), "label": "x"}) for i in range(3)]
    changed = decision({"price": "12.50", "label": "two words"}, at=T0 + timedelta(minutes=1))
    made += [changed, decision({"price": "13.00", "label": "y"}, at=T0 + timedelta(minutes=2))]

    (row,) = processor.process(batch(made)).knowledge

    assert row.payload["type_changes"] == [
        {
            "key": "price",
            "from": ["number"],
            "to": "string",
            "decision_id": str(changed.id),
            "at": changed.created_at.isoformat(),
        }
    ]  # string -> text (a label with a space) is not a change
    assert row.payload["keys"]["price"]["types"] == {"number": 3, "string": 2}


def test_distinct_values_are_exact_up_to_1000() -> None:
    processor = FeatureExtractionProcessor(every=1001)
    made = [decision({"user": f"u{i}", "tier": f"t{i % 1000}"}) for i in range(1001)]
    (row,) = processor.process(batch(made)).knowledge
    assert row.payload["keys"]["user"]["distinct"] == "1000+"
    assert row.payload["keys"]["tier"]["distinct"] == 1000
    assert row.payload["keys"]["tier"]["top"][0] == ["t0", 2]


# --- temporal aggregation --------------------------------------------------------------------


def test_closing_an_hour_emits_exactly_one_summary() -> None:
    processor = TemporalAggregationProcessor()
    hour = [decision(at=T0 + timedelta(minutes=m)) for m in (1, 20, 59)]
    first = processor.process(batch(hour, [reward(hour[0], 1.0), reward(hour[1], 0.5)]))
    assert not first.knowledge
    # Another agent's later hour does not close this agent's hour.
    other = decision(agent_id="other", at=T0 + timedelta(hours=2))
    assert not processor.process(batch([other])).knowledge

    late_reward = reward(hour[2], 2.0, at=T0 + timedelta(hours=1, minutes=5))
    next_hour = decision(at=T0 + timedelta(hours=1, minutes=10))
    closing = processor.process(batch([next_hour], [late_reward]))

    (row,) = closing.knowledge
    assert row.kind == "hourly_summary"
    assert row.agent_id == "router"
    assert (row.window_start, row.window_end) == (T0, T0 + timedelta(hours=1))
    assert row.payload == {
        "hour": T0.isoformat(),
        "decisions": 3,
        "rewards": 2,
        "reward_sum": 1.5,
        "reward_mean": 0.75,
        "late": 0,
    }
    more = [decision(at=T0 + timedelta(hours=1, minutes=m)) for m in (11, 12)]
    assert not processor.process(batch(more)).knowledge


def test_late_records_count_in_the_open_hour() -> None:
    processor = TemporalAggregationProcessor()
    processor.process(batch([decision(at=T0 + timedelta(hours=1))]))
    processor.process(batch([decision(at=T0 + timedelta(minutes=30))]))
    (row,) = processor.process(batch([decision(at=T0 + timedelta(hours=2))])).knowledge
    assert row.window_start == T0 + timedelta(hours=1)
    assert (row.payload["decisions"], row.payload["late"]) == (2, 1)
    assert row.payload["reward_mean"] is None


def test_finished_episodes_are_summarised() -> None:
    done = Episode(
        agent_id="router",
        started_at=T0,
        ended_at=T0 + timedelta(seconds=90),
        status="failed",
        episode_return=3.5,
        length=4,
    )
    running = Episode(agent_id="router", started_at=T0, status="running")

    (row,) = TemporalAggregationProcessor().process(batch(episodes=[done, running])).knowledge

    assert row.kind == "episode_summary"
    assert (row.window_start, row.window_end) == (T0, T0 + timedelta(seconds=90))
    assert row.payload == {
        "episode_id": str(done.id),
        "return": 3.5,
        "length": 4,
        "status": "failed",
        "duration_seconds": 90.0,
    }


# --- all three -------------------------------------------------------------------------------


def test_processors_leave_the_records_untouched() -> None:
    decisions, feedback = numeric_decisions(10)
    decisions.append(decision({"price": "now a string", "vec": []}))
    before = copy.deepcopy([d.model_dump() for d in decisions])
    feedback_before = [f.model_dump() for f in feedback]
    processors: list[Processor] = [
        NormalizationProcessor(every=2),
        FeatureExtractionProcessor(every=2),
        TemporalAggregationProcessor(),
    ]
    current = batch(decisions, feedback)
    for processor in processors:
        out = processor.process(current)
        assert out.decisions is current.decisions
        assert out.feedback is current.feedback
        assert out.episodes is current.episodes
        current = out
    assert [d.model_dump() for d in current.decisions] == before
    assert [f.model_dump() for f in current.feedback] == feedback_before
    assert kinds(current.knowledge) == {"running_statistics": 5, "feature_schema": 5}


def test_knowledge_added_by_an_earlier_processor_is_kept() -> None:
    made = [decision({"x": 1.0}), decision({"x": 2.0})]
    out = NormalizationProcessor(every=2).process(batch(made))
    out = FeatureExtractionProcessor(every=2).process(out)
    assert [row.kind for row in out.knowledge] == ["running_statistics", "feature_schema"]


# --- registry and runtime --------------------------------------------------------------------


def config_for(url: str, methods: list[str]) -> AgentRTConfig:
    return load_config(
        {
            "database": {"url": url},
            "agents": {"router": {"actions": ["search", "sql"]}},
            "experience_configuration": {
                "processing": {"methods": methods},
                "collection": {"batch_size": 50},
            },
        },
        environ={},
    )


def test_registry_lists_and_builds_the_builtin_processors() -> None:
    registry = PluginRegistry()
    assert registry.names("processor") == NAMES
    config = config_for("sqlite+aiosqlite:///unused.db", NAMES)
    for name in NAMES:
        created = registry.create("processor", name, config)
        assert isinstance(created, Processor)
    normalization = registry.create("processor", "normalization", config)
    assert isinstance(normalization, NormalizationProcessor)
    assert normalization.every == 50


async def test_unknown_method_fails_when_the_runtime_starts(sqlite_url: str) -> None:
    config = config_for(sqlite_url, ["normalization", "normalisation"])
    with pytest.raises(PluginNotFoundError) as info:
        async with Runtime(config):
            pass
    assert info.value.name == "normalisation"
    assert info.value.available == NAMES
    assert all(name in str(info.value) for name in NAMES)


class StepClock:
    """An injected clock: the time the test sets."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


async def test_runtime_writes_the_knowledge_of_all_three(sqlite_url: str) -> None:
    clock = StepClock(T0)
    rng = random.Random(11)
    async with Runtime(config_for(sqlite_url, NAMES), clock=clock) as rt:
        for i in range(118):
            clock.now = T0 + timedelta(minutes=i)  # 60 decisions in hour 10, 60 in hour 11
            context = {"load": rng.random(), "region": rng.choice(["eu", "us"])}
            await rt.record("router", context, rng.choice(["search", "sql"]), rng.random())
        async with rt.episode("router") as ep:
            for _ in range(2):
                clock.now += timedelta(seconds=20)
                await ep.decide({"load": 0.5, "region": "eu"})
                await ep.reward(1.0)
        await rt.flush()
        async with rt.database.session() as session:
            rows = (await session.scalars(select(KnowledgeRow))).all()

    assert Counter(row.kind for row in rows) == {
        "running_statistics": 2,
        "feature_schema": 2,
        "hourly_summary": 1,
        "episode_summary": 1,
    }
    statistics = max(
        (row for row in rows if row.kind == "running_statistics"),
        key=lambda row: row.payload["decisions"],
    )
    assert statistics.payload["decisions"] == 100
    assert statistics.payload["context"]["load"]["count"] == 100
    (hourly,) = [row for row in rows if row.kind == "hourly_summary"]
    assert (hourly.window_start, hourly.payload["decisions"]) == (T0, 60)
    assert hourly.payload["rewards"] == 60
    (episode,) = [row for row in rows if row.kind == "episode_summary"]
    assert (episode.payload["length"], episode.payload["return"]) == (2, 2.0)
