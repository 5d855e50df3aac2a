"""The database schema: typed SQLAlchemy models and the ``experience`` view.

Column names are a public interface (analysts query them with SQL); change them only with a
migration and a note in the README.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    Double,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from agentrt.clock import utcnow

__all__ = [
    "DECISION_MODES",
    "EXPERIENCE_VIEW_SQL",
    "FEEDBACK_KINDS",
    "POLICY_STATUSES",
    "AgentRow",
    "Base",
    "DecisionRow",
    "EpisodeRow",
    "FeedbackRow",
    "KnowledgeRow",
    "MetricRow",
    "PolicyVersionRow",
    "StrategyUpdateRow",
    "UTCDateTime",
    "experience_view",
    "metadata",
]

# Stable constraint names, so that Alembic (and SQLite batch migrations) can address them.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

DECISION_MODES = ("live", "shadow", "deferred")
FEEDBACK_KINDS = ("reward", "activation")
POLICY_STATUSES = ("candidate", "canary", "active", "retired", "rejected", "failed")
EPISODE_STATUSES = ("running", "completed", "failed")


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always stored and returned as an aware UTC datetime.

    Naive datetimes are refused (their zone is unknowable); SQLite, which keeps no zone, gets
    UTC values and hands them back with the UTC zone attached.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: pass an aware datetime (UTC)")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# Python None is stored as SQL NULL, so that `column IS NULL` works for analysts.
JSONDocument = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    metadata = metadata
    type_annotation_map = {  # noqa: RUF012 (SQLAlchemy reads this class attribute)
        datetime: UTCDateTime(),
        uuid.UUID: Uuid(as_uuid=True),
        dict[str, Any]: JSONDocument,
        list[Any]: JSONDocument,
    }


class AgentRow(Base):
    """One row per configured agent; the ``experience`` view reads its reward rule from here."""

    __tablename__ = "agents"
    __table_args__ = (
        CheckConstraint(
            _in("reward_combine", ("last", "sum", "mean", "max")), name="reward_combine"
        ),
    )

    agent_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    reward_combine: Mapped[str] = mapped_column(String(8), default="last")
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class DecisionRow(Base):
    """Append-only: one row per decision (or recorded execution)."""

    __tablename__ = "decisions"
    __table_args__ = (
        CheckConstraint(_in("mode", DECISION_MODES), name="mode"),
        CheckConstraint(
            "propensity IS NULL OR (propensity > 0 AND propensity <= 1)", name="propensity"
        ),
        Index(None, "agent_id", "created_at"),
        Index(None, "episode_id", "step"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    agent_id: Mapped[str] = mapped_column(String(128))
    episode_id: Mapped[uuid.UUID | None]
    step: Mapped[int | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    context: Mapped[dict[str, Any]]
    actions: Mapped[list[Any]]
    action: Mapped[str] = mapped_column(String(128))
    action_index: Mapped[int]
    propensity: Mapped[float | None]
    probabilities: Mapped[list[Any] | None]
    policy_version: Mapped[int | None]
    exploration: Mapped[dict[str, Any] | None]
    mode: Mapped[str] = mapped_column(String(16), default="live")
    policy_action: Mapped[str | None] = mapped_column(String(128))


class FeedbackRow(Base):
    """Append-only: rewards (and activations of deferred decisions), joined by decision id.

    There is deliberately no foreign key to ``decisions``: a reward may arrive, from another
    process, before its decision's batch is written, and buffered mode keeps such orphans.
    """

    __tablename__ = "feedback"
    __table_args__ = (
        CheckConstraint(_in("kind", FEEDBACK_KINDS), name="kind"),
        Index(None, "decision_id", "created_at"),
        Index(None, "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    decision_id: Mapped[uuid.UUID]
    kind: Mapped[str] = mapped_column(String(16), default="reward")
    reward: Mapped[float | None]
    outcome: Mapped[dict[str, Any] | None]
    source: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class EpisodeRow(Base):
    """One row per finished episode: its return, length and status."""

    __tablename__ = "episodes"
    __table_args__ = (
        CheckConstraint(_in("status", EPISODE_STATUSES), name="status"),
        Index(None, "agent_id", "started_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    agent_id: Mapped[str] = mapped_column(String(128))
    started_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]
    status: Mapped[str] = mapped_column(String(16))
    episode_return: Mapped[float | None]
    length: Mapped[int] = mapped_column(default=0)
    error: Mapped[str | None] = mapped_column(Text)


class KnowledgeRow(Base):
    """What the KnowledgeExtractor learned about a window of experience."""

    __tablename__ = "knowledge"
    __table_args__ = (Index(None, "agent_id", "kind", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    agent_id: Mapped[str] = mapped_column(String(128))
    window_start: Mapped[datetime | None]
    window_end: Mapped[datetime | None]
    kind: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class PolicyVersionRow(Base):
    """A versioned policy: its artifact (safetensors bytes), checksum, metrics and validation."""

    __tablename__ = "policy_versions"
    __table_args__ = (
        UniqueConstraint("agent_id", "version"),
        CheckConstraint(_in("status", POLICY_STATUSES), name="status"),
        CheckConstraint("version > 0", name="version_positive"),
        Index(None, "agent_id", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    agent_id: Mapped[str] = mapped_column(String(128))
    version: Mapped[int]
    parent_version: Mapped[int | None]
    learner: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16), default="candidate")
    status_reason: Mapped[str | None] = mapped_column(Text)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    validation: Mapped[dict[str, Any] | None]
    artifact_metadata: Mapped[dict[str, Any]] = mapped_column(default=dict)
    artifact: Mapped[bytes] = mapped_column(LargeBinary)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    activated_at: Mapped[datetime | None]


class StrategyUpdateRow(Base):
    """Every change of strategy: what it was, what it became, and why."""

    __tablename__ = "strategy_updates"
    __table_args__ = (Index(None, "agent_id", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    agent_id: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(32))
    previous: Mapped[dict[str, Any]]
    updated: Mapped[dict[str, Any]]
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class MetricRow(Base):
    """Operational measurements: learning cycles, stage failures, fallbacks, ingest counters."""

    __tablename__ = "metrics"
    __table_args__ = (Index(None, "agent_id", "name", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    agent_id: Mapped[str | None] = mapped_column(String(128))
    stage: Mapped[str | None] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(128))
    value: Mapped[float | None]
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# The view as a selectable for queries; it lives in its own MetaData so that neither
# create_all nor Alembic's autogenerate mistakes it for a table.
experience_view = Table(
    "experience",
    MetaData(),
    Column("decision_id", Uuid(as_uuid=True)),
    Column("agent_id", String(128)),
    Column("episode_id", Uuid(as_uuid=True)),
    Column("step", Integer),
    Column("created_at", UTCDateTime()),
    Column("mode", String(16)),
    Column("context", JSONDocument),
    Column("actions", JSONDocument),
    Column("action", String(128)),
    Column("action_index", Integer),
    Column("propensity", Double),
    Column("probabilities", JSONDocument),
    Column("policy_version", Integer),
    Column("exploration", JSONDocument),
    Column("policy_action", String(128)),
    Column("reward", Double),
    Column("outcome", JSONDocument),
    Column("feedback_count", Integer),
    Column("rewarded_at", UTCDateTime()),
    Column("activated_at", UTCDateTime()),
)

# One row per decision with its combined reward. The combination rule is the agent's
# `reward.combine` (stored in `agents`); `activated_at` is NULL for a deferred decision that
# the application has not activated yet; `propensity` is NULL where it is unknown.
#
# Each feedback value is a correlated subquery on the index feedback(decision_id, created_at),
# so a query reads the feedback of the rows it returns and no other: a filter (agent, decision
# ids, time) or an ORDER BY ... LIMIT on the view costs what its rows cost, on both SQLite and
# PostgreSQL. (Joining decisions to aggregates of the whole feedback table, as revision 0001
# did, aggregated all of it for any query; LATERAL would suit PostgreSQL, but SQLite has none.)
# The reward is one subquery for "last" (the newest reward by created_at, then id, as for
# `outcome`) and one for the aggregate rules, because PostgreSQL evaluates, and JIT-compiles,
# every subquery of the expression wherever a query mentions `reward`. This text is frozen in
# migration 0002: change it only together with a new migration.
EXPERIENCE_VIEW_SQL = """
CREATE VIEW experience AS
SELECT d.id AS decision_id,
       d.agent_id,
       d.episode_id,
       d.step,
       d.created_at,
       d.mode,
       d.context,
       d.actions,
       d.action,
       d.action_index,
       d.propensity,
       d.probabilities,
       d.policy_version,
       d.exploration,
       d.policy_action,
       CASE WHEN COALESCE(a.reward_combine, 'last') IN ('sum', 'mean', 'max')
           THEN (SELECT CASE a.reward_combine
                            WHEN 'sum' THEN SUM(f.reward)
                            WHEN 'mean' THEN AVG(f.reward)
                            ELSE MAX(f.reward)
                        END
                 FROM feedback f
                 WHERE f.decision_id = d.id AND f.kind = 'reward')
           ELSE (SELECT f.reward FROM feedback f
                 WHERE f.decision_id = d.id AND f.kind = 'reward'
                 ORDER BY f.created_at DESC, f.id DESC LIMIT 1)
       END AS reward,
       (SELECT f.outcome FROM feedback f
        WHERE f.decision_id = d.id AND f.kind = 'reward'
        ORDER BY f.created_at DESC, f.id DESC LIMIT 1) AS outcome,
       (SELECT COUNT(*) FROM feedback f
        WHERE f.decision_id = d.id AND f.kind = 'reward') AS feedback_count,
       (SELECT MAX(f.created_at) FROM feedback f
        WHERE f.decision_id = d.id AND f.kind = 'reward') AS rewarded_at,
       CASE WHEN d.mode = 'deferred'
           THEN (SELECT MIN(f.created_at) FROM feedback f
                 WHERE f.decision_id = d.id AND f.kind = 'activation')
           ELSE d.created_at
       END AS activated_at
FROM decisions d
LEFT JOIN agents a ON a.agent_id = d.agent_id
"""
