"""The named queries of agentrt.storage.repositories, on SQLite and on PostgreSQL.

Every test uses the ``database`` fixture, so it runs once per backend against a freshly
migrated database. Timestamps are explicit (never the wall clock); where a repository stamps
the time itself, the test injects a fixed clock.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Literal

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from agentrt.config import AgentConfig, RewardConfig
from agentrt.errors import StorageError
from agentrt.schemas import (
    Decision,
    DecisionMode,
    Episode,
    Experience,
    Feedback,
    Knowledge,
    PolicyVersion,
    StrategyUpdate,
)
from agentrt.storage import repositories
from agentrt.storage.engine import Database
from agentrt.storage.repositories import (
    active_policy_version,
    append_strategy_update,
    fetch_experience,
    insert_decisions,
    insert_episodes,
    insert_feedback,
    insert_knowledge,
    list_policy_versions,
    load_policy_version,
    next_policy_version,
    record_metric,
    set_policy_status,
    store_policy_version,
    upsert_agents,
)
from agentrt.storage.tables import (
    AgentRow,
    Base,
    DecisionRow,
    EpisodeRow,
    FeedbackRow,
    KnowledgeRow,
    MetricRow,
    StrategyUpdateRow,
    experience_view,
)

Combine = Literal["last", "sum", "mean", "max"]

# Microseconds included on purpose: both backends must keep them.
T0 = datetime(2025, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)
ACTIONS = ("fast", "cheap", "careful")
AGENT = "router"


def at(seconds: float) -> datetime:
    """A fixed point in time, ``seconds`` after T0."""
    return T0 + timedelta(seconds=seconds)


def make_decision(
    created_at: datetime,
    *,
    agent_id: str = AGENT,
    mode: DecisionMode = "live",
    action_index: int = 0,
) -> Decision:
    probabilities = (0.5, 0.3, 0.2)
    return Decision(
        agent_id=agent_id,
        action=ACTIONS[action_index],
        action_index=action_index,
        actions=ACTIONS,
        context={"load": 0.75, "tier": "gold", "tags": ["a", "b"], "sizes": [1, 2.5, True]},
        propensity=probabilities[action_index],
        probabilities=probabilities,
        policy_version=3,
        exploration={"method": "epsilon_greedy", "epsilon": 0.1},
        mode=mode,
        created_at=created_at,
    )


def reward(
    decision: Decision,
    value: float | None,
    created_at: datetime,
    *,
    outcome: dict[str, Any] | None = None,
) -> Feedback:
    return Feedback(
        decision_id=decision.id,
        reward=value,
        outcome=outcome,
        source="test",
        created_at=created_at,
    )


def activation(decision: Decision, created_at: datetime) -> Feedback:
    # A reward value on an activation must still not count as a reward.
    return Feedback(decision_id=decision.id, kind="activation", reward=9.0, created_at=created_at)


def agent(combine: Combine) -> AgentConfig:
    return AgentConfig(actions=list(ACTIONS), reward=RewardConfig(combine=combine))


async def store(
    database: Database,
    *,
    decisions: Sequence[Decision] = (),
    feedback: Sequence[Feedback] = (),
    episodes: Sequence[Episode] = (),
) -> None:
    async with database.session() as session:
        await insert_decisions(session, decisions)
        await insert_feedback(session, feedback)
        await insert_episodes(session, episodes)


async def experience(
    database: Database,
    agent_id: str = AGENT,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int | None = None,
    rewarded_only: bool = False,
) -> list[Experience]:
    async with database.session() as session:
        return await fetch_experience(
            session, agent_id, since=since, until=until, limit=limit, rewarded_only=rewarded_only
        )


async def only_experience(database: Database, agent_id: str = AGENT) -> Experience:
    rows = await experience(database, agent_id)
    assert len(rows) == 1
    return rows[0]


async def count(database: Database, row: type[Base]) -> int:
    async with database.session() as session:
        return (await session.execute(select(func.count()).select_from(row))).scalar_one()


def is_utc(moment: datetime | None) -> bool:
    return moment is not None and moment.utcoffset() == timedelta(0)


def assert_decision_matches(row: Experience, decision: Decision) -> None:
    assert row.decision_id == decision.id
    assert row.agent_id == decision.agent_id
    assert row.episode_id == decision.episode_id
    assert row.step == decision.step
    assert row.created_at == decision.created_at
    assert is_utc(row.created_at)
    assert row.mode == decision.mode
    assert row.context == decision.context
    assert row.actions == decision.actions
    assert row.action == decision.action
    assert row.action_index == decision.action_index
    assert row.propensity == decision.propensity
    assert row.probabilities == decision.probabilities
    assert row.policy_version == decision.policy_version
    assert row.exploration == decision.exploration
    assert row.policy_action == decision.policy_action


class FixedClock:
    """Stands in for ``agentrt.clock.utcnow`` where a repository stamps the time itself."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FixedClock:
    fixed = FixedClock(at(1000))
    monkeypatch.setattr(repositories, "utcnow", fixed)
    return fixed


