"""The built-in analyzers: statistics, exploration health, trends, anomalies, patterns, time.

Each analyzer reads one window of an agent's experience (rows oldest first) and returns one
:class:`~agentrt.schemas.Knowledge` row whose window is the ``created_at`` range of the rows,
or nothing for an empty window. The work is done by pure functions that return the payload;
the analyzer classes only carry their settings from the configuration. Payloads are strict
JSON: a figure that cannot be computed (too few values, no spread) is None, never NaN.

A reward counts when it is a finite number; decisions still waiting for one count as
decisions but not in reward figures. ``latency_ms`` and ``cost`` are read from the outcome
when they are numbers.

Enable them with ``experience_configuration: {analysis: {methods: [action_statistics,
exploration_health, trend_analysis, anomaly_detection, pattern_recognition,
temporal_aggregation]}}``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple

import numpy as np
import numpy.typing as npt

from agentrt.config import AgentRTConfig, ChangeDetectionConfig
from agentrt.errors import InvalidInputError
from agentrt.patterns import (
    ChangeDetector,
    detect_changes,
    make_detector,
    mean_interval,
    mine_rules,
    student_t_quantile,
    student_t_sf,
)
from agentrt.plugins import Plugin
from agentrt.schemas import Experience, Knowledge

__all__ = [
    "ActionStatisticsAnalyzer",
    "AnomalyAnalyzer",
    "ExplorationHealthAnalyzer",
    "PatternAnalyzer",
    "RobustScores",
    "TemporalAnalyzer",
    "TrendAnalyzer",
    "action_statistics",
    "anomalies",
    "exploration_health",
    "plugins",
    "robust_z",
    "temporal_summary",
    "trend",
]
_MAX_IDS = 100  # decision ids listed per anomaly metric
_MAX_ALARMS = 50
_MAX_POINTS = 100  # points of the rolling mean
_MAX_HOURS = 168  # calendar hours listed: the most recent week
_MEAN_AD_SCALE = math.sqrt(math.pi / 2.0)  # mean absolute deviation of N(0, 1) is 1/this
_METRICS = ("reward", "latency_ms", "cost")


def _finite(value: float | None) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _reward(row: Experience) -> float | None:
    return _finite(row.reward)


def _outcome(row: Experience, key: str) -> float | None:
    value = (row.outcome or {}).get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return _finite(float(value))
    except OverflowError:
        return None


def _metric(row: Experience, metric: str) -> float | None:
    return _reward(row) if metric == "reward" else _outcome(row, metric)


def _utc(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def _mean(values: Sequence[float]) -> float | None:
    # Divided first: a sum of values near the float limit would overflow.
    return _finite(math.fsum(v / len(values) for v in values)) if values else None


def _sum(values: Sequence[float]) -> float | None:
    try:
        return _finite(math.fsum(values))
    except OverflowError:
        return None


def _knowledge(
    agent_id: str, kind: str, payload: dict[str, Any], rows: Sequence[Experience]
) -> Knowledge:
    return Knowledge(
        agent_id=agent_id,
        kind=kind,
        payload=payload,
        window_start=_utc(rows[0].created_at),
        window_end=_utc(rows[-1].created_at),
    )


# --- action statistics -----------------------------------------------------------------------


def _offered(rows: Sequence[Experience]) -> list[str]:
    """Every action offered or chosen in the window, in order of first appearance."""
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row.actions))
        seen[row.action] = None
    return list(seen)


def action_statistics(rows: Sequence[Experience], confidence: float) -> dict[str, Any]:
    """Per action: how often it was chosen and how well it did.

    Actions offered but never chosen are listed with a count of 0. Actions are ordered by
    count, then name.

    Args:
        rows: the window, oldest first.
        confidence: the level of the reward intervals.

    Returns:
        ``{"decisions", "rewarded", "confidence", "actions": {action: {"count", "share",
        "rewarded", "mean_reward", "ci_low", "ci_high", "interval", "mean_latency_ms",
        "mean_cost"}}}``.
    """
    by_action: dict[str, list[Experience]] = {action: [] for action in _offered(rows)}
    for row in rows:
        by_action[row.action].append(row)
    order = sorted(by_action, key=lambda action: (-len(by_action[action]), action))
    actions: dict[str, Any] = {}
    for action in order:
        mine = by_action[action]
        rewards = [r for r in map(_reward, mine) if r is not None]
        interval = mean_interval(rewards, confidence) if rewards else None
        latencies = [v for v in (_outcome(row, "latency_ms") for row in mine) if v is not None]
        costs = [v for v in (_outcome(row, "cost") for row in mine) if v is not None]
        actions[action] = {
            "count": len(mine),
            "share": len(mine) / len(rows) if rows else 0.0,
            "rewarded": len(rewards),
            "mean_reward": _finite(interval.mean) if interval else None,
            "ci_low": interval.low if interval else None,
            "ci_high": interval.high if interval else None,
            "interval": interval.method if interval else None,
            "mean_latency_ms": _mean(latencies),
            "mean_cost": _mean(costs),
        }
    return {
        "decisions": len(rows),
        "rewarded": sum(a["rewarded"] for a in actions.values()),
        "confidence": confidence,
        "actions": actions,
    }


# --- exploration health ----------------------------------------------------------------------


def exploration_health(rows: Sequence[Experience]) -> dict[str, Any]:
    """Whether the logged data can still teach a learner something.

    Entropy is that of the chosen actions' frequencies, in bits; ``normalized_entropy``
    divides it by ``log2(k)`` for the ``k`` actions offered in the window (None when k < 2).
    ``coverage`` is the share of offered actions chosen at least once. Shares of unknown
    (None, as in shadow mode) and deterministic (1.0) propensities are over all decisions.
    ``reward_staleness_seconds`` runs from the newest reward to the newest decision (0 when
    a reward is newer; None without rewards).

    Args:
        rows: the window, oldest first; must not be empty.

    Returns:
        ``{"decisions", "actions_offered", "actions_chosen", "entropy_bits",
        "normalized_entropy", "coverage", "min_propensity", "unknown_propensity_share",
        "deterministic_share", "rewarded_share", "reward_staleness_seconds"}``.
    """
    n = len(rows)
    offered = _offered(rows)
    counts = Counter(row.action for row in rows)
    entropy = -math.fsum(c / n * math.log2(c / n) for c in counts.values()) + 0.0
    propensities = [p for p in (_finite(row.propensity) for row in rows) if p is not None]
    rewarded_at = [_utc(row.rewarded_at) for row in rows if row.rewarded_at is not None]
    newest = max(_utc(row.created_at) for row in rows)
    staleness = None
    if rewarded_at:
        staleness = max(0.0, (newest - max(rewarded_at)).total_seconds())
    return {
        "decisions": n,
        "actions_offered": len(offered),
        "actions_chosen": len(counts),
        "entropy_bits": entropy,
        "normalized_entropy": entropy / math.log2(len(offered)) if len(offered) > 1 else None,
        "coverage": len(counts) / len(offered),
        "min_propensity": min(propensities) if propensities else None,
        "unknown_propensity_share": (n - len(propensities)) / n,
        "deterministic_share": sum(p >= 1.0 for p in propensities) / n,
        "rewarded_share": sum(_reward(row) is not None for row in rows) / n,
        "reward_staleness_seconds": staleness,
    }


# --- trend -----------------------------------------------------------------------------------


def _slope(rewards: npt.NDArray[np.float64], confidence: float) -> dict[str, Any] | None:
    n = len(rewards)
    if n < 3:
        return None
    x = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
    sxx = float(x @ x)
    with np.errstate(over="ignore", invalid="ignore"):  # rewards near the float limit
        centred = rewards - float(np.sum(rewards / n))
        slope = float(x @ centred) / sxx
        residual = centred - slope * x
        error = math.sqrt(float(residual @ residual) / (n - 2) / sxx)
    if not (math.isfinite(slope) and math.isfinite(error)):
        return None
    q = student_t_quantile(confidence, n - 2)
    p_value = 2.0 * student_t_sf(abs(slope) / error, n - 2) if error > 0 else float(slope == 0)
    return {
        "per_1000": _finite(slope * 1000.0),
        "ci_low": _finite((slope - q * error) * 1000.0),
        "ci_high": _finite((slope + q * error) * 1000.0),
        "p_value": min(1.0, p_value),
        "confidence": confidence,
    }


def trend(
    rows: Sequence[Experience],
    detector: ChangeDetector,
    *,
    confidence: float = 0.95,
    window: int = 50,
) -> dict[str, Any]:
    """How the reward moves over the window, and where its mean shifted.

    The reward stream is the rewarded decisions in ``created_at`` order; positions
    (``index``) count along it. The rolling mean over ``window`` rewards (fewer when the
    stream is shorter) is downsampled to at most 100 ``[index, mean]`` points. The slope is
    the least-squares fit of reward on position, per 1000 decisions, with a t interval.
    Each alarm gives where the detector fired and where the change began, with the mean
    reward from the previous change (or the start) to this one and from this one to the next
    (or the end); at most 50 alarms are listed.

    Args:
        rows: the window, oldest first.
        detector: the change detector to run over the stream.
        confidence: the level of the slope interval.
        window: rewards per rolling mean.

    Returns:
        ``{"rewarded", "mean_reward", "rolling_mean": {"window", "points"}, "slope":
        {"per_1000", "ci_low", "ci_high", "p_value", "confidence"} or None (fewer than 3
        rewards), "alarms": [{"index", "decision_id", "at", "direction", "change_index",
        "change_decision_id", "change_at", "mean_before", "mean_after"}], "alarm_count"}``.

    Raises:
        InvalidInputError: ``window`` is less than 1.
    """
    if window < 1:
        raise InvalidInputError("window", window, "must be at least 1")
    rewarded = [row for row in rows if _reward(row) is not None]
    rewards = np.array([row.reward for row in rewarded], dtype=np.float64)
    n = len(rewards)
    width = min(window, n)
    points: list[list[float | None]] = []
    if n:
        with np.errstate(over="ignore", invalid="ignore"):
            rolling = np.convolve(rewards, np.full(width, 1.0 / width), mode="valid")
        keep = np.unique(np.linspace(0, len(rolling) - 1, min(len(rolling), _MAX_POINTS)).round())
        points = [[int(i) + width - 1, _finite(float(rolling[int(i)]))] for i in keep]
    changes = detect_changes(rewards, detector)
    starts = [0, *(change.start for change in changes), n]
    alarms = []
    for k, change in enumerate(changes[:_MAX_ALARMS]):
        fired, began = rewarded[change.position], rewarded[min(change.start, n - 1)]
        alarms.append(
            {
                "index": change.position,
                "decision_id": str(fired.decision_id),
                "at": _utc(fired.created_at).isoformat(),
                "direction": change.direction,
                "change_index": change.start,
                "change_decision_id": str(began.decision_id),
                "change_at": _utc(began.created_at).isoformat(),
                "mean_before": _mean(rewards[starts[k] : starts[k + 1]].tolist()),
                "mean_after": _mean(rewards[starts[k + 1] : starts[k + 2]].tolist()),
            }
        )
    return {
        "rewarded": n,
        "mean_reward": _mean(rewards.tolist()),
        "rolling_mean": {"window": width, "points": points},
        "slope": _slope(rewards, confidence),
        "alarms": alarms,
        "alarm_count": len(changes),
    }


# --- anomalies -------------------------------------------------------------------------------


class RobustScores(NamedTuple):
    """Robust z-scores of an array, with the centre and scale they used.

    Attributes:
        z: one score per value.
        median: the median.
        mad: the median absolute deviation from the median.
        scale: ``mad``, ``mean_absolute_deviation`` (the fallback when the MAD is 0), or
            None when every value equals the median (all scores are 0).
    """

    z: npt.NDArray[np.float64]
    median: float
    mad: float
    scale: Literal["mad", "mean_absolute_deviation"] | None


def robust_z(values: npt.ArrayLike) -> RobustScores:
    """Modified z-scores ``0.6745·(x − median)/MAD`` (Iglewicz and Hoaglin).

    When more than half the values equal the median the MAD is 0; the scale then falls back
    to the mean absolute deviation from the median, ``z = (x − median)/(1.2533·MeanAD)``
    (1.2533 = √(π/2) makes both scales estimate the standard deviation of normal data). If
    that is 0 as well, every value equals the median and every score is 0.

    Raises:
        InvalidInputError: ``values`` is empty.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise InvalidInputError("values", x.tolist(), "need at least one value")
    # A spread near the float limit may overflow to an infinite score, which is still flagged.
    with np.errstate(over="ignore", invalid="ignore"):
        median = float(np.median(x))
        distance = np.abs(x - median)
        mad = float(np.median(distance))
        if mad > 0.0:
            return RobustScores(0.6745 * (x - median) / mad, median, mad, "mad")
        mean_ad = float(np.mean(distance))
        if mean_ad > 0.0:
            z = (x - median) / (_MEAN_AD_SCALE * mean_ad)
            return RobustScores(z, median, mad, "mean_absolute_deviation")
    return RobustScores(np.zeros_like(x), median, mad, None)


