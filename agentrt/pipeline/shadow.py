"""Shadow agents: when the learned policy may take over from the application's own logic.

In shadow mode the application executes its own choice (``app_action``) and agentrt logs it
with the policy's would-be choice beside it. The application's logic has no known
propensities, so it is treated as deterministic (propensity 1 for the action it took): the
estimate of the policy's value on the shadow decisions is then the doubly robust one,

    V_i = sum_a pi(a|x_i) q(x_i, a) + pi(a_i|x_i) (r_i - q(x_i, a_i)),

the policy's reward model over every action, corrected by the observed reward wherever the
policy would also have taken the application's action. It is compared, decision by decision,
with the reward the application's choice earned: the agent switches to live when the lower
bound of the bootstrap interval of the mean difference (at ``shadow.confidence``) exceeds
``shadow.margin`` over at least ``shadow.min_rows`` rewarded shadow decisions.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import anyio
import numpy as np

from agentrt.config import AgentRTConfig, ShadowConfig
from agentrt.policy import LearnedPolicy
from agentrt.schemas import Experience
from agentrt.storage import repositories
from agentrt.storage.engine import Database
from agentrt.validation import policy_matrix

__all__ = ["compare_with_application", "judge_shadow"]


async def judge_shadow(
    config: AgentRTConfig,
    db: Database,
    agent_id: str,
    policy: LearnedPolicy,
    limiter: anyio.CapacityLimiter | None = None,
) -> tuple[bool, dict[str, Any]]:
    """:func:`compare_with_application` on the agent's newest rewarded experience
    (``training.window`` rows), in a worker thread."""
    agent = config.agents[agent_id]
    async with db.session() as session:
        rows = await repositories.fetch_experience(
            session, agent_id, limit=agent.training.window, rewarded_only=True
        )
    work = functools.partial(
        compare_with_application,
        policy,
        rows,
        agent.shadow,
        n_bootstrap=agent.validation.n_bootstrap,
    )
    return await anyio.to_thread.run_sync(work, limiter=limiter)


def compare_with_application(
    policy: LearnedPolicy,
    rows: Sequence[Experience],
    config: ShadowConfig,
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> tuple[bool, dict[str, Any]]:
    """Whether ``policy`` beats the application on its rewarded shadow decisions ``rows``,
    with the numbers behind the verdict."""
    usable = [
        r
        for r in rows
        if r.mode == "shadow"
        and r.reward is not None
        and np.isfinite(r.reward)
        and r.action in policy.actions
    ]
    numbers: dict[str, Any] = {"rows": len(usable), "min_rows": config.min_rows}
    if len(usable) < config.min_rows:
        return False, numbers
    actions = policy.actions
    taken = np.array([actions.index(r.action) for r in usable])
    rewards = np.array([r.reward for r in usable], dtype=np.float64)
    estimates, distribution = policy_matrix(policy, usable, actions)
    index = np.arange(len(usable))
    terms = np.sum(distribution * estimates, axis=1) + distribution[index, taken] * (
        rewards - estimates[index, taken]
    )
    difference = terms - rewards
    draws = np.random.default_rng(seed).integers(0, len(usable), size=(n_bootstrap, len(usable)))
    lower = float(np.quantile(difference[draws].mean(axis=1), 1.0 - config.confidence))
    numbers.update(
        policy_estimate=float(terms.mean()),
        application_reward=float(rewards.mean()),
        difference=float(difference.mean()),
        difference_lower=lower,
        confidence=config.confidence,
        margin=config.margin,
    )
    return lower > config.margin, numbers
