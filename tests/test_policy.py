"""BaselinePolicy and LearnedPolicy: the exact distribution every choice came from."""

from __future__ import annotations

import importlib
import importlib.util
import math
import random
from collections import Counter
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from agentrt.config import BaselineConfig, ModelParametersConfig
from agentrt.errors import PolicyError
from agentrt.exploration import (
    EpsilonGreedy,
    Softmax,
    Strategy,
    ThompsonSampling,
    UpperConfidenceBound,
)
from agentrt.learning.features import FeatureEncoder, FeatureSpec
from agentrt.learning.linear import LinearModel
from agentrt.learning.nets import build_network
from agentrt.learning.neural import NeuralModel
from agentrt.policy import BaselinePolicy, Choice, LearnedPolicy, _draw
from agentrt.types import RewardModel

UNIFORM = BaselinePolicy(BaselineConfig())
DRAWS = 30_000

# Upper 0.999 quantiles of the chi-square distribution, by degrees of freedom.
_CHI2_999 = {
    1: 10.828,
    2: 13.816,
    3: 16.266,
    4: 18.467,
    5: 20.515,
    6: 22.458,
    7: 24.322,
    8: 26.124,
    9: 27.877,
    10: 29.588,
}


def chi2_critical_999(dof: int) -> float:
    """The 0.999 quantile of chi-square with ``dof`` degrees of freedom."""
    if importlib.util.find_spec("scipy") is not None:
        stats = importlib.import_module("scipy.stats")
        return float(stats.chi2.ppf(0.999, dof))
    if dof in _CHI2_999:
        return _CHI2_999[dof]
    # Wilson–Hilferty: chi2_p(k) ≈ k (1 - 2/(9k) + z_p sqrt(2/(9k)))^3, z_0.999 = 3.0902.
    h = 2.0 / (9.0 * dof)
    return dof * (1.0 - h + 3.090232 * math.sqrt(h)) ** 3


def chi_square(counts: Counter[int], probabilities: tuple[float, ...], draws: int) -> float:
    """Pearson's statistic over the actions with a non-zero probability."""
    return sum(
        (counts[i] - draws * p) ** 2 / (draws * p) for i, p in enumerate(probabilities) if p > 0
    )


def draw(
    policy: BaselinePolicy,
    actions: tuple[str, ...],
    allowed: tuple[bool, ...] | None,
    seed: int,
    draws: int = DRAWS,
) -> tuple[Counter[int], Choice]:
    rng = random.Random(seed)
    counts: Counter[int] = Counter()
    first = policy.choose(actions, allowed, rng)
    for _ in range(draws):
        choice = policy.choose(actions, allowed, rng)
        assert choice.probabilities == first.probabilities
        counts[choice.action_index] += 1
    return counts, first


def names(count: int) -> tuple[str, ...]:
    return tuple(f"a{i}" for i in range(count))


# -- uniform ----------------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 2, 3, 7, 10])
def test_uniform_gives_exactly_one_over_k(count: int) -> None:
    choice = UNIFORM.choose(names(count), None, random.Random(0))

    assert choice.probabilities == (1.0 / count,) * count
    assert 0 <= choice.action_index < count
    assert math.fsum(choice.probabilities) == pytest.approx(1.0, abs=1e-12)
    assert choice.policy_version is None
    assert choice.exploration == {"method": "uniform"}


def test_uniform_with_a_mask_gives_one_over_allowed_and_zero_elsewhere() -> None:
    allowed = (True, False, True, False, True)

    choice = UNIFORM.choose(names(5), allowed, random.Random(0))

    assert choice.probabilities == (1 / 3, 0.0, 1 / 3, 0.0, 1 / 3)
    assert allowed[choice.action_index]
    assert choice.exploration == {"method": "uniform"}


def test_uniform_with_one_allowed_action_always_picks_it() -> None:
    rng = random.Random(1)
    allowed = (False, False, True, False)

    choices = [UNIFORM.choose(names(4), allowed, rng) for _ in range(200)]

    assert {c.action_index for c in choices} == {2}
    assert all(c.probabilities == (0.0, 0.0, 1.0, 0.0) for c in choices)


