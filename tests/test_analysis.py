"""agentrt.analysis and agentrt.patterns: the built-in analyzers and what they compute."""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from agentrt.analysis import (
    ActionStatisticsAnalyzer,
    AnomalyAnalyzer,
    PatternAnalyzer,
    TemporalAnalyzer,
    TrendAnalyzer,
    action_statistics,
    anomalies,
    exploration_health,
    robust_z,
    temporal_summary,
    trend,
)
from agentrt.config import AgentRTConfig, load_config
from agentrt.errors import InvalidInputError
from agentrt.patterns import (
    Cusum,
    PageHinkley,
    conditions,
    detect_changes,
    mean_interval,
    mine_rules,
    student_t_quantile,
    student_t_sf,
    two_proportion_z_test,
    welch_t_test,
)
from agentrt.plugins import PluginRegistry
from agentrt.schemas import ContextValue, Experience, Knowledge
from agentrt.types import Analyzer

T0 = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
NAMES = [
    "action_statistics",
    "anomaly_detection",
    "exploration_health",
    "pattern_recognition",
    "temporal_aggregation",
    "trend_analysis",
]
DETECTORS = [PageHinkley, Cusum]


def row(
    action: str = "a",
    reward: float | None = 1.0,
    *,
    actions: Sequence[str] = ("a", "b"),
    context: dict[str, ContextValue] | None = None,
    propensity: float | None = 0.5,
    outcome: dict[str, Any] | None = None,
    at: datetime = T0,
    rewarded_at: datetime | None = None,
    episode_id: uuid.UUID | None = None,
    step: int | None = None,
) -> Experience:
    return Experience(
        decision_id=uuid.uuid4(),
        agent_id="router",
        episode_id=episode_id,
        step=step,
        created_at=at,
        mode="live",
        context=context or {},
        actions=tuple(actions),
        action=action,
        action_index=list(actions).index(action),
        propensity=propensity,
        probabilities=None,
        policy_version=None,
        exploration=None,
        policy_action=None,
        reward=reward,
        outcome=outcome,
        feedback_count=0 if reward is None else 1,
        rewarded_at=None if reward is None else (rewarded_at or at),
        activated_at=at,
    )


def stream(rewards: npt.NDArray[np.float64]) -> list[Experience]:
    return [row(reward=float(r), at=T0 + timedelta(seconds=i)) for i, r in enumerate(rewards)]


def bernoulli(seed: int, *segments: tuple[float, int]) -> npt.NDArray[np.float64]:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.random(n) < p for p, n in segments]).astype(np.float64)


def strict_json(payload: dict[str, Any]) -> None:
    json.dumps(payload, allow_nan=False)


def config(**analysis: Any) -> AgentRTConfig:
    return load_config({"experience_configuration": {"analysis": analysis}})


# --- change detection ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", DETECTORS)
def test_detector_finds_a_planted_drop_soon_after_it(kind: type[PageHinkley | Cusum]) -> None:
    for seed in range(20):
        values = bernoulli(seed, (0.8, 500), (0.3, 500))
        changes = detect_changes(values, kind(delta=0.25, threshold=25.0, min_samples=30))
        assert changes, seed
        first = changes[0]
        assert 500 <= first.position <= 600, (seed, first)
        assert first.direction == "decrease"
        assert abs(first.start - 500) <= 40, (seed, first)


@pytest.mark.parametrize("kind", DETECTORS)
def test_detector_finds_a_rise(kind: type[PageHinkley | Cusum]) -> None:
    values = bernoulli(7, (0.3, 500), (0.8, 500))
    changes = detect_changes(values, kind(delta=0.25, threshold=25.0, min_samples=30))
    assert [c.direction for c in changes] == ["increase"]
    assert 500 <= changes[0].position <= 600


@pytest.mark.parametrize("kind", DETECTORS)
def test_detector_stays_quiet_on_a_stationary_stream(kind: type[PageHinkley | Cusum]) -> None:
    for seed in range(20):
        values = bernoulli(1000 + seed, (0.6, 2000))
        assert detect_changes(values, kind(delta=0.25, threshold=25.0, min_samples=30)) == []


