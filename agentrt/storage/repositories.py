"""The named queries agentrt needs. Each receives a session; none creates one.

Inserts of experience are idempotent by id (``ON CONFLICT DO NOTHING`` on both SQLite and
PostgreSQL), so a batch retried after a failure never duplicates a row.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import anyio
import orjson
from sqlalchemy import JSON, Table, Text, cast, func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from agentrt.clock import utcnow
from agentrt.config import AgentConfig
from agentrt.schemas import (
    Decision,
    Episode,
    Experience,
    Feedback,
    Knowledge,
    PolicyStatus,
    PolicyVersion,
    StrategyUpdate,
)
from agentrt.storage.tables import (
    AgentRow,
    DecisionRow,
    EpisodeRow,
    FeedbackRow,
    KnowledgeRow,
    MetricRow,
    PolicyVersionRow,
    StrategyUpdateRow,
    experience_view,
)

__all__ = [
    "active_policy_version",
    "append_strategy_update",
    "fetch_experience",
    "insert_decisions",
    "insert_episodes",
    "insert_feedback",
    "insert_knowledge",
    "list_policy_versions",
    "load_policy_version",
    "next_policy_version",
    "record_metric",
    "retire_active_versions",
    "set_policy_status",
    "store_policy_version",
    "unrewarded_decision_ids",
    "upsert_agents",
]


async def _insert_ignoring_duplicates(
    session: AsyncSession, table: Table, rows: Sequence[Mapping[str, Any]]
) -> None:
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    builder = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = builder(table).on_conflict_do_nothing(index_elements=["id"])
    await session.execute(statement, list(rows))


async def insert_decisions(session: AsyncSession, decisions: Sequence[Decision]) -> None:
    """Insert decisions; ids already stored are skipped."""
    rows = [decision.model_dump() for decision in decisions]
    await _insert_ignoring_duplicates(session, DecisionRow.__table__, rows)  # type: ignore[arg-type]


async def insert_feedback(session: AsyncSession, feedback: Sequence[Feedback]) -> None:
    """Insert rewards and activations; ids already stored are skipped."""
    rows = [item.model_dump() for item in feedback]
    await _insert_ignoring_duplicates(session, FeedbackRow.__table__, rows)  # type: ignore[arg-type]


async def insert_episodes(session: AsyncSession, episodes: Sequence[Episode]) -> None:
    """Insert finished episodes; ids already stored are skipped."""
    rows = [episode.model_dump() for episode in episodes]
    await _insert_ignoring_duplicates(session, EpisodeRow.__table__, rows)  # type: ignore[arg-type]


async def upsert_agents(session: AsyncSession, agents: Mapping[str, AgentConfig]) -> None:
    """Store each configured agent and its reward rule (read by the ``experience`` view)."""
    for agent_id, agent in agents.items():
        row = await session.get(AgentRow, agent_id)
        config = agent.model_dump(mode="json")
        if row is None:
            session.add(
                AgentRow(agent_id=agent_id, reward_combine=agent.reward.combine, config=config)
            )
        elif row.reward_combine != agent.reward.combine or row.config != config:
            row.reward_combine = agent.reward.combine
            row.config = config
            row.updated_at = utcnow()
    await session.flush()


async def fetch_experience(
    session: AsyncSession,
    agent_id: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int | None = None,
    rewarded_only: bool = False,
) -> list[Experience]:
    """Decisions of one agent with their combined rewards, oldest first.

    Args:
        session: an open session.
        agent_id: the agent.
        since: only decisions created at or after this time.
        until: only decisions created before this time.
        limit: at most this many rows, the newest ones when set.
        rewarded_only: only decisions with at least one reward.
    """
    view = experience_view
    # JSON columns come back as text and everything is decoded in a worker thread: turning
    # tens of thousands of rows into objects would otherwise stall the event loop.
    columns = [
        cast(column, Text).label(column.name) if column.name in _JSON_COLUMNS else column
        for column in view.columns
    ]
    query = select(*columns).where(view.c.agent_id == agent_id)
    if since is not None:
        query = query.where(view.c.created_at >= since)
    if until is not None:
        query = query.where(view.c.created_at < until)
    if rewarded_only:
        query = query.where(view.c.feedback_count > 0)
    if limit is not None:
        newest = query.order_by(view.c.created_at.desc(), view.c.decision_id.desc()).limit(limit)
        rows = [tuple(row) for row in await session.execute(newest)]
        rows.reverse()
    else:
        ordered = query.order_by(view.c.created_at, view.c.decision_id)
        rows = [tuple(row) for row in await session.execute(ordered)]
    return await anyio.to_thread.run_sync(_experience_rows, rows)


_JSON_COLUMNS = frozenset(
    column.name for column in experience_view.columns if isinstance(column.type, JSON)
)
_EXPERIENCE_FIELDS = tuple(column.name for column in experience_view.columns)
_TUPLE_FIELDS = frozenset({"actions", "probabilities"})


def _experience_rows(rows: Sequence[tuple[Any, ...]]) -> list[Experience]:
    """Rows of the ``experience`` view (JSON as text) as Experience objects. They were
    validated when they were written, so they are built without validating them again."""
    built = []
    for row in rows:
        fields = dict(zip(_EXPERIENCE_FIELDS, row, strict=True))
        for name in _JSON_COLUMNS:
            text_value = fields[name]
            value = None if text_value is None else orjson.loads(text_value)
            if name in _TUPLE_FIELDS and value is not None:
                value = tuple(value)
            fields[name] = value
        built.append(Experience.trusted(**fields))
    return built


async def unrewarded_decision_ids(
    session: AsyncSession,
    agent_id: str,
    *,
    before: datetime,
    since: datetime | None = None,
    limit: int = 50_000,
) -> list[uuid.UUID]:
    """Decisions of an agent that became countable before ``before`` and have no reward.

    A live or shadow decision counts from its creation, a deferred one from its activation.
    ``since`` limits the scan to decisions (or activations) at or after that time.
    """
    decision, feedback = DecisionRow, FeedbackRow
    rewarded = (
        select(feedback.id)
        .where(feedback.decision_id == decision.id, feedback.kind == "reward")
        .exists()
    )
    activated = select(feedback.id).where(
        feedback.decision_id == decision.id,
        feedback.kind == "activation",
        feedback.created_at < before,
    )
    if since is not None:
        activated = activated.where(feedback.created_at >= since)
    immediate = select(decision.id).where(
        decision.agent_id == agent_id,
        decision.mode != "deferred",
        decision.created_at < before,
        ~rewarded,
    )
    if since is not None:
        immediate = immediate.where(decision.created_at >= since)
    deferred = select(decision.id).where(
        decision.agent_id == agent_id,
        decision.mode == "deferred",
        activated.exists(),
        ~rewarded,
    )
    query = immediate.union_all(deferred).limit(limit)
    return list((await session.execute(query)).scalars())


async def next_policy_version(session: AsyncSession, agent_id: str) -> int:
    """The number the agent's next policy version gets (1 for the first)."""
    query = select(func.max(PolicyVersionRow.version)).where(PolicyVersionRow.agent_id == agent_id)
    current = (await session.execute(query)).scalar_one_or_none()
    return (current or 0) + 1