@st.composite
def masks(draw_from: st.DrawFn) -> tuple[bool, ...]:
    count = draw_from(st.integers(1, 12))
    flags = draw_from(st.lists(st.booleans(), min_size=count, max_size=count))
    if not any(flags):
        flags[draw_from(st.integers(0, count - 1))] = True
    return tuple(flags)


@settings(max_examples=200, deadline=None)
@given(allowed=st.one_of(st.none(), masks()), seed=st.integers(0, 2**32))
def test_uniform_chooses_an_allowed_action_with_its_exact_probability(
    allowed: tuple[bool, ...] | None, seed: int
) -> None:
    count = len(allowed) if allowed is not None else 1 + seed % 9
    flags = allowed if allowed is not None else (True,) * count
    rng = random.Random(seed)

    for _ in range(20):
        choice = UNIFORM.choose(names(count), allowed, rng)

        assert flags[choice.action_index]
        expected = 1.0 / sum(flags)
        assert choice.probabilities == tuple(expected if ok else 0.0 for ok in flags)
        assert choice.probabilities[choice.action_index] > 0.0
        # decide() stores exactly this distribution; record() accepts sums within 1e-6.
        assert abs(math.fsum(choice.probabilities) - 1.0) < 1e-9


@pytest.mark.parametrize(
    ("count", "allowed", "seed"),
    [
        (4, None, 11),
        (10, None, 12),
        (6, (True, False, True, True, False, True), 13),
        (2, None, 14),
    ],
)
def test_uniform_frequencies_match_the_probabilities(
    count: int, allowed: tuple[bool, ...] | None, seed: int
) -> None:
    counts, choice = draw(UNIFORM, names(count), allowed, seed)

    support = [i for i, p in enumerate(choice.probabilities) if p > 0]
    assert set(counts) == set(support)  # masked actions are never drawn
    statistic = chi_square(counts, choice.probabilities, DRAWS)
    assert statistic < chi2_critical_999(len(support) - 1)


# -- fixed ------------------------------------------------------------------------------


def fixed(action: str) -> BaselinePolicy:
    return BaselinePolicy(BaselineConfig(policy="fixed", action=action))


def test_fixed_puts_probability_one_on_its_action() -> None:
    policy = fixed("a2")
    rng = random.Random(0)

    for _ in range(100):
        choice = policy.choose(names(4), None, rng)
        assert choice == Choice(2, (0.0, 0.0, 1.0, 0.0), None, {"method": "fixed"})


def test_fixed_is_unaffected_by_a_mask_that_allows_its_action() -> None:
    choice = fixed("a1").choose(names(3), (False, True, True), random.Random(0))

    assert choice == Choice(1, (0.0, 1.0, 0.0), None, {"method": "fixed"})


def test_fixed_accepts_the_shorthand_config() -> None:
    policy = BaselinePolicy(BaselineConfig.model_validate("a0"))

    assert policy.choose(names(2), None, random.Random(0)).probabilities == (1.0, 0.0)


def test_fixed_action_masked_out_falls_back_to_uniform_over_the_allowed() -> None:
    policy = fixed("a0")
    allowed = (False, True, True, False, True)

    counts, choice = draw(policy, names(5), allowed, seed=21)

    assert choice.probabilities == (0.0, 1 / 3, 1 / 3, 0.0, 1 / 3)
    assert choice.exploration == {"method": "uniform", "reason": "fixed_unavailable"}
    assert choice.policy_version is None
    assert set(counts) == {1, 2, 4}
    assert chi_square(counts, choice.probabilities, DRAWS) < chi2_critical_999(2)


def test_fixed_action_not_offered_is_reported_as_unavailable() -> None:
    choice = fixed("elsewhere").choose(names(3), None, random.Random(0))

    assert choice.exploration == {"method": "uniform", "reason": "fixed_unavailable"}


def test_fixed_action_not_offered_falls_back_to_uniform_over_the_allowed() -> None:
    policy = fixed("elsewhere")

    counts, choice = draw(policy, names(4), (True, True, False, True), seed=22)

    assert choice.probabilities == (1 / 3, 1 / 3, 0.0, 1 / 3)
    assert choice.exploration == {"method": "uniform", "reason": "fixed_unavailable"}
    assert set(counts) == {0, 1, 3}
    assert chi_square(counts, choice.probabilities, DRAWS) < chi2_critical_999(2)