@pytest.mark.parametrize("kind", DETECTORS)
def test_detector_works_one_value_at_a_time(kind: type[PageHinkley | Cusum]) -> None:
    values = bernoulli(3, (0.8, 300), (0.3, 300), (0.8, 300))
    detector = kind(delta=0.25, threshold=25.0, min_samples=30)
    fired = [i for i, value in enumerate(values.tolist()) if detector.update(value)]
    assert fired == [c.position for c in detect_changes(values, detector)]
    assert len(fired) == 2
    assert detector.last_alarm is not None
    assert detector.last_alarm.direction == "increase"


@pytest.mark.parametrize("kind", DETECTORS)
def test_detector_is_scale_free_and_ignores_constant_streams(
    kind: type[PageHinkley | Cusum],
) -> None:
    values = bernoulli(5, (0.8, 500), (0.3, 500))
    unit = detect_changes(values, kind())
    assert detect_changes(values * 1000.0 + 5.0, kind()) == unit
    assert detect_changes(np.full(1000, 3.0), kind()) == []


@pytest.mark.parametrize("kind", DETECTORS)
def test_detector_refuses_bad_settings_and_values(kind: type[PageHinkley | Cusum]) -> None:
    with pytest.raises(InvalidInputError, match="delta"):
        kind(delta=-1.0)
    with pytest.raises(InvalidInputError, match="threshold"):
        kind(threshold=0.0)
    with pytest.raises(InvalidInputError, match="min_samples"):
        kind(min_samples=0)
    with pytest.raises(InvalidInputError, match="finite"):
        kind().update(math.nan)


# --- trend -----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["page_hinkley", "cusum"])
def test_trend_reports_the_change_with_its_decision_and_means(method: str) -> None:
    values = bernoulli(11, (0.8, 500), (0.3, 500))
    rows = stream(values)
    analyzer = TrendAnalyzer.from_config(
        config(change_detection={"method": method, "delta": 0.25, "threshold": 25.0})
    )
    [found] = analyzer.analyze("router", rows)
    payload = found.payload
    strict_json(payload)
    assert (found.kind, found.window_start, found.window_end) == ("trend", T0, rows[-1].created_at)
    [alarm] = payload["alarms"]
    assert alarm["direction"] == "decrease"
    assert alarm["decision_id"] == str(rows[alarm["index"]].decision_id)
    assert alarm["change_decision_id"] == str(rows[alarm["change_index"]].decision_id)
    assert alarm["at"] == rows[alarm["index"]].created_at.isoformat()
    start = alarm["change_index"]
    assert alarm["mean_before"] == pytest.approx(values[:start].mean())
    assert alarm["mean_after"] == pytest.approx(values[start:].mean())
    assert alarm["mean_before"] == pytest.approx(0.8, abs=0.05)
    assert alarm["mean_after"] == pytest.approx(0.3, abs=0.05)
    assert payload["change_detection"]["method"] == method
    assert payload["slope"]["per_1000"] < 0
    points = payload["rolling_mean"]["points"]
    assert payload["rolling_mean"]["window"] == 50
    assert len(points) == 100
    assert points[0] == [49, pytest.approx(values[:50].mean())]
    assert points[-1] == [999, pytest.approx(values[-50:].mean())]


def test_trend_slope_and_interval_match_a_least_squares_fit() -> None:
    rng = np.random.default_rng(2)
    values = 0.002 * np.arange(400) + rng.normal(0.0, 0.5, 400)
    payload = trend(stream(values), PageHinkley(), confidence=0.9)
    slope = np.polyfit(np.arange(400), values, 1)[0]
    assert payload["slope"]["per_1000"] == pytest.approx(slope * 1000)
    assert payload["slope"]["ci_low"] < 2.0 < payload["slope"]["ci_high"]
    assert payload["slope"]["p_value"] < 0.001
    assert payload["mean_reward"] == pytest.approx(values.mean())


def test_trend_of_few_or_no_rewards() -> None:
    rows = [row(reward=None), row(reward=1.0), row(reward=0.0)]
    payload = trend(rows, Cusum())
    strict_json(payload)
    assert payload["rewarded"] == 2
    assert payload["slope"] is None
    assert payload["rolling_mean"] == {"window": 2, "points": [[1, 0.5]]}
    empty = trend([row(reward=None)], Cusum())
    assert empty["mean_reward"] is None
    assert empty["rolling_mean"]["points"] == empty["alarms"] == []