def anomalies(rows: Sequence[Experience], threshold: float) -> dict[str, Any]:
    """Decisions whose reward, ``latency_ms`` or ``cost`` is far from the rest.

    A value is flagged when its robust z-score (:func:`robust_z`) exceeds ``threshold`` in
    absolute value. A metric whose values are all 0 or 1 (success/failure rewards) is not
    scored: its rarer outcome is not an anomaly. Flagged decision ids are listed most extreme
    first, at most 100 per metric.

    Args:
        rows: the window, oldest first.
        threshold: the absolute robust z-score above which a value is flagged (> 0).

    Returns:
        ``{"threshold", "flagged_decisions", "metrics": {metric: {"count", "median", "mad",
        "scale", "flagged", "high", "low", "decision_ids"}}}``.

    Raises:
        InvalidInputError: ``threshold`` is not a positive number.
    """
    if not threshold > 0.0:
        raise InvalidInputError("threshold", threshold, "must be > 0")
    metrics: dict[str, Any] = {}
    flagged_ids: set[str] = set()
    for metric in _METRICS:
        found = [(row, v) for row in rows if (v := _metric(row, metric)) is not None]
        values = np.array([v for _, v in found], dtype=np.float64)
        entry: dict[str, Any] = {"count": len(found), "median": None, "mad": None}
        entry.update(scale=None, flagged=0, high=0, low=0, decision_ids=[])
        metrics[metric] = entry
        if not found:
            continue
        scores = robust_z(values)
        entry.update(median=_finite(scores.median), mad=_finite(scores.mad))
        if np.all((values == 0.0) | (values == 1.0)):
            continue
        hits = np.flatnonzero(np.abs(scores.z) > threshold)
        ranked = hits[np.argsort(-np.abs(scores.z[hits]), kind="stable")]
        ids = [str(found[i][0].decision_id) for i in ranked.tolist()]
        flagged_ids.update(ids)
        entry.update(
            scale=scores.scale,
            flagged=len(ids),
            high=int(np.sum(scores.z[hits] > 0)),
            low=int(np.sum(scores.z[hits] < 0)),
            decision_ids=ids[:_MAX_IDS],
        )
    return {"threshold": threshold, "flagged_decisions": len(flagged_ids), "metrics": metrics}


