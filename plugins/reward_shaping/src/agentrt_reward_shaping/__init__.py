"""Reward shaping from outcome latency and cost: an example agentrt processor plugin.

A tool that answers correctly but slowly, or expensively, should count for less. This
processor rewrites each reward event that carries ``latency_ms`` or ``cost`` in its outcome:

    shaped = reward - latency_weight * latency_ms / 1000 - cost_weight * cost

clipped to ``[floor, ceiling]``, and keeps the original in ``outcome["raw_reward"]`` so that
nothing is lost. agentrt builds processors from its configuration, which has no keys for this
plugin: to change the weights, copy this package and change the defaults (that is what it is
for).
"""

from __future__ import annotations

from dataclasses import dataclass

from agentrt import AgentRTConfig, ExperienceBatch, Feedback
from agentrt.plugins import Plugin

__all__ = ["RewardShaping", "plugin"]


@dataclass(frozen=True)
class RewardShaping:
    """Subtracts latency (per second) and cost penalties from rewards."""

    latency_weight: float = 0.1
    cost_weight: float = 1.0
    floor: float = 0.0
    ceiling: float = 1.0

    @classmethod
    def from_config(cls, config: AgentRTConfig) -> RewardShaping:
        """agentrt builds processors with the whole configuration; this one needs none of it."""
        return cls()

    def process(self, batch: ExperienceBatch) -> ExperienceBatch:
        shaped = [self._shape(item) for item in batch.feedback]
        return batch._replace(feedback=shaped)

    def _shape(self, feedback: Feedback) -> Feedback:
        outcome = feedback.outcome or {}
        if feedback.kind != "reward" or feedback.reward is None or "raw_reward" in outcome:
            return feedback
        latency = outcome.get("latency_ms")
        cost = outcome.get("cost")
        if not isinstance(latency, int | float) and not isinstance(cost, int | float):
            return feedback
        penalty = 0.0
        if isinstance(latency, int | float) and not isinstance(latency, bool):
            penalty += self.latency_weight * float(latency) / 1000.0
        if isinstance(cost, int | float) and not isinstance(cost, bool):
            penalty += self.cost_weight * float(cost)
        value = min(self.ceiling, max(self.floor, feedback.reward - penalty))
        return feedback.model_copy(
            update={"reward": value, "outcome": {**outcome, "raw_reward": feedback.reward}}
        )


plugin = Plugin(
    kind="processor",
    name="reward_shaping",
    factory=RewardShaping.from_config,
    description="shape rewards with outcome latency and cost",
)