# --- round trips ------------------------------------------------------------------------------


async def test_decisions_round_trip_through_experience(database: Database) -> None:
    episode_id = uuid.uuid4()
    full = Decision(
        agent_id=AGENT,
        action="careful",
        action_index=2,
        actions=ACTIONS,
        context={
            "load": 0.125,
            "count": 7,
            "tier": "gold",
            "vip": False,
            "missing": None,
            "tags": ["eu", "mobile"],
            "mixed": [1, 2.5, "x", True],
            "empty": [],
        },
        propensity=0.2,
        probabilities=(0.5, 0.3, 0.2),
        policy_version=4,
        exploration={"method": "softmax", "temperature": 0.5, "nested": {"k": [1, 2]}},
        mode="shadow",
        episode_id=episode_id,
        step=3,
        policy_action="fast",
        # Not UTC: stored as the same instant and returned in UTC.
        created_at=datetime(2025, 3, 4, 7, 6, 7, 654321, tzinfo=timezone(timedelta(hours=2))),
    )
    unknown_propensity = Decision(
        agent_id=AGENT,
        action="fast",
        action_index=0,
        actions=ACTIONS,
        created_at=at(10),
    )
    await store(database, decisions=[full, unknown_propensity])

    rows = await experience(database)

    assert [row.decision_id for row in rows] == [full.id, unknown_propensity.id]
    assert_decision_matches(rows[0], full)
    assert_decision_matches(rows[1], unknown_propensity)
    assert rows[0].created_at.tzinfo is not None
    assert rows[0].created_at.utcoffset() == timedelta(0)
    assert rows[0].created_at == datetime(2025, 3, 4, 5, 6, 7, 654321, tzinfo=UTC)
    assert rows[1].propensity is None
    assert rows[1].probabilities is None
    assert rows[1].context == {}
    assert rows[1].exploration is None


async def test_feedback_round_trips(database: Database) -> None:
    decision = make_decision(at(0))
    given = reward(
        decision, 0.75, at(5), outcome={"latency_ms": 120, "ok": True, "steps": [1, {"a": None}]}
    )
    bare = Feedback(decision_id=decision.id, created_at=at(6))
    await store(database, decisions=[decision], feedback=[given, bare])

    async with database.session() as session:
        rows = (await session.execute(select(FeedbackRow).order_by(FeedbackRow.created_at))).all()
    stored = [row[0] for row in rows]

    for row, item in zip(stored, [given, bare], strict=True):
        assert row.id == item.id
        assert row.decision_id == item.decision_id
        assert row.kind == item.kind
        assert row.reward == item.reward
        assert row.outcome == item.outcome
        assert row.source == item.source
        assert row.created_at == item.created_at
        assert is_utc(row.created_at)


