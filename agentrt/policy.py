"""What answers ``decide()``: the agent's baseline until a learned policy is active.

A policy returns the whole probability distribution over the offered actions, so that every
decision logs the exact probability of the action it took (its propensity).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from agentrt.config import BaselineConfig
from agentrt.errors import PolicyError
from agentrt.exploration import Strategy
from agentrt.learning.features import FeatureEncoder
from agentrt.types import RewardModel

__all__ = ["BaselinePolicy", "Choice", "LearnedPolicy"]


class Choice(NamedTuple):
    """A policy's answer: the chosen index and the distribution it was drawn from."""

    action_index: int
    probabilities: tuple[float, ...]
    policy_version: int | None
    exploration: dict[str, Any]


def _uniform(allowed: tuple[bool, ...] | None, count: int, rng: random.Random) -> Choice:
    if allowed is None:
        p = 1.0 / count
        return Choice(rng.randrange(count), (p,) * count, None, {"method": "uniform"})
    indices = [i for i, ok in enumerate(allowed) if ok]
    p = 1.0 / len(indices)
    probabilities = tuple(p if ok else 0.0 for ok in allowed)
    return Choice(indices[rng.randrange(len(indices))], probabilities, None, {"method": "uniform"})


class BaselinePolicy:
    """The configured baseline: uniform over the allowed actions, or always one fixed action.

    A fixed baseline whose action is not offered (or masked out) in a call answers uniformly
    over the allowed actions for that call, and says so in ``exploration``.
    """

    def __init__(self, config: BaselineConfig) -> None:
        self.config = config

    def choose(
        self, actions: tuple[str, ...], allowed: tuple[bool, ...] | None, rng: random.Random
    ) -> Choice:
        """Draw an action for one call."""
        fixed = self.config.action
        if self.config.policy != "fixed" or fixed is None:
            return _uniform(allowed, len(actions), rng)
        if fixed in actions:
            index = actions.index(fixed)
            if allowed is None or allowed[index]:
                probabilities = tuple(1.0 if i == index else 0.0 for i in range(len(actions)))
                return Choice(index, probabilities, None, {"method": "fixed"})
        choice = _uniform(allowed, len(actions), rng)
        return choice._replace(exploration={"method": "uniform", "reason": "fixed_unavailable"})


class LearnedPolicy:
    """A trained model serving decisions: features, estimates, exploration, a draw.

    Args:
        version: the policy version number.
        learner: the learner that trained it.
        model: the trained reward model.
        encoder: the feature encoder frozen at training time.
        actions: the action set the model scores.
        exploration: turns estimates into probabilities.
    """

    def __init__(
        self,
        version: int,
        learner: str,
        model: RewardModel,
        encoder: FeatureEncoder,
        actions: tuple[str, ...],
        exploration: Strategy,
    ) -> None:
        self.version = version
        self.learner = learner
        self.model = model
        self.encoder = encoder
        self.actions = actions
        self.exploration = exploration
        self._index = {action: i for i, action in enumerate(actions)}

    def with_exploration(self, exploration: Strategy) -> LearnedPolicy:
        """The same model with another exploration strategy."""
        return LearnedPolicy(
            self.version, self.learner, self.model, self.encoder, self.actions, exploration
        )

    def choose(
        self,
        context: Mapping[str, Any],
        actions: tuple[str, ...],
        allowed: tuple[bool, ...] | None,
        rng: random.Random,
    ) -> Choice:
        """Draw an action; raises :class:`PolicyError` when the policy cannot answer."""
        unknown = [action for action in actions if action not in self._index]
        if unknown:
            raise PolicyError(
                f"policy v{self.version} does not know action(s) {', '.join(unknown)}"
            )
        columns = [self._index[action] for action in actions]
        means, stds = self.model.predict(self.encoder.encode(context)[None, :])
        scores = means[0, columns]
        spread = None if stds is None else stds[0, columns]
        mask = None if allowed is None else np.array(allowed, dtype=bool)
        probabilities = self.exploration.probabilities(scores, mask, spread)
        if not (
            np.all(np.isfinite(probabilities)) and abs(float(probabilities.sum()) - 1.0) < 1e-6
        ):
            raise PolicyError(f"policy v{self.version} produced invalid probabilities")
        index = _draw(probabilities, rng)
        return Choice(
            index,
            tuple(float(p) for p in probabilities),
            self.version,
            self.exploration.describe(),
        )


def _draw(probabilities: npt.NDArray[np.float64], rng: random.Random) -> int:
    u = rng.random()
    cumulative = 0.0
    last = 0
    for i, p in enumerate(probabilities):
        if p <= 0.0:
            continue
        last = i
        cumulative += float(p)
        if u < cumulative:
            return i
    return last