# --- anomalies -------------------------------------------------------------------------------


def latency_rows(seed: int, outliers: Sequence[int]) -> list[Experience]:
    rng = np.random.default_rng(seed)
    latencies = rng.normal(100.0, 10.0, 500)
    latencies[list(outliers)] = 5000.0
    return [
        row(reward=float(rng.random() < 0.7), outcome={"latency_ms": float(v)}) for v in latencies
    ]


def test_planted_latency_outliers_are_flagged() -> None:
    rows = latency_rows(2, [10, 200, 499])
    [found] = AnomalyAnalyzer.from_config(config()).analyze("router", rows)
    assert found.kind == "anomalies"
    strict_json(found.payload)
    latency = found.payload["metrics"]["latency_ms"]
    assert set(latency["decision_ids"]) == {str(rows[i].decision_id) for i in (10, 200, 499)}
    assert (latency["flagged"], latency["high"], latency["low"]) == (3, 3, 0)
    assert latency["scale"] == "mad"
    values = [r.outcome["latency_ms"] for r in rows if r.outcome]
    assert latency["median"] == pytest.approx(float(np.median(values)))
    assert found.payload["flagged_decisions"] == 3
    assert found.payload["metrics"]["reward"]["flagged"] == 0  # 0/1 rewards have no outliers
    assert found.payload["metrics"]["cost"]["count"] == 0


def test_clean_data_has_no_anomalies() -> None:
    payload = anomalies(latency_rows(3, []), threshold=3.5)
    assert payload["flagged_decisions"] == 0
    assert payload["metrics"]["latency_ms"]["decision_ids"] == []
    assert payload["metrics"]["latency_ms"]["count"] == 500


def test_zero_mad_falls_back_to_the_mean_absolute_deviation() -> None:
    scores = robust_z([100.0] * 99 + [5000.0])
    assert (scores.median, scores.mad, scores.scale) == (100.0, 0.0, "mean_absolute_deviation")
    assert scores.z[-1] == pytest.approx(4900.0 / (math.sqrt(math.pi / 2) * 49.0))
    assert np.all(scores.z[:-1] == 0.0)
    constant = robust_z([7.0] * 10)
    assert constant.scale is None
    assert np.all(constant.z == 0.0)
    rows = [row(outcome={"cost": 1.0}) for _ in range(99)] + [row(outcome={"cost": 9.0})]
    assert anomalies(rows, 3.5)["metrics"]["cost"]["decision_ids"] == [str(rows[-1].decision_id)]


def test_robust_z_uses_the_median_absolute_deviation() -> None:
    scores = robust_z([1.0, 2.0, 3.0, 4.0, 100.0])
    assert (scores.median, scores.mad) == (3.0, 1.0)
    assert scores.z.tolist() == pytest.approx([-1.349, -0.6745, 0.0, 0.6745, 65.4265])
    with pytest.raises(InvalidInputError):
        robust_z([])


# --- patterns --------------------------------------------------------------------------------


def billing_rows(seed: int, n: int = 2000) -> list[Experience]:
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        topic = str(rng.choice(["billing", "tech", "sales"]))
        action = str(rng.choice(["sql", "search"]))
        p = (0.85 if topic == "billing" else 0.4) if action == "sql" else 0.5
        context: dict[str, ContextValue] = {
            "topic": topic,
            "noise": str(rng.choice(["x", "y", "z"])),
            "noise_level": float(rng.normal()),
        }
        reward = float(rng.random() < p)
        rows.append(row(action, reward, actions=("sql", "search"), context=context))
    return rows


