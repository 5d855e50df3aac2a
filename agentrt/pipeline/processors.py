"""The built-in processors: running statistics, context schemas and hourly summaries.

Each runs in the collector task on every batch, before the batch is written. None of them
changes the batch: they only read it and add :class:`~agentrt.schemas.Knowledge` rows, which
the collector writes after the batch commits. Contexts in particular stay exactly as they
were, because training must see what the policy saw.

State lives in memory for the runtime's lifetime, so the statistics start afresh when the
process restarts. A reward is attributed to an agent through the decisions the processor has
seen (the most recent 100,000); a reward for a decision it has not seen (made before a
restart, or very long ago) is skipped and counted in ``unattributed_rewards``.

Enable them with ``experience_configuration: {processing: {methods: [normalization,
feature_extraction, temporal_aggregation]}}``.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from agentrt.config import AgentRTConfig
from agentrt.errors import InvalidInputError
from agentrt.pipeline.collector import KnownDecisions
from agentrt.plugins import Plugin
from agentrt.schemas import ContextValue, Decision, Episode, Knowledge
from agentrt.types import ExperienceBatch

__all__ = [
    "FeatureExtractionProcessor",
    "NormalizationProcessor",
    "RunningStats",
    "TemporalAggregationProcessor",
    "plugins",
]

_KNOWN_DECISIONS = 100_000  # remembered per processor, to attribute later rewards to agents
_MAX_KEYS = 256  # context keys tracked per agent: a context keyed by ids must not exhaust memory
_MAX_LIST = 32  # leading elements of a list summarised, each as key[i]
_MAX_DISTINCT = 1000  # distinct strings counted exactly per key, then "1000+"
_MAX_VALUE_CHARS = 200  # strings are counted by their first 200 characters
_TOP_VALUES = 5
_WHITESPACE = re.compile(r"\s")
_HOUR = timedelta(hours=1)


class _Event(NamedTuple):
    at: datetime
    agent_id: str
    decision: Decision | None
    reward: float


def _timeline(batch: ExperienceBatch, known: KnownDecisions) -> tuple[list[_Event], int]:
    """The batch's decisions and rewards with their agent, oldest first, and the rewards skipped.

    A reward recorded at the same instant as its decision counts after it.
    """
    for decision in batch.decisions:
        known.add(decision.id, decision.agent_id, decision.mode)
    events = [_Event(d.created_at, d.agent_id, d, 0.0) for d in batch.decisions]
    skipped = 0
    for feedback in batch.feedback:
        if feedback.kind != "reward" or feedback.reward is None:
            continue
        seen = known.get(feedback.decision_id)
        if seen is None or not math.isfinite(feedback.reward):
            skipped += 1
        else:
            events.append(_Event(feedback.created_at, seen[0], None, feedback.reward))
    events.sort(key=lambda event: event.at)  # stable: decisions stay ahead of their rewards
    return events, skipped


def _check_every(every: int) -> int:
    if every < 1:
        raise InvalidInputError("every", every, "must be at least 1")
    return every


def _with_knowledge(batch: ExperienceBatch, found: list[Knowledge]) -> ExperienceBatch:
    return batch._replace(knowledge=[*batch.knowledge, *found]) if found else batch


def _number(value: object) -> float | None:
    """A finite float for a number (booleans are not numbers here), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


@dataclass(slots=True)
class RunningStats:
    """Welford's running count, mean and variance, with the minimum and maximum.

    The variance is the population variance (numpy's default ``ddof=0``).
    """

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0
    minimum: float = math.inf
    maximum: float = -math.inf

    def add(self, value: float) -> None:
        """Count one value."""
        self.count += 1
        delta = value - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (value - self.mean)
        self.minimum = min(self.minimum, value)
        self.maximum = max(self.maximum, value)

    def summary(self) -> dict[str, float | int | None]:
        """``count``, ``mean``, ``std``, ``min`` and ``max`` as strict JSON.

        A figure is None while nothing was counted, and where values near the float limit
        overflowed it (strict JSON has no NaN or infinity, and PostgreSQL refuses them).
        """
        variance = self.m2 / self.count if self.count else math.nan
        return {
            "count": self.count,
            "mean": _finite(self.mean) if self.count else None,
            "std": math.sqrt(variance) if variance >= 0 and math.isfinite(variance) else None,
            "min": _finite(self.minimum),
            "max": _finite(self.maximum),
        }


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


