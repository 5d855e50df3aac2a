"""The default exploration of an agent whose learner estimates its uncertainty (``linear``).

Without an exploration block such an agent explores by UCB on the linear model's posterior
standard deviation. What that buys over acting on the estimates alone: an action whose first
rewards were bad keeps a wide bound while it is rarely tried, so it is tried again, and found
to be the best, instead of being written off by its first few rewards.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from helpers.steered import ACTIONS, BEST, TickingClock, play

from agentrt.config import load_config
from agentrt.exploration import UpperConfidenceBound, from_config
from agentrt.learning.features import FeatureEncoder, FeatureSpec
from agentrt.learning.linear import LinearModel
from agentrt.policy import LearnedPolicy
from agentrt.runtime import Runtime

# Bernoulli reward of each action; "b" is the best.
PAYOFF = {"a": 0.5, "b": 0.8, "c": 0.2}
# The first rewards: "b" was unlucky, "a" and "c" were not.
FIRST = [("a", 1.0), ("b", 0.0), ("c", 1.0), ("a", 0.0), ("b", 0.0), ("c", 0.0)]
FIRST += [("a", 1.0), ("b", 0.0), ("c", 0.0)]
CONTEXT = {"segment": "retail", "basket": 3.0}


def serve(agent: dict[str, Any], rounds: int, seed: int) -> list[str]:
    """The actions a fresh linear policy chooses, learning after every reward, when its first
    rewards were ``FIRST``; exploration as ``agent`` configures (or derives) it."""
    actions = tuple(PAYOFF)
    config = load_config({"agents": {"r": {"actions": list(actions), **agent}}}, environ={})
    encoder = FeatureEncoder(FeatureSpec(dim=16))
    ridge = config.agents["r"].training.ridge
    model = LinearModel.prior(len(actions), encoder.spec.width, ridge)
    exploration = from_config(config.exploration_for("r"))
    policy = LearnedPolicy(1, "linear", model, encoder, actions, exploration)
    features = encoder.encode(CONTEXT)[None, :]

    def learn(action: str, reward: float) -> None:
        index = np.array([actions.index(action)], dtype=np.int64)
        model.update(features, index, np.array([reward], dtype=np.float32))

    for action, reward in FIRST:
        learn(action, reward)
    rng = random.Random(seed)
    chosen = []
    for _ in range(rounds):
        action = actions[policy.choose(CONTEXT, actions, None, rng).action_index]
        learn(action, float(rng.random() < PAYOFF[action]))
        chosen.append(action)
    return chosen


def test_the_default_for_the_linear_learner_is_ucb_on_its_uncertainty() -> None:
    config = load_config({"agents": {"r": {"actions": ["a", "b"]}}}, environ={})
    assert config.learner_for("r") == "linear"
    assert isinstance(from_config(config.exploration_for("r")), UpperConfidenceBound)


def test_an_action_whose_first_rewards_were_bad_is_tried_again_and_found_best() -> None:
    chosen = serve({}, rounds=400, seed=3)

    assert "b" in chosen
    late = Counter(chosen[200:])
    assert late.most_common(1)[0][0] == "b", late


def test_acting_on_the_estimates_alone_never_tries_it_again() -> None:
    greedy = {"exploration": {"method": "epsilon_greedy", "epsilon": 0.0, "floor": 0.0}}

    chosen = serve(greedy, rounds=400, seed=3)

    assert "b" not in chosen


async def test_an_agent_without_an_exploration_block_serves_ucb_and_learns(
    sqlite_url: str, tmp_path: Path
) -> None:
    """Through the runtime, on the three-topic task: the active linear version explores by
    UCB, learns from every reward between cycles, and ends up choosing each topic's best."""
    config = load_config(
        {
            "database": {"url": sqlite_url},
            "runtime": {
                "auto_migrate": True,
                "pipeline": "external",
                "seed": 5,
                "device": "cpu",
                "spill_dir": str(tmp_path / "spill"),
            },
            "logging": {"format": "json", "level": "error"},
            "agents": {
                "router": {
                    "actions": list(ACTIONS),
                    "training": {"min_rows": 10},
                    "validation": {"validators": ["sanity"]},
                }
            },
        }
    )
    rng = random.Random(5)
    async with Runtime(config, clock=TickingClock()) as rt:
        await play(rt, 12, rng)
        assert (await rt.run_cycle("router"))["router"].status == "activated"
        for _ in range(20):
            await play(rt, 15, rng)
            await rt.flush()
        served = await play(rt, 150, rng)
        best = [
            (await rt.decide("router", {"topic": topic})).action == BEST[topic]
            for topic in ("t0", "t1", "t2")
            for _ in range(20)
        ]
    assert served.exploration["method"] == "ucb"
    assert served.versions == {1}
    assert served.mean_reward > 0.7
    assert sum(best) / len(best) > 0.9