def test_a_planted_rule_is_recovered_with_its_means_and_support() -> None:
    rows = billing_rows(0)
    [found] = PatternAnalyzer.from_config(config()).analyze("router", rows)
    strict_json(found.payload)
    rules = found.payload["rules"]
    [billing] = [r for r in rules if r["condition"] == "topic=billing" and r["action"] == "sql"]
    sql = [(r.context["topic"] == "billing", r.reward or 0.0) for r in rows if r.action == "sql"]
    inside = [reward for billed, reward in sql if billed]
    outside = [reward for billed, reward in sql if not billed]
    assert billing["support"] == len(inside)
    assert billing["n_otherwise"] == len(outside)
    assert billing["mean_when"] == pytest.approx(np.mean(inside))
    assert billing["mean_otherwise"] == pytest.approx(np.mean(outside))
    assert billing["mean_when"] == pytest.approx(0.85, abs=0.05)
    assert billing["mean_otherwise"] == pytest.approx(0.4, abs=0.05)
    assert billing["lift"] == pytest.approx(billing["mean_when"] / billing["mean_otherwise"])
    assert billing["test"] == "two_proportion_z"
    assert billing["rule"] == (
        f"when topic=billing, action sql succeeds {billing['mean_when']:.2f} vs "
        f"{billing['mean_otherwise']:.2f} otherwise (n={len(inside)})"
    )
    assert rules[0] is billing  # the largest effect comes first
    assert billing["p_adjusted"] == pytest.approx(billing["p_value"] * found.payload["tested"])
    assert not [r for r in rules if r["feature"].startswith("noise")]
    assert all(r["p_adjusted"] < 0.01 for r in rules)
    assert found.payload["tested"] > 0


def test_noise_features_yield_no_rule() -> None:
    rng = np.random.default_rng(4)
    rows = [
        row(
            str(rng.choice(["a", "b"])),
            float(rng.random() < 0.5),
            context={"noise": str(rng.choice(["x", "y", "z"])), "level": float(rng.normal())},
        )
        for _ in range(2000)
    ]
    search = mine_rules(rows, min_support=30, significance=0.01)
    assert search.rules == []
    assert search.tested == 2 * (3 + 4)  # two actions; three values and four quartile bins


def test_numeric_rules_use_quartile_bins_and_welch() -> None:
    rng = np.random.default_rng(6)
    rows = []
    for _ in range(800):
        length = float(rng.uniform(0, 1000))
        mean = 5.0 if length >= 750 else 1.0
        rows.append(row(reward=float(rng.normal(mean, 1.0)), context={"len": length}))
    search = mine_rules(rows, min_support=30, significance=0.01)
    top = search.rules[0]
    assert top.condition.startswith("len in [")
    assert top.condition.endswith("]")  # the top quartile includes the maximum
    assert top.test == "welch_t"
    assert top.mean_when == pytest.approx(5.0, abs=0.2)
    assert "averages" in top.text


def test_conditions_from_contexts() -> None:
    contexts: list[dict[str, ContextValue]] = [
        {"len": float(i), "tier": i % 2, "vip": i % 3 == 0, "tags": ["a"], "topic": "t"}
        for i in range(8)
    ]
    contexts.append({"topic": None})
    labels = [c.label for c in conditions(contexts)]
    assert "len in [0, 1.75)" in labels
    assert "len in [5.25, 7]" in labels
    assert {"tier=0", "tier=1", "vip=true", "vip=false", "topic=t"} <= set(labels)
    assert not [label for label in labels if label.startswith("tags")]
    [topic] = [c for c in conditions(contexts) if c.label == "topic=t"]
    assert topic.mask.tolist() == [True] * 8 + [False]


def test_significance_tests_match_scipy() -> None:
    if importlib.util.find_spec("scipy") is None:
        pytest.skip("scipy is not installed")
    stats: Any = importlib.import_module("scipy.stats")
    for t, df in [(0.5, 3.0), (2.1, 10.0), (-1.3, 45.5), (4.0, 1000.0)]:
        assert student_t_sf(t, df) == pytest.approx(stats.t.sf(t, df), rel=1e-9)
    assert student_t_quantile(0.95, 7) == pytest.approx(stats.t.ppf(0.975, 7), rel=1e-9)
    a = np.array([1.0, 2.5, 3.0, 2.0, 4.5, 3.3])
    b = np.array([2.0, 4.1, 5.0, 4.4, 6.0, 3.9, 5.5])
    expected = stats.ttest_ind(a, b, equal_var=False).pvalue
    found = welch_t_test(a.mean(), a.var(ddof=1), 6, b.mean(), b.var(ddof=1), 7)
    assert found == pytest.approx(expected, rel=1e-9)
    z = (30 / 50 - 20 / 60) / math.sqrt(50 / 110 * 60 / 110 * (1 / 50 + 1 / 60))
    assert two_proportion_z_test(30, 50, 20, 60) == pytest.approx(2 * stats.norm.sf(z))