async def test_episodes_round_trip(database: Database) -> None:
    completed = Episode(
        agent_id=AGENT, started_at=at(0), ended_at=at(30), episode_return=4.5, length=6
    )
    running = Episode(agent_id=AGENT, started_at=at(40), status="running")
    failed = Episode(
        agent_id="other",
        started_at=at(50),
        ended_at=at(51),
        status="failed",
        length=1,
        error="tool timed out",
    )
    await store(database, episodes=[completed, running, failed])

    async with database.session() as session:
        rows = list(await session.scalars(select(EpisodeRow).order_by(EpisodeRow.started_at)))

    assert [row.id for row in rows] == [completed.id, running.id, failed.id]
    for row, episode in zip(rows, [completed, running, failed], strict=True):
        assert row.agent_id == episode.agent_id
        assert row.started_at == episode.started_at
        assert is_utc(row.started_at)
        assert row.ended_at == episode.ended_at
        assert row.status == episode.status
        assert row.episode_return == episode.episode_return
        assert row.length == episode.length
        assert row.error == episode.error


async def test_knowledge_is_appended_and_read_back(database: Database) -> None:
    items = [
        Knowledge(
            agent_id=AGENT,
            kind="action_stats",
            payload={"fast": {"mean": 0.4, "n": 10}, "order": ["fast", "cheap"]},
            window_start=at(0),
            window_end=at(60),
            created_at=at(61),
        ),
        Knowledge(agent_id=AGENT, kind="anomaly", payload={}, created_at=at(62)),
    ]
    async with database.session() as session:
        await insert_knowledge(session, items)
    async with database.session() as session:
        await insert_knowledge(session, items[:1])

    async with database.session() as session:
        rows = list(await session.scalars(select(KnowledgeRow).order_by(KnowledgeRow.id)))

    # Knowledge is append-only, not idempotent: the same finding twice is two rows.
    assert len(rows) == 3
    for row, item in zip(rows, [*items, items[0]], strict=True):
        assert row.agent_id == item.agent_id
        assert row.kind == item.kind
        assert row.payload == item.payload
        assert row.window_start == item.window_start
        assert row.window_end == item.window_end
        assert row.created_at == item.created_at
    assert rows[0].id < rows[1].id < rows[2].id


async def test_record_metric_appends_rows(database: Database) -> None:
    async with database.session() as session:
        await record_metric(
            session,
            "learning_cycle",
            1.5,
            agent_id=AGENT,
            stage="updater",
            details={"rows": 120, "learners": ["linucb"]},
        )
        await record_metric(session, "fallback", None)

    async with database.session() as session:
        rows = list(await session.scalars(select(MetricRow).order_by(MetricRow.id)))

    assert [(row.name, row.value, row.agent_id, row.stage) for row in rows] == [
        ("learning_cycle", 1.5, AGENT, "updater"),
        ("fallback", None, None, None),
    ]
    assert rows[0].details == {"rows": 120, "learners": ["linucb"]}
    assert rows[1].details == {}
    assert all(is_utc(row.created_at) for row in rows)


async def test_append_strategy_update_returns_its_id(database: Database) -> None:
    first = StrategyUpdate(
        agent_id=AGENT,
        kind="exploration",
        previous={"epsilon": 0.1},
        updated={"epsilon": 0.05},
        details={"reason": "reward plateau", "window": [0, 60]},
        created_at=at(100),
    )
    second = StrategyUpdate(
        agent_id=AGENT, kind="rollout", previous={}, updated={"fraction": 0.2}, created_at=at(200)
    )
    async with database.session() as session:
        first_id = await append_strategy_update(session, first)
        second_id = await append_strategy_update(session, second)

    assert first_id < second_id
    async with database.session() as session:
        rows = {row.id: row for row in await session.scalars(select(StrategyUpdateRow))}

    assert set(rows) == {first_id, second_id}
    for row_id, update in ((first_id, first), (second_id, second)):
        row = rows[row_id]
        assert row.agent_id == update.agent_id
        assert row.kind == update.kind
        assert row.previous == update.previous
        assert row.updated == update.updated
        assert row.details == update.details
        assert row.created_at == update.created_at


