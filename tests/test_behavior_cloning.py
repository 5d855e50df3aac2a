"""The ``behavior_cloning`` learner on simulated episodic tasks, and through the runtime.

Two simulators, both seeded:

- a **corridor**: positions 0..4, start at 0, goal at 4; actions ``left``, ``stay``, ``right``
  (with probability 0.2 the corridor ignores the action and moves at random); each step costs
  0.1, the goal pays 1 and ends the episode, at most 12 steps. The logs mix three behaviours:
  good but noisy (mostly ``right``), uniformly random, and lazy (mostly ``stay``). Lazy
  episodes are the most numerous, so cloning *every* episode learns to stay: only the return
  filter (or the advantage weights) recovers the good behaviour.
- a **memory task**: three steps; the first context shows a cue (+1 or -1), the next two show
  cue 0; the last step pays 1 when its action matches the cue (``right`` for +1). Only a
  model that reads the step history can beat chance at the last step.
"""

from __future__ import annotations

import random
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
from helpers.steered import TickingClock

from agentrt.config import ModelParametersConfig, TrainingConfig, load_config
from agentrt.errors import InvalidInputError, PolicyError
from agentrt.exploration import EpsilonGreedy
from agentrt.learning.artifacts import sha256
from agentrt.learning.behavior_cloning import (
    BehaviorCloningLearner,
    BehaviorCloningModel,
    plugin,
)
from agentrt.learning.data import BanditData
from agentrt.learning.features import FeatureEncoder, FeatureSpec
from agentrt.learning.settings import LearnerSettings
from agentrt.pipeline.updater import Trained, _artifact, load_policy
from agentrt.plugins import PluginRegistry
from agentrt.policy import LearnedPolicy
from agentrt.runtime import Runtime
from agentrt.schemas import PolicyVersion
from agentrt.types import Learner, SequenceModel

Floats = npt.NDArray[np.float32]


# Small models on a shared machine: one intra-op thread (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def settings(
    architecture: str = "mlp",
    *,
    seed: int = 0,
    epochs: int = 30,
    history: int = 8,
    top_quantile: float = 0.5,
    advantage_weighted: bool = False,
    advantage_temperature: float = 1.0,
    dropout: float = 0.0,
) -> LearnerSettings:
    return LearnerSettings(
        architecture=architecture,
        parameters=ModelParametersConfig(
            learning_rate=1e-2,
            batch_size=64,
            epochs=epochs,
            hidden_size=16,
            num_layers=1,
            dropout=dropout,
            history=history,
            top_quantile=top_quantile,
            advantage_weighted=advantage_weighted,
            advantage_temperature=advantage_temperature,
        ),
        training=TrainingConfig(patience=5),
        seed=seed,
    )


# -- the corridor --------------------------------------------------------------------------

CORRIDOR = ("left", "stay", "right")
GOAL, HORIZON, SLIP, STEP_COST = 4, 12, 0.2, 0.1
BEHAVIOURS = {  # probabilities of left, stay, right; and the share of episodes
    "good": ((0.1, 0.1, 0.8), 0.3),
    "random": ((1 / 3, 1 / 3, 1 / 3), 0.3),
    "lazy": ((0.15, 0.7, 0.15), 0.4),
}


def position_features(positions: npt.NDArray[np.int64]) -> Floats:
    features: Floats = np.eye(GOAL + 1, dtype=np.float32)[positions]
    return features


def corridor_step(position: int, action: int, rng: np.random.Generator) -> tuple[int, float, bool]:
    if rng.random() < SLIP:
        action = int(rng.integers(3))
    position = min(GOAL, max(0, position + action - 1))
    done = position == GOAL
    return position, (1.0 if done else 0.0) - STEP_COST, done