async def store_policy_version(session: AsyncSession, policy: PolicyVersion) -> None:
    """Store a policy version (its ``agent_id`` and ``version`` must be new)."""
    session.add(PolicyVersionRow(**policy.model_dump()))
    await session.flush()


def _policy(row: PolicyVersionRow) -> PolicyVersion:
    return PolicyVersion.model_validate(
        {column: getattr(row, column) for column in PolicyVersion.model_fields}
    )


async def load_policy_version(
    session: AsyncSession, agent_id: str, version: int
) -> PolicyVersion | None:
    """One version of an agent's policy, or None."""
    query = select(PolicyVersionRow).where(
        PolicyVersionRow.agent_id == agent_id, PolicyVersionRow.version == version
    )
    row = (await session.execute(query)).scalar_one_or_none()
    return None if row is None else _policy(row)


async def active_policy_version(session: AsyncSession, agent_id: str) -> PolicyVersion | None:
    """The agent's active version, or None while its baseline serves."""
    query = (
        select(PolicyVersionRow)
        .where(PolicyVersionRow.agent_id == agent_id, PolicyVersionRow.status == "active")
        .order_by(
            PolicyVersionRow.activated_at.desc().nulls_last(), PolicyVersionRow.version.desc()
        )
        .limit(1)
    )
    row = (await session.execute(query)).scalar_one_or_none()
    return None if row is None else _policy(row)


async def list_policy_versions(session: AsyncSession, agent_id: str) -> list[PolicyVersion]:
    """Every version of an agent's policy, oldest first."""
    query = (
        select(PolicyVersionRow)
        .where(PolicyVersionRow.agent_id == agent_id)
        .order_by(PolicyVersionRow.version)
    )
    return [_policy(row) for row in (await session.execute(query)).scalars()]


