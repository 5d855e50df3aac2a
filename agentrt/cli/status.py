"""``agentrt status``: per agent, what serves, how much it decides, how its reward moves, and
when it last learned."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from datetime import datetime, timedelta
from functools import partial
from typing import Any, NamedTuple

from rich.table import Table
from rich.text import Text
from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from agentrt.cli.common import DEFAULT_CONFIG, ConfigOption, console, handle_errors, load
from agentrt.cli.inspection import format_time, read
from agentrt.clock import utcnow
from agentrt.config import mask_url
from agentrt.storage import repositories
from agentrt.storage.tables import (
    AgentRow,
    DecisionRow,
    FeedbackRow,
    KnowledgeRow,
    MetricRow,
    StrategyUpdateRow,
    experience_view,
)

__all__ = ["AgentStatus", "agent_status", "status", "trend"]

WINDOW = 1000  # rewarded decisions per mean-reward window


class AgentStatus(NamedTuple):
    """What ``agentrt status`` shows for one agent."""

    agent_id: str
    active: str  # "v3 (linear)", or "baseline"
    last_hour: int
    last_day: int
    total: int
    rewarded: int
    recent: list[float]  # rewards of the newest WINDOW rewarded decisions
    previous: list[float]  # rewards of the WINDOW before those
    last_cycle: tuple[datetime, str] | None  # when, and its status
    last_strategy_update: tuple[datetime, str] | None  # when, and its kind
    canary: str | None = None  # "v4 (linear), 10% of decisions"
    exploration: dict[str, Any] | None = None  # the newest exploration_health knowledge


@handle_errors
def status(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Per agent: serving version and canary, decisions, reward trend, exploration, last cycle.

    Mean reward: the last 1000 rewarded decisions, with ↑ ↓ → against the 1000 before them.

    Example: agentrt status --config config/postgres.yaml
    """
    loaded = load(config)
    now = utcnow()
    statuses = read(loaded.database, partial(_statuses, list(loaded.agents), now))
    if not statuses:
        console.print(
            f"no agents: configure them under `agents` in {config}",
            highlight=False,
            soft_wrap=True,
            markup=False,
        )
        return
    console.print(
        f"{mask_url(loaded.database.url)} at {format_time(now)} UTC",
        highlight=False,
        soft_wrap=True,
        markup=False,
    )
    for item in statuses:
        console.print(_table(item))


def _table(item: AgentStatus) -> Table:
    table = Table(title=Text(item.agent_id, style="bold"), show_header=False, title_justify="left")
    table.add_column("field", style="dim", no_wrap=True)
    table.add_column("value", overflow="fold")
    total = item.total
    share = f" ({item.rewarded / total:.1%})" if total else ""
    cycle, update = item.last_cycle, item.last_strategy_update
    rows = [
        ("policy", item.active),
        ("canary", item.canary or "-"),
        ("decisions", f"{item.last_hour} (1h) · {item.last_day} (24h) · {total} (all)"),
        ("rewarded", f"{item.rewarded} of {total}{share}"),
        ("mean reward", _mean_reward(item.recent, item.previous)),
        ("exploration health", _exploration(item.exploration)),
        ("last learning cycle", "-" if cycle is None else f"{cycle[1]}, {format_time(cycle[0])}"),
        (
            "last strategy update",
            "-" if update is None else f"{update[1]}, {format_time(update[0])}",
        ),
    ]
    for field, value in rows:
        table.add_row(field, Text(value))
    return table


def _exploration(health: dict[str, Any] | None) -> str:
    """Entropy, coverage and the lowest propensity of the newest extraction window."""
    if not health:
        return "-"
    parts = []
    entropy = health.get("normalized_entropy")
    if isinstance(entropy, int | float):
        parts.append(f"entropy {entropy:.2f} of 1")
    coverage = health.get("coverage")
    if isinstance(coverage, int | float):
        parts.append(f"coverage {coverage:.0%}")
    lowest = health.get("min_propensity")
    if isinstance(lowest, int | float):
        parts.append(f"min propensity {lowest:.3g}")
    stale = health.get("reward_staleness_seconds")
    if isinstance(stale, int | float):
        parts.append(f"reward staleness {stale:.0f} s")
    return ", ".join(parts) or "-"


def _mean_reward(recent: Sequence[float], previous: Sequence[float]) -> str:
    if not recent:
        return "-"
    text = f"{statistics.fmean(recent):.4g} (last {len(recent)})"
    if previous:
        arrow = trend(recent, previous) or "vs"
        text += f" {arrow} {statistics.fmean(previous):.4g} (previous {len(previous)})"
    return text


