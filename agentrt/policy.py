"""What answers ``decide()``: the agent's baseline until a learned policy is active.

A policy returns the whole probability distribution over the offered actions, so that every
decision logs the exact probability of the action it took (its propensity).
"""

from __future__ import annotations

import random
from typing import Any, NamedTuple

from agentrt.config import BaselineConfig

__all__ = ["BaselinePolicy", "Choice"]


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
        if self.config.policy == "fixed" and fixed is not None and fixed in actions:
            index = actions.index(fixed)
            if allowed is None or allowed[index]:
                probabilities = tuple(1.0 if i == index else 0.0 for i in range(len(actions)))
                return Choice(index, probabilities, None, {"method": "fixed"})
            choice = _uniform(allowed, len(actions), rng)
            return choice._replace(exploration={"method": "uniform", "reason": "fixed_unavailable"})
        return _uniform(allowed, len(actions), rng)
