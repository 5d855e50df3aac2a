"""Exploration strategies: exact distributions over the offered actions, and draws that match them.

Every strategy returns the whole distribution, so each invariant is checked on the numbers
themselves (sum, floor on allowed actions, zero on masked ones, ties) and then on 20,000 actions
drawn from it with :func:`agentrt.policy._draw` and a seeded generator (Pearson's chi-square).
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import random
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentrt.config import ExplorationConfig
from agentrt.exploration import (
    EpsilonGreedy,
    Softmax,
    Strategy,
    ThompsonSampling,
    UpperConfidenceBound,
    from_config,
    greedy_split,
    plugins,
)
from agentrt.plugins import PluginRegistry
from agentrt.policy import _draw

Vector = npt.NDArray[np.float64]
Mask = npt.NDArray[np.bool_]

DRAWS = 20_000

STRATEGIES: dict[str, Strategy] = {
    "epsilon_greedy": EpsilonGreedy(epsilon=0.2, floor=0.01),
    "softmax": Softmax(temperature=0.5, floor=0.05),
    "ucb": UpperConfidenceBound(confidence=1.0, floor=0.05),
    "thompson": ThompsonSampling(floor=0.05),
}


def exploration_share(strategy: Strategy) -> float:
    """The share spread uniformly over the allowed actions (epsilon for epsilon-greedy)."""
    return strategy.epsilon if isinstance(strategy, EpsilonGreedy) else strategy.floor


def vector(*values: float) -> Vector:
    return np.array(values, dtype=np.float64)


def mask(*values: bool) -> Mask:
    return np.array(values, dtype=np.bool_)


# -- invariants ----------------------------------------------------------------------------


def check_distribution(
    strategy: Strategy, probabilities: Vector, allowed: Mask, scores: Vector
) -> None:
    assert probabilities.shape == scores.shape
    assert math.isclose(float(probabilities.sum()), 1.0, abs_tol=1e-9)
    usable = allowed & np.isfinite(scores)
    least = exploration_share(strategy) / int(usable.sum())
    assert np.all(probabilities[usable] >= least - 1e-12), (probabilities, least)
    assert np.all(probabilities[~usable] == 0.0), probabilities


@pytest.mark.parametrize("name", list(STRATEGIES))
@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.floats(-10, 10, allow_nan=False),
            st.booleans(),
            st.floats(0, 3, allow_nan=False),
        ),
        min_size=1,
        max_size=6,
    ).filter(lambda rows: any(ok for _, ok, _ in rows))
)
def test_probabilities_sum_to_one_keep_the_floor_and_zero_masked_actions(
    name: str, rows: list[tuple[float, bool, float]]
) -> None:
    strategy = STRATEGIES[name]
    scores = vector(*(score for score, _, _ in rows))
    allowed = mask(*(ok for _, ok, _ in rows))
    uncertainty = vector(*(spread for _, _, spread in rows))
    for spread in (None, uncertainty):
        probabilities = strategy.probabilities(scores, allowed, spread)
        check_distribution(strategy, probabilities, allowed, scores)


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_without_a_mask_every_action_is_allowed(name: str) -> None:
    strategy = STRATEGIES[name]
    scores = vector(0.1, 0.7, 0.3, 0.2)
    probabilities = strategy.probabilities(scores)
    check_distribution(strategy, probabilities, mask(True, True, True, True), scores)


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_non_finite_scores_are_never_chosen(name: str) -> None:
    strategy = STRATEGIES[name]
    scores = vector(0.2, math.nan, 0.9, math.inf, -math.inf)
    probabilities = strategy.probabilities(scores, None, vector(0.1, 0.1, 0.1, 0.1, 0.1))
    assert list(probabilities[[1, 3, 4]]) == [0.0, 0.0, 0.0]
    check_distribution(strategy, probabilities, np.isfinite(scores), scores)


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_no_allowed_finite_action_is_an_error(name: str) -> None:
    strategy = STRATEGIES[name]
    with pytest.raises(ValueError, match="no allowed action"):
        strategy.probabilities(vector(1.0, 2.0), mask(False, False))
    with pytest.raises(ValueError, match="no allowed action"):
        strategy.probabilities(vector(math.nan, 2.0), mask(True, False))


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_tied_best_actions_share_their_mass_equally(name: str) -> None:
    strategy = STRATEGIES[name]
    scores = vector(1.0, 3.0, 0.0, 3.0)
    probabilities = strategy.probabilities(scores)
    assert probabilities[1] == pytest.approx(probabilities[3], abs=1e-12)
    assert probabilities[1] > probabilities[0] >= probabilities[2]
    if not isinstance(strategy, Softmax):
        share = exploration_share(strategy)
        assert probabilities[1] == pytest.approx((1 - share) / 2 + share / 4)
        assert probabilities[0] == pytest.approx(share / 4)


def test_ties_are_within_one_e_minus_twelve() -> None:
    probabilities = EpsilonGreedy(epsilon=0.0, floor=0.0).probabilities(
        vector(1.0, 1.0 - 1e-13, 1.0 - 1e-9)
    )
    assert list(probabilities) == pytest.approx([0.5, 0.5, 0.0], abs=1e-15)


# -- epsilon-greedy ------------------------------------------------------------------------


def test_epsilon_greedy_exact_values() -> None:
    strategy = EpsilonGreedy(epsilon=0.2)
    probabilities = strategy.probabilities(vector(0.1, 0.5, 0.3, 0.2))
    assert list(probabilities) == pytest.approx([0.05, 0.85, 0.05, 0.05], abs=1e-12)

    masked = strategy.probabilities(vector(0.1, 0.5, 0.3, 0.2), mask(True, False, True, True))
    third = 0.2 / 3
    assert list(masked) == pytest.approx([third, 0.0, 1 - 0.2 + third, third], abs=1e-12)
    assert masked[1] == 0.0


def test_epsilon_greedy_with_zero_epsilon_is_greedy() -> None:
    probabilities = EpsilonGreedy(epsilon=0.0, floor=0.0).probabilities(vector(0.3, 0.1))
    assert list(probabilities) == [1.0, 0.0]


def test_decayed_multiplies_epsilon_by_decay_and_stops_at_floor() -> None:
    strategy = EpsilonGreedy(epsilon=0.1, decay=0.5, floor=0.02)
    seen = []
    for _ in range(5):
        strategy = strategy.decayed()
        seen.append(strategy.epsilon)
    assert seen == pytest.approx([0.05, 0.025, 0.02, 0.02, 0.02])
    assert (strategy.decay, strategy.floor) == (0.5, 0.02)

    once = EpsilonGreedy(epsilon=0.1, decay=0.995, floor=0.01).decayed()
    assert once.epsilon == pytest.approx(0.0995)
    assert once.describe() == {"method": "epsilon_greedy", "epsilon": once.epsilon}


def test_decayed_leaves_the_original_unchanged() -> None:
    original = EpsilonGreedy(epsilon=0.3, decay=0.5, floor=0.01)
    original.decayed()
    assert original.epsilon == 0.3


# -- softmax -------------------------------------------------------------------------------


def test_softmax_is_boltzmann_mixed_with_the_floor() -> None:
    strategy = Softmax(temperature=0.5, floor=0.1)
    scores = vector(0.0, 1.0, 2.0)
    weights = np.exp(scores / 0.5)
    expected = 0.9 * weights / weights.sum() + 0.1 / 3
    assert list(strategy.probabilities(scores)) == pytest.approx(list(expected), abs=1e-12)


def test_softmax_temperature_sharpens_the_distribution() -> None:
    scores = vector(0.0, 1.0)
    hot = Softmax(temperature=10.0, floor=0.0).probabilities(scores)
    cold = Softmax(temperature=0.05, floor=0.0).probabilities(scores)
    assert hot[1] == pytest.approx(1 / (1 + math.exp(-0.1)))
    assert cold[1] > 0.999999


def test_softmax_large_scores_do_not_overflow() -> None:
    probabilities = Softmax(temperature=0.01, floor=0.0).probabilities(vector(1e3, 1e3 - 1.0))
    assert np.all(np.isfinite(probabilities))
    assert probabilities[0] == pytest.approx(1.0)


# -- upper confidence bound ----------------------------------------------------------------


def test_ucb_picks_the_highest_upper_bound() -> None:
    strategy = UpperConfidenceBound(confidence=2.0, floor=0.06)
    scores = vector(1.0, 0.8, 0.5)
    # upper bounds: 1.0, 1.2, 1.1
    probabilities = strategy.probabilities(scores, None, vector(0.0, 0.2, 0.3))
    assert list(probabilities) == pytest.approx([0.02, 0.96, 0.02], abs=1e-12)
    # Without an uncertainty estimate it is greedy on the means.
    assert int(np.argmax(strategy.probabilities(scores))) == 0
    # A masked action with the highest bound is never chosen.
    masked = strategy.probabilities(scores, mask(True, False, True), vector(0.0, 0.2, 0.3))
    assert list(masked) == pytest.approx([0.03, 0.0, 0.97], abs=1e-12)


def test_ucb_count_bonus_shrinks_with_pulls_and_favours_untried_actions() -> None:
    bonus = UpperConfidenceBound.count_bonus(vector(0.0, 1.0, 10.0, 100.0))
    assert bonus[0] == 1e6
    assert bonus[1] > bonus[2] > bonus[3] > 0
    total = 111.0
    assert bonus[2] == pytest.approx(math.sqrt(2 * math.log(total + 1) / 10))
    strategy = UpperConfidenceBound(confidence=1.0, floor=0.0)
    # The untried action wins even against a much better mean.
    chosen = strategy.probabilities(vector(0.1, 0.9, 0.5, 0.5), None, bonus)
    assert int(np.argmax(chosen)) == 0
    # With every action tried, the bonus decides between close means.
    tried = UpperConfidenceBound.count_bonus(vector(50.0, 2.0))
    assert int(np.argmax(strategy.probabilities(vector(0.6, 0.5), None, tried))) == 1


# -- Thompson sampling ---------------------------------------------------------------------


def test_thompson_gives_more_mass_to_the_higher_mean() -> None:
    strategy = ThompsonSampling(floor=0.01)
    probabilities = strategy.probabilities(vector(0.2, 0.6, 0.5), None, vector(0.1, 0.1, 0.1))
    assert probabilities[1] > probabilities[2] > probabilities[0]
    # A wide posterior keeps real mass on the runner-up; a narrow one concentrates.
    narrow = strategy.probabilities(vector(0.2, 0.6, 0.5), None, vector(0.01, 0.01, 0.01))
    assert narrow[1] > probabilities[1]
    assert narrow[1] > 0.95


def test_thompson_is_deterministic_for_the_same_inputs() -> None:
    strategy = ThompsonSampling()
    scores, spread = vector(0.3, 0.35, 0.1), vector(0.2, 0.2, 0.2)
    first = strategy.probabilities(scores, None, spread)
    second = strategy.probabilities(scores.copy(), None, spread.copy())
    assert np.array_equal(first, second)
    # Not a point mass: the posteriors overlap, so both leading actions keep real mass.
    assert 0.2 < first[0] < first[1] < 0.8


def test_thompson_without_uncertainty_is_greedy_with_floor() -> None:
    strategy = ThompsonSampling(floor=0.1)
    scores = vector(0.3, 0.9, 0.1)
    expected = [0.1 / 3, 0.9 + 0.1 / 3, 0.1 / 3]
    assert list(strategy.probabilities(scores)) == pytest.approx(expected)
    zero = strategy.probabilities(scores, None, vector(0.0, 0.0, 0.0))
    assert list(zero) == pytest.approx(expected)


def test_thompson_estimates_the_probability_of_being_best() -> None:
    # Two independent normals N(0, 1) and N(1, 1): P(second > first) = Phi(1 / sqrt(2)).
    strategy = ThompsonSampling(samples=20_000, floor=0.0)
    probabilities = strategy.probabilities(vector(0.0, 1.0), None, vector(1.0, 1.0))
    expected = 0.5 * (1 + math.erf(1 / math.sqrt(2) / math.sqrt(2)))
    assert probabilities[1] == pytest.approx(expected, abs=0.015)


def test_beta_posterior_mean_and_std() -> None:
    mean, std = ThompsonSampling.beta_posterior(vector(0.0, 8.0), vector(0.0, 2.0))
    assert list(mean) == pytest.approx([0.5, 9 / 12])
    assert std[0] == pytest.approx(math.sqrt(1 / (4 * 3)))
    assert std[1] == pytest.approx(math.sqrt(9 * 3 / (144 * 13)))


# -- configuration -------------------------------------------------------------------------


def test_from_config_maps_each_method() -> None:
    assert from_config(
        ExplorationConfig(method="epsilon_greedy", epsilon=0.3, decay=0.9, floor=0.05)
    ) == EpsilonGreedy(epsilon=0.3, decay=0.9, floor=0.05)
    assert from_config(
        ExplorationConfig(method="softmax", temperature=0.25, floor=0.02)
    ) == Softmax(temperature=0.25, floor=0.02)
    assert from_config(
        ExplorationConfig(method="ucb", confidence=0.5, window_size=200, floor=0.03)
    ) == UpperConfidenceBound(confidence=0.5, window_size=200, floor=0.03)
    assert from_config(ExplorationConfig(method="thompson", floor=0.04)) == ThompsonSampling(
        floor=0.04
    )
    assert from_config(ExplorationConfig()) == EpsilonGreedy(epsilon=0.1, decay=0.995, floor=0.01)


def test_describe_names_the_method_and_its_parameters() -> None:
    assert Softmax(temperature=2.0).describe() == {"method": "softmax", "temperature": 2.0}
    assert UpperConfidenceBound(confidence=1.5, window_size=9).describe() == {
        "method": "ucb",
        "confidence": 1.5,
        "window_size": 9,
    }
    assert ThompsonSampling(samples=64).describe() == {"method": "thompson", "samples": 64}


def test_each_strategy_is_a_registered_plugin() -> None:
    registry = PluginRegistry()
    assert registry.names("exploration") == ["epsilon_greedy", "softmax", "thompson", "ucb"]
    for plugin in plugins:
        assert registry.get("exploration", plugin.name).factory is plugin.factory
        assert plugin.factory().name == plugin.name


# -- every action allowed: the fast path gives the masked path's numbers --------------------

any_strategy = st.one_of(
    st.builds(EpsilonGreedy, epsilon=st.floats(0, 1)),
    st.builds(Softmax, temperature=st.sampled_from([0.01, 0.5, 1.0, 10.0]), floor=st.floats(0, 1)),
    st.builds(UpperConfidenceBound, confidence=st.floats(0, 3), floor=st.floats(0, 1)),
    st.builds(ThompsonSampling, samples=st.just(64), floor=st.floats(0, 1)),
)
any_score = st.one_of(
    st.floats(-10, 10),
    st.floats(),
    st.sampled_from([0.0, -0.0, 1.0, 1.0 - 1e-13, math.nan, math.inf, -math.inf]),
)
any_spread = st.one_of(st.floats(0, 3), st.sampled_from([0.0, -1.0, math.nan, math.inf]))


def outcome(
    strategy: Strategy, scores: Vector, allowed: Mask | None, uncertainty: Vector | None
) -> tuple[tuple[object, ...], list[str]]:
    """One call's probabilities as bytes (or its error), and the warnings it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = strategy.probabilities(scores, allowed, uncertainty)
            answer: tuple[object, ...] = ("ok", result.dtype, result.shape, result.tobytes())
        except ValueError as exc:
            answer = ("error", str(exc))
    return answer, sorted(str(warning.message) for warning in caught)