# --- idempotency ------------------------------------------------------------------------------


async def test_the_same_batch_twice_stores_each_row_once(database: Database) -> None:
    decisions = [make_decision(at(i)) for i in range(3)]
    feedback = [reward(d, float(i), at(i + 0.5)) for i, d in enumerate(decisions)]
    episodes = [Episode(agent_id=AGENT, started_at=at(i), ended_at=at(i + 1)) for i in range(2)]

    await store(database)  # empty batches are accepted
    await store(database, decisions=decisions, feedback=feedback, episodes=episodes)
    # The retry also repeats a row within the batch itself.
    await store(
        database,
        decisions=[*decisions, decisions[0]],
        feedback=[*feedback, feedback[0]],
        episodes=[*episodes, episodes[0]],
    )

    assert await count(database, DecisionRow) == 3
    assert await count(database, FeedbackRow) == 3
    assert await count(database, EpisodeRow) == 2
    rows = await experience(database)
    assert [row.decision_id for row in rows] == [d.id for d in decisions]
    assert [row.feedback_count for row in rows] == [1, 1, 1]
    assert [row.reward for row in rows] == [0.0, 1.0, 2.0]


async def test_an_overlapping_batch_inserts_only_the_new_rows(database: Database) -> None:
    first, second, third = (make_decision(at(i)) for i in range(3))
    early = reward(first, 1.0, at(10))
    late = reward(second, 2.0, at(11))
    new = reward(third, 3.0, at(12))
    episode_a = Episode(agent_id=AGENT, started_at=at(0), length=1)
    episode_b = Episode(agent_id=AGENT, started_at=at(1), length=2)
    await store(database, decisions=[first, second], feedback=[early, late], episodes=[episode_a])

    # The overlap carries changed payloads: an id already stored keeps its first version.
    changed_second = second.model_copy(update={"context": {"changed": True}})
    changed_late = late.model_copy(update={"reward": -5.0})
    changed_episode = episode_a.model_copy(update={"length": 99})
    await store(
        database,
        decisions=[changed_second, third],
        feedback=[changed_late, new],
        episodes=[changed_episode, episode_b],
    )

    assert await count(database, DecisionRow) == 3
    assert await count(database, FeedbackRow) == 3
    assert await count(database, EpisodeRow) == 2
    rows = await experience(database)
    assert [row.decision_id for row in rows] == [first.id, second.id, third.id]
    assert rows[1].context == second.context
    assert [row.reward for row in rows] == [1.0, 2.0, 3.0]
    async with database.session() as session:
        result = await session.execute(select(EpisodeRow.id, EpisodeRow.length))
        lengths = {episode_id: length for episode_id, length in result}
    assert lengths == {episode_a.id: 1, episode_b.id: 2}


# --- the experience view ----------------------------------------------------------------------

# Inserted out of time order, so that "last" must follow created_at, not insertion order.
REWARDS = [(30.0, 1.0), (10.0, 3.0), (20.0, 5.0)]  # (seconds after the decision, reward)
EXPECTED: dict[Combine, float] = {"last": 1.0, "sum": 9.0, "mean": 3.0, "max": 5.0}


def rewards_for(decision: Decision) -> list[Feedback]:
    return [
        reward(
            decision, value, decision.created_at + timedelta(seconds=offset), outcome={"r": value}
        )
        for offset, value in REWARDS
    ]


