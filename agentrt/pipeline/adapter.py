"""StrategyAdapter: turns validation, knowledge and live performance into strategy changes.

Every change is a ``strategy_updates`` row with the strategy before and after and why:

- ``promote``: a validated candidate became the active version;
- ``reject``: a candidate failed validation (the active version keeps serving);
- ``exploration``: epsilon decayed after a cycle, or exploration re-opened because the
  extractor found the reward dropping (a change point with a decrease);
- ``rollback``: the active version's live reward fell significantly below its predecessor's
  recorded live reward (or the baseline's), so the predecessor serves again; the same kind is
  used for a rollback by hand (``Runtime.rollback`` / ``agentrt rollback``), with
  ``details.manual = true``.
"""

from __future__ import annotations

import math
import sqlite3
from dataclasses import replace
from datetime import datetime
from typing import Any, NamedTuple, TypeGuard

from sqlalchemy import func, select

from agentrt.config import AgentRTConfig
from agentrt.errors import InvalidInputError
from agentrt.exploration import EpsilonGreedy, Softmax, Strategy, UpperConfidenceBound
from agentrt.exploration import from_config as exploration_from_config
from agentrt.schemas import StrategyUpdate
from agentrt.storage import repositories
from agentrt.storage.engine import Database
from agentrt.storage.tables import experience_view

__all__ = ["LiveReward", "StrategyAdapter", "live_rewards", "roll_back", "significantly_below"]

_MIN_LIVE = 100
_STALE_SECONDS = 60.0  # staleness below this never re-opens exploration
_Z = 2.326  # one-sided 99%: a rollback needs strong evidence


class LiveReward(NamedTuple):
    """Live reward of the decisions one version (None: the baseline) served."""

    n: int
    mean: float
    variance: float


async def live_rewards(
    db: Database, agent_id: str, versions: list[int | None], since: datetime | None = None
) -> dict[int | None, LiveReward]:
    """Count, mean and variance of the rewards of the live decisions each version served
    (decided at or after ``since`` when given)."""
    view = experience_view
    live = select(view.c.policy_version, view.c.reward).where(
        view.c.agent_id == agent_id, view.c.mode == "live"
    )
    if since is not None:
        live = live.where(view.c.created_at >= since)
    # Read each reward once: the view computes it per row with a subquery, which the
    # aggregates below would otherwise evaluate again for every use.
    rows = live.cte("live_rewards")
    if db.dialect == "postgresql" or sqlite3.sqlite_version_info >= (3, 35):
        rows = rows.prefix_with("MATERIALIZED")
    query = (
        select(
            rows.c.policy_version,
            func.count(rows.c.reward),
            func.avg(rows.c.reward),
            func.avg(rows.c.reward * rows.c.reward),
        )
        .where(rows.c.reward.is_not(None))
        .group_by(rows.c.policy_version)
    )
    found: dict[int | None, LiveReward] = {}
    async with db.session() as session:
        for version, count, mean, square in await session.execute(query):
            if version in versions and count:
                mean, square = float(mean), float(square)
                found[version] = LiveReward(int(count), mean, max(square - mean * mean, 0.0))
    return found


def significantly_below(current: LiveReward, reference: LiveReward) -> tuple[bool, float]:
    """Whether ``current`` is below ``reference`` at one-sided 99% (Welch z); and the z."""
    if current.n < _MIN_LIVE or reference.n < _MIN_LIVE:
        return False, 0.0
    se = math.sqrt(current.variance / current.n + reference.variance / reference.n)
    if se == 0.0:
        return current.mean < reference.mean, -math.inf if current.mean < reference.mean else 0.0
    z = (current.mean - reference.mean) / se
    return z < -_Z, z


def describe(active: int | None, exploration: Strategy) -> dict[str, Any]:
    """The strategy as stored in ``strategy_updates.previous`` / ``updated``."""
    return {"active_version": active, "exploration": exploration.describe()}