@dataclass(slots=True)
class _Span:
    """An agent's decisions counted so far and the ``created_at`` range they cover."""

    decisions: int = 0
    start: datetime | None = None
    end: datetime | None = None

    def add(self, at: datetime) -> int:
        self.decisions += 1
        self.start = at if self.start is None else min(self.start, at)
        self.end = at if self.end is None else max(self.end, at)
        return self.decisions


# --- normalization ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Moments:
    span: _Span = field(default_factory=_Span)
    context: dict[str, RunningStats] = field(default_factory=dict)
    reward: RunningStats = field(default_factory=RunningStats)
    due: bool = False  # a multiple of `every` was reached; its row waits for the rewards


class NormalizationProcessor:
    """Running statistics of every numeric context field and of rewards, per agent.

    Numbers count, booleans do not; a list counts element by element as ``key[i]`` for its
    first 32 elements. Every ``every`` decisions of an agent it emits a ``running_statistics``
    row: ``{"context": {key: {count, mean, std, min, max}}, "reward": {...}, "decisions": n}``
    over everything seen since the runtime started, with the ``created_at`` range of its
    decisions as the window. Rewards are those of ``reward`` feedback, taken in time order with
    the decisions: a row holds the rewards that arrived before the agent's next decision or, if
    none, by the end of the batch, so a reward recorded with its decision is in.

    Args:
        every: decisions of one agent between two rows
            (``experience_configuration.collection.batch_size``).

    Attributes:
        unattributed_rewards: rewards skipped because their decision was not seen.
    """

    def __init__(self, every: int) -> None:
        self.every = _check_every(every)
        self.unattributed_rewards = 0
        self._known = KnownDecisions(_KNOWN_DECISIONS)
        self._agents: dict[str, _Moments] = {}

    @classmethod
    def from_config(cls, config: AgentRTConfig) -> NormalizationProcessor:
        """The processor for ``config.experience_configuration``."""
        return cls(config.experience_configuration.collection.batch_size)

    def process(self, batch: ExperienceBatch) -> ExperienceBatch:
        """Update the statistics; add a row for each agent that reached a multiple of ``every``."""
        events, skipped = _timeline(batch, self._known)
        self.unattributed_rewards += skipped
        found: list[Knowledge] = []
        for event in events:
            state = self._agents.setdefault(event.agent_id, _Moments())
            if event.decision is None:
                state.reward.add(event.reward)
                continue
            if state.due:
                found.append(self._snapshot(event.agent_id, state))
            for key, value in _numeric_fields(event.decision.context):
                stats = state.context.get(key)
                if stats is None:
                    if len(state.context) >= _MAX_KEYS:
                        continue
                    stats = state.context[key] = RunningStats()
                stats.add(value)
            state.due = state.span.add(event.at) % self.every == 0
        found.extend(self._snapshot(agent_id, s) for agent_id, s in self._agents.items() if s.due)
        return _with_knowledge(batch, found)

    @staticmethod
    def _snapshot(agent_id: str, state: _Moments) -> Knowledge:
        state.due = False
        return Knowledge(
            agent_id=agent_id,
            kind="running_statistics",
            payload={
                "context": {key: stats.summary() for key, stats in state.context.items()},
                "reward": state.reward.summary(),
                "decisions": state.span.decisions,
            },
            window_start=state.span.start,
            window_end=state.span.end,
        )


def _numeric_fields(context: dict[str, ContextValue]) -> list[tuple[str, float]]:
    found: list[tuple[str, float]] = []
    for key, value in context.items():
        if isinstance(value, list):
            for index, item in enumerate(value[:_MAX_LIST]):
                number = _number(item)
                if number is not None:
                    found.append((f"{key}[{index}]", number))
            continue
        number = _number(value)
        if number is not None:
            found.append((key, number))
    return found


# --- feature extraction ----------------------------------------------------------------------


def _value_type(value: ContextValue) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "text" if _WHITESPACE.search(value) else "string"
    return "list"


