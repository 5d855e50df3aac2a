"""The example processor: unit behaviour, and enabled by entry point in a real runtime."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from agentrt_reward_shaping import RewardShaping
from sqlalchemy import text

from agentrt import ExperienceBatch, Feedback, Runtime, load_config
from agentrt.plugins import PluginRegistry


def batch(*feedback: Feedback) -> ExperienceBatch:
    return ExperienceBatch(decisions=(), feedback=feedback, episodes=())


def test_latency_and_cost_reduce_the_reward_and_the_original_is_kept() -> None:
    shaper = RewardShaping(latency_weight=0.1, cost_weight=1.0)
    event = Feedback(
        decision_id=uuid.uuid4(), reward=1.0, outcome={"latency_ms": 2000, "cost": 0.3}
    )
    (shaped,) = shaper.process(batch(event)).feedback
    assert shaped.reward == pytest.approx(1.0 - 0.2 - 0.3)
    assert shaped.outcome == {"latency_ms": 2000, "cost": 0.3, "raw_reward": 1.0}
    assert shaped.id == event.id


def test_rewards_are_clipped_and_events_without_measures_pass_unchanged() -> None:
    shaper = RewardShaping(cost_weight=10.0)
    decision_id = uuid.uuid4()
    costly = Feedback(decision_id=decision_id, reward=1.0, outcome={"cost": 5.0})
    plain = Feedback(decision_id=decision_id, reward=0.7, outcome={"note": "ok"})
    activation = Feedback(decision_id=decision_id, kind="activation")
    shaped = shaper.process(batch(costly, plain, activation)).feedback
    assert shaped[0].reward == 0.0
    assert shaped[1] is plain
    assert shaped[2] is activation


def test_the_entry_point_is_found_by_name() -> None:
    registry = PluginRegistry(enable=["reward_shaping"])
    assert "reward_shaping" in registry.names("processor")


async def test_a_runtime_stores_shaped_rewards(tmp_path: Path) -> None:
    config = load_config(
        {
            "database": {"url": f"sqlite+aiosqlite:///{tmp_path / 'shaping.db'}"},
            "plugins": {"enable": ["reward_shaping"]},
            "experience_configuration": {"processing": {"methods": ["reward_shaping"]}},
            "agents": {"router": {"actions": ["search", "sql"]}},
        }
    )
    async with Runtime(config) as rt:
        decision = await rt.decide("router", {"topic": "billing"})
        await rt.reward(decision, 1.0, outcome={"latency_ms": 500, "cost": 0.25})
        await rt.flush()
        async with rt.database.connect() as connection:
            reward = (await connection.execute(text("SELECT reward FROM experience"))).scalar_one()
    assert reward == pytest.approx(1.0 - 0.05 - 0.25)