# --- temporal aggregation --------------------------------------------------------------------


def _episode(episode_id: str, steps: list[Experience]) -> dict[str, Any]:
    rewards = [r for r in map(_reward, steps) if r is not None]
    numbers = [row.step for row in steps if row.step is not None]
    return {
        "episode_id": episode_id,
        "return": _sum(rewards),
        "length": len(steps),
        "rewarded": len(rewards),
        "first_step": min(numbers) if numbers else None,
        "last_step": max(numbers) if numbers else None,
    }


def _hour_entry(hour: object, rows: list[Experience]) -> dict[str, Any]:
    rewards = [r for r in map(_reward, rows) if r is not None]
    return {
        "hour": hour,
        "decisions": len(rows),
        "rewarded": len(rewards),
        "mean_reward": _mean(rewards),
    }


def temporal_summary(rows: Sequence[Experience]) -> dict[str, Any]:
    """Episodes and hours in the window.

    An episode is the rows sharing an ``episode_id``: its return is the sum of their rewards
    (0.0 when none is rewarded) and its length their count; an episode cut by the window's
    edge counts only its rows inside (``first_step``/``last_step`` show where it was cut).
    Hours are UTC calendar hours by ``created_at`` (the most recent 168 are listed, and
    ``hours_total`` counts them all), and the same figures by UTC hour of day (0-23).

    Args:
        rows: the window, oldest first.

    Returns:
        ``{"episodes": {"count", "mean_return", "mean_length", "best", "worst"},
        "decisions_without_episode", "hours", "hours_total", "hour_of_day"}``.
    """
    grouped: dict[str, list[Experience]] = {}
    by_hour: dict[datetime, list[Experience]] = {}
    by_hour_of_day: dict[int, list[Experience]] = {}
    for row in rows:
        if row.episode_id is not None:
            grouped.setdefault(str(row.episode_id), []).append(row)
        at = _utc(row.created_at)
        by_hour.setdefault(at.replace(minute=0, second=0, microsecond=0), []).append(row)
        by_hour_of_day.setdefault(at.hour, []).append(row)
    episodes = [_episode(episode_id, steps) for episode_id, steps in grouped.items()]
    returns = [e["return"] for e in episodes if e["return"] is not None]
    ranked = sorted((e for e in episodes if e["return"] is not None), key=lambda e: -e["return"])
    hours = sorted(by_hour)
    return {
        "episodes": {
            "count": len(episodes),
            "mean_return": _mean(returns),
            "mean_length": _mean([float(e["length"]) for e in episodes]),
            "best": ranked[0] if ranked else None,
            "worst": ranked[-1] if ranked else None,
        },
        "decisions_without_episode": sum(row.episode_id is None for row in rows),
        "hours": [_hour_entry(h.isoformat(), by_hour[h]) for h in hours[-_MAX_HOURS:]],
        "hours_total": len(hours),
        "hour_of_day": [_hour_entry(h, by_hour_of_day[h]) for h in sorted(by_hour_of_day)],
    }