def corridor_logs(episodes: int, seed: int) -> BanditData:
    rng = np.random.default_rng(seed)
    names = list(BEHAVIOURS)
    shares = [BEHAVIOURS[name][1] for name in names]
    positions: list[int] = []
    actions: list[int] = []
    rewards: list[float] = []
    codes: list[int] = []
    steps: list[int] = []
    for episode in range(episodes):
        probabilities = BEHAVIOURS[names[rng.choice(len(names), p=shares)]][0]
        position = 0
        for step in range(HORIZON):
            action = int(rng.choice(3, p=probabilities))
            positions.append(position)
            actions.append(action)
            codes.append(episode)
            steps.append(step)
            position, reward, done = corridor_step(position, action, rng)
            rewards.append(reward)
            if done:
                break
    return BanditData(
        actions=CORRIDOR,
        features=position_features(np.array(positions, dtype=np.int64)),
        action_index=np.array(actions, dtype=np.int64),
        rewards=np.array(rewards, dtype=np.float32),
        propensities=np.full(len(actions), np.nan, dtype=np.float32),
        episodes=np.array(codes, dtype=np.int64),
        steps=np.array(steps, dtype=np.int64),
    )


def corridor_return(
    model: BehaviorCloningModel | None, episodes: int = 400, seed: int = 99
) -> float:
    """Mean return of greedy rollouts, all episodes at once (``None``: uniformly random)."""
    rng = np.random.default_rng(seed)
    position = np.zeros(episodes, dtype=np.int64)
    running = np.ones(episodes, dtype=bool)
    total = np.zeros(episodes)
    history: list[npt.NDArray[np.int64]] = []
    for _ in range(HORIZON):
        history.append(position)
        if model is None:
            action = rng.integers(3, size=episodes)
        else:
            windows = position_features(np.stack(history, axis=1))
            action = np.argmax(model.predict_sequence(windows)[0], axis=1)
        action = np.where(rng.random(episodes) < SLIP, rng.integers(3, size=episodes), action)
        moved = np.clip(position + action - 1, 0, GOAL)
        total += np.where(running, (moved == GOAL) - STEP_COST, 0.0)
        position = np.where(running, moved, position)
        running &= moved != GOAL
    return float(total.mean())


@pytest.fixture(scope="module")
def corridor() -> BanditData:
    return corridor_logs(400, seed=1)


def test_cloning_the_best_episodes_beats_random_and_cloning_everything(
    corridor: BanditData,
) -> None:
    best, metrics = BehaviorCloningLearner(settings("mlp", top_quantile=0.3)).fit(corridor)
    # ``top_quantile`` must be below 1 in the configuration; 0.999 of 400 episodes is all 400.
    everything, all_metrics = BehaviorCloningLearner(settings("mlp", top_quantile=0.999)).fit(
        corridor
    )
    random_return = corridor_return(None)
    best_return = corridor_return(best)
    all_return = corridor_return(everything)
    assert best_return > random_return + 0.5, (best_return, random_return)
    assert best_return > all_return + 0.5, (best_return, all_return)

    assert metrics["variant"] == "top_quantile"
    assert metrics["episodes"] == all_metrics["episodes"] == all_metrics["episodes_kept"] == 400
    assert 120 <= metrics["episodes_kept"] < 200
    assert metrics["kept_mean_return"] > metrics["mean_return"]
    assert metrics["rows"] == all_metrics["rows_kept"] == len(corridor)
    assert metrics["train_rows"] + metrics["holdout_rows"] == metrics["rows_kept"]
    assert metrics["holdout_episodes"] == int(metrics["episodes_kept"] * 0.2)
    assert len(metrics["loss_curve"]) == metrics["epochs"]
    assert 1 <= metrics["best_epoch"] <= metrics["epochs"]
    assert metrics["device"] == "cpu"
    assert metrics["history"] == 1


def test_advantage_weighted_cloning_beats_random(corridor: BanditData) -> None:
    model, metrics = BehaviorCloningLearner(
        settings("mlp", advantage_weighted=True, advantage_temperature=0.2)
    ).fit(corridor)
    random_return = corridor_return(None)
    learned = corridor_return(model)
    assert learned > random_return + 0.5, (learned, random_return)
    assert metrics["variant"] == "advantage_weighted"
    assert metrics["episodes_kept"] == metrics["episodes"] == 400
    assert metrics["threshold_return"] is None
    assert 0 < metrics["effective_sample_size"] < len(corridor)


# -- the memory task -----------------------------------------------------------------------

MEMORY = ("left", "right")
MEMORY_STEPS = 3


def memory_context(cue: int, step: int) -> dict[str, Any]:
    return {"cue": cue if step == 0 else 0, "phase": step}


def memory_reward(cue: int, step: int, action: str) -> float:
    if step < MEMORY_STEPS - 1:
        return 0.0
    return 1.0 if action == ("right" if cue > 0 else "left") else 0.0


