"""What the report reads about one agent, in bounded memory, on SQLite and PostgreSQL alike.

Decisions are aggregated in SQL into at most 100 buckets of consecutive decisions (``ntile``
over ``created_at`` order), so millions of rows come back as a few hundred numbers. Versions,
strategy updates and knowledge are read in bounded numbers of rows; their JSON documents are
read in Python, since the JSON types and operators differ between the two databases.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

from sqlalchemy import case, distinct, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from agentrt.config import AgentRTConfig
from agentrt.errors import InvalidInputError
from agentrt.storage.tables import (
    AgentRow,
    DecisionRow,
    KnowledgeRow,
    PolicyVersionRow,
    StrategyUpdateRow,
    experience_view,
)

__all__ = [
    "OTHER",
    "AgentData",
    "Bucket",
    "Change",
    "Finding",
    "Live",
    "Marker",
    "Update",
    "Version",
    "as_float",
    "read_agent",
    "resolve_agents",
]

OTHER = "(other)"
MAX_BUCKETS = 100
MIN_BUCKET = 20  # decisions per bucket, at the least, while there are enough
COUNTED_ACTIONS = 20  # counted per bucket; the others are counted together as OTHER
HEALTH_ROWS = 200  # newest exploration_health rows read
TREND_ROWS = 50  # newest trend rows whose change points are collected
MARKER_ROWS = 500  # newest promotions and rollbacks read
UPDATE_ROWS = 30  # newest strategy updates read


@dataclass(frozen=True, slots=True)
class Bucket:
    """Consecutive decisions (in ``created_at`` order) and what they earned."""

    start: datetime
    end: datetime
    decisions: int
    rewarded: int  # live decisions with a reward
    reward_sum: float
    min_propensity: float | None
    counts: dict[str, int]  # the most chosen actions, then OTHER

    @property
    def chosen(self) -> int:
        """Actions chosen at least once (the others count as one, so a lower bound)."""
        return sum(1 for n in self.counts.values() if n)


class Live(NamedTuple):
    """The live decisions one version (None: the baseline) served."""

    decisions: int
    rewarded: int
    mean: float | None


class Marker(NamedTuple):
    """A version change: a promotion or a rollback."""

    at: datetime
    kind: str
    label: str


class Finding(NamedTuple):
    """One ``knowledge`` row."""

    window_start: datetime | None
    window_end: datetime | None
    payload: dict[str, Any]


class Change(NamedTuple):
    """A shift of the reward's mean, found by the change detector (from ``trend`` rows)."""

    at: datetime | None
    direction: str
    mean_before: float | None
    mean_after: float | None


class Version(NamedTuple):
    """A ``policy_versions`` row without its artifact."""

    version: int
    parent_version: int | None
    learner: str
    status: str
    status_reason: str | None
    validation: dict[str, Any] | None
    created_at: datetime
    activated_at: datetime | None


class Update(NamedTuple):
    """A ``strategy_updates`` row."""

    kind: str
    previous: dict[str, Any]
    updated: dict[str, Any]
    details: dict[str, Any]
    created_at: datetime


@dataclass(slots=True)
class AgentData:
    """Everything the report shows about one agent."""

    agent_id: str
    decisions: int = 0
    first: datetime | None = None
    last: datetime | None = None
    action_count: int = 0  # actions chosen, or configured when those are more
    actions: list[str] = field(default_factory=list)  # the most chosen first
    buckets: list[Bucket] = field(default_factory=list)
    live: dict[int | None, Live] = field(default_factory=dict)
    versions: list[Version] = field(default_factory=list)
    markers: list[Marker] = field(default_factory=list)  # oldest first
    updates: list[Update] = field(default_factory=list)  # newest first
    health: list[Finding] = field(default_factory=list)  # oldest first
    patterns: Finding | None = None
    anomalies: Finding | None = None
    changes: list[Change] = field(default_factory=list)  # oldest first