async def set_policy_status(
    session: AsyncSession,
    agent_id: str,
    version: int,
    status: PolicyStatus,
    reason: str | None = None,
) -> None:
    """Change a version's status; activating one records when."""
    values: dict[str, Any] = {"status": status, "status_reason": reason}
    if status == "active":
        values["activated_at"] = utcnow()
    statement = (
        update(PolicyVersionRow)
        .where(PolicyVersionRow.agent_id == agent_id, PolicyVersionRow.version == version)
        .values(**values)
    )
    await session.execute(statement)
    await notify_policy_change(session, agent_id)


# The channel runtimes LISTEN on (see agentrt.pipeline.coordination).
POLICY_CHANNEL = "agentrt_policies"


async def notify_policy_change(session: AsyncSession, agent_id: str) -> None:
    """Tell listening runtimes (PostgreSQL ``NOTIFY``, sent when the transaction commits) that
    the agent's serving versions changed; nothing on SQLite, where runtimes poll."""
    bind = session.bind
    if bind is not None and bind.dialect.name == "postgresql":
        await session.execute(
            text("SELECT pg_notify(:channel, :agent)"),
            {"channel": POLICY_CHANNEL, "agent": agent_id},
        )


async def retire_active_versions(
    session: AsyncSession, agent_id: str, *, superseded_by: int
) -> None:
    """Retire every active version of an agent other than ``superseded_by``."""
    statement = (
        update(PolicyVersionRow)
        .where(
            PolicyVersionRow.agent_id == agent_id,
            PolicyVersionRow.status == "active",
            PolicyVersionRow.version != superseded_by,
        )
        .values(status="retired", status_reason=f"superseded by v{superseded_by}")
    )
    await session.execute(statement)


async def append_strategy_update(session: AsyncSession, update_: StrategyUpdate) -> int:
    """Append a strategy update and return its id."""
    row = StrategyUpdateRow(**update_.model_dump())
    session.add(row)
    await session.flush()
    return row.id


async def insert_knowledge(session: AsyncSession, items: Sequence[Knowledge]) -> None:
    """Append knowledge rows."""
    session.add_all(KnowledgeRow(**item.model_dump()) for item in items)
    await session.flush()


async def record_metric(
    session: AsyncSession,
    name: str,
    value: float | None,
    *,
    agent_id: str | None = None,
    stage: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> None:
    """Append one operational measurement to ``metrics``."""
    session.add(
        MetricRow(
            name=name, value=value, agent_id=agent_id, stage=stage, details=dict(details or {})
        )
    )
    await session.flush()


async def count_new_rewards(
    session: AsyncSession, agent_id: str, since: datetime | None, *, limit: int
) -> int:
    """How many of the agent's decisions got a reward at or after ``since`` (all when None),
    counting at most ``limit`` (the trigger only needs to know whether it reached it)."""
    query = (
        select(FeedbackRow.decision_id)
        .join(DecisionRow, DecisionRow.id == FeedbackRow.decision_id)
        .where(DecisionRow.agent_id == agent_id, FeedbackRow.kind == "reward")
        .distinct()
        .limit(limit)
    )
    if since is not None:
        query = query.where(FeedbackRow.created_at >= since)
    counted = select(func.count()).select_from(query.subquery())
    return int((await session.execute(counted)).scalar_one())


async def last_metric(session: AsyncSession, agent_id: str, name: str) -> MetricRow | None:
    """The agent's most recent ``metrics`` row called ``name``."""
    query = (
        select(MetricRow)
        .where(MetricRow.agent_id == agent_id, MetricRow.name == name)
        .order_by(MetricRow.id.desc())
        .limit(1)
    )
    return (await session.execute(query)).scalar_one_or_none()


async def policy_with_status(
    session: AsyncSession, agent_id: str, status: PolicyStatus
) -> PolicyVersion | None:
    """The agent's newest version with ``status`` (e.g. its canary), or None."""
    query = (
        select(PolicyVersionRow)
        .where(PolicyVersionRow.agent_id == agent_id, PolicyVersionRow.status == status)
        .order_by(PolicyVersionRow.version.desc())
        .limit(1)
    )
    row = (await session.execute(query)).scalar_one_or_none()
    return None if row is None else _policy(row)


async def last_strategy_update(
    session: AsyncSession, agent_id: str, kind: str
) -> StrategyUpdate | None:
    """The agent's most recent ``strategy_updates`` row of ``kind``."""
    query = (
        select(StrategyUpdateRow)
        .where(StrategyUpdateRow.agent_id == agent_id, StrategyUpdateRow.kind == kind)
        .order_by(StrategyUpdateRow.id.desc())
        .limit(1)
    )
    row = (await session.execute(query)).scalar_one_or_none()
    if row is None:
        return None
    return StrategyUpdate.model_validate(
        {column: getattr(row, column) for column in StrategyUpdate.model_fields}
    )
