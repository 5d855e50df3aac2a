"""StrategyAdapter: promotions, rejections, exploration retuning and rollbacks.

The simulated task is the one of the updater's tests: each context names one of three topics,
each with its own best action (Bernoulli reward 0.8 for it, 0.2 for the others). The learner
under test's control is ``steered``, a plugin wrapping the linear learner: in ``worst`` mode
its model ranks the actions upside down (a version that is bad in live traffic yet passes the
``sanity`` validator, the only validator configured), in ``nan`` mode it predicts NaN (rejected
by ``sanity``). Its artifacts carry the mode, so a version reloaded after a rollback behaves as
it did when it was trained. Everything is seeded and the clock ticks one millisecond per call,
so every cycle, and every number asserted on, is deterministic. Real SQLite files and real
PostgreSQL databases; nothing is mocked.
"""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import numpy.typing as npt
import pytest
import structlog
import yaml
from helpers.steered import (
    ACTIONS,
    Played,
    Steer,
    TickingClock,
    play,
    steered_registry,
)
from sqlalchemy import select
from typer.testing import CliRunner, Result

from agentrt.cli import app
from agentrt.config import AgentConfig, DatabaseConfig, load_config
from agentrt.errors import InvalidInputError
from agentrt.exploration import EpsilonGreedy, Softmax, Strategy, UpperConfidenceBound
from agentrt.pipeline.adapter import (
    LiveReward,
    StrategyAdapter,
    live_rewards,
    significantly_below,
)
from agentrt.runtime import Runtime
from agentrt.schemas import Decision, DecisionMode, Feedback
from agentrt.storage import repositories
from agentrt.storage.engine import Database
from agentrt.storage.tables import StrategyUpdateRow

EPSILON, DECAY = 0.1, 0.995  # the default exploration: epsilon-greedy 0.1, decay 0.995
Z_99 = 2.326

Matrix = npt.NDArray[np.float64]
Served = tuple[int | None, DecisionMode, float | None]  # policy version, mode, reward


def epsilon_greedy(epsilon: float) -> dict[str, Any]:
    """An exploration as ``strategy_updates`` stores it."""
    return {"method": "epsilon_greedy", "epsilon": pytest.approx(epsilon)}


def strategy(active: int | None, epsilon: float) -> dict[str, Any]:
    """A strategy (``previous`` / ``updated``) as ``strategy_updates`` stores it."""
    return {"active_version": active, "exploration": epsilon_greedy(epsilon)}


