"""Off-policy estimators on synthetic logs whose true target value is known exactly.

The world: 20 context types drawn from a fixed distribution, 4 actions, Bernoulli rewards with
known means ``mu(x, a)``. The logging policy is epsilon-greedy (epsilon 0.4) on a noisy copy of
the means and logs its exact propensities; the target policy is epsilon-greedy (epsilon 0.1) on
another, slightly wrong copy. Both distributions come from ``EpsilonGreedy``, as in serving.
The target's true value is ``sum_x P(x) sum_a pi(a|x) mu(x, a)``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import pytest

from agentrt import evaluation
from agentrt.errors import InvalidInputError
from agentrt.evaluation import (
    Estimate,
    doubly_robust,
    evaluate,
    ips,
    logs_support_ope,
    snips,
)
from agentrt.exploration import EpsilonGreedy

Vector = npt.NDArray[np.float64]
Matrix = npt.NDArray[np.float64]

CONTEXTS, ACTIONS = 20, 4
REPETITIONS, ROWS, RESAMPLES = 100, 2000, 400


def _policy(scores: Matrix, epsilon: float) -> Matrix:
    strategy = EpsilonGreedy(epsilon=epsilon)
    return np.stack([strategy.probabilities(row) for row in scores])


_WORLD = np.random.default_rng(20_240_601)
CONTEXT_PROBABILITIES: Vector = _WORLD.dirichlet(np.full(CONTEXTS, 2.0))
MEANS: Matrix = _WORLD.uniform(0.1, 0.9, (CONTEXTS, ACTIONS))
LOGGING: Matrix = _policy(MEANS + _WORLD.normal(0.0, 0.3, MEANS.shape), 0.4)
TARGET: Matrix = _policy(MEANS + _WORLD.normal(0.0, 0.1, MEANS.shape), 0.1)
# A decent reward model: the true means, off by a few points.
REWARD_MODEL: Matrix = np.clip(MEANS + _WORLD.normal(0.0, 0.05, MEANS.shape), 0.0, 1.0)
TRUE_VALUE = float(CONTEXT_PROBABILITIES @ np.sum(TARGET * MEANS, axis=1))


class Logs(NamedTuple):
    actions: npt.NDArray[np.int64]
    rewards: Vector
    propensities: Vector
    target_probabilities: Vector
    target_distribution: Matrix
    reward_estimates: Matrix


def simulate(rows: int, seed: int) -> Logs:
    """``rows`` decisions of the logging policy, with exact propensities and sampled rewards."""
    rng = np.random.default_rng(seed)
    contexts = rng.choice(CONTEXTS, size=rows, p=CONTEXT_PROBABILITIES)
    cumulative = np.cumsum(LOGGING[contexts], axis=1)
    drawn = np.sum(rng.random(rows)[:, None] >= cumulative, axis=1)
    actions = np.minimum(drawn, ACTIONS - 1).astype(np.int64)
    index = np.arange(rows)
    rewards = (rng.random(rows) < MEANS[contexts, actions]).astype(np.float64)
    target = TARGET[contexts]
    return Logs(
        actions=actions,
        rewards=rewards,
        propensities=LOGGING[contexts, actions],
        target_probabilities=target[index, actions],
        target_distribution=target,
        reward_estimates=REWARD_MODEL[contexts],
    )


def evaluate_logs(logs: Logs, *, n_bootstrap: int = 1000, seed: int = 0) -> dict[str, Estimate]:
    return evaluate(
        logs.rewards,
        logs.propensities,
        logs.target_probabilities,
        actions=logs.actions,
        reward_estimates=logs.reward_estimates,
        target_distribution=logs.target_distribution,
        n_bootstrap=n_bootstrap,
        seed=seed,
    )


@pytest.fixture(scope="module")
def repetitions() -> list[dict[str, Estimate]]:
    """IPS, SNIPS and DR with 95% intervals on 100 independently seeded logs."""
    return [
        evaluate_logs(simulate(ROWS, seed), n_bootstrap=RESAMPLES, seed=seed)
        for seed in range(REPETITIONS)
    ]


# -- against the known truth ---------------------------------------------------------------


def test_world_is_not_trivial() -> None:
    # The target differs from the logging policy, so reweighting matters.
    naive = float(CONTEXT_PROBABILITIES @ np.sum(LOGGING * MEANS, axis=1))
    assert abs(naive - TRUE_VALUE) > 0.05
    assert LOGGING.min() == pytest.approx(0.1)


@pytest.mark.parametrize("estimator", ["snips", "dr"])
def test_interval_covers_the_true_value(
    repetitions: list[dict[str, Estimate]], estimator: str
) -> None:
    covered = sum(r[estimator].ci_low <= TRUE_VALUE <= r[estimator].ci_high for r in repetitions)
    assert covered >= 90, f"{estimator}: {covered}/{REPETITIONS} intervals cover {TRUE_VALUE}"


@pytest.mark.parametrize("estimator", ["ips", "snips", "dr"])
def test_estimates_center_on_the_true_value(
    repetitions: list[dict[str, Estimate]], estimator: str
) -> None:
    values = np.array([r[estimator].value for r in repetitions])
    standard_error = values.std(ddof=1) / math.sqrt(values.size)
    assert abs(values.mean() - TRUE_VALUE) < 3 * standard_error + 1e-3


def test_doubly_robust_varies_less_than_ips(repetitions: list[dict[str, Estimate]]) -> None:
    dr = np.var([r["dr"].value for r in repetitions], ddof=1)
    ips_ = np.var([r["ips"].value for r in repetitions], ddof=1)
    assert dr < 0.5 * ips_


def test_standard_error_matches_the_spread_across_repetitions(
    repetitions: list[dict[str, Estimate]],
) -> None:
    for estimator in ("ips", "snips", "dr"):
        spread = np.std([r[estimator].value for r in repetitions], ddof=1)
        reported = np.mean([r[estimator].standard_error for r in repetitions])
        assert reported == pytest.approx(spread, rel=0.25), estimator


# -- the formulas on a log small enough to compute by hand ------------------------------------

# w = t / p = [2, 2, 0, 1]
REWARDS = np.array([1.0, 0.0, 1.0, 0.5])
PROPENSITIES = np.array([0.5, 0.25, 0.5, 1.0])
TARGET_PROBABILITIES = np.array([1.0, 0.5, 0.0, 1.0])
HAND_ACTIONS = np.array([0, 1, 0, 1])
HAND_DISTRIBUTION = np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0], [0.0, 1.0]])
HAND_MODEL = np.array([[0.8, 0.2], [0.4, 0.6], [0.5, 0.5], [0.1, 0.3]])


def hand_dr(clip: float | None = None) -> Estimate:
    return doubly_robust(
        REWARDS,
        PROPENSITIES,
        TARGET_PROBABILITIES,
        actions=HAND_ACTIONS,
        reward_estimates=HAND_MODEL,
        target_distribution=HAND_DISTRIBUTION,
        clip=clip,
    )


def test_formulas_by_hand() -> None:
    assert ips(REWARDS, PROPENSITIES, TARGET_PROBABILITIES).value == pytest.approx(2.5 / 4)
    assert snips(REWARDS, PROPENSITIES, TARGET_PROBABILITIES).value == pytest.approx(2.5 / 5)
    # direct + w (r - q): 0.8 + 2 * 0.2, 0.5 + 2 * -0.6, 0.5 + 0, 0.3 + 1 * 0.2
    assert hand_dr().value == pytest.approx((1.2 - 0.7 + 0.5 + 0.5) / 4)


def test_estimate_reports_its_diagnostics() -> None:
    estimate = ips(REWARDS, PROPENSITIES, TARGET_PROBABILITIES, n_bootstrap=200, confidence=0.9)
    assert estimate.estimator == "ips"
    assert estimate.effective_sample_size == pytest.approx(25 / 9)  # (2+2+0+1)^2 / (4+4+0+1)
    assert (estimate.rows_used, estimate.rows_excluded_unknown_propensity) == (4, 0)
    assert (estimate.confidence, estimate.n_bootstrap, estimate.clipped) == (0.9, 200, 0)
    assert estimate.ci_low <= estimate.value <= estimate.ci_high
    terms = np.array([2.0, 0.0, 0.0, 0.5])
    assert estimate.standard_error == pytest.approx(terms.std(ddof=1) / 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        estimate.value = 0.0  # type: ignore[misc]


def test_evaluate_returns_the_three_estimators() -> None:
    logs = simulate(500, seed=7)
    both = evaluate_logs(logs, n_bootstrap=100, seed=3)
    assert list(both) == ["ips", "snips", "dr"]
    assert both["ips"] == ips(
        logs.rewards, logs.propensities, logs.target_probabilities, n_bootstrap=100, seed=3
    )
    assert both["snips"] == snips(
        logs.rewards, logs.propensities, logs.target_probabilities, n_bootstrap=100, seed=3
    )
    assert both["dr"].estimator == "dr"


# -- unknown propensities, clipping, effective sample size ---------------------------------


def test_unknown_propensities_are_excluded_and_counted() -> None:
    logs = simulate(1000, seed=11)
    unknown = np.random.default_rng(0).random(1000) < 0.3
    masked = logs._replace(propensities=np.where(unknown, np.nan, logs.propensities))
    kept = Logs._make(column[~unknown] for column in logs)
    with_unknown = evaluate_logs(masked, n_bootstrap=50)
    without = evaluate_logs(kept, n_bootstrap=50)
    for name, estimate in with_unknown.items():
        assert estimate.rows_excluded_unknown_propensity == int(unknown.sum())
        assert estimate.rows_used == 1000 - int(unknown.sum())
        assert estimate == dataclasses.replace(
            without[name], rows_excluded_unknown_propensity=int(unknown.sum())
        )


def test_all_unknown_gives_nan_without_warnings() -> None:
    nan = np.full(3, np.nan)
    for estimator in (ips, snips):
        estimate = estimator(np.ones(3), nan, np.ones(3))
        assert math.isnan(estimate.value)
        assert math.isnan(estimate.ci_low)
        assert math.isnan(estimate.standard_error)
        assert (estimate.rows_used, estimate.rows_excluded_unknown_propensity) == (0, 3)
        assert estimate.effective_sample_size == 0.0


def test_snips_is_nan_when_the_target_never_takes_a_logged_action() -> None:
    estimate = snips(REWARDS, PROPENSITIES, np.zeros(4))
    assert math.isnan(estimate.value)
    assert math.isnan(estimate.ci_high)
    assert ips(REWARDS, PROPENSITIES, np.zeros(4)).value == 0.0


def test_clipping_caps_weights_and_counts_them() -> None:
    clipped = ips(REWARDS, PROPENSITIES, TARGET_PROBABILITIES, clip=1.5)
    assert clipped.clipped == 2
    assert clipped.value == pytest.approx((1.5 * 1.0 + 0.0 + 0.0 + 1.0 * 0.5) / 4)
    assert clipped.effective_sample_size == pytest.approx(16 / 5.5)  # (1.5+1.5+1)^2 / 5.5
    assert snips(REWARDS, PROPENSITIES, TARGET_PROBABILITIES, clip=1.5).clipped == 2
    # 0.8 + 1.5 * 0.2, 0.5 + 1.5 * -0.6, 0.5, 0.5
    dr = hand_dr(clip=1.5)
    assert dr.clipped == 2
    assert dr.value == pytest.approx((1.1 - 0.4 + 0.5 + 0.5) / 4)
    assert ips(REWARDS, PROPENSITIES, TARGET_PROBABILITIES, clip=2.0).clipped == 0


def test_clipping_bounds_the_estimate_on_real_logs() -> None:
    logs = simulate(2000, seed=5)
    args = (logs.rewards, logs.propensities, logs.target_probabilities)
    weights = logs.target_probabilities / logs.propensities
    estimate = ips(*args, clip=3.0, n_bootstrap=0)
    assert estimate.clipped == int(np.sum(weights > 3.0)) > 0
    assert estimate.value == pytest.approx(np.mean(np.minimum(weights, 3.0) * logs.rewards))


@pytest.mark.parametrize("weight", [1.0, 2.0])
def test_effective_sample_size_of_uniform_weights_is_n(weight: float) -> None:
    n = 1234
    estimate = ips(np.ones(n), np.full(n, 0.25), np.full(n, 0.25 * weight), n_bootstrap=0)
    assert estimate.effective_sample_size == pytest.approx(n)


# -- the bootstrap -------------------------------------------------------------------------


def test_identical_seeds_give_identical_intervals() -> None:
    logs = simulate(1000, seed=2)
    first = evaluate_logs(logs, n_bootstrap=200, seed=42)
    assert first == evaluate_logs(logs, n_bootstrap=200, seed=42)
    other = evaluate_logs(logs, n_bootstrap=200, seed=43)
    assert all(first[name].ci_low != other[name].ci_low for name in first)
    assert all(first[name].value == other[name].value for name in first)


def test_wider_confidence_gives_a_wider_interval() -> None:
    logs = simulate(1000, seed=4)
    args = (logs.rewards, logs.propensities, logs.target_probabilities)
    narrow, wide = snips(*args, confidence=0.5), snips(*args, confidence=0.99)
    assert wide.ci_low < narrow.ci_low < narrow.value < narrow.ci_high < wide.ci_high


def test_chunked_resampling_fills_every_resample(monkeypatch: pytest.MonkeyPatch) -> None:
    logs = simulate(1000, seed=9)
    args = (logs.rewards, logs.propensities, logs.target_probabilities)
    whole = snips(*args, n_bootstrap=300)
    monkeypatch.setattr(evaluation, "_CHUNK_CELLS", 1000 * 7)  # 42 chunks of 7 and one of 6
    (means,) = evaluation._resampled_means([logs.rewards], 300, seed=0)
    assert means.shape == (300,)
    assert np.isfinite(means).all()
    chunked = snips(*args, n_bootstrap=300)
    assert chunked.ci_low == pytest.approx(whole.ci_low, abs=0.01)
    assert chunked.ci_high == pytest.approx(whole.ci_high, abs=0.01)


def test_no_resamples_gives_no_interval() -> None:
    estimate = ips(REWARDS, PROPENSITIES, TARGET_PROBABILITIES, n_bootstrap=0)
    assert math.isnan(estimate.ci_low)
    assert math.isnan(estimate.ci_high)
    assert estimate.value == pytest.approx(0.625)


# -- invalid input -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "rewards", "propensities", "target", "settings"),
    [
        ("rewards", [1.0, 0.0], [0.5], [0.5], {}),
        ("rewards", [math.inf], [0.5], [0.5], {}),
        ("rewards", [[1.0]], [0.5], [0.5], {}),
        ("logged_propensities", [1.0], [0.0], [0.5], {}),
        ("logged_propensities", [1.0], [1.5], [0.5], {}),
        ("target_probabilities", [1.0], [0.5], [-0.1], {}),
        ("target_probabilities", [1.0], [0.5], [math.nan], {}),
        ("clip", [1.0], [0.5], [0.5], {"clip": 0.0}),
        ("confidence", [1.0], [0.5], [0.5], {"confidence": 1.0}),
        ("n_bootstrap", [1.0], [0.5], [0.5], {"n_bootstrap": -1}),
    ],
)
def test_invalid_inputs_are_refused(
    field: str,
    rewards: list[float],
    propensities: list[float],
    target: list[float],
    settings: dict[str, float],
) -> None:
    for estimator in (ips, snips):
        with pytest.raises(InvalidInputError) as caught:
            estimator(rewards, propensities, target, **settings)  # type: ignore[arg-type]
        assert caught.value.field == field


@pytest.mark.parametrize(
    ("field", "change"),
    [
        ("target_probabilities", {"actions": np.array([1, 1, 0, 1])}),
        ("actions", {"actions": np.array([0, 1, 0, 2])}),
        ("actions", {"actions": np.array([0.0, 1.0, 0.0, 1.0])}),
        ("reward_estimates", {"reward_estimates": HAND_MODEL[:3]}),
        ("target_distribution", {"reward_estimates": HAND_MODEL[:, :1]}),
        ("reward_estimates", {"reward_estimates": np.full((4, 2), np.nan)}),
        ("target_distribution", {"target_distribution": HAND_DISTRIBUTION * 0.5}),
        ("target_distribution", {"target_distribution": HAND_DISTRIBUTION[:3]}),
    ],
)
def test_invalid_model_inputs_are_refused(field: str, change: dict[str, Vector]) -> None:
    arrays = {
        "actions": HAND_ACTIONS,
        "reward_estimates": HAND_MODEL,
        "target_distribution": HAND_DISTRIBUTION,
    } | change
    with pytest.raises(InvalidInputError) as caught:
        doubly_robust(
            REWARDS,
            PROPENSITIES,
            TARGET_PROBABILITIES,
            actions=arrays["actions"],
            reward_estimates=arrays["reward_estimates"],
            target_distribution=arrays["target_distribution"],
        )
    assert caught.value.field == field


# -- can these logs support off-policy evaluation? -----------------------------------------


def test_exploring_logs_support_ope() -> None:
    support = logs_support_ope(simulate(500, seed=1).propensities)
    assert support.supported
    assert support.reason is None
    assert (support.rows, support.unknown_share, support.deterministic_share) == (500, 0.0, 0.0)
    assert support.min_propensity == pytest.approx(0.1)


def test_deterministic_logs_are_flagged() -> None:
    support = logs_support_ope(np.ones(100))
    assert not support.supported
    assert support.deterministic_share == 1.0
    assert support.min_propensity == 1.0
    assert support.reason is not None
    assert "100 of 100 rows were logged with propensity 1" in support.reason
    assert "exploration" in support.reason


def test_mostly_unknown_logs_are_flagged() -> None:
    propensities = np.where(np.arange(100) < 80, np.nan, 0.25)
    support = logs_support_ope(propensities)
    assert not support.supported
    assert support.unknown_share == pytest.approx(0.8)
    assert support.min_propensity == 0.25
    assert support.reason is not None
    assert "80 of 100 rows have no logged propensity" in support.reason


def test_thresholds_are_configurable_and_reasons_combine() -> None:
    propensities = np.array([np.nan, np.nan, 1.0, 1.0, 0.5])  # 40% unknown, 2 of 3 known at 1
    assert not logs_support_ope(propensities).supported
    assert logs_support_ope(propensities, max_deterministic_share=0.7).supported
    both = logs_support_ope(propensities, max_unknown_share=0.3)
    assert both.reason is not None
    assert "2 of 5 rows have no logged propensity" in both.reason
    assert "2 of 3 rows were logged with propensity 1" in both.reason


@pytest.mark.parametrize("propensities", [[], [math.nan, math.nan]])
def test_logs_without_any_propensity_are_flagged(propensities: list[float]) -> None:
    support = logs_support_ope(propensities)
    assert not support.supported
    assert support.reason
    assert math.isnan(support.min_propensity)


def test_invalid_propensities_are_refused() -> None:
    with pytest.raises(InvalidInputError):
        logs_support_ope([0.5, 0.0])
