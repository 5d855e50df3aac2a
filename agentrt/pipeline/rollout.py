"""Rollouts: how a validated candidate becomes the active version (plugins of kind rollout).

- ``direct``: the candidate becomes active at once.
- ``canary``: the candidate serves ``rollout.fraction`` of the agent's decisions beside the
  active version (or the baseline) until it has served ``rollout.min_decisions`` rewarded live
  decisions and ``rollout.min_duration`` has passed; from then on, every check of the loop
  compares the two live reward streams with a Welch z-test. The test is sequential: the k-th
  look spends ``alpha / (k (k + 1))`` of ``alpha = 1 - rollout.confidence`` (the spends sum to
  ``alpha``, so repeated looks keep the overall error rate). Significantly worse: rolled back
  (the canary is rejected and the active version keeps serving). Significantly better:
  promoted. Neither after ten times ``min_decisions``: promoted, since it passed offline
  validation and shows no significant harm live.
"""

from __future__ import annotations

import math
from datetime import timedelta
from statistics import NormalDist
from typing import Any, Literal, NamedTuple

from agentrt.config import RolloutConfig
from agentrt.pipeline.adapter import LiveReward
from agentrt.plugins import Plugin

__all__ = ["CanaryRollout", "DirectRollout", "Verdict", "plugins"]

# A canary that is neither significantly better nor worse is decided after this many times
# its minimum number of decisions.
_MAX_FACTOR = 10


class Verdict(NamedTuple):
    """What to do with a canary now, why, and the numbers behind it."""

    action: Literal["promote", "roll_back", "wait"]
    reason: str
    numbers: dict[str, Any]


class DirectRollout:
    """A validated candidate becomes the active version at once."""

    name = "direct"

    def __init__(self, config: RolloutConfig) -> None:
        self.config = config

    def initial_status(self) -> Literal["active", "canary"]:
        return "active"

    def evaluate(
        self, canary: LiveReward | None, reference: LiveReward | None, look: int, age: timedelta
    ) -> Verdict:
        return Verdict("promote", "direct rollout", {})


class CanaryRollout:
    """A validated candidate serves a fraction of decisions until a sequential test on live
    rewards promotes it or rolls it back."""

    name = "canary"

    def __init__(self, config: RolloutConfig) -> None:
        self.config = config

    def initial_status(self) -> Literal["active", "canary"]:
        return "canary"

    def evaluate(
        self, canary: LiveReward | None, reference: LiveReward | None, look: int, age: timedelta
    ) -> Verdict:
        """Decide at the ``look``-th check (1 for the first with enough data)."""
        config = self.config
        n = canary.n if canary is not None else 0
        if n < config.min_decisions or age < config.min_duration:
            return Verdict(
                "wait",
                f"canary has {n} of {config.min_decisions} rewarded decisions, "
                f"running for {age} of {config.min_duration}",
                {"canary_n": n},
            )
        assert canary is not None  # noqa: S101 (n > 0 above)
        numbers: dict[str, Any] = {"canary": canary._asdict(), "look": look}
        if reference is None or reference.n < 2:
            return Verdict("promote", "no live reference to compare with", numbers)
        numbers["reference"] = reference._asdict()
        alpha = (1.0 - config.confidence) / (look * (look + 1))
        critical = NormalDist().inv_cdf(1.0 - alpha / 2.0)
        se = math.sqrt(canary.variance / canary.n + reference.variance / reference.n)
        difference = canary.mean - reference.mean
        z = difference / se if se > 0 else math.copysign(math.inf, difference) if difference else 0
        numbers.update(z=z if math.isfinite(z) else None, critical=critical, alpha=alpha)
        summary = (
            f"canary {canary.mean:.4f} (n={canary.n}) vs {reference.mean:.4f} "
            f"(n={reference.n}), z={z:.2f}, bound ±{critical:.2f} at look {look}"
        )
        if z <= -critical:
            return Verdict("roll_back", f"significantly worse live: {summary}", numbers)
        if z >= critical:
            return Verdict("promote", f"significantly better live: {summary}", numbers)
        if n >= _MAX_FACTOR * config.min_decisions:
            return Verdict(
                "promote", f"no significant harm after {n} decisions: {summary}", numbers
            )
        return Verdict("wait", f"undecided: {summary}", numbers)


plugins = [
    Plugin("rollout", "direct", DirectRollout, "validated candidates go live at once"),
    Plugin("rollout", "canary", CanaryRollout, "a live fraction first, then a sequential test"),
]