# --- the analyzers ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ActionStatisticsAnalyzer:
    """Per-action counts and rewards (kind ``action_statistics``, see :func:`action_statistics`).

    Args:
        confidence: the level of the reward intervals.
    """

    confidence: float = 0.95

    @classmethod
    def from_config(cls, config: AgentRTConfig) -> ActionStatisticsAnalyzer:
        """The analyzer for ``experience_configuration.analysis``."""
        return cls(config.experience_configuration.analysis.confidence)

    def analyze(self, agent_id: str, rows: Sequence[Experience]) -> list[Knowledge]:
        """One ``action_statistics`` row, or none for an empty window."""
        if not rows:
            return []
        payload = action_statistics(rows, self.confidence)
        return [_knowledge(agent_id, "action_statistics", payload, rows)]


@dataclass(frozen=True, slots=True)
class ExplorationHealthAnalyzer:
    """Entropy, coverage and propensities (kind ``exploration_health``)."""

    @classmethod
    def from_config(cls, config: AgentRTConfig) -> ExplorationHealthAnalyzer:
        """The analyzer; it needs nothing from the configuration."""
        del config
        return cls()

    def analyze(self, agent_id: str, rows: Sequence[Experience]) -> list[Knowledge]:
        """One ``exploration_health`` row, or none for an empty window."""
        if not rows:
            return []
        return [_knowledge(agent_id, "exploration_health", exploration_health(rows), rows)]


