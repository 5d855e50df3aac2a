"""agentrt.learning.dqn: offline double DQN, judged on a corridor with a delayed reward.

The corridor: cells 0 to 6, every episode starts in cell 3, the actions are ``left`` and
``right``, and a move goes the other way with probability 0.1 (the wall at cell 0 holds).
Reaching cell 6 pays +1 and ends the episode; otherwise the episode stops after 20 steps. No
other step is rewarded, so moving right in cells 3 and 4 is worth something only through the
Bellman backup. The data is logged by the uniform-random behaviour policy (propensity 0.5); a
learned policy is then rolled out greedily in the simulator and compared with uniform random
on the same number of episodes. The states are one-hot cells. Everything is seeded and runs on
CPU with a one-layer network.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import numpy.typing as npt
import pytest
import torch
from helpers.steered import TickingClock
from structlog.testing import capture_logs

from agentrt import Runtime, load_config
from agentrt.config import ModelParametersConfig, TrainingConfig
from agentrt.errors import InvalidInputError
from agentrt.exploration import EpsilonGreedy
from agentrt.learning.artifacts import sha256
from agentrt.learning.data import BanditData
from agentrt.learning.dqn import DQNLearner, DQNModel, link_transitions, split_episodes
from agentrt.learning.features import FeatureEncoder, FeatureSpec
from agentrt.learning.settings import LearnerSettings
from agentrt.pipeline.updater import Trained, _artifact, load_policy
from agentrt.plugins import PluginRegistry
from agentrt.schemas import PolicyVersion
from agentrt.types import Learner, RewardModel

ACTIONS = ("left", "right")
LEFT, RIGHT = 0, 1

Policy = Callable[[int, random.Random], int]


@dataclass(frozen=True)
class Corridor:
    """The simulator; ``step_cost`` is paid for every ``right`` (an uphill corridor)."""

    cells: int = 7
    start: int = 3
    horizon: int = 20
    slip: float = 0.1
    step_cost: float = 0.0

    @property
    def goal(self) -> int:
        return self.cells - 1

    def features(self, cells: list[int]) -> npt.NDArray[np.float32]:
        return np.eye(self.cells, dtype=np.float32)[cells]

    def step(self, cell: int, action: int, rng: random.Random) -> tuple[int, float, bool]:
        """(next cell, reward, episode over)."""
        moved = action if rng.random() >= self.slip else 1 - action
        after = cell + 1 if moved == RIGHT else max(cell - 1, 0)
        cost = self.step_cost if action == RIGHT else 0.0
        return after, (1.0 if after == self.goal else 0.0) - cost, after == self.goal


class Score(NamedTuple):
    success: float
    mean_return: float


def uniform(cell: int, rng: random.Random) -> int:
    return rng.randrange(2)


def greedy(model: RewardModel, corridor: Corridor) -> Policy:
    q, _ = model.predict(corridor.features(list(range(corridor.cells))))
    best = np.argmax(q, axis=1)
    return lambda cell, rng: int(best[cell])


def play(corridor: Corridor, policy: Policy, episodes: int, seed: int) -> Score:
    """Roll ``policy`` out; the share of episodes that reach the goal and the mean return."""
    rng = random.Random(seed)
    reached, total = 0, 0.0
    for _ in range(episodes):
        cell = corridor.start
        for _ in range(corridor.horizon):
            cell, reward, done = corridor.step(cell, policy(cell, rng), rng)
            total += reward
            if done:
                reached += 1
                break
    return Score(reached / episodes, total / episodes)


def logged(corridor: Corridor, episodes: int, seed: int) -> BanditData:
    """Episodes of the uniform-random behaviour policy, as the updater hands them over."""
    rng = random.Random(seed)
    cells: list[int] = []
    actions: list[int] = []
    rewards: list[float] = []
    codes: list[int] = []
    steps: list[int] = []
    for episode in range(episodes):
        cell = corridor.start
        for step in range(corridor.horizon):
            action = uniform(cell, rng)
            cells.append(cell)
            actions.append(action)
            codes.append(episode)
            steps.append(step)
            cell, reward, done = corridor.step(cell, action, rng)
            rewards.append(reward)
            if done:
                break
    n = len(rewards)
    return BanditData(
        actions=ACTIONS,
        features=corridor.features(cells),
        action_index=np.array(actions, dtype=np.int64),
        rewards=np.array(rewards, dtype=np.float32),
        propensities=np.full(n, 0.5, dtype=np.float32),
        episodes=np.array(codes, dtype=np.int64),
        steps=np.array(steps, dtype=np.int64),
    )


def dqn_settings(
    *,
    gamma: float = 0.9,
    conservative_weight: float = 1.0,
    seed: int = 0,
    epochs: int = 60,
    architecture: Literal["mlp", "transformer"] = "mlp",
    dropout: float = 0.0,
) -> LearnerSettings:
    return LearnerSettings(
        architecture=architecture,
        parameters=ModelParametersConfig(
            learning_rate=3e-3,
            batch_size=64,
            epochs=epochs,
            hidden_size=32,
            num_layers=1,
            dropout=dropout,
            gamma=gamma,
            target_sync=50,
            conservative_weight=conservative_weight,
        ),
        training=TrainingConfig(patience=5),
        seed=seed,
    )


# Small models on a shared machine: one intra-op thread (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def corridor_data() -> BanditData:
    return logged(Corridor(), episodes=200, seed=0)


# -- learning the corridor -----------------------------------------------------------------


def test_dqn_reaches_the_delayed_reward_far_more_often_than_random(
    corridor_data: BanditData,
) -> None:
    corridor = Corridor()
    model, metrics = DQNLearner(dqn_settings()).fit(corridor_data)
    learned = play(corridor, greedy(model, corridor), 1000, seed=1)
    random_walk = play(corridor, uniform, 1000, seed=1)
    assert learned.success >= 0.9, (learned, random_walk)
    assert learned.success >= random_walk.success + 0.3, (learned, random_walk)
    assert learned.mean_return >= random_walk.mean_return + 0.3
    q, _ = model.predict(corridor.features([3, 4, 5]))
    assert np.all(q[:, RIGHT] > q[:, LEFT]), q
    # The value of moving right rises towards the goal: the backup carried the reward back.
    assert q[0, RIGHT] < q[1, RIGHT] < q[2, RIGHT]

    episodes = int(corridor_data.episodes.max()) + 1
    assert metrics["rows"] == len(corridor_data)
    assert metrics["episodes"] == episodes
    assert metrics["transitions"] == len(corridor_data) - episodes
    assert metrics["terminal_share"] == pytest.approx(episodes / len(corridor_data))
    assert metrics["broken_links"] == 0
    assert metrics["train_rows"] + metrics["holdout_rows"] == len(corridor_data)
    assert metrics["holdout_rows"] > 0
    assert 1 <= metrics["best_epoch"] <= metrics["epochs"] <= 60
    assert len(metrics["loss_curve"]) == metrics["epochs"]
    assert metrics["target_syncs"] >= 5
    assert metrics["device"] == "cpu"
    json.dumps(metrics, allow_nan=False)


def test_a_myopic_learner_walks_away_from_a_goal_it_must_pay_for() -> None:
    # In the plain corridor a gamma=0 learner sees no difference between the actions in
    # cells 0-4 (both are worth 0), so its greedy choice there is left to noise and may happen
    # to point right. A cost of 0.1 per step to the right makes myopia reliably wrong: only
    # the discounted +1 at the end can justify paying it.
    corridor = Corridor(step_cost=0.1)
    data = logged(corridor, episodes=200, seed=0)
    far_sighted, _ = DQNLearner(dqn_settings(gamma=0.9)).fit(data)
    myopic, _ = DQNLearner(dqn_settings(gamma=0.0)).fit(data)
    random_walk = play(corridor, uniform, 1000, seed=2)
    solved = play(corridor, greedy(far_sighted, corridor), 1000, seed=2)
    unsolved = play(corridor, greedy(myopic, corridor), 1000, seed=2)
    assert solved.success >= 0.8, (solved, unsolved, random_walk)
    assert solved.success >= random_walk.success + 0.3, (solved, unsolved, random_walk)
    assert unsolved.success <= random_walk.success - 0.3, (solved, unsolved, random_walk)
    assert solved.mean_return >= unsolved.mean_return + 0.4
    start = corridor.features([corridor.start])
    far_q, myopic_q = far_sighted.predict(start)[0][0], myopic.predict(start)[0][0]
    assert far_q[RIGHT] > far_q[LEFT], far_q  # the goal is worth the cost of getting there
    assert myopic_q[RIGHT] < myopic_q[LEFT], myopic_q  # to a myopic eye, right only costs


# -- transitions ---------------------------------------------------------------------------


def test_transitions_link_consecutive_steps_of_one_episode_in_any_row_order() -> None:
    # Rows (episode, step): episode 0 has steps 0,1,2 (shuffled), episode 1 has steps 0,1,3
    # (step 2 missing), then a row outside any episode and a row of episode 2 with no step.
    episodes = np.array([0, 1, 0, -1, 1, 0, 2, 1], dtype=np.int64)
    steps = np.array([2, 0, 0, -1, 3, 1, -1, 1], dtype=np.int64)
    following = link_transitions(episodes, steps)
    assert following.tolist() == [-1, 7, 5, -1, -1, 0, -1, -1]
    assert link_transitions(np.zeros(0, np.int64), np.zeros(0, np.int64)).tolist() == []


def test_gaps_are_terminal_and_counted_as_broken_links() -> None:
    corridor = Corridor()
    data = logged(corridor, episodes=30, seed=4)
    second_steps = np.flatnonzero(data.steps == 1)
    keep = np.setdiff1d(np.arange(len(data)), second_steps)  # every episode loses its step 1
    gapped = data.subset(keep)
    _, metrics = DQNLearner(dqn_settings(epochs=2)).fit(gapped)
    # Every episode lasts at least three steps, so each step 0 now has a later step of its
    # episode but no successor: one broken link per episode, besides its real end.
    assert metrics["broken_links"] == int(np.count_nonzero(gapped.steps == 0))
    ends = len(np.unique(gapped.episodes))
    assert metrics["transitions"] == len(gapped) - ends - metrics["broken_links"]


def test_whole_episodes_are_held_out() -> None:
    episodes = np.repeat(np.arange(20, dtype=np.int64), 3)
    episodes = np.concatenate([episodes, np.full(10, -1, dtype=np.int64)])
    train, held = split_episodes(episodes, holdout=0.25, seed=3)
    assert sorted([*train, *held]) == list(range(len(episodes)))
    assert not set(episodes[train][episodes[train] >= 0]) & set(episodes[held][episodes[held] >= 0])
    assert len(held) > 0
    assert split_episodes(episodes[:19], holdout=0.25, seed=3)[1].size == 0  # too few rows


# -- through the runtime -------------------------------------------------------------------


async def walk(rt: Runtime, corridor: Corridor, episodes: int, rng: random.Random) -> Score:
    """Episodes decided by the runtime, every step rewarded; returns how they went."""
    reached, total = 0, 0.0
    for _ in range(episodes):
        async with rt.episode("walker") as ep:
            cell = corridor.start
            for _ in range(corridor.horizon):
                decision = await ep.decide({"cell": f"c{cell}"})
                cell, reward, done = corridor.step(cell, ACTIONS.index(decision.action), rng)
                await ep.reward(reward, decision)
                total += reward
                if done:
                    reached += 1
                    break
    return Score(reached / episodes, total / episodes)


async def test_runtime_learns_the_corridor_from_its_own_episodes(
    sqlite_url: str, tmp_path: Path
) -> None:
    corridor = Corridor()
    config = load_config(
        {
            "database": {"url": sqlite_url},
            "runtime": {
                "auto_migrate": True,
                # Learning runs only in the test's run_cycle() call.
                "pipeline": "external",
                "seed": 5,
                "device": "cpu",
                "spill_dir": str(tmp_path / "spill"),
            },
            "agents": {
                "walker": {
                    "actions": list(ACTIONS),
                    "learner": "dqn",
                    "model": "corridor",
                    "training": {"patience": 5, "feature_dim": 16},
                }
            },
            "model_configuration": {
                "learning_models": {
                    "corridor": {
                        "type": "reinforcement_learning",
                        "parameters": {
                            "learning_rate": 3e-3,
                            "epochs": 60,
                            "hidden_size": 32,
                            "num_layers": 1,
                            "gamma": 0.9,
                            "target_sync": 50,
                        },
                    }
                }
            },
        }
    )
    rng = random.Random(6)
    async with Runtime(config, clock=TickingClock()) as rt:
        before = await walk(rt, corridor, 150, rng)
        cycle = (await rt.run_cycle("walker"))["walker"]
        assert cycle.status == "activated", cycle.reason
        assert cycle.learner == "dqn"
        assert rt.active_version("walker") == 1
        assert cycle.metrics["target_syncs"] >= 1
        after = await walk(rt, corridor, 60, rng)
    # After the cycle the runtime explores with epsilon 0.1 around the learned greedy policy.
    assert after.success >= 0.9, (before, after)
    assert after.success >= before.success + 0.25, (before, after)


# -- artifacts, seeds, the conservative penalty, the registry ------------------------------


@pytest.mark.parametrize("architecture", ["mlp", "transformer"])
def test_save_and_load_give_identical_q_values(
    corridor_data: BanditData, architecture: Literal["mlp", "transformer"]
) -> None:
    model, _ = DQNLearner(dqn_settings(epochs=3, architecture=architecture)).fit(corridor_data)
    # Stored and loaded back exactly as the updater does it: safetensors, JSON, sha256.
    encoder = FeatureEncoder(FeatureSpec(dim=8)).fit([{"cell": "c0"}])
    artifact = _artifact("dqn", Trained(model, encoder, ACTIONS, {}, []))
    row = PolicyVersion(
        agent_id="walker", version=1, learner="dqn", artifact=artifact, sha256=sha256(artifact)
    )
    policy = load_policy(row, PluginRegistry(), EpsilonGreedy())
    loaded = policy.model
    assert isinstance(loaded, DQNModel)
    assert loaded.spec == model.spec
    assert loaded.spec["architecture"] == architecture
    assert policy.actions == ACTIONS
    before, no_spread = model.predict(corridor_data.features)
    after, _ = loaded.predict(corridor_data.features)
    assert no_spread is None
    assert before.dtype == np.float64
    assert before.shape == (len(corridor_data), len(ACTIONS))
    assert np.array_equal(before, after)


def test_the_same_seed_gives_the_same_weights(corridor_data: BanditData) -> None:
    first, _ = DQNLearner(dqn_settings(seed=3, epochs=4, dropout=0.1)).fit(corridor_data)
    second, _ = DQNLearner(dqn_settings(seed=3, epochs=4, dropout=0.1)).fit(corridor_data)
    other, _ = DQNLearner(dqn_settings(seed=4, epochs=4, dropout=0.1)).fit(corridor_data)
    a, b, c = first.tensors(), second.tensors(), other.tensors()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert not all(torch.equal(a[name], c[name]) for name in a)


def test_the_conservative_penalty_lowers_actions_the_logs_never_tried() -> None:
    # The behaviour policy only ever went left in cells 0-2 and only right in cells 3-5.
    corridor = Corridor()
    data = logged(corridor, episodes=200, seed=7)
    cells = np.argmax(data.features, axis=1)
    tried = np.where(cells <= 2, LEFT, RIGHT)
    only = data.subset(np.flatnonzero(data.action_index == tried))
    states = corridor.features([0, 1, 2, 3, 4, 5])
    untried = 1 - np.where(np.arange(6) <= 2, LEFT, RIGHT)

    def untried_advantage(weight: float) -> float:
        model, _ = DQNLearner(dqn_settings(conservative_weight=weight, epochs=20)).fit(only)
        q, _ = model.predict(states)
        rows = np.arange(6)
        return float(np.mean(q[rows, untried] - q[rows, 1 - untried]))

    plain, conservative = untried_advantage(0.0), untried_advantage(1.0)
    assert conservative < plain - 1.0, (plain, conservative)
    assert conservative < 0


def test_the_registry_builds_dqn() -> None:
    registry = PluginRegistry()
    assert "dqn" in registry.names("learner")
    plugin = registry.get("learner", "dqn")
    assert plugin.factory is DQNLearner
    learner = registry.create("learner", "dqn", dqn_settings())
    assert isinstance(learner, DQNLearner)
    assert isinstance(learner, Learner)
    assert learner.name == "dqn"


# -- impossible input ----------------------------------------------------------------------


def test_no_rows_is_a_clear_error() -> None:
    empty = logged(Corridor(), episodes=1, seed=0).subset(np.zeros(0, dtype=np.int64))
    with pytest.raises(InvalidInputError, match="no rows to learn from") as caught:
        DQNLearner(dqn_settings()).fit(empty)
    assert caught.value.field == "data"


@pytest.mark.parametrize(
    ("field", "damage"),
    [
        ("data.rewards", lambda d: d.rewards.__setitem__(2, np.nan)),
        ("data.features", lambda d: d.features.__setitem__((1, 0), np.inf)),
        ("data.action_index", lambda d: d.action_index.__setitem__(0, 5)),
    ],
)
def test_bad_values_are_refused_with_the_field_named(
    field: str, damage: Callable[[BanditData], None]
) -> None:
    data = logged(Corridor(), episodes=5, seed=0)
    damage(data)
    with pytest.raises(InvalidInputError) as caught:
        DQNLearner(dqn_settings()).fit(data)
    assert caught.value.field == field
    assert str(caught.value).startswith(field)


def test_training_too_short_to_refresh_the_target_is_reported() -> None:
    data = logged(Corridor(), episodes=5, seed=0)
    with capture_logs() as logs:
        _, metrics = DQNLearner(dqn_settings(epochs=1)).fit(data)
    assert metrics["target_syncs"] == 0
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["dqn_target_never_synced"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_trains_on_cuda_and_serves_from_cpu(corridor_data: BanditData) -> None:
    settings = dqn_settings(epochs=3)
    on_gpu = LearnerSettings(
        parameters=settings.parameters, training=settings.training, device=torch.device("cuda")
    )
    model, metrics = DQNLearner(on_gpu).fit(corridor_data)
    assert metrics["device"].startswith("cuda")
    assert all(t.device.type == "cpu" for t in model.tensors().values())
    assert np.all(np.isfinite(model.predict(corridor_data.features)[0]))
