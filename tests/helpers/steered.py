"""A three-topic task, a learner steered to be bad on purpose, and a ticking clock.

``steered`` wraps the linear learner: in ``worst`` mode its model ranks the actions upside
down (a version that is bad in live traffic yet passes the ``sanity`` validator), in ``nan``
mode it predicts NaN (rejected by ``sanity``). Its artifacts carry the mode, so a version
reloaded after a rollback behaves as it did when it was trained.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch

from agentrt.learning.data import BanditData
from agentrt.learning.linear import LinearLearner, LinearModel
from agentrt.learning.settings import LearnerSettings
from agentrt.plugins import Plugin, PluginRegistry
from agentrt.runtime import Runtime

Matrix = npt.NDArray[np.float64]

# The task: each context names one of three topics, each with its own best action
# (Bernoulli reward 0.8 for it, 0.2 for the others).
ACTIONS = ("a", "b", "c")
BEST = {"t0": "a", "t1": "b", "t2": "c"}
P_BEST, P_OTHER = 0.8, 0.2


class TickingClock:
    """A clock that moves one millisecond on every reading: distinct, ordered timestamps."""

    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now


@dataclass
class Steer:
    """What the next model the ``steered`` learner trains does."""

    mode: Literal["good", "worst", "nan"] = "good"


class SteeredModel:
    """A linear model whose estimates are negated (``sign`` -1) or NaN, when so trained."""

    def __init__(self, inner: LinearModel, sign: float, nan: bool) -> None:
        self.inner = inner
        self.sign = sign
        self.nan = nan

    def predict(self, features: npt.NDArray[np.float32]) -> tuple[Matrix, Matrix]:
        means, stds = self.inner.predict(features)
        if self.nan:
            return np.full_like(means, np.nan), stds
        return self.sign * means, stds

    def tensors(self) -> dict[str, torch.Tensor]:
        flags = torch.tensor([self.sign, float(self.nan)], dtype=torch.float64)
        return {**self.inner.tensors(), "flags": flags}

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()


class SteeredLearner:
    name = "steered"

    def __init__(self, settings: LearnerSettings, steer: Steer) -> None:
        self.settings = settings
        self.steer = steer

    def fit(self, data: BanditData) -> tuple[SteeredModel, dict[str, Any]]:
        model, metrics = LinearLearner(self.settings).fit(data)
        sign = -1.0 if self.steer.mode == "worst" else 1.0
        return SteeredModel(model, sign, self.steer.mode == "nan"), metrics


class SteeredFactory:
    """The plugin factory: a learner bound to the test's steer; loads what it saved."""

    def __init__(self, steer: Steer) -> None:
        self.steer = steer

    def __call__(self, settings: LearnerSettings) -> SteeredLearner:
        return SteeredLearner(settings, self.steer)

    @staticmethod
    def load(tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> SteeredModel:
        sign, nan = tensors["flags"].tolist()
        return SteeredModel(LinearModel(tensors["theta"], tensors["a_inv"]), sign, nan == 1.0)


def steered_registry(steer: Steer) -> PluginRegistry:
    """The built-in plugins plus ``steered`` bound to ``steer``."""
    registry = PluginRegistry()
    registry.register(Plugin("learner", "steered", SteeredFactory(steer), "test learner"))
    return registry


@dataclass
class Played:
    """What a run of decisions earned and which policy versions served it."""

    mean_reward: float
    versions: set[int | None]
    exploration: dict[str, Any] = field(default_factory=dict)


async def play(
    rt: Runtime,
    rounds: int,
    rng: random.Random,
    *,
    p_best: float = P_BEST,
    p_other: float = P_OTHER,
) -> Played:
    """Decide ``rounds`` times over the three topics and reward every decision."""
    total = 0.0
    played = Played(0.0, set())
    for i in range(rounds):
        topic = f"t{i % 3}"
        decision = await rt.decide("router", {"topic": topic})
        won = rng.random() < (p_best if decision.action == BEST[topic] else p_other)
        total += float(won)
        played.versions.add(decision.policy_version)
        played.exploration = decision.exploration or {}
        await rt.reward(decision, float(won))
    played.mean_reward = total / max(rounds, 1)
    return played