def memory_logs(episodes: int, seed: int) -> tuple[BanditData, FeatureEncoder]:
    """Uniformly random behaviour: about half of the episodes succeed."""
    rng = random.Random(seed)
    contexts: list[dict[str, Any]] = []
    actions: list[int] = []
    rewards: list[float] = []
    for _ in range(episodes):
        cue = rng.choice((-1, 1))
        for step in range(MEMORY_STEPS):
            action = rng.randrange(2)
            contexts.append(memory_context(cue, step))
            actions.append(action)
            rewards.append(memory_reward(cue, step, MEMORY[action]))
    encoder = FeatureEncoder(FeatureSpec(dim=16)).fit(contexts)
    n = len(actions)
    data = BanditData(
        actions=MEMORY,
        features=encoder.encode_many(contexts),
        action_index=np.array(actions, dtype=np.int64),
        rewards=np.array(rewards, dtype=np.float32),
        propensities=np.full(n, 0.5, dtype=np.float32),
        episodes=np.arange(n, dtype=np.int64) // MEMORY_STEPS,
        steps=np.arange(n, dtype=np.int64) % MEMORY_STEPS,
    )
    return data, encoder


def memory_success(policy: LearnedPolicy, episodes: int = 200, seed: int = 5) -> float:
    """Share of episodes won, deciding step by step through ``LearnedPolicy.choose``."""
    rng = random.Random(seed)
    won = 0.0
    for _ in range(episodes):
        cue = rng.choice((-1, 1))
        episode_id = uuid.UUID(int=rng.getrandbits(128))
        reward = 0.0
        for step in range(MEMORY_STEPS):
            choice = policy.choose(memory_context(cue, step), MEMORY, None, rng, episode_id)
            reward += memory_reward(cue, step, MEMORY[choice.action_index])
        policy.end_episode(episode_id)
        won += reward
    return won / episodes


@pytest.fixture(scope="module")
def memory() -> tuple[BanditData, FeatureEncoder]:
    return memory_logs(300, seed=2)


@pytest.mark.parametrize(
    ("architecture", "history"),
    [("lstm", 4), ("lstm", 1), ("mlp", 8)],
    ids=["lstm", "lstm-1", "mlp"],
)
def test_only_a_model_reading_the_history_remembers_the_cue(
    memory: tuple[BanditData, FeatureEncoder], architecture: str, history: int
) -> None:
    data, encoder = memory
    learner = BehaviorCloningLearner(
        settings(architecture, history=history, top_quantile=0.25, epochs=40)
    )
    model, metrics = learner.fit(data)
    assert metrics["threshold_return"] == 1.0  # only the episodes that won are cloned
    policy = LearnedPolicy(1, "behavior_cloning", model, encoder, MEMORY, EpsilonGreedy(0.0))
    success = memory_success(policy)
    if architecture == "lstm" and history > 1:
        assert model.history == history
        assert success >= 0.9, success
    else:
        assert model.history == 1
        assert 0.3 <= success <= 0.7, success


# -- through the runtime -------------------------------------------------------------------


async def play_memory(rt: Runtime, episodes: int, rng: random.Random) -> tuple[float, set[Any]]:
    """Run memory episodes through ``rt.episode``; returns the share won and the versions."""
    won = 0.0
    versions: set[int | None] = set()
    for _ in range(episodes):
        cue = rng.choice((-1, 1))
        async with rt.episode("memory") as ep:
            for step in range(MEMORY_STEPS):
                decision = await ep.decide(memory_context(cue, step))
                versions.add(decision.policy_version)
                await ep.reward(memory_reward(cue, step, decision.action), decision)
        won += ep.episode_return
    return won / episodes, versions