# -- reproducibility --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "allowed"),
    [
        (UNIFORM, None),
        (UNIFORM, (True, False, True, True, True, False)),
        (fixed("a1"), (True, False, True, True, True, False)),
    ],
)
def test_the_same_seed_gives_the_same_choices(
    policy: BaselinePolicy, allowed: tuple[bool, ...] | None
) -> None:
    def sequence(seed: int) -> list[int]:
        rng = random.Random(seed)
        return [policy.choose(names(6), allowed, rng).action_index for _ in range(500)]

    assert sequence(42) == sequence(42)
    assert sequence(42) != sequence(43)


def test_fixed_choices_do_not_depend_on_the_seed() -> None:
    policy = fixed("a3")

    first = [policy.choose(names(5), None, random.Random(s)).action_index for s in range(50)]

    assert first == [3] * 50


def test_manual_chi_square_quantiles_are_sane() -> None:
    # The table and the approximation agree where they meet, and grow with the dof.
    h = 2.0 / (9.0 * 10)
    approximation = 10 * (1.0 - h + 3.090232 * math.sqrt(h)) ** 3
    assert approximation == pytest.approx(_CHI2_999[10], rel=0.01)
    values = [chi2_critical_999(k) for k in range(1, 30)]
    assert values == sorted(values)


def test_the_frequency_check_notices_a_small_bias() -> None:
    counts, _ = draw(UNIFORM, names(2), None, seed=31)

    # The same draws judged against a distribution two points off are rejected.
    assert chi_square(counts, (0.5, 0.5), DRAWS) < chi2_critical_999(1)
    assert chi_square(counts, (0.52, 0.48), DRAWS) > chi2_critical_999(1)


# -- LearnedPolicy: the serving fast path answers what the general path answers -------------

LEARNED = ("search", "answer", "escalate", "wait", "ask")
FEATURES = FeatureSpec(dim=32)


def linear_model() -> LinearModel:
    generator = torch.Generator().manual_seed(1)
    k, d = len(LEARNED), FEATURES.dim + 1
    root = torch.randn(k, d, d, generator=generator, dtype=torch.float64)
    a_inv = root @ root.transpose(1, 2) / d + torch.eye(d, dtype=torch.float64)
    return LinearModel(torch.randn(k, d, generator=generator, dtype=torch.float64), a_inv)


def neural_model() -> NeuralModel:
    generator = torch.Generator().manual_seed(2)
    network = build_network("mlp", FEATURES.dim, len(LEARNED), ModelParametersConfig())
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return NeuralModel(network, {})


class FixedModel:
    """A reward model with the same estimates for every context."""

    def __init__(self, means: list[float], stds: list[float] | None) -> None:
        self.means = np.array([means])
        self.stds = None if stds is None else np.array([stds])

    def predict(
        self, features: npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64] | None]:
        rows = features.shape[0]
        stds = None if self.stds is None else np.repeat(self.stds, rows, axis=0)
        return np.repeat(self.means, rows, axis=0), stds

    def tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def describe(self) -> dict[str, Any]:
        return {}


policy_keys = st.sampled_from(["x", "y", "z", "tier", "query", "tags", "v", "unseen"])
policy_values = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(-1e6, 1e6),
    st.sampled_from([math.nan, math.inf, 10**400]),
    st.integers(-100, 100),
    st.text(max_size=16),
    st.lists(st.one_of(st.floats(-3, 3), st.text(max_size=3)), max_size=6),
)
policy_contexts = st.dictionaries(policy_keys, policy_values, max_size=6)
ENCODER = FeatureEncoder(FEATURES).fit(
    [{"x": float(i), "y": -2.0 * i, "v": [i, 1.0, -i], "tier": "gold"} for i in range(30)]
)
MODELS: dict[str, RewardModel] = {"linear": linear_model(), "neural": neural_model()}
any_strategy = st.one_of(
    st.builds(EpsilonGreedy, epsilon=st.floats(0, 1)),
    st.builds(Softmax, temperature=st.sampled_from([0.1, 1.0]), floor=st.floats(0, 1)),
    st.builds(UpperConfidenceBound, confidence=st.floats(0, 3), floor=st.floats(0, 1)),
    st.builds(ThompsonSampling, samples=st.just(64), floor=st.floats(0, 1)),
)