@dataclass(frozen=True, slots=True)
class TrendAnalyzer:
    """Rolling mean, slope and change points of the reward (kind ``trend``, see :func:`trend`).

    Args:
        detection: the change detector's settings; a fresh detector runs over each window.
        confidence: the level of the slope interval.
        window: rewards per rolling mean.
    """

    detection: ChangeDetectionConfig = field(default_factory=ChangeDetectionConfig)
    confidence: float = 0.95
    window: int = 50

    @classmethod
    def from_config(cls, config: AgentRTConfig) -> TrendAnalyzer:
        """The analyzer for ``experience_configuration.analysis``."""
        analysis = config.experience_configuration.analysis
        return cls(analysis.change_detection, analysis.confidence)

    def analyze(self, agent_id: str, rows: Sequence[Experience]) -> list[Knowledge]:
        """One ``trend`` row, or none for an empty window."""
        if not rows:
            return []
        detector: ChangeDetector = make_detector(self.detection)
        payload = trend(rows, detector, confidence=self.confidence, window=self.window)
        payload["change_detection"] = self.detection.model_dump(mode="json")
        return [_knowledge(agent_id, "trend", payload, rows)]


@dataclass(frozen=True, slots=True)
class AnomalyAnalyzer:
    """Outlying rewards, latencies and costs (kind ``anomalies``, see :func:`anomalies`).

    Args:
        threshold: the absolute robust z-score above which a value is flagged.
    """

    threshold: float = 3.5

    @classmethod
    def from_config(cls, config: AgentRTConfig) -> AnomalyAnalyzer:
        """The analyzer for ``experience_configuration.analysis``."""
        return cls(config.experience_configuration.analysis.anomaly_threshold)

    def analyze(self, agent_id: str, rows: Sequence[Experience]) -> list[Knowledge]:
        """One ``anomalies`` row, or none for an empty window."""
        if not rows:
            return []
        return [_knowledge(agent_id, "anomalies", anomalies(rows, self.threshold), rows)]