def trend(recent: Sequence[float], previous: Sequence[float]) -> str:
    """↑ or ↓ when the recent mean differs from the previous one by more than two standard
    errors, → when it does not, and nothing while either window has fewer than two rewards."""
    if len(recent) < 2 or len(previous) < 2:
        return ""
    difference = statistics.fmean(recent) - statistics.fmean(previous)
    error = math.sqrt(
        statistics.variance(recent) / len(recent) + statistics.variance(previous) / len(previous)
    )
    if abs(difference) <= 2 * error:
        return "→"
    return "↑" if difference > 0 else "↓"


async def _statuses(
    configured: list[str], now: datetime, session: AsyncSession
) -> list[AgentStatus]:
    agents = configured or await _stored_agents(session)
    return [await agent_status(session, agent_id, now) for agent_id in agents]


async def _stored_agents(session: AsyncSession) -> list[str]:
    """Agents known to the database, for a configuration that names none."""
    stored = select(AgentRow.agent_id).union(select(DecisionRow.agent_id).distinct())
    return sorted(str(agent) for agent in (await session.execute(stored)).scalars())


async def agent_status(session: AsyncSession, agent_id: str, now: datetime) -> AgentStatus:
    """Read one agent's status as of ``now``."""
    decision = DecisionRow
    counts = select(
        func.count(),
        func.sum(case((decision.created_at >= now - timedelta(hours=1), 1), else_=0)),
        func.sum(case((decision.created_at >= now - timedelta(days=1), 1), else_=0)),
    ).where(decision.agent_id == agent_id)
    total, last_hour, last_day = (await session.execute(counts)).one()
    rewarded = (
        select(func.count(func.distinct(FeedbackRow.decision_id)))
        .join(decision, decision.id == FeedbackRow.decision_id)
        .where(decision.agent_id == agent_id, FeedbackRow.kind == "reward")
    )
    view = experience_view
    rewards_query = (
        select(view.c.reward)
        .where(view.c.agent_id == agent_id, view.c.reward.is_not(None))
        .order_by(view.c.created_at.desc(), view.c.decision_id.desc())
        .limit(2 * WINDOW)
    )
    rewards = [float(value) for value in (await session.execute(rewards_query)).scalars()]
    active = await repositories.active_policy_version(session, agent_id)
    canary = await repositories.policy_with_status(session, agent_id, "canary")
    stored = await session.scalar(select(AgentRow.config).where(AgentRow.agent_id == agent_id))
    share = ((stored or {}).get("rollout") or {}).get("fraction")
    health = await session.scalar(
        select(KnowledgeRow.payload)
        .where(KnowledgeRow.agent_id == agent_id, KnowledgeRow.kind == "exploration_health")
        .order_by(KnowledgeRow.id.desc())
        .limit(1)
    )
    return AgentStatus(
        agent_id=agent_id,
        active="baseline" if active is None else f"v{active.version} ({active.learner})",
        last_hour=int(last_hour or 0),
        last_day=int(last_day or 0),
        total=int(total),
        rewarded=int((await session.execute(rewarded)).scalar_one()),
        recent=rewards[:WINDOW],
        previous=rewards[WINDOW:],
        last_cycle=await _last_cycle(session, agent_id),
        last_strategy_update=await _last_strategy_update(session, agent_id),
        canary=None
        if canary is None
        else f"v{canary.version} ({canary.learner})"
        + (f", {share:.0%} of decisions" if isinstance(share, int | float) else ""),
        exploration=health,
    )


async def _last_cycle(session: AsyncSession, agent_id: str) -> tuple[datetime, str] | None:
    query = (
        select(MetricRow.created_at, MetricRow.details)
        .where(MetricRow.agent_id == agent_id, MetricRow.name == "learning_cycle")
        .order_by(MetricRow.created_at.desc(), MetricRow.id.desc())
        .limit(1)
    )
    row = (await session.execute(query)).one_or_none()
    if row is None:
        return None
    details: dict[str, Any] = row.details or {}
    return row.created_at, str(details.get("status", "unknown"))


async def _last_strategy_update(
    session: AsyncSession, agent_id: str
) -> tuple[datetime, str] | None:
    query = (
        select(StrategyUpdateRow.created_at, StrategyUpdateRow.kind)
        .where(StrategyUpdateRow.agent_id == agent_id)
        .order_by(StrategyUpdateRow.created_at.desc(), StrategyUpdateRow.id.desc())
        .limit(1)
    )
    row = (await session.execute(query)).one_or_none()
    return None if row is None else (row.created_at, row.kind)