def as_float(value: object) -> float | None:
    """A JSON number as a float; None for anything else (booleans included)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


async def resolve_agents(
    connection: AsyncConnection, config: AgentRTConfig, wanted: Sequence[str] | None
) -> list[str]:
    """The agents to report on: ``wanted``, or the configured ones, or every stored one.

    Raises:
        InvalidInputError: a wanted agent is neither configured nor stored.
    """
    stored = select(AgentRow.agent_id).union(select(DecisionRow.agent_id).distinct())
    if wanted is None:
        if config.agents:
            return list(config.agents)
        return sorted(str(agent) for agent in (await connection.execute(stored)).scalars())
    agents = list(dict.fromkeys(wanted))
    unknown = [agent for agent in agents if agent not in config.agents]
    if unknown:
        found = select(AgentRow.agent_id).where(AgentRow.agent_id.in_(unknown))
        in_decisions = select(DecisionRow.agent_id).where(DecisionRow.agent_id.in_(unknown))
        present = set((await connection.execute(found.union(in_decisions))).scalars())
        missing = [agent for agent in unknown if agent not in present]
        if missing:
            known = {str(agent) for agent in (await connection.execute(stored)).scalars()}
            names = ", ".join(sorted(known | set(config.agents))) or "none"
            problem = f"not configured and not in the database; known agents: {names}"
            raise InvalidInputError("agent", missing[0], problem)
    return agents


async def read_agent(
    connection: AsyncConnection, agent_id: str, configured_actions: int, since: datetime | None
) -> AgentData:
    """Read one agent's decisions (from ``since`` on), versions, updates and knowledge."""
    data = AgentData(agent_id)
    decision = DecisionRow
    where = [decision.agent_id == agent_id]
    if since is not None:
        where.append(decision.created_at >= since)
    summary = select(
        func.count(),
        func.count(distinct(decision.action)),
        func.min(decision.created_at),
        func.max(decision.created_at),
    ).where(*where)
    decisions, chosen, data.first, data.last = (await connection.execute(summary)).one()
    data.decisions = int(decisions)
    data.action_count = max(int(chosen), configured_actions)
    if data.decisions:
        top = (
            select(decision.action)
            .where(*where)
            .group_by(decision.action)
            .order_by(func.count().desc(), decision.action)
            .limit(COUNTED_ACTIONS)
        )
        data.actions = [str(action) for action in (await connection.execute(top)).scalars()]
        data.buckets, data.live = await _buckets(connection, data, since)
    await _history(connection, data, since)
    await _knowledge(connection, data, since)
    return data