async def test_reward_is_combined_by_each_agent_rule(database: Database) -> None:
    # One agent per rule, each with one decision and the same feedback, in one database.
    decisions = {combine: make_decision(at(0), agent_id=combine) for combine in EXPECTED}
    async with database.session() as session:
        await upsert_agents(session, {combine: agent(combine) for combine in EXPECTED})
    feedback = [item for decision in decisions.values() for item in rewards_for(decision)]
    await store(database, decisions=list(decisions.values()), feedback=feedback)

    rows = {combine: await only_experience(database, combine) for combine in EXPECTED}

    assert {combine: row.reward for combine, row in rows.items()} == pytest.approx(EXPECTED)
    for combine, row in rows.items():
        assert row.feedback_count == 3
        assert row.rewarded_at == at(30)
        assert is_utc(row.rewarded_at)
        # Whatever the rule, the outcome is the latest feedback's.
        assert row.outcome == {"r": 1.0}
        assert_decision_matches(row, decisions[combine])


async def test_the_view_has_one_row_per_decision(database: Database) -> None:
    decisions = [make_decision(at(i)) for i in range(3)]
    feedback = [item for decision in decisions[:2] for item in rewards_for(decision)]
    async with database.session() as session:
        await upsert_agents(session, {AGENT: agent("sum")})
    await store(database, decisions=decisions, feedback=feedback)

    rows = await experience(database)

    assert [row.decision_id for row in rows] == [d.id for d in decisions]
    assert [row.feedback_count for row in rows] == [3, 3, 0]
    assert [row.reward for row in rows] == [EXPECTED["sum"], EXPECTED["sum"], None]
    # A decision without feedback has no reward, outcome or reward time.
    assert rows[2].rewarded_at is None
    assert rows[2].outcome is None


async def test_a_reward_of_none_is_counted_but_has_no_value(database: Database) -> None:
    decision = make_decision(at(0))
    await store(database, decisions=[decision], feedback=[reward(decision, None, at(1))])

    row = await only_experience(database)

    assert row.reward is None
    assert row.feedback_count == 1
    assert row.rewarded_at == at(1)


async def test_an_agent_without_a_row_combines_by_last(database: Database) -> None:
    decision = make_decision(at(0), agent_id="unconfigured")
    await store(database, decisions=[decision], feedback=rewards_for(decision))

    row = await only_experience(database, "unconfigured")

    assert row.reward == EXPECTED["last"]


async def test_changing_the_rule_changes_the_view(database: Database) -> None:
    decision = make_decision(at(0))
    await store(database, decisions=[decision], feedback=rewards_for(decision))
    for _ in range(2):  # unchanged, the second upsert changes nothing
        async with database.session() as session:
            await upsert_agents(session, {AGENT: agent("sum")})
    assert (await only_experience(database)).reward == EXPECTED["sum"]
    assert await count(database, AgentRow) == 1

    async with database.session() as session:
        await upsert_agents(session, {AGENT: agent("max")})

    assert (await only_experience(database)).reward == EXPECTED["max"]
    async with database.session() as session:
        rows = list(await session.scalars(select(AgentRow)))
    assert [(row.agent_id, row.reward_combine) for row in rows] == [(AGENT, "max")]
    assert rows[0].config["reward"]["combine"] == "max"


async def test_deferred_decision_is_activated_by_activation_feedback(database: Database) -> None:
    waiting = make_decision(at(0), mode="deferred")
    activated = make_decision(at(1), mode="deferred")
    await store(database, decisions=[waiting, activated])

    rows = await experience(database)
    assert [row.activated_at for row in rows] == [None, None]

    await store(
        database,
        feedback=[activation(activated, at(9)), activation(activated, at(5))],
    )
    rows = await experience(database)

    assert rows[0].activated_at is None
    # The first activation counts.
    assert rows[1].activated_at == at(5)
    assert is_utc(rows[1].activated_at)
    # Activations are not rewards.
    assert rows[1].reward is None
    assert rows[1].feedback_count == 0
    assert rows[1].rewarded_at is None
    assert rows[1].outcome is None


