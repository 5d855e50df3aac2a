"""A multi-step task in progress: decisions numbered by step, rewards summed into its return."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from agentrt.errors import InvalidInputError
from agentrt.ids import new_id
from agentrt.schemas import Decision, DecisionMode, Feedback

if TYPE_CHECKING:
    from datetime import datetime

    from agentrt.runtime import Runtime

__all__ = ["ActiveEpisode"]


class ActiveEpisode:
    """The handle ``Runtime.episode()`` yields; its row is written when the block exits.

    Attributes:
        id: the episode id (``decisions.episode_id`` of its steps).
        agent_id: the agent acting in it.
        started_at: when the block was entered.
        length: decisions taken so far (the next step's number).
        episode_return: sum of the rewards given through this handle.
    """

    def __init__(self, runtime: Runtime, agent_id: str, started_at: datetime) -> None:
        self._runtime = runtime
        self.id = new_id()
        self.agent_id = agent_id
        self.started_at = started_at
        self.length = 0
        self.episode_return = 0.0
        self.rewarded = 0
        self.last: Decision | None = None

    async def decide(
        self,
        context: Mapping[str, Any],
        actions: Sequence[str] | None = None,
        *,
        mask: Sequence[str] | Sequence[bool] | None = None,
        mode: DecisionMode | None = None,
        app_action: str | None = None,
    ) -> Decision:
        """Take the next step: ``Runtime.decide`` with this episode's id and step number."""
        decision = await self._runtime.decide(
            self.agent_id,
            context,
            actions,
            mask=mask,
            episode_id=self.id,
            step=self.length,
            mode=mode,
            app_action=app_action,
        )
        self.length += 1
        self.last = decision
        return decision

    async def reward(
        self,
        reward: float,
        decision: Decision | uuid.UUID | str | None = None,
        *,
        outcome: Mapping[str, Any] | None = None,
        source: str | None = None,
    ) -> Feedback:
        """Reward a step (by default the latest one); the reward adds to the episode's return."""
        target = decision if decision is not None else self.last
        if target is None:
            raise InvalidInputError(
                "decision", None, "this episode has no decision yet: call ep.decide() first"
            )
        feedback = await self._runtime.reward(target, reward, outcome=outcome, source=source)
        self.episode_return += feedback.reward or 0.0
        self.rewarded += 1
        return feedback