def learned(model: str, exploration: Strategy) -> LearnedPolicy:
    return LearnedPolicy(3, model, MODELS[model], ENCODER, LEARNED, exploration)


def reference_choose(
    policy: LearnedPolicy,
    context: dict[str, Any],
    actions: tuple[str, ...],
    allowed: tuple[bool, ...] | None,
    rng: random.Random,
    chosen: npt.NDArray[np.float64],
) -> Choice:
    """choose() as first written, every step on the general path (an explicit mask even when
    every action is allowed, model columns picked one by one, numpy's checks); ``chosen``
    counts its choices per model action, for UCB over a model without uncertainty."""
    unknown = [action for action in actions if action not in policy.actions]
    if unknown:
        raise PolicyError(f"unknown {unknown}")
    columns = [policy.actions.index(action) for action in actions]
    means, stds = policy.model.predict(policy.encoder.encode(context)[None, :])
    scores = means[0, columns]
    spread = None if stds is None else stds[0, columns]
    counted = spread is None and isinstance(policy.exploration, UpperConfidenceBound)
    if counted:
        spread = UpperConfidenceBound.count_bonus(chosen[columns])
    mask = np.ones(len(actions), dtype=np.bool_) if allowed is None else np.array(allowed)
    probabilities = policy.exploration.probabilities(scores, mask, spread)
    if not (np.all(np.isfinite(probabilities)) and abs(float(probabilities.sum()) - 1.0) < 1e-6):
        raise PolicyError("invalid probabilities")
    index = _draw(probabilities, rng)
    if counted:
        chosen[columns[index]] += 1.0
    return Choice(
        index,
        tuple(float(p) for p in probabilities),
        policy.version,
        policy.exploration.describe(),
    )


@st.composite
def offers(draw_from: st.DrawFn) -> tuple[tuple[str, ...], tuple[bool, ...] | None]:
    """Offered actions (all of them in order, or some in any order) and a mask (none, all
    true, or any with at least one allowed)."""
    every = draw_from(st.booleans())
    order = LEARNED if every else draw_from(st.permutations(LEARNED))
    offered = tuple(order if every else order[: draw_from(st.integers(1, len(LEARNED)))])
    kind = draw_from(st.sampled_from(["none", "all", "some"]))
    if kind == "none":
        return offered, None
    if kind == "all":
        return offered, (True,) * len(offered)
    flags = draw_from(st.lists(st.booleans(), min_size=len(offered), max_size=len(offered)))
    if not any(flags):
        flags[draw_from(st.integers(0, len(offered) - 1))] = True
    return offered, tuple(flags)


@settings(max_examples=200, deadline=None)
@given(
    model=st.sampled_from(list(MODELS)),
    exploration=any_strategy,
    offer=offers(),
    contexts=st.lists(policy_contexts, min_size=1, max_size=4),
    seed=st.integers(0, 2**32),
)
def test_choose_answers_what_the_general_path_answers(
    model: str,
    exploration: Strategy,
    offer: tuple[tuple[str, ...], tuple[bool, ...] | None],
    contexts: list[dict[str, Any]],
    seed: int,
) -> None:
    policy = learned(model, exploration)
    actions, allowed = offer
    fast, reference = random.Random(seed), random.Random(seed)
    chosen = np.zeros(len(LEARNED))

    for context in contexts:
        choice = policy.choose(context, actions, allowed, fast)
        expected = reference_choose(policy, context, actions, allowed, reference, chosen)
        assert choice == expected
        assert [p.hex() for p in choice.probabilities] == [p.hex() for p in expected.probabilities]
        if allowed is not None:
            assert allowed[choice.action_index]