async def test_activation_does_not_change_the_reward(database: Database) -> None:
    decision = make_decision(at(0), mode="deferred")
    async with database.session() as session:
        await upsert_agents(session, {AGENT: agent("sum")})
    # The activation comes last; were it a reward it would change sum, outcome and rewarded_at.
    feedback = [*rewards_for(decision), activation(decision, at(40))]
    await store(database, decisions=[decision], feedback=feedback)

    row = await only_experience(database)

    assert row.reward == EXPECTED["sum"]
    assert row.feedback_count == 3
    assert row.rewarded_at == at(30)
    assert row.outcome == {"r": 1.0}
    assert row.activated_at == at(40)


async def test_a_non_deferred_decision_is_active_when_made(database: Database) -> None:
    live = make_decision(at(0), mode="live")
    shadow = make_decision(at(1), mode="shadow")
    # An activation does not move a decision that was never deferred.
    feedback = [activation(live, at(7)), activation(shadow, at(8))]
    await store(database, decisions=[live, shadow], feedback=feedback)

    rows = await experience(database)

    assert [(row.mode, row.activated_at) for row in rows] == [("live", at(0)), ("shadow", at(1))]


async def test_orphan_feedback_is_kept_without_an_experience_row(database: Database) -> None:
    known = make_decision(at(0))
    late = make_decision(at(1))
    orphan = Feedback(decision_id=uuid.uuid4(), reward=1.0, created_at=at(2))
    early = reward(late, 4.0, at(3))
    await store(database, decisions=[known], feedback=[orphan, early])

    assert await count(database, FeedbackRow) == 2
    rows = await experience(database)
    assert [row.decision_id for row in rows] == [known.id]
    assert rows[0].feedback_count == 0

    # The decision that feedback was waiting for arrives later and picks it up.
    await store(database, decisions=[late])
    rows = await experience(database)
    assert [row.decision_id for row in rows] == [known.id, late.id]
    assert rows[1].reward == 4.0
    assert rows[1].feedback_count == 1


async def test_absent_json_values_are_sql_null(database: Database) -> None:
    decision = Decision(agent_id=AGENT, action="fast", action_index=0, actions=ACTIONS)
    await store(database, decisions=[decision], feedback=[reward(decision, 1.0, at(1))])

    async with database.session() as session:
        decisions = await session.scalars(
            select(DecisionRow.id).where(
                DecisionRow.probabilities.is_(None), DecisionRow.exploration.is_(None)
            )
        )
        found = list(decisions)
        outcomes = await session.scalars(
            select(experience_view.c.decision_id).where(experience_view.c.outcome.is_(None))
        )
        without_outcome = list(outcomes)

    # Analysts query `probabilities IS NULL` like `propensity IS NULL`.
    assert found == [decision.id]
    assert without_outcome == [decision.id]


# --- fetch_experience filters -----------------------------------------------------------------


@pytest.fixture
async def timeline(database: Database) -> list[Decision]:
    """Five decisions of AGENT one minute apart (rewards on the 2nd and 4th), plus noise."""
    decisions = [make_decision(at(60 * i)) for i in range(5)]
    others = [make_decision(at(60 * i), agent_id="other") for i in range(5)]
    feedback = [
        reward(decisions[1], 1.0, at(70)),
        reward(decisions[3], 0.0, at(190)),
        activation(decisions[2], at(130)),
        reward(others[0], 1.0, at(5)),
    ]
    # Stored out of order: the view and the query must order by time.
    await store(database, decisions=[*reversed(decisions), *others], feedback=feedback)
    return decisions


def ids(rows: list[Experience]) -> list[uuid.UUID]:
    return [row.decision_id for row in rows]


async def test_fetch_returns_one_agent_oldest_first(
    database: Database, timeline: list[Decision]
) -> None:
    rows = await experience(database)

    assert ids(rows) == [d.id for d in timeline]
    assert {row.agent_id for row in rows} == {AGENT}
    assert await experience(database, "nobody") == []