@dataclass(frozen=True, slots=True)
class PatternAnalyzer:
    """Significant context-action rules (kind ``patterns``; see ``patterns.mine_rules``).

    Args:
        min_support: rewarded decisions needed on each side of a comparison.
        significance: the family-wise error rate, Bonferroni-corrected.
        max_rules: how many rules a row lists.
    """

    min_support: int = 30
    significance: float = 0.01
    max_rules: int = 20

    @classmethod
    def from_config(cls, config: AgentRTConfig) -> PatternAnalyzer:
        """The analyzer for ``experience_configuration.analysis``."""
        analysis = config.experience_configuration.analysis
        return cls(analysis.pattern_min_support, analysis.significance)

    def analyze(self, agent_id: str, rows: Sequence[Experience]) -> list[Knowledge]:
        """One ``patterns`` row, or none for an empty window."""
        if not rows:
            return []
        search = mine_rules(
            rows,
            min_support=self.min_support,
            significance=self.significance,
            max_rules=self.max_rules,
        )
        payload = {
            "rewarded": sum(_reward(row) is not None for row in rows),
            "tested": search.tested,
            "min_support": self.min_support,
            "significance": self.significance,
            "rules": [rule.as_dict() for rule in search.rules],
        }
        return [_knowledge(agent_id, "patterns", payload, rows)]


@dataclass(frozen=True, slots=True)
class TemporalAnalyzer:
    """Episode returns and hourly figures (kind ``temporal``, see :func:`temporal_summary`)."""

    @classmethod
    def from_config(cls, config: AgentRTConfig) -> TemporalAnalyzer:
        """The analyzer; it needs nothing from the configuration."""
        del config
        return cls()

    def analyze(self, agent_id: str, rows: Sequence[Experience]) -> list[Knowledge]:
        """One ``temporal`` row, or none for an empty window."""
        if not rows:
            return []
        return [_knowledge(agent_id, "temporal", temporal_summary(rows), rows)]


plugins = [
    Plugin(
        "analyzer",
        "action_statistics",
        ActionStatisticsAnalyzer.from_config,
        "per action: count, share, mean reward with interval, latency and cost",
    ),
    Plugin(
        "analyzer",
        "exploration_health",
        ExplorationHealthAnalyzer.from_config,
        "action entropy, coverage, propensities and reward staleness",
    ),
    Plugin(
        "analyzer",
        "trend_analysis",
        TrendAnalyzer.from_config,
        "rolling mean, slope and change points of the reward",
    ),
    Plugin(
        "analyzer",
        "anomaly_detection",
        AnomalyAnalyzer.from_config,
        "decisions with outlying reward, latency or cost (robust z-scores)",
    ),
    Plugin(
        "analyzer",
        "pattern_recognition",
        PatternAnalyzer.from_config,
        "significant rules: when a context condition holds, an action does better or worse",
    ),
    Plugin(
        "analyzer",
        "temporal_aggregation",
        TemporalAnalyzer.from_config,
        "episode returns and lengths, figures per UTC hour and hour of day",
    ),
]