@dataclass(slots=True)
class _KeyProfile:
    present: int = 0
    types: Counter[str] = field(default_factory=Counter)
    families: set[str] = field(default_factory=set)
    values: dict[str, int] = field(default_factory=dict)
    overflow: bool = False

    def describe(self, decisions: int) -> dict[str, Any]:
        found: dict[str, Any] = {
            "types": dict(self.types),
            "presence": self.present / decisions if decisions else 0.0,
        }
        if self.values:
            found["distinct"] = f"{_MAX_DISTINCT}+" if self.overflow else len(self.values)
            ranked = sorted(self.values.items(), key=lambda item: (-item[1], item[0]))
            found["top"] = [[value, count] for value, count in ranked[:_TOP_VALUES]]
        return found


@dataclass(slots=True)
class _Schema:
    span: _Span = field(default_factory=_Span)
    keys: dict[str, _KeyProfile] = field(default_factory=dict)
    type_changes: list[dict[str, Any]] = field(default_factory=list)


class FeatureExtractionProcessor:
    """Discovers the schema of each agent's contexts and flags keys whose type changed.

    For each key it counts the observed types (``number``, ``bool``, ``string``, ``text`` for
    strings with whitespace, ``list``) and the presence rate (decisions where the key holds a
    value other than None). For strings it counts distinct values (exactly up to 1000, then
    ``"1000+"``; values beyond the first 1000 distinct ones are not counted) and reports the
    top 5 by count. A key that receives a type it never had before (a number that became a
    string, say) is listed in ``type_changes``, which silently degrades learning; ``string``
    and ``text`` count as one type there. Every ``every`` decisions of an agent it emits a
    ``feature_schema`` row ``{"decisions": n, "keys": {...}, "type_changes": [...]}`` over
    everything seen since the runtime started.

    Args:
        every: decisions of one agent between two rows
            (``experience_configuration.collection.batch_size``).
    """

    def __init__(self, every: int) -> None:
        self.every = _check_every(every)
        self._agents: dict[str, _Schema] = {}

    @classmethod
    def from_config(cls, config: AgentRTConfig) -> FeatureExtractionProcessor:
        """The processor for ``config.experience_configuration``."""
        return cls(config.experience_configuration.collection.batch_size)

    def process(self, batch: ExperienceBatch) -> ExperienceBatch:
        """Profile the contexts; add a row for each agent that reached a multiple of ``every``."""
        found: list[Knowledge] = []
        for decision in sorted(batch.decisions, key=lambda d: d.created_at):
            schema = self._agents.setdefault(decision.agent_id, _Schema())
            for key, value in decision.context.items():
                self._observe(schema, decision, key, value)
            if schema.span.add(decision.created_at) % self.every == 0:
                found.append(self._snapshot(decision.agent_id, schema))
        return _with_knowledge(batch, found)

    @staticmethod
    def _observe(schema: _Schema, decision: Decision, key: str, value: ContextValue) -> None:
        kind = _value_type(value)
        if kind is None:
            return
        profile = schema.keys.get(key)
        if profile is None:
            if len(schema.keys) >= _MAX_KEYS:
                return
            profile = schema.keys[key] = _KeyProfile()
        family = "string" if kind == "text" else kind
        if profile.families and family not in profile.families:
            schema.type_changes.append(
                {
                    "key": key,
                    "from": sorted(profile.families),
                    "to": family,
                    "decision_id": str(decision.id),
                    "at": decision.created_at.isoformat(),
                }
            )
        profile.families.add(family)
        profile.present += 1
        profile.types[kind] += 1
        if isinstance(value, str):
            text = value[:_MAX_VALUE_CHARS]
            if text in profile.values:
                profile.values[text] += 1
            elif len(profile.values) < _MAX_DISTINCT:
                profile.values[text] = 1
            else:
                profile.overflow = True

    @staticmethod
    def _snapshot(agent_id: str, schema: _Schema) -> Knowledge:
        decisions = schema.span.decisions
        return Knowledge(
            agent_id=agent_id,
            kind="feature_schema",
            payload={
                "decisions": decisions,
                "keys": {key: p.describe(decisions) for key, p in schema.keys.items()},
                "type_changes": list(schema.type_changes),
            },
            window_start=schema.span.start,
            window_end=schema.span.end,
        )