class StrategyAdapter:
    """Decides and records strategy changes for the agents of one runtime."""

    def __init__(self, config: AgentRTConfig, db: Database) -> None:
        self.config = config
        self.db = db
        # Per agent the reward staleness the previous extraction reported.
        self._staleness: dict[str, float] = {}

    async def record(
        self,
        agent_id: str,
        kind: str,
        previous: dict[str, Any],
        updated: dict[str, Any],
        details: dict[str, Any],
    ) -> StrategyUpdate:
        """Append one ``strategy_updates`` row."""
        update = StrategyUpdate(
            agent_id=agent_id, kind=kind, previous=previous, updated=updated, details=details
        )
        async with self.db.session() as session:
            await repositories.append_strategy_update(session, update)
        return update

    def retune(
        self, agent_id: str, exploration: Strategy, knowledge: dict[str, Any], promoted: bool
    ) -> tuple[Strategy, str | None]:
        """Exploration for the next cycle, and why it changed (None: unchanged).

        A drop of the reward (a change point with a decrease in this cycle's window), or rising
        reward staleness (the time from the newest reward to the newest decision at least
        doubled since the previous extraction, to over a minute: rewards stopped arriving for
        what the policy does), re-opens exploration at twice its configured level; otherwise
        epsilon decays after a promotion.
        """
        alarms = (knowledge.get("trend") or {}).get("alarms") or []
        drops = [a for a in alarms if a.get("direction") == "decrease"]
        configured = exploration_from_config(self.config.exploration_for(agent_id))
        why = None
        if drops:
            last = drops[-1]
            why = (
                f"reward dropped from {last.get('mean_before')} to {last.get('mean_after')} "
                f"at {last.get('change_at')}: exploration re-opened"
            )
        reported = (knowledge.get("exploration_health") or {}).get("reward_staleness_seconds")
        if _finite_number(reported):
            stale = float(reported)
            before = self._staleness.get(agent_id)
            self._staleness[agent_id] = stale
            if why is None and before is not None and stale > max(2 * before, _STALE_SECONDS):
                why = (
                    f"reward staleness rose from {before:.0f} s to {stale:.0f} s: exploration "
                    "re-opened"
                )
        if why is not None:
            reopened = _reopen(exploration, configured)
            return (reopened, why) if reopened != exploration else (exploration, None)
        if promoted and isinstance(exploration, EpsilonGreedy):
            decayed = exploration.decayed()
            if decayed != exploration:
                return decayed, "epsilon decays after a promotion"
        return exploration, None

    def adapt_learning_rate(
        self, agent_id: str, metrics: dict[str, Any], current: tuple[float, float] | None
    ) -> tuple[tuple[float, float] | None, str | None]:
        """The (learning rate, momentum) of the agent's next training run, and why it changed
        (None: unchanged).

        With ``optimization_parameters.strategy_optimization.adaptation.method: dynamic``, a
        run whose held-out loss improved by less than 1% after its first epoch stalled: the
        next run uses the adaptation's ``learning_rate`` and ``momentum`` (momentum is
        ``beta1`` for Adam), and each further stall halves the learning rate (down to 1e-6).
        Learners without a loss curve (``linear``) are left alone.
        """
        adaptation = self.config.optimization_parameters.strategy_optimization.adaptation
        curve = metrics.get("loss_curve") or []
        losses = [
            float(point["holdout_loss"])
            for point in curve
            if isinstance(point, dict) and _finite_number(point.get("holdout_loss"))
        ]
        if adaptation.method != "dynamic" or len(losses) < 2:
            return current, None
        first, best = losses[0], min(losses)
        improvement = (first - best) / max(abs(first), 1e-12)
        if improvement >= 0.01:
            return current, None
        if current is None:
            updated = (adaptation.learning_rate, adaptation.momentum)
        else:
            updated = (max(current[0] / 2.0, 1e-6), current[1])
        if updated == current:
            return current, None
        return updated, (
            f"held-out loss improved {improvement:.2%} over {len(losses)} epochs (stalled): the "
            f"next run uses learning rate {updated[0]:g} and momentum {updated[1]:g}"
        )

    async def regression(
        self, agent_id: str, active: int, parent: int | None
    ) -> tuple[bool, dict[str, Any]]:
        """Whether the active version's live reward fell significantly below its predecessor's
        (or the baseline's); with the numbers."""
        rewards = await live_rewards(self.db, agent_id, [active, parent, None])
        current = rewards.get(active)
        references = [(parent, rewards.get(parent)), (None, rewards.get(None))]
        for version, reference in references:
            if current is None or reference is None:
                continue
            below, z = significantly_below(current, reference)
            if below:
                return True, {
                    "active": {"version": active, **current._asdict()},
                    "reference": {"version": version, **reference._asdict()},
                    "z": z if math.isfinite(z) else None,
                }
        return False, {}


def _finite_number(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and math.isfinite(value)


def _reopen(current: Strategy, configured: Strategy) -> Strategy:
    """Twice the configured exploration (epsilon, temperature or UCB confidence), never less
    than now."""
    if isinstance(current, EpsilonGreedy) and isinstance(configured, EpsilonGreedy):
        return replace(current, epsilon=min(1.0, max(current.epsilon, 2 * configured.epsilon)))
    if isinstance(current, Softmax) and isinstance(configured, Softmax):
        return replace(current, temperature=max(current.temperature, 2 * configured.temperature))
    if isinstance(current, UpperConfidenceBound) and isinstance(configured, UpperConfidenceBound):
        return replace(current, confidence=max(current.confidence, 2 * configured.confidence))
    return configured if type(current) is not type(configured) else current


async def roll_back(
    db: Database, agent_id: str, to: int | None, reason: str
) -> tuple[int | None, int | None]:
    """Retire the active version and activate ``to`` (default: the active one's parent; None
    when there is none, and the baseline serves). Returns (retired, activated).

    Raises:
        InvalidInputError: ``to`` is not a stored, non-failed version of the agent.
    """
    async with db.session() as session:
        active = await repositories.active_policy_version(session, agent_id)
        target = to if to is not None else (active.parent_version if active else None)
        if target is not None:
            row = await repositories.load_policy_version(session, agent_id, target)
            if row is None or row.status in ("failed", "candidate", "rejected"):
                known = [
                    v.version for v in await repositories.list_policy_versions(session, agent_id)
                ]
                raise InvalidInputError(
                    "to", target, f"is not a version {agent_id} can return to (stored: {known})"
                )
            if active is not None and row.version == active.version:
                raise InvalidInputError("to", target, "is already the active version")
        if active is None and target is None:
            raise InvalidInputError(
                "agent_id", agent_id, "has no active version: its baseline already serves"
            )
        if active is not None:
            await repositories.set_policy_status(
                session, agent_id, active.version, "retired", reason
            )
        if target is not None:
            await repositories.set_policy_status(
                session, agent_id, target, "active", f"reactivated: {reason}"
            )
    return (active.version if active else None), target