async def _buckets(
    connection: AsyncConnection, data: AgentData, since: datetime | None
) -> tuple[list[Bucket], dict[int | None, Live]]:
    """The buckets, and the live decisions of each version, from one pass over the view.

    One pass also keeps PostgreSQL on hash joins: a second, narrower query over the view
    (``mode = 'live'``) is estimated at one row on tables not analyzed yet, and nested loops
    over the view's feedback subqueries then take time quadratic in the rows.
    """
    view = experience_view
    count = min(MAX_BUCKETS, max(1, data.decisions // MIN_BUCKET))
    live = view.c.mode == "live"
    numbered = select(
        view.c.created_at,
        view.c.action,
        view.c.propensity,
        view.c.policy_version,
        case((live, 1)).label("live"),
        case((live, view.c.reward)).label("live_reward"),
        func.ntile(count).over(order_by=(view.c.created_at, view.c.decision_id)).label("bucket"),
    ).where(view.c.agent_id == data.agent_id)
    if since is not None:
        numbered = numbered.where(view.c.created_at >= since)
    rows = numbered.subquery()
    per_action = [
        func.sum(case((rows.c.action == action, 1), else_=0)).label(f"a{index}")
        for index, action in enumerate(data.actions)
    ]
    query = (
        select(
            rows.c.bucket,
            rows.c.policy_version,
            func.min(rows.c.created_at),
            func.max(rows.c.created_at),
            func.count(),
            func.count(rows.c.live),
            func.count(rows.c.live_reward),
            func.sum(rows.c.live_reward),
            func.min(rows.c.propensity),
            *per_action,
        )
        .group_by(rows.c.bucket, rows.c.policy_version)
        .order_by(rows.c.bucket)
    )
    buckets: dict[int, Bucket] = {}
    served: dict[int | None, tuple[int, int, float]] = {}  # decisions, rewarded, reward sum
    for row in await connection.execute(query):
        bucket, version, start, end, decisions, live_n, rewarded, reward_sum, low, *counts = row
        by_action = {action: int(n) for action, n in zip(data.actions, counts, strict=True)}
        by_action[OTHER] = int(decisions) - sum(by_action.values())
        part = Bucket(
            start=start,
            end=end,
            decisions=int(decisions),
            rewarded=int(rewarded),
            reward_sum=float(reward_sum or 0.0),
            min_propensity=None if low is None else float(low),
            counts=by_action,
        )
        buckets[bucket] = _merge(buckets[bucket], part) if bucket in buckets else part
        if live_n:
            n, r, total = served.get(version, (0, 0, 0.0))
            served[version] = (n + int(live_n), r + part.rewarded, total + part.reward_sum)
    lives = {
        version: Live(n, rewarded, total / rewarded if rewarded else None)
        for version, (n, rewarded, total) in served.items()
    }
    return [buckets[key] for key in sorted(buckets)], lives


def _merge(one: Bucket, other: Bucket) -> Bucket:
    """One bucket from the parts that different versions served."""
    propensities = [p for p in (one.min_propensity, other.min_propensity) if p is not None]
    return Bucket(
        start=min(one.start, other.start),
        end=max(one.end, other.end),
        decisions=one.decisions + other.decisions,
        rewarded=one.rewarded + other.rewarded,
        reward_sum=one.reward_sum + other.reward_sum,
        min_propensity=min(propensities) if propensities else None,
        counts={key: one.counts[key] + other.counts[key] for key in one.counts},
    )


async def _history(connection: AsyncConnection, data: AgentData, since: datetime | None) -> None:
    policy, update = PolicyVersionRow, StrategyUpdateRow
    versions = (
        select(
            policy.version,
            policy.parent_version,
            policy.learner,
            policy.status,
            policy.status_reason,
            policy.validation,
            policy.created_at,
            policy.activated_at,
        )
        .where(policy.agent_id == data.agent_id)
        .order_by(policy.version)
    )
    data.versions = [Version(*row) for row in await connection.execute(versions)]
    columns = (update.kind, update.previous, update.updated, update.details, update.created_at)
    newest = (update.created_at.desc(), update.id.desc())
    updates = select(*columns).where(update.agent_id == data.agent_id)
    if since is not None:
        updates = updates.where(update.created_at >= since)
    recent = updates.order_by(*newest).limit(UPDATE_ROWS)
    data.updates = [_update(row) for row in await connection.execute(recent)]
    changes = updates.where(update.kind.in_(("promote", "rollback")))
    changes = changes.order_by(*newest).limit(MARKER_ROWS)
    marked: set[int] = set()
    for item in reversed([_update(row) for row in await connection.execute(changes)]):
        if item.kind == "promote":
            version = item.details.get("candidate_version", item.updated.get("active_version"))
            label = f"v{version}"
        else:
            version = item.details.get("activated")
            label = f"rollback to {'baseline' if version is None else f'v{version}'}"
        if isinstance(version, int):
            marked.add(version)
        data.markers.append(Marker(item.created_at, item.kind, label))
    # A version activated without a recorded promotion (by another tool, an older agentrt).
    for row in data.versions:
        at = row.activated_at
        if at is not None and row.version not in marked and (since is None or at >= since):
            data.markers.append(Marker(at, "promote", f"v{row.version}"))
    data.markers.sort(key=lambda marker: marker.at)


def _update(row: Sequence[Any]) -> Update:
    kind, previous, updated, details, created_at = row
    return Update(kind, previous or {}, updated or {}, details or {}, created_at)


async def _knowledge(connection: AsyncConnection, data: AgentData, since: datetime | None) -> None:
    knowledge = KnowledgeRow

    async def newest(kind: str, limit: int) -> list[Finding]:
        query = select(knowledge.window_start, knowledge.window_end, knowledge.payload).where(
            knowledge.agent_id == data.agent_id, knowledge.kind == kind
        )
        if since is not None:
            query = query.where(knowledge.window_end >= since)
        query = query.order_by(knowledge.created_at.desc(), knowledge.id.desc()).limit(limit)
        found = [Finding(*row) for row in await connection.execute(query)]
        return [item for item in reversed(found) if isinstance(item.payload, dict)]

    data.health = await newest("exploration_health", HEALTH_ROWS)
    data.patterns = next(iter(await newest("patterns", 1)), None)
    data.anomalies = next(iter(await newest("anomalies", 1)), None)
    # Consecutive windows overlap, so one change may be reported by several trend rows.
    alarms: dict[tuple[object, object], dict[str, Any]] = {}
    for item in await newest("trend", TREND_ROWS):
        for alarm in item.payload.get("alarms") or []:
            if isinstance(alarm, dict):
                alarms.setdefault((alarm.get("change_decision_id"), alarm.get("direction")), alarm)
    changes = [
        Change(
            _time(alarm.get("change_at")),
            str(alarm.get("direction", "")),
            as_float(alarm.get("mean_before")),
            as_float(alarm.get("mean_after")),
        )
        for alarm in alarms.values()
    ]
    never = datetime.min.replace(tzinfo=UTC)
    data.changes = sorted(changes, key=lambda change: change.at or never)


def _time(value: object) -> datetime | None:
    try:
        at = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