def test_degenerate_significance_tests() -> None:
    assert two_proportion_z_test(0, 10, 0, 20) == 1.0
    assert welch_t_test(1.0, 0.0, 5, 2.0, 0.0, 5) == 0.0
    assert welch_t_test(1.0, 0.0, 5, 1.0, 0.0, 5) == 1.0
    with pytest.raises(InvalidInputError):
        welch_t_test(1.0, 0.0, 1, 1.0, 0.0, 5)


# --- action statistics and exploration health ------------------------------------------------


def known_rows() -> list[Experience]:
    offered = ("a", "b", "c", "d")
    return [
        row("a", 1.0, actions=offered, propensity=0.5, outcome={"latency_ms": 10, "cost": 0.5}),
        row("a", 0.0, actions=offered, propensity=0.2, outcome={"latency_ms": 30}),
        row("b", 2.5, actions=offered, propensity=None, at=T0 + timedelta(seconds=10)),
        row("c", None, actions=offered, propensity=1.0, at=T0 + timedelta(seconds=70)),
    ]


def test_action_statistics_equal_hand_computations() -> None:
    rows = known_rows()
    [found] = ActionStatisticsAnalyzer.from_config(config(confidence=0.9)).analyze("router", rows)
    strict_json(found.payload)
    assert (found.kind, found.window_start, found.window_end) == (
        "action_statistics",
        rows[0].created_at,
        rows[-1].created_at,
    )
    payload = found.payload
    assert (payload["decisions"], payload["rewarded"], payload["confidence"]) == (4, 3, 0.9)
    assert list(payload["actions"]) == ["a", "b", "c", "d"]
    a = payload["actions"]["a"]
    z = 1.6448536269514722
    centre = (0.5 + z * z / 4) / (1 + z * z / 2)
    half = z * math.sqrt(0.25 / 2 + z * z / 16) / (1 + z * z / 2)
    assert a["count"] == 2
    assert a["share"] == 0.5
    assert a["mean_reward"] == 0.5
    assert a["ci_low"] == pytest.approx(centre - half)
    assert a["ci_high"] == pytest.approx(centre + half)
    assert (a["interval"], a["mean_latency_ms"], a["mean_cost"]) == ("wilson", 20.0, 0.5)
    b = payload["actions"]["b"]
    assert (b["mean_reward"], b["ci_low"], b["interval"]) == (2.5, None, "normal")
    c = payload["actions"]["c"]
    assert (c["count"], c["rewarded"], c["mean_reward"], c["mean_latency_ms"]) == (1, 0, None, None)
    assert payload["actions"]["d"]["count"] == 0
    assert action_statistics(rows, 0.9) == payload


def test_normal_interval_for_non_binary_rewards() -> None:
    values = [1.0, 2.0, 4.0, 5.0]
    interval = mean_interval(values, 0.95)
    half = 1.959963984540054 * float(np.std(values, ddof=1)) / 2.0
    assert interval.method == "normal"
    assert interval.low == pytest.approx(3.0 - half)
    assert interval.high == pytest.approx(3.0 + half)
    with pytest.raises(InvalidInputError):
        mean_interval([], 0.95)


def test_exploration_health_equals_hand_computations() -> None:
    payload = exploration_health(known_rows())
    strict_json(payload)
    assert payload["entropy_bits"] == pytest.approx(1.5)  # frequencies 1/2, 1/4, 1/4
    assert payload["normalized_entropy"] == pytest.approx(0.75)  # over log2(4)
    assert (payload["actions_offered"], payload["actions_chosen"]) == (4, 3)
    assert payload["coverage"] == 0.75
    assert payload["min_propensity"] == 0.2
    assert payload["unknown_propensity_share"] == 0.25
    assert payload["deterministic_share"] == 0.25
    assert payload["rewarded_share"] == 0.75
    assert payload["reward_staleness_seconds"] == 60.0  # newest reward at 10 s, decision at 70 s


def test_exploration_health_of_a_single_action() -> None:
    payload = exploration_health([row("a", None, actions=("a",), propensity=1.0)])
    strict_json(payload)
    assert payload["entropy_bits"] == 0.0
    assert payload["normalized_entropy"] is None
    assert (payload["deterministic_share"], payload["reward_staleness_seconds"]) == (1.0, None)