async def test_fetch_since_is_inclusive_and_until_exclusive(
    database: Database, timeline: list[Decision]
) -> None:
    assert ids(await experience(database, since=at(60))) == [d.id for d in timeline[1:]]
    assert ids(await experience(database, until=at(180))) == [d.id for d in timeline[:3]]
    window = await experience(database, since=at(60), until=at(180))
    assert ids(window) == [d.id for d in timeline[1:3]]
    assert await experience(database, since=at(180), until=at(180)) == []
    # Bounds in another zone mean the same instants.
    minus_five = timezone(timedelta(hours=-5))
    shifted = await experience(
        database, since=at(60).astimezone(minus_five), until=at(180).astimezone(minus_five)
    )
    assert ids(shifted) == [d.id for d in timeline[1:3]]


async def test_fetch_limit_returns_the_newest_in_ascending_order(
    database: Database, timeline: list[Decision]
) -> None:
    assert ids(await experience(database, limit=2)) == [timeline[3].id, timeline[4].id]
    assert ids(await experience(database, limit=10)) == [d.id for d in timeline]
    limited = await experience(database, until=at(180), limit=2)
    assert ids(limited) == [timeline[1].id, timeline[2].id]


async def test_fetch_rewarded_only(database: Database, timeline: list[Decision]) -> None:
    rows = await experience(database, rewarded_only=True)

    # The activated decision (index 2) has feedback, but no reward.
    assert ids(rows) == [timeline[1].id, timeline[3].id]
    assert [row.reward for row in rows] == [1.0, 0.0]
    newest = await experience(database, rewarded_only=True, limit=1)
    assert ids(newest) == [timeline[3].id]


# --- policy versions --------------------------------------------------------------------------


def policy(version: int, *, agent_id: str = AGENT, learner: str = "linucb") -> PolicyVersion:
    # Bytes that are not valid UTF-8, to be sure the artifact is stored as binary.
    artifact = bytes(range(256)) + f"{agent_id}:{version}".encode()
    return PolicyVersion(
        agent_id=agent_id,
        version=version,
        learner=learner,
        artifact=artifact,
        sha256=hashlib.sha256(artifact).hexdigest(),
        parent_version=version - 1 if version > 1 else None,
        metrics={"snips": 0.61, "ci": [0.55, 0.67], "n": 500},
        validation={"passed": True, "checks": {"min_samples": {"ok": True, "got": 500}}},
        artifact_metadata={"format": "safetensors", "features": ["load", "tier"]},
        created_at=at(version),
    )


async def test_next_policy_version_starts_at_one_and_increments(database: Database) -> None:
    async with database.session() as session:
        assert await next_policy_version(session, AGENT) == 1
        await store_policy_version(session, policy(1))
        assert await next_policy_version(session, AGENT) == 2
    async with database.session() as session:
        await store_policy_version(session, policy(2))
    async with database.session() as session:
        assert await next_policy_version(session, AGENT) == 3
        assert await next_policy_version(session, "other") == 1


async def test_policy_version_round_trip(database: Database) -> None:
    stored = policy(1)
    async with database.session() as session:
        await store_policy_version(session, stored)

    async with database.session() as session:
        loaded = await load_policy_version(session, AGENT, 1)
        missing = await load_policy_version(session, AGENT, 2)
        other = await load_policy_version(session, "other", 1)

    assert loaded == stored
    assert loaded is not None
    assert loaded.artifact == stored.artifact
    assert hashlib.sha256(loaded.artifact).hexdigest() == loaded.sha256
    assert loaded.metrics == stored.metrics
    assert loaded.validation == stored.validation
    assert loaded.artifact_metadata == stored.artifact_metadata
    assert is_utc(loaded.created_at)
    assert loaded.status == "candidate"
    assert loaded.activated_at is None
    assert missing is None
    assert other is None


async def store_policy(database: Database, stored: PolicyVersion) -> None:
    async with database.session() as session:
        await store_policy_version(session, stored)