async def test_runtime_learns_the_memory_task_from_its_episodes(
    sqlite_url: str, tmp_path: Path
) -> None:
    config = load_config(
        {
            "database": {"url": sqlite_url},
            "runtime": {
                "auto_migrate": True,
                # Learning runs only in the test's run_cycle() call.
                "pipeline": "external",
                "seed": 3,
                "device": "cpu",
                "spill_dir": str(tmp_path),
            },
            "agents": {
                "memory": {
                    "actions": list(MEMORY),
                    "learner": "behavior_cloning",
                    "model": "imitation",
                    "training": {"feature_dim": 16},
                    # ``ope`` scores held-out rows one at a time with ``predict`` (no step
                    # history) and, under doubly robust, reads the log-probabilities as reward
                    # estimates: it cannot judge a policy whose decisions depend on earlier steps.
                    "validation": {"validators": ["sanity", "latency"]},
                }
            },
            "model_configuration": {
                "learning_models": {
                    "imitation": {
                        "type": "behavioral_learning",
                        "architecture": "lstm",
                        "parameters": {
                            "learning_rate": 0.01,
                            "hidden_size": 16,
                            "num_layers": 1,
                            "epochs": 40,
                            "history": 4,
                            "top_quantile": 0.25,
                        },
                    }
                }
            },
        }
    )
    rng = random.Random(11)
    async with Runtime(config, clock=TickingClock()) as rt:
        baseline, versions = await play_memory(rt, 200, rng)
        assert versions == {None}
        cycle = (await rt.run_cycle("memory"))["memory"]
        assert cycle.status == "activated", cycle.reason
        assert cycle.learner == "behavior_cloning"
        assert cycle.metrics["architecture"] == "lstm"
        assert cycle.metrics["threshold_return"] == 1.0
        learned, versions = await play_memory(rt, 100, rng)
        assert versions == {1}
    assert 0.35 <= baseline <= 0.65, baseline
    assert learned >= baseline + 0.3, (baseline, learned)


# -- save, load, reproducibility, registry, errors -----------------------------------------


def round_trip(model: BehaviorCloningModel, encoder: FeatureEncoder) -> LearnedPolicy:
    """Store ``model`` as the updater does and load it back with :func:`load_policy`."""
    artifact = _artifact("behavior_cloning", Trained(model, encoder, MEMORY, {}, []))
    row = PolicyVersion(
        agent_id="memory",
        version=1,
        learner="behavior_cloning",
        artifact=artifact,
        sha256=sha256(artifact),
    )
    return load_policy(row, PluginRegistry(), EpsilonGreedy())


@pytest.mark.parametrize("architecture", ["lstm", "mlp", "transformer", "linear"])
def test_save_and_load_give_identical_outputs(
    memory: tuple[BanditData, FeatureEncoder], architecture: str
) -> None:
    data, encoder = memory
    model, _ = BehaviorCloningLearner(settings(architecture, epochs=2, history=4)).fit(data)
    policy = round_trip(model, encoder)
    loaded = policy.model
    assert isinstance(loaded, BehaviorCloningModel)
    assert isinstance(loaded, SequenceModel)
    assert loaded.history == model.history == (4 if architecture == "lstm" else 1)
    assert loaded.spec == model.spec
    windows = data.features[:30].reshape(10, MEMORY_STEPS, -1)
    assert np.array_equal(loaded.predict(data.features)[0], model.predict(data.features)[0])
    assert np.array_equal(loaded.predict_sequence(windows)[0], model.predict_sequence(windows)[0])


def test_a_model_whose_spec_does_not_match_its_weights_is_a_policy_error(
    memory: tuple[BanditData, FeatureEncoder],
) -> None:
    data, encoder = memory
    model, _ = BehaviorCloningLearner(settings("lstm", epochs=1, history=4)).fit(data)
    model.spec = {**model.spec, "hidden_size": 8}
    with pytest.raises(PolicyError, match="cannot rebuild its model"):
        round_trip(model, encoder)
    model.spec = {**model.spec, "architecture": "gru"}
    with pytest.raises(PolicyError, match="behavior_cloning supports"):
        round_trip(model, encoder)


def test_scores_are_log_probabilities_and_short_histories_are_padded(
    memory: tuple[BanditData, FeatureEncoder],
) -> None:
    data, _ = memory
    model, _ = BehaviorCloningLearner(settings("lstm", epochs=2, history=2)).fit(data)
    sequences = data.features[:30].reshape(10, MEMORY_STEPS, -1)
    scores, uncertainty = model.predict_sequence(sequences)
    assert uncertainty is None
    assert scores.dtype == np.float64
    assert scores.shape == (10, len(MEMORY))
    assert np.allclose(np.exp(scores).sum(axis=1), 1.0)
    # Only the last ``history`` steps count; one step is the single-row prediction.
    assert np.array_equal(scores, model.predict_sequence(sequences[:, -2:])[0])
    assert np.array_equal(
        model.predict_sequence(sequences[:, :1])[0], model.predict(sequences[:, 0])[0]
    )
    with pytest.raises(InvalidInputError, match="features"):
        model.predict_sequence(sequences[:, :0])
    with pytest.raises(InvalidInputError, match="features"):
        model.predict(sequences[:, :, :5].reshape(30, 5))


