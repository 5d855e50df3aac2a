"""The Runtime facade: decide, reward, record, activate, episodes, track, the reward window.

Every test opens a real runtime on a fresh database (``db_url``: once on SQLite, once on
PostgreSQL) and, where the write path matters, in both durabilities. Results are read back with
SQL after ``rt.flush()``. Time is a fake clock advanced by hand; nothing sleeps.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, Protocol

import anyio
import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import RowMapping

from agentrt.config import DatabaseConfig, load_config
from agentrt.episode import ActiveEpisode
from agentrt.errors import (
    BackpressureError,
    InvalidInputError,
    StorageError,
    UnknownActionError,
    UnknownDecisionError,
)
from agentrt.runtime import Runtime
from agentrt.schemas import Decision
from agentrt.storage.engine import Database
from agentrt.storage.tables import DecisionRow, EpisodeRow, FeedbackRow, experience_view

Durability = Literal["sync", "buffered"]

START = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)

AGENTS: dict[str, Any] = {
    "router": {"actions": ["a", "b", "c", "d"]},
    "pinned": {"actions": ["a", "b", "c"], "baseline": "b"},
    "open": {},
    "watcher": {"actions": ["sql", "vector", "web"], "mode": "shadow"},
}


class FakeClock:
    """A clock that moves only when the test says so."""

    def __init__(self, start: datetime = START) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


class RuntimeFactory(Protocol):
    def __call__(
        self,
        *,
        durability: Durability = "sync",
        agents: Mapping[str, Any] | None = None,
        clock: Callable[[], datetime] | None = None,
        runtime: Mapping[str, Any] | None = None,
    ) -> Runtime: ...


@pytest.fixture
def make_runtime(db_url: str, tmp_path: Path) -> RuntimeFactory:
    """Builds runtimes on the test's database, with a spill directory of the test's own."""

    def build(
        *,
        durability: Durability = "sync",
        agents: Mapping[str, Any] | None = None,
        clock: Callable[[], datetime] | None = None,
        runtime: Mapping[str, Any] | None = None,
    ) -> Runtime:
        config = load_config(
            None,
            {
                "database": {"url": db_url},
                "runtime": {
                    "auto_migrate": True,
                    "pipeline": "external",
                    "durability": durability,
                    "seed": 1,
                    "spill_dir": str(tmp_path / "spill"),
                    **(runtime or {}),
                },
                "agents": dict(AGENTS if agents is None else agents),
            },
        )
        return Runtime(config) if clock is None else Runtime(config, clock=clock)

    return build


@pytest.fixture(params=["sync", "buffered"])
def durability(request: pytest.FixtureRequest) -> Durability:
    """Runs a test once per durability mode."""
    value: Durability = request.param
    return value


# -- reading back ------------------------------------------------------------------------


async def experience(rt: Runtime, decision_id: uuid.UUID) -> RowMapping:
    """The ``experience`` row of one decision (after a flush)."""
    query = select(experience_view).where(experience_view.c.decision_id == decision_id)
    async with rt.database.connect() as connection:
        return (await connection.execute(query)).mappings().one()


async def decision_row(rt: Runtime, decision_id: uuid.UUID) -> DecisionRow:
    async with rt.database.session() as session:
        row = await session.get(DecisionRow, decision_id)
    assert row is not None, f"decision {decision_id} is not stored"
    return row


async def feedback_rows(rt: Runtime, decision_id: uuid.UUID) -> list[FeedbackRow]:
    query = (
        select(FeedbackRow)
        .where(FeedbackRow.decision_id == decision_id)
        .order_by(FeedbackRow.created_at)
    )
    async with rt.database.session() as session:
        return list((await session.scalars(query)).all())


async def count(db: Database, table: Any) -> int:
    async with db.connect() as connection:
        return int((await connection.execute(select(func.count()).select_from(table))).scalar_one())


# -- concurrency ---------------------------------------------------------------------------


async def test_thousand_concurrent_decisions_are_all_stored_and_joined(
    make_runtime: RuntimeFactory, durability: Durability
) -> None:
    async with make_runtime(durability=durability) as rt:

        async def one(i: int) -> None:
            decision = await rt.decide("router", {"i": i})
            await rt.reward(decision, float(i % 2))

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for i in range(1000):
                    tg.start_soon(one, i)
            await rt.flush()

        db = rt.database
        assert await count(db, DecisionRow) == 1000
        assert await count(db, FeedbackRow) == 1000
        query = select(
            func.count(),
            func.count(experience_view.c.reward),
            func.sum(experience_view.c.reward),
            func.count(func.distinct(experience_view.c.decision_id)),
        ).select_from(experience_view)
        async with db.connect() as connection:
            rows, rewarded, total, distinct = (await connection.execute(query)).one()
        assert (rows, rewarded, distinct) == (1000, 1000, 1000)
        assert total == 500.0
        assert rt.stats.orphan_feedback == 0


# -- decide() --------------------------------------------------------------------------------


def check_distribution(decision: Decision) -> None:
    assert decision.probabilities is not None
    assert len(decision.probabilities) == len(decision.actions)
    assert math.isclose(sum(decision.probabilities), 1.0)
    assert decision.actions[decision.action_index] == decision.action
    assert decision.propensity == decision.probabilities[decision.action_index]


async def test_uniform_baseline_gives_one_over_k(make_runtime: RuntimeFactory) -> None:
    async with make_runtime() as rt:
        for _ in range(20):
            decision = await rt.decide("router", {"x": 1})
            check_distribution(decision)
            assert decision.actions == ("a", "b", "c", "d")
            assert decision.probabilities == (0.25,) * 4
            assert decision.propensity == 0.25
            assert decision.exploration == {"method": "uniform"}
            assert decision.mode == "live"

        subset = await rt.decide("router", {}, ["c", "a"])
        check_distribution(subset)
        assert subset.actions == ("c", "a")
        assert subset.probabilities == (0.5, 0.5)
        assert subset.action in {"a", "c"}


async def test_fixed_baseline_chooses_its_action_with_propensity_one(
    make_runtime: RuntimeFactory,
) -> None:
    async with make_runtime() as rt:
        decision = await rt.decide("pinned", {})
        check_distribution(decision)
        assert decision.action == "b"
        assert decision.propensity == 1.0
        assert decision.probabilities == (0.0, 1.0, 0.0)
        assert decision.exploration == {"method": "fixed"}

        # Its action masked out: uniform over what is allowed, and it says why.
        fallback = await rt.decide("pinned", {}, mask=["a", "c"])
        check_distribution(fallback)
        assert fallback.action in {"a", "c"}
        assert fallback.probabilities == (0.5, 0.0, 0.5)
        assert fallback.exploration == {"method": "uniform", "reason": "fixed_unavailable"}

        # In shadow mode the policy's choice is kept beside the application's action.
        shadow = await rt.decide("pinned", {}, mode="shadow", app_action="a")
        assert (shadow.action, shadow.policy_action) == ("a", "b")
        assert shadow.probabilities == (0.0, 1.0, 0.0)
        assert shadow.propensity is None


async def test_mask_gives_masked_actions_zero_probability(make_runtime: RuntimeFactory) -> None:
    masks: list[Sequence[str] | Sequence[bool]] = [["b", "d"], [False, True, False, True]]
    async with make_runtime(durability="buffered") as rt:
        for mask in masks:
            chosen: list[str] = []
            for _ in range(200):
                decision = await rt.decide("router", {}, mask=mask)
                check_distribution(decision)
                assert decision.probabilities == (0.0, 0.5, 0.0, 0.5)
                assert decision.propensity == 0.5
                chosen.append(decision.action)
            # The seeded draws stay inside the mask and use both allowed actions.
            assert set(chosen) == {"b", "d"}, mask


async def test_decide_refuses_bad_arguments(make_runtime: RuntimeFactory) -> None:
    async with make_runtime() as rt:
        with pytest.raises(InvalidInputError, match="agent_id") as agent:
            await rt.decide("nobody", {})
        assert agent.value.field == "agent_id"
        assert agent.value.value == "nobody"
        with pytest.raises(InvalidInputError, match="agent_id"):
            await rt.record("nobody", {}, "a", 1.0)
        with pytest.raises(InvalidInputError, match="agent_id"):
            rt.track("nobody")

        # Per-call actions must be among the configured ones.
        with pytest.raises(UnknownActionError) as actions:
            await rt.decide("router", {}, ["a", "zzz"])
        assert (actions.value.field, actions.value.value) == ("actions", "zzz")

        with pytest.raises(UnknownActionError) as mask:
            await rt.decide("router", {}, mask=["a", "z"])
        assert mask.value.field == "mask"
        with pytest.raises(InvalidInputError, match="one boolean per offered action"):
            await rt.decide("router", {}, mask=[True, False])
        with pytest.raises(InvalidInputError, match="at least one action"):
            await rt.decide("router", {}, mask=[False, False, False, False])
        await rt.flush()
        assert await count(rt.database, DecisionRow) == 0


async def test_agent_without_actions_needs_per_call_actions(make_runtime: RuntimeFactory) -> None:
    async with make_runtime() as rt:
        with pytest.raises(InvalidInputError) as caught:
            await rt.decide("open", {})
        assert caught.value.field == "actions"
        assert not isinstance(caught.value, UnknownActionError)

        decision = await rt.decide("open", {}, ["x", "y", "z"])
        check_distribution(decision)
        assert decision.actions == ("x", "y", "z")
        assert decision.propensity == pytest.approx(1 / 3)


async def test_decide_returns_what_is_stored(
    make_runtime: RuntimeFactory, durability: Durability
) -> None:
    async with make_runtime(durability=durability) as rt:
        context = {"user": "u1", "n": 3, "score": 0.5, "flag": True, "none": None, "tags": ["x"]}
        decision = await rt.decide("router", context, ["d", "b", "a"], mask=["a", "d"])
        await rt.flush()

        row = await decision_row(rt, decision.id)
        assert row.agent_id == "router"
        assert row.action == decision.action
        assert row.action_index == decision.action_index
        assert row.actions == ["d", "b", "a"] == list(decision.actions)
        assert row.context == context == decision.context
        assert row.propensity == decision.propensity
        assert row.probabilities == list(decision.probabilities or ())
        assert row.policy_version is None
        assert row.exploration == decision.exploration
        assert row.mode == "live"
        assert row.policy_action is None
        assert row.episode_id is None
        assert row.step is None
        assert row.created_at == decision.created_at

        view = await experience(rt, decision.id)
        assert view["action"] == decision.action
        assert view["propensity"] == decision.propensity
        assert view["activated_at"] == decision.created_at
        assert view["reward"] is None
        assert view["feedback_count"] == 0


# -- shadow mode ---------------------------------------------------------------------------


async def test_shadow_decision_stores_the_application_action(
    make_runtime: RuntimeFactory,
) -> None:
    async with make_runtime() as rt:
        decision = await rt.decide("router", {"q": 1}, mode="shadow", app_action="c")
        assert decision.mode == "shadow"
        assert decision.action == "c"
        assert decision.action_index == 2
        assert decision.propensity is None
        assert decision.probabilities == (0.25,) * 4
        assert decision.policy_action in {"a", "b", "c", "d"}
        await rt.flush()

        row = await decision_row(rt, decision.id)
        assert (row.mode, row.action, row.propensity) == ("shadow", "c", None)
        assert row.policy_action == decision.policy_action
        assert row.probabilities == [0.25] * 4

        view = await experience(rt, decision.id)
        assert view["mode"] == "shadow"
        assert view["propensity"] is None
        assert view["policy_action"] == decision.policy_action


async def test_shadow_and_app_action_go_together(make_runtime: RuntimeFactory) -> None:
    async with make_runtime() as rt:
        with pytest.raises(InvalidInputError) as missing:
            await rt.decide("router", {}, mode="shadow")
        assert missing.value.field == "app_action"
        with pytest.raises(InvalidInputError) as live:
            await rt.decide("router", {}, app_action="a")
        assert live.value.field == "app_action"
        with pytest.raises(InvalidInputError):
            await rt.decide("router", {}, mode="deferred", app_action="a")
        with pytest.raises(UnknownActionError):
            await rt.decide("router", {}, mode="shadow", app_action="zzz")
        await rt.flush()
        assert await count(rt.database, DecisionRow) == 0


async def test_agent_configured_for_shadow_defaults_to_shadow(
    make_runtime: RuntimeFactory,
) -> None:
    async with make_runtime() as rt:
        with pytest.raises(InvalidInputError) as missing:
            await rt.decide("watcher", {})
        assert missing.value.field == "app_action"

        shadow = await rt.decide("watcher", {}, app_action="web")
        assert shadow.mode == "shadow"
        assert shadow.action == "web"
        assert shadow.propensity is None

        live = await rt.decide("watcher", {}, mode="live")
        assert live.mode == "live"
        assert live.propensity == pytest.approx(1 / 3)
        await rt.flush()
        assert (await decision_row(rt, shadow.id)).mode == "shadow"
        assert (await decision_row(rt, live.id)).mode == "live"


# -- deferred mode -------------------------------------------------------------------------


async def test_deferred_decision_counts_only_after_activation(
    make_runtime: RuntimeFactory, durability: Durability
) -> None:
    clock = FakeClock()
    async with make_runtime(durability=durability, clock=clock) as rt:
        decision = await rt.decide("router", {}, mode="deferred")
        assert decision.mode == "deferred"
        check_distribution(decision)
        await rt.flush()
        assert (await experience(rt, decision.id))["activated_at"] is None

        clock.advance(timedelta(minutes=3))
        activation = await rt.activate(str(decision.id))
        assert activation.kind == "activation"
        assert activation.decision_id == decision.id
        await rt.flush()

        view = await experience(rt, decision.id)
        assert view["activated_at"] == START + timedelta(minutes=3)
        assert view["created_at"] == START
        # An activation is not a reward.
        assert view["reward"] is None
        assert view["feedback_count"] == 0

        live = await rt.decide("router", {})
        with pytest.raises(InvalidInputError, match="only deferred ones are activated"):
            await rt.activate(live)
        if durability == "sync":
            with pytest.raises(UnknownDecisionError):
                await rt.activate(uuid.uuid4())
        await rt.flush()
        assert await feedback_rows(rt, live.id) == []


# -- reward() --------------------------------------------------------------------------------


async def test_reward_accepts_a_decision_a_uuid_or_a_uuid_string(
    make_runtime: RuntimeFactory, durability: Durability
) -> None:
    async with make_runtime(durability=durability) as rt:
        by_object, by_uuid, by_string = [await rt.decide("router", {"i": i}) for i in range(3)]
        await rt.reward(by_object, 1.0)
        await rt.reward(by_uuid.id, 2.0, outcome={"latency_ms": 12.5, "ok": True})
        feedback = await rt.reward(str(by_string.id).upper(), True, source="judge")
        assert feedback.reward == 1.0
        assert feedback.decision_id == by_string.id
        await rt.flush()

        for decision, reward in ((by_object, 1.0), (by_uuid, 2.0), (by_string, 1.0)):
            rows = await feedback_rows(rt, decision.id)
            assert [(r.kind, r.reward) for r in rows] == [("reward", reward)]
            assert (await experience(rt, decision.id))["reward"] == reward
        assert (await experience(rt, by_uuid.id))["outcome"] == {"latency_ms": 12.5, "ok": True}
        assert (await feedback_rows(rt, by_string.id))[0].source == "judge"

        with pytest.raises(InvalidInputError) as bad_id:
            await rt.reward("not-a-uuid", 1.0)
        assert bad_id.value.field == "decision"


async def test_rewards_are_combined_by_the_agent_rule(make_runtime: RuntimeFactory) -> None:
    expected = {"sum": 7.0, "max": 4.0, "last": 2.0, "mean": 7.0 / 3}
    clock = FakeClock()
    agents = {rule: {"actions": ["a", "b"], "reward": {"combine": rule}} for rule in expected}
    async with make_runtime(agents=agents, clock=clock) as rt:
        decisions = {rule: await rt.decide(rule, {}) for rule in expected}
        other = await rt.decide("sum", {})
        for value in (1.0, 4.0, 2.0):
            clock.advance(timedelta(seconds=1))
            for decision in decisions.values():
                await rt.reward(decision, value, outcome={"value": value})
        await rt.reward(other, -5.0)
        await rt.flush()

        for rule, decision in decisions.items():
            view = await experience(rt, decision.id)
            assert view["reward"] == pytest.approx(expected[rule]), rule
            assert view["feedback_count"] == 3
            assert view["outcome"] == {"value": 2.0}  # the latest outcome
            assert view["rewarded_at"] == START + timedelta(seconds=3)
        assert (await experience(rt, other.id))["reward"] == -5.0


async def test_non_finite_rewards_and_non_json_outcomes_are_refused(
    make_runtime: RuntimeFactory,
) -> None:
    rewards: list[Any] = [math.nan, math.inf, -math.inf, "1.0", None]
    outcomes: list[Any] = [{"x": object()}, {"x": math.nan}, {"x": [math.inf]}, {1: "a"}, "ok"]
    async with make_runtime() as rt:
        decision = await rt.decide("router", {})
        for value in rewards:
            with pytest.raises(InvalidInputError) as caught:
                await rt.reward(decision, value)
            assert caught.value.field == "reward", value
            with pytest.raises(InvalidInputError) as recorded:
                await rt.record("router", {}, "a", value)
            assert recorded.value.field == "reward", value
        for outcome in outcomes:
            with pytest.raises(InvalidInputError) as caught:
                await rt.reward(decision, 1.0, outcome=outcome)
            assert caught.value.field == "outcome", outcome
            with pytest.raises(InvalidInputError) as recorded:
                await rt.record("router", {}, "a", 1.0, outcome=outcome)
            assert recorded.value.field == "outcome", outcome
        await rt.flush()
        assert await count(rt.database, FeedbackRow) == 0
        assert await count(rt.database, DecisionRow) == 1


async def test_sync_reward_checks_that_the_decision_exists(make_runtime: RuntimeFactory) -> None:
    async with make_runtime(durability="sync") as first:
        decision = await first.decide("router", {})
        unknown = uuid.uuid4()
        with pytest.raises(UnknownDecisionError) as caught:
            await first.reward(unknown, 1.0)
        assert caught.value.field == "decision"
        assert caught.value.value == str(unknown)
        await first.flush()
        assert await count(first.database, FeedbackRow) == 0
        assert first.stats.orphan_feedback == 0
    # A new runtime has never seen the id in memory; it finds it in the database.
    async with make_runtime(durability="sync") as second:
        await second.reward(decision.id, 3.0)
        await second.flush()
        assert (await experience(second, decision.id))["reward"] == 3.0


async def test_buffered_reward_for_unknown_decision_is_kept_as_orphan(
    make_runtime: RuntimeFactory,
) -> None:
    async with make_runtime(durability="buffered") as rt:
        known = await rt.decide("router", {})
        await rt.reward(known, 1.0)
        unknown = uuid.uuid4()
        feedback = await rt.reward(unknown, 2.0)
        assert feedback.decision_id == unknown
        await rt.flush()
        # Counted by the time flush() returns.
        assert rt.stats.orphan_feedback == 1
        rows = await feedback_rows(rt, unknown)
        assert [(r.reward, r.kind) for r in rows] == [(2.0, "reward")]
        assert await count(rt.database, experience_view) == 1


# -- record() --------------------------------------------------------------------------------


async def test_record_stores_decision_and_reward_together(
    make_runtime: RuntimeFactory, durability: Durability
) -> None:
    async with make_runtime(durability=durability) as rt:
        decision = await rt.record(
            "router",
            {"q": "hello"},
            "c",
            0.75,
            actions=["a", "c"],
            propensity=0.4,
            probabilities=[0.6, 0.4],
            outcome={"tokens": 10},
            source="app",
        )
        assert (decision.action, decision.action_index) == ("c", 1)
        assert decision.propensity == 0.4
        assert decision.exploration == {"method": "recorded"}
        await rt.flush()

        view = await experience(rt, decision.id)
        assert view["action"] == "c"
        assert view["actions"] == ["a", "c"]
        assert view["propensity"] == 0.4
        assert view["probabilities"] == [0.6, 0.4]
        assert view["reward"] == 0.75
        assert view["outcome"] == {"tokens": 10}
        assert view["feedback_count"] == 1
        assert view["context"] == {"q": "hello"}
        rows = await feedback_rows(rt, decision.id)
        assert [(r.reward, r.source) for r in rows] == [(0.75, "app")]


async def test_record_without_propensity_stores_null(make_runtime: RuntimeFactory) -> None:
    async with make_runtime() as rt:
        decision = await rt.record("router", {}, "b", 1.0)
        assert decision.actions == ("a", "b", "c", "d")
        # Only probabilities: the propensity is read from them.
        derived = await rt.record("router", {}, "a", 0.0, probabilities=[0.7, 0.1, 0.1, 0.1])
        assert derived.propensity == 0.7
        # An agent without actions records the action alone.
        lone = await rt.record("open", {}, "ran", 1.0)
        assert lone.actions == ("ran",)
        await rt.flush()

        assert (await decision_row(rt, decision.id)).propensity is None
        assert (await decision_row(rt, decision.id)).probabilities is None
        assert (await experience(rt, decision.id))["propensity"] is None
        assert (await experience(rt, derived.id))["propensity"] == 0.7
        assert (await decision_row(rt, lone.id)).actions == ["ran"]


async def test_record_checks_propensity_and_actions(
    make_runtime: RuntimeFactory,
) -> None:
    async with make_runtime() as rt:
        with pytest.raises(InvalidInputError) as mismatch:
            await rt.record(
                "router", {}, "a", 1.0, propensity=0.5, probabilities=[0.25, 0.25, 0.25, 0.25]
            )
        assert mismatch.value.field == "propensity"
        with pytest.raises(InvalidInputError) as zero:
            await rt.record("router", {}, "a", 1.0, probabilities=[0.0, 1.0, 0.0, 0.0])
        assert zero.value.field == "probabilities"
        with pytest.raises(InvalidInputError) as not_summing:
            await rt.record("router", {}, "a", 1.0, probabilities=[0.5, 0.6, 0.0, 0.0])
        assert not_summing.value.field == "probabilities"
        with pytest.raises(InvalidInputError) as short:
            await rt.record("router", {}, "a", 1.0, probabilities=[1.0])
        assert short.value.field == "probabilities"
        for bad in (0.0, 1.5, math.nan):
            with pytest.raises(InvalidInputError) as propensity:
                await rt.record("router", {}, "a", 1.0, propensity=bad)
            assert propensity.value.field == "propensity"

        with pytest.raises(UnknownActionError) as not_offered:
            await rt.record("router", {}, "c", 1.0, actions=["a", "b"])
        assert not_offered.value.field == "action"
        with pytest.raises(UnknownActionError) as not_configured:
            await rt.record("router", {}, "zzz", 1.0)
        assert not_configured.value.field == "action"
        with pytest.raises(UnknownActionError):
            await rt.record("router", {}, "a", 1.0, actions=["a", "zzz"])
        await rt.flush()
        assert await count(rt.database, DecisionRow) == 0
        assert await count(rt.database, FeedbackRow) == 0


# -- episodes --------------------------------------------------------------------------------


async def test_episode_numbers_steps_and_sums_its_return(
    make_runtime: RuntimeFactory, durability: Durability
) -> None:
    clock = FakeClock()
    async with make_runtime(durability=durability, clock=clock) as rt:
        async with rt.episode("router") as ep:
            decisions: list[Decision] = []
            for reward in (1.0, 2.0, 0.5):
                clock.advance(timedelta(seconds=1))
                decisions.append(await ep.decide({"step": len(decisions)}))
                await ep.reward(reward)
            clock.advance(timedelta(seconds=1))
        assert ep.length == 3
        assert ep.episode_return == 3.5
        await rt.flush()

        for step, decision in enumerate(decisions):
            assert decision.episode_id == ep.id
            assert decision.step == step
            row = await decision_row(rt, decision.id)
            assert (row.episode_id, row.step) == (ep.id, step)
        async with rt.database.session() as session:
            episode = await session.get(EpisodeRow, ep.id)
        assert episode is not None
        assert episode.agent_id == "router"
        assert episode.status == "completed"
        assert episode.episode_return == 3.5
        assert episode.length == 3
        assert episode.error is None
        assert episode.started_at == START
        assert episode.ended_at == START + timedelta(seconds=4)


async def test_failed_episode_records_the_error_and_propagates(
    make_runtime: RuntimeFactory,
) -> None:
    async with make_runtime() as rt:
        handles: list[ActiveEpisode] = []

        async def run_episode() -> None:
            async with rt.episode("router") as ep:
                handles.append(ep)
                await ep.decide({})
                await ep.reward(-1.0)
                await ep.decide({})
                raise ValueError("tool exploded")

        with pytest.raises(ValueError, match="tool exploded"):
            await run_episode()
        (ep,) = handles
        await rt.flush()

        async with rt.database.session() as session:
            episode = await session.get(EpisodeRow, ep.id)
        assert episode is not None
        assert episode.status == "failed"
        assert episode.error == "ValueError: tool exploded"
        assert episode.length == 2
        assert episode.episode_return == -1.0


async def test_episode_without_rewards_and_reward_before_decide(
    make_runtime: RuntimeFactory,
) -> None:
    async with make_runtime() as rt:
        async with rt.episode("router") as ep:
            with pytest.raises(InvalidInputError, match=r"ep\.decide\(\)"):
                await ep.reward(1.0)
            await ep.decide({})
        await rt.flush()
        async with rt.database.session() as session:
            episode = await session.get(EpisodeRow, ep.id)
        assert episode is not None
        assert (episode.status, episode.length, episode.episode_return) == ("completed", 1, None)

        with pytest.raises(InvalidInputError, match="agent_id"):
            async with rt.episode("nobody"):
                pass


# -- track -----------------------------------------------------------------------------------


async def test_track_records_a_successful_call(
    make_runtime: RuntimeFactory,
) -> None:
    async with make_runtime() as rt:

        @rt.track("open", reward=lambda hits: float(len(hits)))
        async def search(query: str, limit: int = 5, *, payload: object = None) -> list[str]:
            return [query] * 2

        result = await search("cats", payload={"big": "object"})
        assert result == ["cats", "cats"]
        assert search.__name__ == "search"
        await rt.flush()

        async with rt.database.connect() as connection:
            view = (await connection.execute(select(experience_view))).mappings().one()
        assert view["agent_id"] == "open"
        assert view["action"] == "search"
        assert view["actions"] == ["search"]
        assert view["propensity"] is None
        # Scalar arguments by name, defaults included; the object argument is left out.
        assert view["context"] == {"query": "cats", "limit": 5}
        assert view["reward"] == 2.0
        outcome = view["outcome"]
        assert outcome["ok"] is True
        assert outcome["latency_ms"] >= 0
        assert set(outcome) == {"latency_ms", "ok"}
        rows = await feedback_rows(rt, view["decision_id"])
        assert [r.source for r in rows] == ["track"]


async def test_track_arguments_action_and_default_reward(make_runtime: RuntimeFactory) -> None:
    async with make_runtime() as rt:

        @rt.track("open", action="lookup", arguments=["key"])
        async def fetch(key: str, retries: int, verbose: bool) -> str:
            return key.upper()

        @rt.track("open", context=lambda n: {"size": n * 2})
        async def compute(n: int) -> int:
            return n

        assert await fetch("k1", 3, verbose=True) == "K1"
        assert await compute(4) == 4
        await rt.flush()

        async with rt.database.connect() as connection:
            rows = (await connection.execute(select(experience_view))).mappings().all()
        by_action = {row["action"]: row for row in rows}
        assert set(by_action) == {"lookup", "compute"}
        assert by_action["lookup"]["context"] == {"key": "k1"}
        assert by_action["lookup"]["reward"] == 1.0
        assert by_action["compute"]["context"] == {"size": 8}
        assert by_action["compute"]["reward"] == 1.0


async def test_track_records_a_failure_and_reraises(
    make_runtime: RuntimeFactory,
) -> None:
    async with make_runtime() as rt:

        @rt.track("open", failure_reward=-1.0)
        async def flaky(url: str) -> str:
            raise ConnectionError(f"cannot reach {url}")

        with pytest.raises(ConnectionError, match="cannot reach http://x"):
            await flaky("http://x")
        await rt.flush()

        async with rt.database.connect() as connection:
            view = (await connection.execute(select(experience_view))).mappings().one()
        assert view["action"] == "flaky"
        assert view["context"] == {"url": "http://x"}
        assert view["reward"] == -1.0
        outcome = view["outcome"]
        assert outcome["ok"] is False
        assert outcome["error"] == "ConnectionError: cannot reach http://x"
        assert outcome["latency_ms"] >= 0

    with pytest.raises(InvalidInputError) as bad:
        make_runtime().track("open", failure_reward=math.nan)
    assert bad.value.field == "failure_reward"


# -- the reward wait window ----------------------------------------------------------------

WINDOW_AGENTS: dict[str, Any] = {
    "waiting": {"actions": ["a", "b"], "reward": {"wait_window": "10m", "default": 0.0}},
    "patient": {"actions": ["a", "b"]},
}


async def default_rewards(rt: Runtime) -> list[FeedbackRow]:
    query = select(FeedbackRow).where(FeedbackRow.source == "default")
    async with rt.database.session() as session:
        return list((await session.scalars(query)).all())


async def test_default_rewards_after_the_wait_window(
    make_runtime: RuntimeFactory, durability: Durability
) -> None:
    clock = FakeClock()
    async with make_runtime(durability=durability, agents=WINDOW_AGENTS, clock=clock) as rt:
        silent = await rt.decide("waiting", {})
        rewarded = await rt.decide("waiting", {})
        await rt.decide("patient", {})  # no window: never defaulted
        clock.advance(timedelta(minutes=5))
        await rt.reward(rewarded, 1.0)
        later = await rt.decide("waiting", {})
        await rt.flush()

        # Inside the window nothing is due.
        clock.advance(timedelta(minutes=4))
        assert await rt.apply_default_rewards() == 0

        # Past the window of the first two only.
        clock.advance(timedelta(minutes=2))
        assert await rt.apply_default_rewards() == 1
        # Again before the first default is even written (buffered): should it be sent again,
        # it has the same id and is not stored twice.
        again = await rt.apply_default_rewards()
        if durability == "sync":
            assert again == 0
        await rt.flush()
        given = await default_rewards(rt)
        assert [(f.decision_id, f.reward, f.kind) for f in given] == [(silent.id, 0.0, "reward")]
        assert given[0].created_at == START + timedelta(minutes=11)
        assert (await experience(rt, silent.id))["reward"] == 0.0
        assert [f.source for f in await feedback_rows(rt, rewarded.id)] == [None]

        # Again at the same time, and later: no duplicates.
        assert await rt.apply_default_rewards() == 0
        await rt.flush()
        clock.advance(timedelta(minutes=5))
        assert await rt.apply_default_rewards() == 1
        await rt.flush()
        assert await rt.apply_default_rewards() == 0
        await rt.flush()
        given = await default_rewards(rt)
        assert sorted(f.decision_id.hex for f in given) == sorted([silent.id.hex, later.id.hex])
        assert len(await feedback_rows(rt, silent.id)) == 1


async def test_default_rewards_are_not_duplicated_by_a_second_runtime(
    make_runtime: RuntimeFactory,
) -> None:
    clock = FakeClock()
    async with make_runtime(agents=WINDOW_AGENTS, clock=clock) as first:
        decision = await first.decide("waiting", {})
        clock.advance(timedelta(minutes=11))
        assert await first.apply_default_rewards() == 1
    # Another process (no memory of the first sweep) reaches the same decision.
    async with make_runtime(agents=WINDOW_AGENTS, clock=clock) as second:
        assert await second.apply_default_rewards() == 0
        await second.flush()
        assert len(await feedback_rows(second, decision.id)) == 1


async def test_concurrent_sweeps_write_each_default_reward_once(
    make_runtime: RuntimeFactory,
) -> None:
    clock = FakeClock()
    # The first runtime holds its batch until flushed, so the second cannot see its default.
    holding = {"flush_interval": "1h"}
    async with (
        make_runtime(
            durability="buffered", agents=WINDOW_AGENTS, clock=clock, runtime=holding
        ) as first,
        make_runtime(durability="sync", agents=WINDOW_AGENTS, clock=clock) as second,
    ):
        decision = await second.decide("waiting", {})
        clock.advance(timedelta(minutes=11))
        assert await first.apply_default_rewards() == 1
        assert await second.apply_default_rewards() == 1
        await first.flush()
        rows = await feedback_rows(second, decision.id)
        assert [(f.source, f.reward) for f in rows] == [("default", 0.0)]


async def test_decision_stored_after_a_sweep_still_gets_its_default(
    make_runtime: RuntimeFactory,
) -> None:
    clock = FakeClock()
    holding = {"flush_interval": "1h"}
    async with make_runtime(
        durability="buffered", agents=WINDOW_AGENTS, clock=clock, runtime=holding
    ) as rt:
        decision = await rt.decide("waiting", {})
        clock.advance(timedelta(minutes=11))
        # Still in the buffer: the sweep cannot see it yet.
        assert await rt.apply_default_rewards() == 0
        await rt.flush()
        clock.advance(timedelta(minutes=1))
        assert await rt.apply_default_rewards() == 1
        await rt.flush()
        rows = await feedback_rows(rt, decision.id)
        assert [(f.source, f.reward) for f in rows] == [("default", 0.0)]


async def test_deferred_decision_gets_the_default_only_after_activation_and_window(
    make_runtime: RuntimeFactory,
) -> None:
    clock = FakeClock()
    async with make_runtime(agents=WINDOW_AGENTS, clock=clock) as rt:
        decision = await rt.decide("waiting", {}, mode="deferred")
        await rt.flush()
        clock.advance(timedelta(minutes=30))
        assert await rt.apply_default_rewards() == 0

        await rt.activate(decision)  # at START + 30m
        await rt.flush()
        clock.advance(timedelta(minutes=9))
        assert await rt.apply_default_rewards() == 0
        clock.advance(timedelta(minutes=2))
        assert await rt.apply_default_rewards() == 1
        await rt.flush()

        given = await default_rewards(rt)
        assert [(f.decision_id, f.reward) for f in given] == [(decision.id, 0.0)]
        view = await experience(rt, decision.id)
        assert view["activated_at"] == START + timedelta(minutes=30)
        assert view["reward"] == 0.0
        assert view["feedback_count"] == 1


# -- shutdown and backpressure ---------------------------------------------------------------


async def test_shutdown_drains_what_was_buffered(make_runtime: RuntimeFactory, db_url: str) -> None:
    runtime = make_runtime(durability="buffered")
    async with runtime as rt:
        for i in range(500):
            await rt.record("router", {"i": i}, "a", 1.0)
        # No flush: leaving the block must write everything still buffered.
        decision = await rt.decide("router", {})
        await rt.reward(decision, 0.5)

    db = Database(DatabaseConfig(url=db_url))
    try:
        assert await count(db, DecisionRow) == 501
        assert await count(db, FeedbackRow) == 501
    finally:
        await db.dispose()

    with pytest.raises(StorageError, match="not open"):
        await runtime.decide("router", {})
    with pytest.raises(StorageError, match="not open"):
        await runtime.flush()


async def test_closed_runtime_does_not_touch_the_database(make_runtime: RuntimeFactory) -> None:
    runtime = make_runtime(durability="sync")
    async with runtime:
        pass
    # Sync mode looks unknown ids up in the database: not once the runtime is closed.
    with pytest.raises(StorageError, match="not open"):
        await runtime.reward(uuid.uuid4(), 1.0)
    with pytest.raises(StorageError, match="not open"):
        await runtime.activate(uuid.uuid4())
    with pytest.raises(StorageError, match="not open"):
        _ = runtime.database


async def test_full_buffer_raises_backpressure_error(make_runtime: RuntimeFactory) -> None:
    runtime = {"buffer_size": 1, "backpressure": "error"}
    async with make_runtime(durability="buffered", runtime=runtime) as rt:
        await rt.flush()
        # Every task is blocked: the collector waits on the empty stream.
        await anyio.wait_all_tasks_blocked()
        accepted: list[Decision] = []

        # Buffered decide() never yields, so the collector cannot drain in between: one record
        # goes to the waiting collector, one fills the buffer, the next one finds no room.
        async def fill() -> None:
            for i in range(10):
                accepted.append(await rt.decide("router", {"i": i}))

        with pytest.raises(BackpressureError, match="buffer is full"):
            await fill()
        assert len(accepted) == 2
        await rt.flush()
        assert await count(rt.database, DecisionRow) == 2
        stored = await decision_row(rt, accepted[1].id)
        assert stored.context == {"i": 1}