# --- temporal aggregation --------------------------------------------------------------------


def test_temporal_aggregation_of_two_episodes_over_two_hours() -> None:
    first, second = uuid.uuid4(), uuid.uuid4()
    later = T0 + timedelta(hours=1, minutes=5)
    rows = [
        row(reward=1.0, episode_id=first, step=0, at=T0),
        row(reward=0.5, episode_id=first, step=1, at=T0 + timedelta(minutes=10)),
        row(reward=None, episode_id=first, step=2, at=T0 + timedelta(minutes=20)),
        row(reward=0.0, episode_id=second, step=0, at=later),
        row(reward=-1.0, episode_id=second, step=1, at=later + timedelta(minutes=1)),
        row(reward=1.0, at=later + timedelta(minutes=2)),
    ]
    [found] = TemporalAnalyzer.from_config(config()).analyze("router", rows)
    strict_json(found.payload)
    assert found.kind == "temporal"
    episodes = found.payload["episodes"]
    assert episodes["count"] == 2
    assert episodes["mean_return"] == pytest.approx((1.5 - 1.0) / 2)
    assert episodes["mean_length"] == 2.5
    assert episodes["best"] == {
        "episode_id": str(first),
        "return": 1.5,
        "length": 3,
        "rewarded": 2,
        "first_step": 0,
        "last_step": 2,
    }
    assert (episodes["worst"]["episode_id"], episodes["worst"]["return"]) == (str(second), -1.0)
    assert found.payload["decisions_without_episode"] == 1
    assert found.payload["hours"] == [
        {"hour": "2024-05-01T10:00:00+00:00", "decisions": 3, "rewarded": 2, "mean_reward": 0.75},
        {"hour": "2024-05-01T11:00:00+00:00", "decisions": 3, "rewarded": 3, "mean_reward": 0.0},
    ]
    assert [h["hour"] for h in found.payload["hour_of_day"]] == [10, 11]
    assert found.payload["hours_total"] == 2


def test_temporal_summary_without_episodes() -> None:
    payload = temporal_summary([row(reward=None)])
    assert payload["episodes"] == {
        "count": 0,
        "mean_return": None,
        "mean_length": None,
        "best": None,
        "worst": None,
    }
    assert payload["hours"][0]["mean_reward"] is None


# --- the plugins -----------------------------------------------------------------------------


def test_the_registry_lists_the_analyzers() -> None:
    assert PluginRegistry().names("analyzer") == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_every_analyzer_gives_strict_json_for_its_window(name: str) -> None:
    analyzer = PluginRegistry().create("analyzer", name, load_config())
    assert isinstance(analyzer, Analyzer)
    assert analyzer.analyze("router", []) == []
    rows = billing_rows(1, n=300)
    rows += [row(reward=None, at=T0 + timedelta(hours=2), outcome={"latency_ms": 1e9})]
    found: list[Knowledge] = analyzer.analyze("router", rows)
    assert len(found) == 1
    assert found[0].agent_id == "router"
    assert (found[0].window_start, found[0].window_end) == (T0, T0 + timedelta(hours=2))
    strict_json(found[0].payload)


def test_naive_timestamps_are_read_as_utc() -> None:
    naive = datetime(2024, 5, 1, 10, 0)  # as a database without time zones returns it
    [found] = TemporalAnalyzer().analyze("router", [row(at=naive)])
    assert found.window_start == T0
    assert found.payload["hours"][0]["hour"] == "2024-05-01T10:00:00+00:00"


@pytest.mark.parametrize("name", NAMES)
def test_extreme_values_give_none_rather_than_errors(name: str) -> None:
    analyzer = PluginRegistry().create("analyzer", name, load_config())
    rows = [
        row(
            "a" if i % 3 else "b",
            1e308 * (-1) ** i,
            context={"size": 1e308 * (i % 7), "kind": "k" if i % 2 else "j"},
            outcome={"latency_ms": 1.7e308 * (i % 2), "cost": -1e308 * (i % 5)},
            at=T0 + timedelta(seconds=i),
            episode_id=None if i % 4 else uuid.uuid4(),
        )
        for i in range(200)
    ]
    [found] = analyzer.analyze("router", rows)
    strict_json(found.payload)