def test_same_seed_same_weights_other_seed_other_weights(
    memory: tuple[BanditData, FeatureEncoder],
) -> None:
    data, _ = memory

    def weights(seed: int) -> dict[str, torch.Tensor]:
        learner = BehaviorCloningLearner(settings("lstm", seed=seed, epochs=3, dropout=0.1))
        return learner.fit(data)[0].tensors()

    first, second, other = weights(3), weights(3), weights(4)
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name
    assert not all(torch.equal(first[name], other[name]) for name in first)


def test_the_registry_creates_the_learner() -> None:
    registry = PluginRegistry()
    assert "behavior_cloning" in registry.names("learner")
    assert registry.get("learner", "behavior_cloning") is plugin
    learner = registry.create("learner", "behavior_cloning", settings("lstm"))
    assert isinstance(learner, BehaviorCloningLearner)
    assert isinstance(learner, Learner)
    assert learner.name == "behavior_cloning"


def test_episodes_returns_and_ties_decide_what_is_kept() -> None:
    # Episodes 0..3 with returns 3, 1, 1, 0 (one row each: steps are given out of order in
    # episode 0) and two rows outside any episode, each its own one-step episode (2 and 1).
    data = BanditData(
        actions=("a", "b"),
        features=np.zeros((7, 2), dtype=np.float32),
        action_index=np.array([0, 1, 0, 1, 0, 1, 0], dtype=np.int64),
        rewards=np.array([2.0, 1.0, 1.0, 1.0, 0.0, 2.0, 1.0], dtype=np.float32),
        propensities=np.full(7, 0.5, dtype=np.float32),
        episodes=np.array([0, 0, 1, 2, 3, -1, -1], dtype=np.int64),
        steps=np.array([1, 0, 0, 0, 0, -1, -1], dtype=np.int64),
    )
    # Six episodes, returns 3, 2, 1, 1, 1, 0: the best half (3) ends at the return 1, which
    # three episodes share: all of them are kept.
    _, half = BehaviorCloningLearner(settings(epochs=1, top_quantile=0.5)).fit(data)
    assert (half["episodes"], half["threshold_return"], half["episodes_kept"]) == (6, 1.0, 5)
    assert half["rows_kept"] == 6
    _, top = BehaviorCloningLearner(settings(epochs=1, top_quantile=0.2)).fit(data)
    assert (top["threshold_return"], top["episodes_kept"], top["rows_kept"]) == (2.0, 2, 3)
    _, weighted = BehaviorCloningLearner(settings(epochs=1, advantage_weighted=True)).fit(data)
    assert (weighted["episodes_kept"], weighted["rows_kept"]) == (6, 7)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"n": 0}, "data"),
        ({"rewards": np.float32("nan")}, "data.rewards"),
        ({"action": 5}, "data.action_index"),
    ],
)
def test_impossible_inputs_are_clear_errors(change: dict[str, Any], field: str) -> None:
    n = int(change.get("n", 4))
    rewards = np.full(n, change.get("rewards", 1.0), dtype=np.float32)
    data = BanditData(
        actions=("a", "b"),
        features=np.zeros((n, 2), dtype=np.float32),
        action_index=np.full(n, change.get("action", 0), dtype=np.int64),
        rewards=rewards,
        propensities=np.full(n, 0.5, dtype=np.float32),
    )
    with pytest.raises(InvalidInputError) as caught:
        BehaviorCloningLearner(settings()).fit(data)
    assert caught.value.field == field


def test_an_unknown_architecture_is_a_clear_error(
    memory: tuple[BanditData, FeatureEncoder],
) -> None:
    with pytest.raises(InvalidInputError, match="behavior_cloning supports") as caught:
        BehaviorCloningLearner(settings("gru")).fit(memory[0])
    assert caught.value.field == "architecture"