# --- temporal aggregation --------------------------------------------------------------------


def _hour_of(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


@dataclass(slots=True)
class _Hour:
    start: datetime
    decisions: int = 0
    rewards: int = 0
    reward_sum: float = 0.0
    late: int = 0


class TemporalAggregationProcessor:
    """Hourly activity per agent, and a summary of every finished episode.

    Per agent and UTC hour it counts decisions (by their ``created_at``) and rewards (by the
    feedback's ``created_at``) and sums the rewards. When a record of a later hour arrives for
    the agent, the hour is closed and an ``hourly_summary`` row is emitted: ``{"hour",
    "decisions", "rewards", "reward_sum", "reward_mean", "late"}`` with the hour as window.
    A record older than the agent's open hour counts in the open hour and in ``late``, so no
    hour is summarised twice. The open hour is not emitted when the runtime stops.

    Every finished episode (``completed`` or ``failed``) gives an ``episode_summary`` row:
    ``{"episode_id", "return", "length", "status", "duration_seconds"}``.

    Attributes:
        unattributed_rewards: rewards skipped because their decision was not seen.
    """

    def __init__(self) -> None:
        self.unattributed_rewards = 0
        self._known = KnownDecisions(_KNOWN_DECISIONS)
        self._open: dict[str, _Hour] = {}

    @classmethod
    def from_config(cls, config: AgentRTConfig) -> TemporalAggregationProcessor:
        """The processor; it needs nothing from the configuration."""
        del config
        return cls()

    def process(self, batch: ExperienceBatch) -> ExperienceBatch:
        """Count the batch into the open hours; add the closed hours and finished episodes."""
        events, skipped = _timeline(batch, self._known)
        self.unattributed_rewards += skipped
        found: list[Knowledge] = []
        for event in events:
            hour = _hour_of(event.at)
            bucket = self._open.get(event.agent_id)
            if bucket is None or hour > bucket.start:
                if bucket is not None:
                    found.append(_hourly_summary(event.agent_id, bucket))
                bucket = self._open[event.agent_id] = _Hour(hour)
            elif hour < bucket.start:
                bucket.late += 1
            if event.decision is not None:
                bucket.decisions += 1
            else:
                bucket.rewards += 1
                bucket.reward_sum += event.reward
        found.extend(_episode_summary(e) for e in batch.episodes if e.status != "running")
        return _with_knowledge(batch, found)


def _hourly_summary(agent_id: str, bucket: _Hour) -> Knowledge:
    return Knowledge(
        agent_id=agent_id,
        kind="hourly_summary",
        payload={
            "hour": bucket.start.isoformat(),
            "decisions": bucket.decisions,
            "rewards": bucket.rewards,
            "reward_sum": bucket.reward_sum,
            "reward_mean": bucket.reward_sum / bucket.rewards if bucket.rewards else None,
            "late": bucket.late,
        },
        window_start=bucket.start,
        window_end=bucket.start + _HOUR,
    )


def _episode_summary(episode: Episode) -> Knowledge:
    duration = None
    if episode.ended_at is not None:
        duration = (episode.ended_at - episode.started_at).total_seconds()
    return Knowledge(
        agent_id=episode.agent_id,
        kind="episode_summary",
        payload={
            "episode_id": str(episode.id),
            "return": episode.episode_return,
            "length": episode.length,
            "status": episode.status,
            "duration_seconds": duration,
        },
        window_start=episode.started_at,
        window_end=episode.ended_at,
    )


plugins = [
    Plugin(
        "processor",
        "normalization",
        NormalizationProcessor.from_config,
        "running statistics of numeric context fields and rewards",
    ),
    Plugin(
        "processor",
        "feature_extraction",
        FeatureExtractionProcessor.from_config,
        "schema of contexts: types, presence, values, type changes",
    ),
    Plugin(
        "processor",
        "temporal_aggregation",
        TemporalAggregationProcessor.from_config,
        "hourly summaries per agent and a summary of each episode",
    ),
]