def draw_scores(
    data: st.DataObject, count: int, dtype: type[np.floating[Any]]
) -> tuple[Vector, Vector | None]:
    """``count`` scores of ``dtype`` (any float, infinities and NaN included) and maybe an
    uncertainty per score."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # floats beyond float32's range
        scores = np.array(data.draw(st.lists(any_score, min_size=count, max_size=count)), dtype)
    spreads = data.draw(st.none() | st.lists(any_spread, min_size=count, max_size=count))
    return scores, None if spreads is None else vector(*spreads)


def over_drawn_scores(test: Callable[..., None]) -> Callable[..., None]:
    """A property test over a strategy and scores drawn by :func:`draw_scores`."""
    return settings(max_examples=400, deadline=None)(
        given(
            strategy=any_strategy,
            data=st.data(),
            count=st.integers(1, 12),
            dtype=st.sampled_from([np.float64, np.float32]),
        )(test)
    )


@over_drawn_scores
def test_no_mask_gives_exactly_the_numbers_of_an_all_true_mask(
    strategy: Strategy, data: st.DataObject, count: int, dtype: type[np.floating[Any]]
) -> None:
    scores, uncertainty = draw_scores(data, count, dtype)

    fast = outcome(strategy, scores, None, uncertainty)
    masked = outcome(strategy, scores, np.ones(count, dtype=np.bool_), uncertainty)

    assert fast == masked


@over_drawn_scores
def test_a_greedy_split_is_what_probabilities_gives(
    strategy: Strategy, data: st.DataObject, count: int, dtype: type[np.floating[Any]]
) -> None:
    scores, uncertainty = draw_scores(data, count, dtype)

    split = greedy_split(strategy, scores, uncertainty)

    if split is not None:
        assert isinstance(strategy, EpsilonGreedy | UpperConfidenceBound)
        expected = strategy.probabilities(scores, None, uncertainty).tolist()
        assert [p.hex() for p in split] == [p.hex() for p in expected]


@pytest.mark.parametrize("name", ["epsilon_greedy", "ucb"])
def test_everyday_scores_take_the_greedy_split(name: str) -> None:
    strategy = STRATEGIES[name]
    rng = np.random.default_rng(5)
    for _ in range(50):
        scores, spread = rng.normal(size=8), rng.uniform(0.0, 0.5, size=8)
        split = greedy_split(strategy, scores, spread)
        assert split == tuple(strategy.probabilities(scores, None, spread).tolist())
    assert greedy_split(STRATEGIES["softmax"], scores, spread) is None
    assert greedy_split(strategy, vector(1.0, math.nan), vector(0.1, 0.1)) is None


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_no_mask_and_an_all_true_mask_agree_on_everyday_scores(name: str) -> None:
    strategy = STRATEGIES[name]
    rng = np.random.default_rng(4)
    for _ in range(200):
        scores = rng.normal(size=8)
        spread = rng.uniform(0.0, 0.5, size=8)
        everything = mask(*[True] * 8)
        for uncertainty in (None, spread):
            fast = strategy.probabilities(scores, None, uncertainty)
            assert (
                fast.tobytes() == strategy.probabilities(scores, everything, uncertainty).tobytes()
            )


# -- drawing -------------------------------------------------------------------------------

# Upper 0.999 quantiles of the chi-square distribution, by degrees of freedom.
_CHI2_999 = {1: 10.828, 2: 13.816, 3: 16.266, 4: 18.467, 5: 20.515}


def chi2_critical_999(dof: int) -> float:
    """The 0.999 quantile of chi-square with ``dof`` degrees of freedom."""
    if importlib.util.find_spec("scipy") is not None:
        stats = importlib.import_module("scipy.stats")
        return float(stats.chi2.ppf(0.999, dof))
    return _CHI2_999[dof]


def drawn_counts(probabilities: Vector, seed: int, draws: int = DRAWS) -> Vector:
    rng = random.Random(seed)
    counts = np.zeros(probabilities.shape[0])
    for _ in range(draws):
        counts[_draw(probabilities, rng)] += 1
    return counts


CASES: list[tuple[str, Vector, Mask | None, Vector | None]] = [
    ("epsilon_greedy", vector(0.1, 0.5, 0.3, 0.2), None, None),
    ("epsilon_greedy", vector(0.1, 0.5, 0.3, 0.2), mask(True, False, True, True), None),
    ("softmax", vector(0.0, 1.0, 0.5, -1.0, 0.2), mask(True, True, False, True, True), None),
    ("ucb", vector(1.0, 0.8, 0.5), None, vector(0.0, 0.2, 0.3)),
    (
        "thompson",
        vector(0.3, 0.35, 0.1, 0.6),
        mask(True, True, True, False),
        vector(0.2, 0.2, 0.2, 0.2),
    ),
]


@pytest.mark.parametrize(
    ("name", "scores", "allowed", "spread"),
    CASES,
    ids=["epsilon_greedy", "epsilon_greedy_masked", "softmax_masked", "ucb", "thompson_masked"],
)
def test_draws_match_the_probabilities(
    name: str, scores: Vector, allowed: Mask | None, spread: Vector | None
) -> None:
    probabilities = STRATEGIES[name].probabilities(scores, allowed, spread)
    counts = drawn_counts(probabilities, seed=int(scores.shape[0]))
    support = probabilities > 0
    assert np.all(counts[~support] == 0), "a masked action was drawn"
    expected = DRAWS * probabilities[support]
    statistic = float(np.sum((counts[support] - expected) ** 2 / expected))
    dof = int(support.sum()) - 1
    assert statistic < chi2_critical_999(dof), (name, counts, expected)


def test_draw_is_reproducible_under_a_seed_and_skips_zero_mass() -> None:
    probabilities = vector(0.0, 0.25, 0.0, 0.75)
    rng_a, rng_b = random.Random(11), random.Random(11)
    first = [_draw(probabilities, rng_a) for _ in range(200)]
    assert first == [_draw(probabilities, rng_b) for _ in range(200)]
    assert set(first) == {1, 3}
    # Rounding that leaves the cumulative sum just below u falls back to the last allowed action.
    assert _draw(vector(0.5, 0.4999999, 0.0), _FixedU(0.99999999)) == 1


class _FixedU(random.Random):
    """A generator whose ``random()`` always returns one value."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value