@pytest.mark.parametrize("model", list(MODELS))
def test_an_all_true_mask_answers_like_no_mask(model: str) -> None:
    # Two equal policies: UCB over a model without uncertainty counts each policy's choices.
    one, other = (learned(model, UpperConfidenceBound(confidence=1.0, floor=0.1)) for _ in "ab")
    contexts = [{"x": float(i), "tier": "gold" if i % 2 else "silver"} for i in range(50)]
    everything = (True,) * len(LEARNED)

    plain, masked = random.Random(7), random.Random(7)
    for context in contexts:
        assert one.choose(context, LEARNED, None, plain) == other.choose(
            context, LEARNED, everything, masked
        )


def test_ucb_without_uncertainty_tries_every_action_within_its_window() -> None:
    """The count bonus of a sliding window: an action not chosen in the last ``window_size``
    decisions looks untried again, so it is tried again even when its estimate is worst."""
    model = FixedModel([0.9, 0.5, 0.1], None)
    exploration = UpperConfidenceBound(confidence=0.1, window_size=4, floor=0.0)
    policy = LearnedPolicy(1, "fixed", model, ENCODER, ("a", "b", "c"), exploration)
    rng = random.Random(0)
    picks = [policy.choose({}, ("a", "b", "c"), None, rng).action_index for _ in range(40)]
    assert sorted(picks[:3]) == [0, 1, 2]  # untried actions first
    for start in range(len(picks) - 6):
        assert set(picks[start : start + 6]) == {0, 1, 2}, picks
    assert Counter(picks)[0] > Counter(picks)[2]
    # Without a window the counts keep growing and the worst action fades out.
    unbounded = LearnedPolicy(
        1, "fixed", model, ENCODER, ("a", "b", "c"), UpperConfidenceBound(0.1, None, 0.0)
    )
    later = [unbounded.choose({}, ("a", "b", "c"), None, rng).action_index for _ in range(200)]
    assert Counter(later[100:])[2] < 5
    # A model with its own uncertainty is not counted.
    with_spread = LearnedPolicy(
        1, "fixed", FixedModel([0.9, 0.5, 0.1], [0.0, 0.0, 0.0]), ENCODER, ("a", "b", "c"),
        exploration,
    )  # fmt: skip
    assert {with_spread.choose({}, ("a", "b", "c"), None, rng).action_index for _ in range(20)} == {
        0
    }


def test_offered_actions_in_another_order_get_their_own_probabilities() -> None:
    policy = learned("linear", EpsilonGreedy(epsilon=0.3))
    context = {"x": 4.0, "query": "where is my order"}

    straight = policy.choose(context, LEARNED, None, random.Random(0)).probabilities
    turned = policy.choose(context, LEARNED[::-1], None, random.Random(0)).probabilities
    fewer = policy.choose(context, ("ask", "search"), None, random.Random(0)).probabilities

    assert turned == pytest.approx(straight[::-1], abs=1e-15)
    assert len(fewer) == 2
    assert math.fsum(fewer) == pytest.approx(1.0)


def test_an_unknown_action_is_refused_on_every_call() -> None:
    policy = learned("linear", EpsilonGreedy())
    policy.choose({"x": 1.0}, LEARNED, None, random.Random(0))

    for _ in range(2):
        with pytest.raises(PolicyError, match="does not know action"):
            policy.choose({"x": 1.0}, ("search", "teleport"), None, random.Random(0))


def test_a_mask_of_another_length_is_still_an_error() -> None:
    policy = learned("neural", EpsilonGreedy())

    with pytest.raises(ValueError, match="broadcast"):
        policy.choose({"x": 1.0}, LEARNED, (True, True, True), random.Random(0))


def test_invalid_probabilities_are_a_policy_error() -> None:
    # A NaN uncertainty makes the upper bound NaN: no action is best.
    model = FixedModel([0.1, 0.2, 0.3], [math.nan, math.nan, math.nan])
    policy = LearnedPolicy(1, "fixed", model, ENCODER, LEARNED[:3], UpperConfidenceBound())

    for allowed in (None, (True, True, True)):
        with np.errstate(invalid="ignore"), pytest.raises(PolicyError, match="invalid"):
            policy.choose({"x": 1.0}, LEARNED[:3], allowed, random.Random(0))