async def test_storing_a_version_twice_fails(database: Database) -> None:
    await store_policy(database, policy(1))

    with pytest.raises(StorageError) as raised:
        await store_policy(database, policy(1, learner="other_learner"))

    assert isinstance(raised.value.__cause__, IntegrityError)
    async with database.session() as session:
        versions = await list_policy_versions(session, AGENT)
    assert [(p.version, p.learner) for p in versions] == [(1, "linucb")]


async def test_a_failed_store_rolls_back_its_whole_session(database: Database) -> None:
    await store_policy(database, policy(1))
    decision = make_decision(at(0))

    async def store_both() -> None:
        async with database.session() as session:
            await insert_decisions(session, [decision])
            await store_policy_version(session, policy(1))

    with pytest.raises(StorageError):
        await store_both()

    assert await count(database, DecisionRow) == 0


async def test_activating_a_version(database: Database, clock: FixedClock) -> None:
    for version in (1, 2):
        await store_policy(database, policy(version))
    async with database.session() as session:
        assert await active_policy_version(session, AGENT) is None

    clock.now = at(500)
    async with database.session() as session:
        await set_policy_status(session, AGENT, 1, "active", reason="validated")

    async with database.session() as session:
        active = await active_policy_version(session, AGENT)
        candidate = await load_policy_version(session, AGENT, 2)
    assert active is not None
    assert active.version == 1
    assert active.status == "active"
    assert active.status_reason == "validated"
    assert active.activated_at == at(500)
    assert is_utc(active.activated_at)
    assert candidate is not None
    assert candidate.status == "candidate"
    assert candidate.activated_at is None

    clock.now = at(600)
    async with database.session() as session:
        await set_policy_status(session, AGENT, 2, "active")
        await set_policy_status(session, AGENT, 1, "retired", reason="superseded by 2")

    async with database.session() as session:
        active = await active_policy_version(session, AGENT)
        retired = await load_policy_version(session, AGENT, 1)
        assert await active_policy_version(session, "other") is None
    assert active is not None
    assert active.version == 2
    assert active.activated_at == at(600)
    assert retired is not None
    assert retired.status == "retired"
    assert retired.status_reason == "superseded by 2"
    # Retiring keeps the record of when the version was active.
    assert retired.activated_at == at(500)


async def test_the_latest_activation_wins(database: Database, clock: FixedClock) -> None:
    for version in (1, 2):
        await store_policy(database, policy(version))
    # Version 2 was activated first, then rolled back to 1, without retiring 2.
    clock.now = at(500)
    async with database.session() as session:
        await set_policy_status(session, AGENT, 2, "active")
    clock.now = at(600)
    async with database.session() as session:
        await set_policy_status(session, AGENT, 1, "active")

    async with database.session() as session:
        active = await active_policy_version(session, AGENT)

    assert active is not None
    assert active.version == 1


async def test_a_known_activation_outranks_an_unknown_one(
    database: Database, clock: FixedClock
) -> None:
    # Stored as active directly, so its activation time is unknown.
    await store_policy(database, policy(1).model_copy(update={"status": "active"}))
    await store_policy(database, policy(2))
    clock.now = at(500)
    async with database.session() as session:
        await set_policy_status(session, AGENT, 2, "active")

    async with database.session() as session:
        active = await active_policy_version(session, AGENT)

    assert active is not None
    assert active.version == 2


async def test_list_policy_versions_is_ordered_by_version(database: Database) -> None:
    for version in (3, 1, 2):
        await store_policy(database, policy(version))
    await store_policy(database, policy(1, agent_id="other"))

    async with database.session() as session:
        versions = await list_policy_versions(session, AGENT)
        following = await next_policy_version(session, AGENT)
        other = await list_policy_versions(session, "other")
        none = await list_policy_versions(session, "nobody")

    assert [p.version for p in versions] == [1, 2, 3]
    # Version numbers are per agent.
    assert [(p.agent_id, p.version) for p in other] == [("other", 1)]
    assert versions == [policy(1), policy(2), policy(3)]
    assert following == 4
    assert none == []