def config_tree(
    url: str,
    spill: Path,
    *,
    analysis: dict[str, Any] | None = None,
    exploration: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The configuration as the YAML file would hold it."""
    agent: dict[str, Any] = {
        "actions": list(ACTIONS),
        "learner": "steered",
        "training": {"min_rows": 50},
        "validation": {"validators": ["sanity"]},
    }
    if exploration is not None:
        agent["exploration"] = exploration
    return {
        "database": {"url": url},
        "runtime": {
            "auto_migrate": True,
            # Cycles run only when a test calls run_cycle(): no background learning loop.
            "pipeline": "external",
            "seed": 7,
            "device": "cpu",
            "spill_dir": str(spill),
            # Only the explicit refresh_policies() calls of the tests reload policies.
            "policy_refresh_interval": "1h",
        },
        "logging": {"format": "json", "level": "error"},
        "agents": {"router": agent},
        "experience_configuration": {"analysis": analysis or {}},
    }


def steered_runtime(url: str, spill: Path, steer: Steer, **options: Any) -> Runtime:
    config = load_config(config_tree(url, spill, **options))
    return Runtime(config, registry=steered_registry(steer), clock=TickingClock())


async def cycle_status(rt: Runtime) -> str:
    return (await rt.run_cycle("router"))["router"].status


@asynccontextmanager
async def database_at(url: str) -> AsyncIterator[Database]:
    """A handle on a test's database of its own."""
    db = Database(DatabaseConfig(url=url))
    try:
        yield db
    finally:
        await db.dispose()


async def updates(db: Database) -> list[StrategyUpdateRow]:
    """The router's ``strategy_updates`` rows, oldest first."""
    query = (
        select(StrategyUpdateRow)
        .where(StrategyUpdateRow.agent_id == "router")
        .order_by(StrategyUpdateRow.id)
    )
    async with db.session() as session:
        return list((await session.scalars(query)).all())


async def statuses(db: Database) -> dict[int, tuple[str, str | None]]:
    """Each stored version of the router: (status, status_reason)."""
    async with db.session() as session:
        versions = await repositories.list_policy_versions(session, "router")
    return {v.version: (v.status, v.status_reason) for v in versions}


async def updates_at(url: str) -> list[StrategyUpdateRow]:
    async with database_at(url) as db:
        return await updates(db)


async def statuses_at(url: str) -> dict[int, tuple[str, str | None]]:
    async with database_at(url) as db:
        return await statuses(db)


# -- significantly_below --------------------------------------------------------------------


@pytest.mark.parametrize(("current", "reference"), [(99, 500), (500, 99), (99, 99)])
def test_fewer_than_100_live_rewards_are_never_significant(current: int, reference: int) -> None:
    drop = significantly_below(LiveReward(current, 0.1, 0.09), LiveReward(reference, 0.9, 0.09))
    assert drop == (False, 0.0)
    # The same drop with 100 rewards on each side is flagged.
    assert significantly_below(LiveReward(100, 0.1, 0.09), LiveReward(100, 0.9, 0.09))[0]


def test_a_clear_drop_is_significant() -> None:
    below, z = significantly_below(LiveReward(200, 0.2, 0.16), LiveReward(200, 0.8, 0.16))
    assert below is True
    assert z == pytest.approx(-0.6 / math.sqrt(0.16 / 200 + 0.16 / 200))
    assert z < -10


@pytest.mark.parametrize(
    ("current", "reference"),
    [
        (LiveReward(200, 0.78, 0.1716), LiveReward(200, 0.80, 0.16)),  # noise
        (LiveReward(1000, 0.79, 0.1659), LiveReward(1000, 0.80, 0.16)),  # noise, more data
        (LiveReward(200, 0.90, 0.09), LiveReward(200, 0.20, 0.16)),  # an improvement
    ],
    ids=["noise", "noise-large-n", "improvement"],
)
def test_noise_and_improvements_are_not_significant(
    current: LiveReward, reference: LiveReward
) -> None:
    below, z = significantly_below(current, reference)
    assert below is False
    se = math.sqrt(current.variance / current.n + reference.variance / reference.n)
    assert z == pytest.approx((current.mean - reference.mean) / se)
    assert z > -Z_99


@pytest.mark.parametrize(("drop", "flagged"), [(0.2327, True), (0.2325, False)])
def test_the_threshold_is_one_sided_99_percent(drop: float, flagged: bool) -> None:
    # Standard error 0.1: the z is -drop * 10, flagged below -2.326 only.
    below, z = significantly_below(LiveReward(100, 0.5 - drop, 0.5), LiveReward(100, 0.5, 0.5))
    assert z == pytest.approx(-drop * 10)
    assert below is flagged


@pytest.mark.parametrize(
    ("current", "reference", "expected"),
    [
        (0.0, 1.0, (True, -math.inf)),
        (0.5, 0.5, (False, 0.0)),
        (1.0, 0.0, (False, 0.0)),
    ],
    ids=["below", "equal", "above"],
)
def test_zero_variance_compares_the_means(
    current: float, reference: float, expected: tuple[bool, float]
) -> None:
    result = significantly_below(LiveReward(100, current, 0.0), LiveReward(150, reference, 0.0))
    assert result == expected


# -- retune -----------------------------------------------------------------------------------


@pytest.fixture
async def sqlite_db(sqlite_url: str) -> AsyncIterator[Database]:
    """An SQLite database handle (the adapter's retune does not touch it)."""
    async with database_at(sqlite_url) as db:
        yield db


def adapter_for(db: Database, exploration: dict[str, Any] | None = None) -> StrategyAdapter:
    # These tests are about epsilon-greedy unless they say otherwise (a linear agent's default
    # is UCB).
    agent: dict[str, Any] = {
        "actions": list(ACTIONS),
        "exploration": exploration if exploration is not None else {"method": "epsilon_greedy"},
    }
    return StrategyAdapter(load_config({"agents": {"router": agent}}), db)


def alarm(direction: str, before: float = 0.8, after: float = 0.3) -> dict[str, Any]:
    """One alarm of a ``trend`` knowledge payload."""
    return {
        "index": 140,
        "direction": direction,
        "change_index": 120,
        "change_at": "2030-01-01T00:00:00.120000+00:00",
        "mean_before": before,
        "mean_after": after,
    }


def trend(*alarms: dict[str, Any]) -> dict[str, Any]:
    return {"trend": {"rewarded": 200, "alarms": list(alarms), "alarm_count": len(alarms)}}


@pytest.mark.parametrize("promoted", [False, True])
@pytest.mark.parametrize("current", [0.1, 0.05, 0.01])
async def test_a_reward_drop_reopens_epsilon_to_twice_the_configured(
    sqlite_db: Database, current: float, promoted: bool
) -> None:
    adapter = adapter_for(sqlite_db)
    now = EpsilonGreedy(epsilon=current)
    knowledge = trend(alarm("increase", 0.2, 0.8), alarm("decrease", 0.8, 0.3))
    updated, why = adapter.retune("router", now, knowledge, promoted)
    assert updated == EpsilonGreedy(epsilon=2 * EPSILON)
    assert why == (
        "reward dropped from 0.8 to 0.3 at 2030-01-01T00:00:00.120000+00:00: exploration re-opened"
    )


async def test_a_reward_drop_doubles_the_ucb_confidence(sqlite_db: Database) -> None:
    adapter = adapter_for(sqlite_db, {"method": "ucb", "confidence": 0.5})
    now = UpperConfidenceBound(confidence=0.5)
    updated, why = adapter.retune("router", now, trend(alarm("decrease")), False)
    assert updated == UpperConfidenceBound(confidence=1.0)
    assert why is not None


async def test_the_reason_names_the_last_drop(sqlite_db: Database) -> None:
    adapter = adapter_for(sqlite_db)
    knowledge = trend(alarm("decrease", 0.9, 0.6), alarm("decrease", 0.6, 0.25))
    _, why = adapter.retune("router", EpsilonGreedy(epsilon=0.05), knowledge, False)
    assert why is not None
    assert why.startswith("reward dropped from 0.6 to 0.25 at 2030-01-01T00:00:00.12")


async def test_a_reward_drop_reopens_the_softmax_temperature(sqlite_db: Database) -> None:
    adapter = adapter_for(sqlite_db, {"method": "softmax", "temperature": 0.5})
    knowledge = trend(alarm("decrease"))
    updated, why = adapter.retune("router", Softmax(temperature=0.5), knowledge, True)
    assert updated == Softmax(temperature=1.0)
    assert why is not None
    assert why.endswith("exploration re-opened")


async def test_reopening_never_lowers_exploration_nor_exceeds_one(sqlite_db: Database) -> None:
    adapter = adapter_for(sqlite_db)
    above = EpsilonGreedy(epsilon=0.3)
    assert adapter.retune("router", above, trend(alarm("decrease")), True) == (above, None)

    wide = adapter_for(sqlite_db, {"epsilon": 0.7})
    updated, why = wide.retune(
        "router", EpsilonGreedy(epsilon=0.7), trend(alarm("decrease")), False
    )
    assert updated == EpsilonGreedy(epsilon=1.0)
    assert why is not None


@pytest.mark.parametrize(
    "knowledge",
    [{}, {"trend": {}}, {"trend": None}, trend(), trend(alarm("increase", 0.2, 0.8))],
    ids=["no-knowledge", "empty-trend", "null-trend", "no-alarms", "increase"],
)
async def test_without_a_drop_epsilon_decays_only_after_a_promotion(
    sqlite_db: Database, knowledge: dict[str, Any]
) -> None:
    adapter = adapter_for(sqlite_db)
    now = EpsilonGreedy(epsilon=EPSILON)
    assert adapter.retune("router", now, knowledge, False) == (now, None)
    updated, why = adapter.retune("router", now, knowledge, True)
    assert updated == EpsilonGreedy(epsilon=EPSILON * DECAY)
    assert why == "epsilon decays after a promotion"


@pytest.mark.parametrize(
    "current",
    [EpsilonGreedy(epsilon=0.01, floor=0.01), Softmax(temperature=0.5)],
    ids=["epsilon-at-floor", "softmax"],
)
async def test_a_promotion_leaves_what_cannot_decay(sqlite_db: Database, current: Strategy) -> None:
    adapter = adapter_for(sqlite_db)
    assert adapter.retune("router", current, trend(), True) == (current, None)


# -- live rewards and regression on stored decisions ----------------------------------------


async def store_served(db: Database, served: list[Served]) -> None:
    """One decision per (policy_version, mode, reward or None) for the router."""
    decisions, feedback = [], []
    start = datetime(2030, 1, 1, tzinfo=UTC)
    for i, (version, mode, reward) in enumerate(served):
        decision = Decision(
            agent_id="router",
            action=ACTIONS[i % 3],
            action_index=i % 3,
            actions=ACTIONS,
            context={"topic": f"t{i % 3}"},
            propensity=None if mode == "shadow" else 1 / 3,
            policy_version=version,
            mode=mode,
            policy_action=ACTIONS[0] if mode == "shadow" else None,
            created_at=start + timedelta(milliseconds=i),
        )
        decisions.append(decision)
        if reward is not None:
            feedback.append(Feedback(decision_id=decision.id, reward=reward, created_at=start))
    async with db.session() as session:
        await repositories.upsert_agents(session, {"router": AgentConfig(actions=list(ACTIONS))})
        await repositories.insert_decisions(session, decisions)
        await repositories.insert_feedback(session, feedback)


async def test_live_rewards_count_rewarded_live_decisions_per_version(database: Database) -> None:
    served: list[Served] = [
        *[(1, "live", float(i % 2)) for i in range(10)],  # mean 0.5, variance 0.25
        *[(2, "live", r) for r in (0.2, 0.4, 0.6)],  # mean 0.4, variance 0.08 / 3
        (2, "live", None),  # not rewarded
        (2, "shadow", 1.0),  # not live
        (2, "deferred", 1.0),  # not live
        *[(None, "live", 1.0) for _ in range(4)],  # the baseline
        (3, "live", 1.0),  # not asked for
    ]
    await store_served(database, served)
    found = await live_rewards(database, "router", [1, 2, None])
    assert set(found) == {1, 2, None}
    assert found[1].n == 10
    assert found[1].mean == pytest.approx(0.5)
    assert found[1].variance == pytest.approx(0.25)
    assert found[2].n == 3
    assert found[2].mean == pytest.approx(0.4)
    assert found[2].variance == pytest.approx(0.08 / 3)
    assert found[None] == (4, 1.0, 0.0)
    assert await live_rewards(database, "router", [7]) == {}
    assert await live_rewards(database, "other", [1, 2, None]) == {}


async def test_regression_compares_with_the_parent_then_the_baseline(database: Database) -> None:
    served: list[Served] = [
        *[(1, "live", 1.0) for _ in range(100)],
        *[(2, "live", 0.0) for _ in range(100)],
        *[(3, "live", 0.0) for _ in range(99)],
    ]
    await store_served(database, served)
    adapter = StrategyAdapter(load_config({"agents": {"router": {}}}), database)

    regressed, numbers = await adapter.regression("router", 2, 1)
    assert regressed is True
    assert numbers == {
        "active": {"version": 2, "n": 100, "mean": 0.0, "variance": 0.0},
        "reference": {"version": 1, "n": 100, "mean": 1.0, "variance": 0.0},
        "z": None,  # -inf is no JSON: stored as null
    }
    # Better than its parent, no baseline rewards: nothing to roll back.
    assert await adapter.regression("router", 1, None) == (False, {})
    # Fewer than 100 live rewards: no evidence yet.
    assert await adapter.regression("router", 3, 1) == (False, {})


# -- strategy_updates written by learning cycles --------------------------------------------


async def test_each_training_cycle_records_a_promotion_or_a_rejection(
    db_url: str, tmp_path: Path
) -> None:
    steer = Steer()
    rng = random.Random(21)
    async with steered_runtime(db_url, tmp_path / "spill", steer) as rt:
        await play(rt, 40, rng)
        assert await cycle_status(rt) == "skipped"
        assert await updates(rt.database) == []  # a cycle that trains nothing changes nothing

        await play(rt, 50, rng)
        assert await cycle_status(rt) == "activated"
        steer.mode = "nan"
        rejected = (await rt.run_cycle("router"))["router"]
        assert rejected.status == "rejected"
        steer.mode = "good"
        await play(rt, 30, rng)
        assert await cycle_status(rt) == "activated"
        after = await play(rt, 6, rng)
        assert after.versions == {3}
        assert after.exploration == epsilon_greedy(EPSILON * DECAY**2)
        rows = await updates(rt.database)

    assert [row.kind for row in rows] == [
        "promote",
        "exploration",
        "reject",
        "promote",
        "exploration",
    ]
    promote1, decay1, reject, promote3, decay3 = rows
    assert promote1.previous == strategy(None, EPSILON)
    assert promote1.updated == strategy(1, EPSILON)
    assert promote1.details == {"candidate_version": 1, "reasons": [], "ope": None}

    assert decay1.previous == strategy(1, EPSILON)
    assert decay1.updated == strategy(1, EPSILON * DECAY)
    assert decay1.details == {"reason": "epsilon decays after a promotion"}

    # A rejection leaves the active version and exploration as they were.
    assert reject.previous == reject.updated == strategy(1, EPSILON * DECAY)
    assert reject.details["candidate_version"] == 2
    assert reject.details["ope"] is None
    reasons = reject.details["reasons"]
    assert len(reasons) == 1
    assert reasons[0].startswith("sanity: failed: estimates_finite")
    assert rejected.reason == reasons[0]

    assert promote3.previous == strategy(1, EPSILON * DECAY)
    assert promote3.updated == strategy(3, EPSILON * DECAY)
    assert promote3.details == {"candidate_version": 3, "reasons": [], "ope": None}
    assert decay3.previous == strategy(3, EPSILON * DECAY)
    assert decay3.updated == strategy(3, EPSILON * DECAY**2)
    assert all(row.agent_id == "router" for row in rows)
    assert [row.created_at for row in rows] == sorted(row.created_at for row in rows)


# -- automatic rollback ---------------------------------------------------------------------


@dataclass
class Regressed:
    """A runtime whose v2 (parent v1) earned far less live than v1 did."""

    v1: Played
    v2: Played


async def make_v2_regress(rt: Runtime, steer: Steer, rng: random.Random) -> Regressed:
    """v1 learns the task; v2 prefers the worst action and goes live; each serves 150 rewards."""
    baseline = await play(rt, 150, rng)
    assert baseline.versions == {None}
    assert await cycle_status(rt) == "activated"
    v1 = await play(rt, 150, rng)
    assert v1.versions == {1}
    steer.mode = "worst"
    assert await cycle_status(rt) == "activated"  # sanity passes: finite, valid probabilities
    v2 = await play(rt, 150, rng)
    assert v2.versions == {2}
    assert v2.mean_reward < baseline.mean_reward < v1.mean_reward, (baseline, v1, v2)
    return Regressed(v1, v2)


def check_rollback_row(row: StrategyUpdateRow, regressed: Regressed) -> None:
    assert row.kind == "rollback"
    epsilon = EPSILON * DECAY**2  # two promotions so far
    assert row.previous == strategy(2, epsilon)
    assert row.updated == strategy(1, epsilon)
    details = row.details
    assert (details["retired"], details["activated"], details["manual"]) == (2, 1, False)
    active, reference = details["active"], details["reference"]
    assert (active["version"], active["n"]) == (2, 150)
    assert (reference["version"], reference["n"]) == (1, 150)
    assert active["mean"] == pytest.approx(regressed.v2.mean_reward)
    assert reference["mean"] == pytest.approx(regressed.v1.mean_reward)
    # Bernoulli rewards: the variance is p(1 - p).
    assert active["variance"] == pytest.approx(active["mean"] * (1 - active["mean"]))
    assert reference["variance"] == pytest.approx(reference["mean"] * (1 - reference["mean"]))
    se = math.sqrt(active["variance"] / 150 + reference["variance"] / 150)
    assert details["z"] == pytest.approx((active["mean"] - reference["mean"]) / se)
    assert details["z"] < -Z_99
    assert details["reason"] == (
        f"live reward {active['mean']:.4f} (n=150) fell below v1's {reference['mean']:.4f} (n=150)"
    )


async def test_a_live_regression_rolls_back_to_the_previous_version(
    db_url: str, tmp_path: Path
) -> None:
    steer = Steer()
    rng = random.Random(31)
    async with steered_runtime(db_url, tmp_path / "spill", steer) as rt:
        regressed = await make_v2_regress(rt, steer, rng)
        before = len(await updates(rt.database))

        steer.mode = "nan"  # this cycle's candidate is rejected: what serves is the rollback's
        cycle = (await rt.run_cycle("router"))["router"]
        assert cycle.status == "rejected"
        assert (cycle.candidate_version, cycle.active_version) == (3, 1)
        assert rt.active_version("router") == 1
        served = await play(rt, 30, rng)
        assert served.versions == {1}

        rows = (await updates(rt.database))[before:]
        stored = await statuses(rt.database)

        # v1 is no worse than the baseline: the next cycle rolls nothing back.
        steer.mode = "good"
        assert await cycle_status(rt) == "activated"
        later = [row.kind for row in (await updates(rt.database))[before + len(rows) :]]

    check_rollback_row(rows[0], regressed)
    reject = rows[1]
    assert reject.kind == "reject"
    assert reject.previous["active_version"] == reject.updated["active_version"] == 1
    assert reject.details["candidate_version"] == 3
    # What the extractor saw was a reward drop too: exploration re-opens after the rejection.
    assert [row.kind for row in rows] == ["rollback", "reject", "exploration"]
    assert rows[2].updated == strategy(1, 2 * EPSILON)

    reason = rows[0].details["reason"]
    assert stored[1] == ("active", f"reactivated: {reason}")
    assert stored[2] == ("retired", reason)
    assert stored[3][0] == "rejected"
    assert "rollback" not in later


async def test_after_a_rollback_a_passing_candidate_takes_over(
    sqlite_url: str, tmp_path: Path
) -> None:
    steer = Steer()
    rng = random.Random(31)
    async with steered_runtime(sqlite_url, tmp_path / "spill", steer) as rt:
        regressed = await make_v2_regress(rt, steer, rng)
        before = len(await updates(rt.database))
        steer.mode = "good"
        cycle = (await rt.run_cycle("router"))["router"]
        assert cycle.status == "activated"
        assert (cycle.candidate_version, cycle.active_version) == (3, 3)
        assert (await play(rt, 30, rng)).versions == {3}
        rows = (await updates(rt.database))[before:]
        async with rt.database.session() as session:
            v3 = await repositories.load_policy_version(session, "router", 3)
        stored = await statuses(rt.database)

    assert [row.kind for row in rows] == ["rollback", "promote", "exploration"]
    check_rollback_row(rows[0], regressed)
    promote = rows[1]
    assert promote.previous["active_version"] == 1  # trained after the rollback
    assert promote.updated["active_version"] == 3
    assert v3 is not None
    assert v3.parent_version == 1
    assert stored[1] == ("retired", "superseded by v3")
    assert stored[2][0] == "retired"
    assert stored[3] == ("active", None)


async def test_a_drop_of_the_reward_reopens_exploration(sqlite_url: str, tmp_path: Path) -> None:
    analysis = {"change_detection": {"delta": 0.1, "threshold": 10}}
    steer = Steer()
    rng = random.Random(41)
    async with steered_runtime(sqlite_url, tmp_path / "spill", steer, analysis=analysis) as rt:
        await play(rt, 300, rng)
        assert await cycle_status(rt) == "activated"
        steady = await play(rt, 200, rng)
        assert steady.exploration == epsilon_greedy(EPSILON * DECAY)
        # The environment pays less for every action; v1 keeps choosing as well as before.
        dropped = await play(rt, 200, rng, p_best=0.4, p_other=0.1)
        assert dropped.versions == {1}
        assert dropped.mean_reward < steady.mean_reward - 0.25, (steady, dropped)

        cycle = (await rt.run_cycle("router"))["router"]
        assert cycle.status == "activated"
        alarms = cycle.knowledge["trend"]["alarms"]
        assert any(alarm["direction"] == "decrease" for alarm in alarms)
        after = await play(rt, 6, rng)
        assert after.versions == {2}
        assert after.exploration == epsilon_greedy(2 * EPSILON)
        rows = await updates(rt.database)

    # The drop is the environment's, not v1's: no rollback, and no decay after the promotion.
    assert [row.kind for row in rows] == ["promote", "exploration", "promote", "exploration"]
    reopened = rows[-1]
    assert reopened.previous == strategy(2, EPSILON * DECAY)
    assert reopened.updated == strategy(2, 2 * EPSILON)
    last = [alarm for alarm in alarms if alarm["direction"] == "decrease"][-1]
    assert reopened.details == {
        "reason": f"reward dropped from {last['mean_before']} to {last['mean_after']} "
        f"at {last['change_at']}: exploration re-opened"
    }
    assert last["mean_before"] > last["mean_after"]


# -- rollback by hand through the API -------------------------------------------------------


async def two_versions(rt: Runtime, rng: random.Random) -> None:
    await play(rt, 90, rng)
    assert await cycle_status(rt) == "activated"
    await play(rt, 30, rng)
    assert await cycle_status(rt) == "activated"
    assert rt.active_version("router") == 2


async def test_rollback_by_hand_serves_the_previous_or_the_named_version(
    db_url: str, tmp_path: Path
) -> None:
    rng = random.Random(51)
    epsilon = EPSILON * DECAY**2
    async with steered_runtime(db_url, tmp_path / "spill", Steer()) as rt:
        await two_versions(rt, rng)

        update = await rt.rollback("router")
        assert update.agent_id == "router"
        assert update.kind == "rollback"
        assert update.previous == strategy(2, epsilon)
        assert update.updated == strategy(1, epsilon)
        reason = "rolled back by hand to the predecessor"
        assert update.details == {"reason": reason, "retired": 2, "activated": 1, "manual": True}
        assert rt.active_version("router") == 1
        assert (await play(rt, 12, rng)).versions == {1}
        assert await statuses(rt.database) == {
            1: ("active", f"reactivated: {reason}"),
            2: ("retired", reason),
        }

        forward = await rt.rollback("router", to=2)
        assert forward.details == {
            "reason": "rolled back by hand to v2",
            "retired": 1,
            "activated": 2,
            "manual": True,
        }
        assert (forward.previous["active_version"], forward.updated["active_version"]) == (1, 2)
        assert (await play(rt, 12, rng)).versions == {2}

        with pytest.raises(InvalidInputError) as unknown:
            await rt.rollback("router", to=99)
        assert (unknown.value.field, unknown.value.value) == ("to", 99)
        assert str(unknown.value) == (
            "to: is not a version router can return to (stored: [1, 2]) (got 99)"
        )
        with pytest.raises(InvalidInputError, match="is already the active version"):
            await rt.rollback("router", to=2)
        assert rt.active_version("router") == 2
        assert (await play(rt, 6, rng)).versions == {2}
        rows = await updates(rt.database)

    manual = [row for row in rows if row.kind == "rollback"]
    assert len(manual) == 2  # the refused calls recorded nothing
    assert manual[0].details == update.details
    assert manual[0].previous == update.previous
    assert manual[0].updated == update.updated
    assert manual[1].details == forward.details


async def test_rollback_without_a_parent_serves_the_baseline(
    sqlite_url: str, tmp_path: Path
) -> None:
    rng = random.Random(61)
    async with steered_runtime(sqlite_url, tmp_path / "spill", Steer()) as rt:
        await play(rt, 60, rng)
        assert await cycle_status(rt) == "activated"

        update = await rt.rollback("router")
        assert (update.details["retired"], update.details["activated"]) == (1, None)
        assert update.updated["active_version"] is None
        assert rt.active_version("router") is None
        baseline = await play(rt, 9, rng)
        assert baseline.versions == {None}
        assert baseline.exploration == {"method": "uniform"}
        assert (await statuses(rt.database))[1][0] == "retired"

        with pytest.raises(InvalidInputError, match="has no active version") as none_active:
            await rt.rollback("router")
        assert none_active.value.field == "agent_id"

        # From the baseline, a named version can still be served again.
        again = await rt.rollback("router", to=1)
        assert (again.details["retired"], again.details["activated"]) == (None, 1)
        assert (await play(rt, 6, rng)).versions == {1}


async def test_rollback_needs_an_active_version_and_a_configured_agent(
    sqlite_url: str, tmp_path: Path
) -> None:
    async with steered_runtime(sqlite_url, tmp_path / "spill", Steer()) as rt:
        with pytest.raises(InvalidInputError, match="has no active version: its baseline"):
            await rt.rollback("router")
        with pytest.raises(InvalidInputError, match="is not a configured agent") as unknown:
            await rt.rollback("nobody")
        assert unknown.value.field == "agent_id"
        assert await updates(rt.database) == []


async def test_rollback_refuses_a_rejected_version(sqlite_url: str, tmp_path: Path) -> None:
    steer = Steer()
    rng = random.Random(71)
    async with steered_runtime(sqlite_url, tmp_path / "spill", steer) as rt:
        await play(rt, 60, rng)
        assert await cycle_status(rt) == "activated"
        steer.mode = "nan"
        assert await cycle_status(rt) == "rejected"
        with pytest.raises(InvalidInputError, match="stored"):
            await rt.rollback("router", to=2)
        assert rt.active_version("router") == 1


# -- agentrt rollback -----------------------------------------------------------------------


@pytest.fixture
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No configuration from the environment; structlog reset after the commands ran."""
    monkeypatch.delenv("AGENTRT_CONFIG", raising=False)
    monkeypatch.delenv("AGENTRT_DATABASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    yield
    # The commands configure structlog to write to the runner's (now closed) stderr.
    structlog.reset_defaults()


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def write_config(tmp_path: Path, url: str) -> str:
    path = tmp_path / "agentrt.yaml"
    path.write_text(yaml.safe_dump(config_tree(url, tmp_path / "spill")), encoding="utf-8")
    return str(path)


def prepare(url: str, tmp_path: Path, cycles: int) -> None:
    """Train ``cycles`` versions of the router, each activated, in a runtime of its own."""

    async def run() -> None:
        rng = random.Random(81)
        async with steered_runtime(url, tmp_path / "spill", Steer()) as rt:
            for _ in range(cycles):
                await play(rt, 60, rng)
                assert await cycle_status(rt) == "activated"

    anyio.run(run)


@pytest.mark.usefixtures("isolated")
def test_cli_rollback_serves_the_predecessor_then_the_named_version(
    sqlite_url: str, tmp_path: Path
) -> None:
    prepare(sqlite_url, tmp_path, cycles=2)
    config = write_config(tmp_path, sqlite_url)

    result = invoke("rollback", "router", "--config", config)
    assert result.exit_code == 0, result.output
    assert result.stdout == "router: retired v2, now serving v1\n"
    reason = "rolled back by hand to the predecessor"
    assert anyio.run(statuses_at, sqlite_url) == {
        1: ("active", f"reactivated: {reason}"),
        2: ("retired", reason),
    }
    row = anyio.run(updates_at, sqlite_url)[-1]
    assert row.kind == "rollback"
    assert row.details == {"reason": reason, "retired": 2, "activated": 1, "manual": True}
    # The command knows the configured exploration, not a runtime's decayed one.
    assert row.previous == strategy(2, EPSILON)
    assert row.updated == strategy(1, EPSILON)

    forward = invoke("rollback", "router", "--to", "2", "-c", config)
    assert forward.exit_code == 0, forward.output
    assert forward.stdout == "router: retired v1, now serving v2\n"
    assert {v: s for v, (s, _) in anyio.run(statuses_at, sqlite_url).items()} == {
        1: "retired",
        2: "active",
    }
    assert anyio.run(updates_at, sqlite_url)[-1].details["manual"] is True


@pytest.mark.usefixtures("isolated")
def test_cli_rollback_to_an_unknown_version_fails_with_one_line(
    sqlite_url: str, tmp_path: Path
) -> None:
    prepare(sqlite_url, tmp_path, cycles=1)
    config = write_config(tmp_path, sqlite_url)
    before = anyio.run(updates_at, sqlite_url)

    result = invoke("rollback", "router", "--to", "99", "--config", config)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "error: to: is not a version router can return to (stored: [1]) (got 99)"
    ]
    assert "Traceback" not in result.output
    assert len(anyio.run(updates_at, sqlite_url)) == len(before)
    assert anyio.run(statuses_at, sqlite_url)[1][0] == "active"

    # Back to the baseline, then nothing is left to roll back.
    assert invoke("rollback", "router", "-c", config).stdout == (
        "router: retired v1, now serving the baseline\n"
    )
    empty = invoke("rollback", "router", "-c", config)
    assert empty.exit_code == 1
    assert len(empty.stderr.splitlines()) == 1
    assert "has no active version" in empty.stderr


@pytest.mark.usefixtures("isolated")
def test_cli_rollback_of_a_missing_database_fails_with_one_line(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'missing.db'}")
    result = invoke("rollback", "router", "-c", config)
    assert result.exit_code == 1
    assert len(result.stderr.splitlines()) == 1
    assert "does not exist" in result.stderr
    assert not (tmp_path / "missing.db").exists()


@pytest.mark.usefixtures("isolated")
def test_cli_rollback_from_the_baseline_names_no_retired_version(
    sqlite_url: str, tmp_path: Path
) -> None:
    prepare(sqlite_url, tmp_path, cycles=1)
    config = write_config(tmp_path, sqlite_url)
    assert invoke("rollback", "router", "-c", config).exit_code == 0
    result = invoke("rollback", "router", "--to", "1", "-c", config)
    assert result.exit_code == 0, result.output
    assert "now serving v1" in result.stdout
    assert "vNone" not in result.stdout


@pytest.mark.usefixtures("isolated")
async def test_a_running_runtime_serves_what_the_cli_rolled_back_to(
    sqlite_url: str, tmp_path: Path
) -> None:
    rng = random.Random(91)
    config = write_config(tmp_path, sqlite_url)
    async with steered_runtime(sqlite_url, tmp_path / "spill", Steer()) as rt:
        await two_versions(rt, rng)
        # The command runs its own event loop: in a worker thread, beside the runtime's.
        result = await anyio.to_thread.run_sync(invoke, "rollback", "router", "--config", config)
        structlog.reset_defaults()
        assert result.exit_code == 0, result.output
        assert result.stdout == "router: retired v2, now serving v1\n"
        assert rt.active_version("router") == 2  # until the policies are refreshed

        await rt.refresh_policies()
        assert rt.active_version("router") == 1
        assert (await play(rt, 9, rng)).versions == {1}


@pytest.mark.usefixtures("isolated")
async def test_a_running_runtime_serves_the_baseline_the_cli_rolled_back_to(
    sqlite_url: str, tmp_path: Path
) -> None:
    rng = random.Random(92)
    config = write_config(tmp_path, sqlite_url)
    async with steered_runtime(sqlite_url, tmp_path / "spill", Steer()) as rt:
        await play(rt, 60, rng)
        assert await cycle_status(rt) == "activated"
        result = await anyio.to_thread.run_sync(invoke, "rollback", "router", "--config", config)
        structlog.reset_defaults()
        assert result.stdout == "router: retired v1, now serving the baseline\n"

        await rt.refresh_policies()
        assert rt.active_version("router") is None
        assert (await play(rt, 6, rng)).versions == {None}


async def test_rising_reward_staleness_reopens_exploration(sqlite_db: Database) -> None:
    adapter = adapter_for(sqlite_db)
    now = EpsilonGreedy(epsilon=EPSILON)

    def health(seconds: float) -> dict[str, Any]:
        return {"exploration_health": {"reward_staleness_seconds": seconds}}

    # The first report is a reference; a small or slow rise changes nothing.
    assert adapter.retune("router", now, health(20.0), False) == (now, None)
    assert adapter.retune("router", now, health(35.0), False) == (now, None)
    assert adapter.retune("router", now, health(65.0), False) == (now, None)
    updated, why = adapter.retune("router", now, health(400.0), False)
    assert updated == EpsilonGreedy(epsilon=2 * EPSILON)
    assert why == "reward staleness rose from 65 s to 400 s: exploration re-opened"
