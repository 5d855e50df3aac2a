"""Promotion validators: sanity, ope, latency, thresholds, and the cycle that runs them.

The task: each context names one of three topics, each with its own best action (Bernoulli
reward 0.8 for it, 0.2 for the others). Policies are built by hand from linear models whose
estimates are set exactly: GOOD estimates the true means (it ranks the best action first),
WORSE estimates them shifted by one action (it ranks a bad action first). Held-out rows are
logged by a uniform policy (propensity 1/3) with a fixed seed, so the true values are known:
with epsilon 0.1 GOOD earns 0.76, WORSE 0.22 and the uniform baseline 0.4. The end-to-end
tests run real cycles on real databases with a registered learner that trains a worse model.
"""

from __future__ import annotations

import json
import math
import random
import re
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch

from agentrt.config import AgentRTConfig, BaselineConfig, DatabaseConfig, load_config
from agentrt.exploration import EpsilonGreedy
from agentrt.learning.data import BanditData
from agentrt.learning.features import FeatureEncoder, FeatureSpec
from agentrt.learning.linear import LinearLearner, LinearModel
from agentrt.learning.settings import LearnerSettings
from agentrt.plugins import Plugin, PluginRegistry, RewardModel
from agentrt.policy import BaselinePolicy, LearnedPolicy
from agentrt.runtime import Runtime
from agentrt.schemas import Experience, PolicyVersion
from agentrt.storage import repositories
from agentrt.storage.engine import Database
from agentrt.validation import (
    LatencyValidator,
    OffPolicyValidator,
    SanityValidator,
    ThresholdsValidator,
    ValidationContext,
    ValidatorResult,
    run_validators,
)

ACTIONS = ("a", "b", "c")
TOPICS = ("t0", "t1", "t2")
BEST = {"t0": "a", "t1": "b", "t2": "c"}
P_BEST, P_OTHER = 0.8, 0.2
EPSILON = 0.1
START = datetime(2030, 1, 1, tzinfo=UTC)

Matrix = npt.NDArray[np.float64]
Table = dict[str, tuple[float, ...]]

TRUE: Table = {t: tuple(P_BEST if a == BEST[t] else P_OTHER for a in ACTIONS) for t in TOPICS}
# The true means moved one action along: each topic's highest estimate is on a bad action.
SHIFTED: Table = {t: tuple(np.roll(TRUE[t], 1).tolist()) for t in TOPICS}


def value_of(table: Table, epsilon: float = EPSILON) -> float:
    """The true value of epsilon-greedy on ``table``'s estimates, topics equally likely."""
    total = 0.0
    for topic in TOPICS:
        greedy = ACTIONS[int(np.argmax(table[topic]))]
        means = TRUE[topic]
        total += (1 - epsilon) * means[ACTIONS.index(greedy)] + epsilon * sum(means) / 3
    return total / len(TOPICS)


GOOD_VALUE, WORSE_VALUE, UNIFORM_VALUE = value_of(TRUE), value_of(SHIFTED), value_of(TRUE, 1.0)


def encoder() -> FeatureEncoder:
    return FeatureEncoder(FeatureSpec(dim=16)).fit({"topic": t} for t in TOPICS)


def linear_model(table: Table, features: FeatureEncoder) -> LinearModel:
    """A linear model whose estimate for (topic, action) is exactly ``table[topic][action]``."""
    x = features.encode_many([{"topic": t} for t in TOPICS]).astype(np.float64)
    x = np.hstack([x, np.ones((len(TOPICS), 1))])
    targets = np.array([table[t] for t in TOPICS])  # (topics, actions)
    theta, *_ = np.linalg.lstsq(x, targets, rcond=None)  # (features + 1, actions)
    assert np.allclose(x @ theta, targets), "topics collide in the hashed features"
    d = x.shape[1]
    a_inv = torch.eye(d, dtype=torch.float64).repeat(len(ACTIONS), 1, 1) * 0.01
    return LinearModel(torch.from_numpy(np.ascontiguousarray(theta.T)), a_inv)


def learned(table: Table, version: int = 0, *, epsilon: float = EPSILON) -> LearnedPolicy:
    features = encoder()
    model = linear_model(table, features)
    return LearnedPolicy(version, "linear", model, features, ACTIONS, EpsilonGreedy(epsilon))


def good_model() -> LinearModel:
    return linear_model(TRUE, encoder())


def with_model(model: RewardModel) -> LearnedPolicy:
    """A policy like ``learned(TRUE)`` serving ``model``."""
    return LearnedPolicy(0, "linear", model, encoder(), ACTIONS, EpsilonGreedy(EPSILON))


class NaNModel:
    """Finite weights, NaN estimates."""

    def __init__(self, inner: LinearModel) -> None:
        self.inner = inner

    def predict(self, features: npt.NDArray[np.float32]) -> tuple[Matrix, Matrix | None]:
        means, stds = self.inner.predict(features)
        return np.full_like(means, np.nan), stds

    def tensors(self) -> dict[str, torch.Tensor]:
        return self.inner.tensors()

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()


class CrashingModel(NaNModel):
    def predict(self, features: npt.NDArray[np.float32]) -> tuple[Matrix, Matrix | None]:
        raise RuntimeError("model crashed")


def held_out(
    n: int,
    *,
    seed: int = 0,
    propensity: float | None = 1 / 3,
    uniform: bool = True,
) -> list[Experience]:
    """``n`` decisions over the topics, logged uniformly at random, with Bernoulli rewards.

    With ``uniform=False`` the logging policy always took the best action (propensity 1 is then
    the honest value).
    """
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        topic = TOPICS[i % 3]
        action = rng.choice(ACTIONS) if uniform else BEST[topic]
        mean = TRUE[topic][ACTIONS.index(action)]
        reward = float(rng.random() < mean)
        at = START + timedelta(milliseconds=i)
        rows.append(
            Experience(
                decision_id=uuid.UUID(int=i + 1),
                agent_id="router",
                episode_id=None,
                step=None,
                created_at=at,
                mode="live",
                context={"topic": topic},
                actions=ACTIONS,
                action=action,
                action_index=ACTIONS.index(action),
                propensity=propensity,
                probabilities=None,
                policy_version=None,
                exploration=None,
                policy_action=None,
                reward=reward,
                outcome=None,
                feedback_count=1,
                rewarded_at=at,
                activated_at=at,
            )
        )
    return rows


MODEL, ADAPTATION = "model_performance", "adaptation_performance"


def metric(group: str, name: str, kind: str, threshold: float) -> dict[str, Any]:
    """One ``performance_metrics.learning_metrics`` threshold."""
    return {group: {name: {"type": kind, "threshold": threshold}}}


def make_config(
    *,
    validation: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    model: Mapping[str, Any] | None = None,
) -> AgentRTConfig:
    agent: dict[str, Any] = {"actions": list(ACTIONS), "validation": dict(validation or {})}
    tree: dict[str, Any] = {
        "agents": {"router": agent},
        "performance_metrics": {"learning_metrics": dict(metrics or {})},
    }
    if model is not None:
        agent["model"] = "small"
        tree["model_configuration"] = {"learning_models": {"small": dict(model)}}
    return load_config(tree)


def context_for(
    candidate: LearnedPolicy,
    active: LearnedPolicy | None = None,
    rows: Sequence[Experience] | None = None,
    *,
    config: AgentRTConfig | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> ValidationContext:
    return ValidationContext(
        agent_id="router",
        config=config or make_config(),
        candidate=candidate,
        active=active,
        baseline=BaselinePolicy(BaselineConfig()),
        held_out=held_out(600) if rows is None else list(rows),
        metrics=dict(metrics or {}),
    )


def test_the_hand_set_models_rank_as_intended() -> None:
    good, worse = learned(TRUE), learned(SHIFTED)
    for topic in TOPICS:
        x = good.encoder.encode({"topic": topic})[None, :]
        assert ACTIONS[int(np.argmax(good.model.predict(x)[0]))] == BEST[topic]
        assert ACTIONS[int(np.argmax(worse.model.predict(x)[0]))] != BEST[topic]
    values = {"good": GOOD_VALUE, "uniform": UNIFORM_VALUE, "worse": WORSE_VALUE}
    assert values == pytest.approx({"good": 0.76, "uniform": 0.4, "worse": 0.22})


# -- ope -----------------------------------------------------------------------------------


@pytest.mark.parametrize("estimator", ["dr", "snips"])
def test_ope_rejects_a_worse_candidate_with_a_readable_reason(estimator: str) -> None:
    config = make_config(validation={"estimator": estimator})
    context = context_for(learned(SHIFTED), learned(TRUE, version=1), config=config)
    result = OffPolicyValidator().validate(context)

    assert result.name == "ope"
    assert result.passed is False
    details = result.details
    candidate, incumbent = details["candidate"]["value"], details["incumbent"]["value"]
    assert candidate == pytest.approx(WORSE_VALUE, abs=0.1)
    assert incumbent == pytest.approx(GOOD_VALUE, abs=0.1)
    assert details["incumbent"]["name"] == "v1"
    assert details["estimator"] == estimator
    assert details["difference"] == pytest.approx(candidate - incumbent)
    assert details["difference_lower"] < details["difference"] < -0.3
    assert (details["margin"], details["confidence"], details["rows"]) == (0.05, 0.9, 600)
    assert details["candidate"]["rows_used"] == 600
    assert result.reason.startswith(f"{estimator.upper()} {candidate:.4f} vs v1 {incumbent:.4f}: ")
    assert f"difference {details['difference']:+.4f}" in result.reason
    assert f"lower bound {details['difference_lower']:+.4f} at 90%" in result.reason
    assert result.reason.endswith("worse than the margin -0.05")
    json.dumps(details, allow_nan=False)


@pytest.mark.parametrize("estimator", ["dr", "snips"])
def test_ope_passes_a_better_candidate(estimator: str) -> None:
    config = make_config(validation={"estimator": estimator})
    context = context_for(learned(TRUE), learned(SHIFTED, version=3), config=config)
    result = OffPolicyValidator().validate(context)

    assert result.passed is True, result.reason
    assert result.details["incumbent"]["name"] == "v3"
    assert result.details["difference"] == pytest.approx(GOOD_VALUE - WORSE_VALUE, abs=0.15)
    assert result.details["difference_lower"] > 0.3
    assert result.reason.startswith(f"{estimator.upper()} ")
    assert " vs v3 " in result.reason
    assert result.reason.endswith("not worse than the margin -0.05")


@pytest.mark.parametrize("estimator", ["dr", "snips"])
@pytest.mark.parametrize(
    ("table", "passes"), [(TRUE, True), (SHIFTED, False)], ids=["good", "worse"]
)
def test_ope_against_the_baseline(estimator: str, table: Table, passes: bool) -> None:
    config = make_config(validation={"estimator": estimator})
    result = OffPolicyValidator().validate(context_for(learned(table), None, config=config))

    assert result.passed is passes, result.reason
    incumbent = result.details["incumbent"]
    assert incumbent["name"] == "baseline"
    assert incumbent["value"] == pytest.approx(UNIFORM_VALUE, abs=0.08)
    assert " vs baseline " in result.reason


@pytest.mark.parametrize("estimator", ["dr", "snips"])
@pytest.mark.parametrize("margin", [0.0, 0.05])
def test_ope_the_incumbent_itself_is_not_worse_than_itself(estimator: str, margin: float) -> None:
    config = make_config(validation={"estimator": estimator, "margin": margin})
    policy = learned(TRUE, version=2)
    result = OffPolicyValidator().validate(context_for(policy, policy, config=config))

    assert result.passed is True, result.reason
    assert result.details["difference"] == 0.0
    assert result.details["difference_lower"] == 0.0
    assert result.details["margin"] == margin
    assert result.reason.endswith(f"not worse than the margin -{margin:g}")


@pytest.mark.parametrize(("margin", "passes"), [(0.3, False), (1.0, True)])
def test_ope_margin_is_how_much_worse_a_candidate_may_be(margin: float, passes: bool) -> None:
    # The worse candidate is about 0.54 below the incumbent.
    config = make_config(validation={"margin": margin})
    context = context_for(learned(SHIFTED), learned(TRUE, version=1), config=config)
    result = OffPolicyValidator().validate(context)

    assert result.passed is passes, result.reason
    assert result.details["difference"] < -0.3
    assert (result.details["difference_lower"] >= -margin) is passes


@pytest.mark.parametrize("require_ope", [False, True])
def test_ope_too_few_rows(require_ope: bool) -> None:
    config = make_config(validation={"min_rows": 50, "require_ope": require_ope})
    context = context_for(learned(SHIFTED), learned(TRUE, version=1), held_out(49), config=config)
    result = OffPolicyValidator().validate(context)

    verdict = "rejected (validation.require_ope)" if require_ope else "could not judge, passed"
    assert result.passed is not require_ope
    assert result.reason == (
        f"{verdict}: only 49 held-out decisions with a known propensity (validation.min_rows is 50)"
    )
    assert result.details == {"rows": 49}


def test_ope_no_held_out_rows_cannot_be_judged() -> None:
    result = OffPolicyValidator().validate(context_for(learned(TRUE), None, []))
    assert result.passed is True
    assert result.reason.startswith("could not judge, passed: only 0 held-out decisions")
    assert result.details == {"rows": 0}


@pytest.mark.parametrize("require_ope", [False, True])
@pytest.mark.parametrize(
    ("rows", "why"),
    [
        (
            held_out(600, propensity=1.0, uniform=False),
            "600 of 600 rows were logged with propensity 1: the logging policy did not explore",
        ),
        (held_out(600, propensity=None), "600 of 600 rows have no logged propensity"),
    ],
    ids=["deterministic", "unknown"],
)
def test_ope_logs_that_cannot_support_it(
    rows: list[Experience], why: str, require_ope: bool
) -> None:
    config = make_config(validation={"require_ope": require_ope})
    context = context_for(learned(SHIFTED), learned(TRUE, version=1), rows, config=config)
    result = OffPolicyValidator().validate(context)

    assert result.passed is not require_ope
    verdict = "rejected (validation.require_ope)" if require_ope else "could not judge, passed"
    prefix = f"{verdict}: the logs cannot support off-policy evaluation: "
    assert result.reason.startswith(prefix), result.reason
    assert why in result.reason


def test_ope_ignores_rows_it_cannot_use() -> None:
    rows = held_out(600)
    unusable = [
        rows[0].model_copy(update={"reward": None}),
        rows[1].model_copy(update={"activated_at": None}),
        rows[2].model_copy(update={"action": "z", "actions": (*ACTIONS, "z")}),
    ]
    context = context_for(learned(TRUE), None, [*unusable, *rows[3:]])
    result = OffPolicyValidator().validate(context)
    assert result.passed is True
    assert result.details["rows"] == 597


# -- sanity --------------------------------------------------------------------------------


def test_sanity_passes_a_finite_model() -> None:
    result = SanityValidator().validate(context_for(learned(TRUE)))
    assert result == ValidatorResult(
        "sanity",
        True,
        "finite weights and estimates, valid probabilities",
        {
            "weights_finite": True,
            "contexts_checked": 256,
            "estimates_finite": True,
            "probabilities_valid": True,
        },
    )


def test_sanity_fails_nan_weights() -> None:
    good = good_model()
    theta = good.theta.clone()
    theta[1, 0] = math.nan
    result = SanityValidator().validate(context_for(with_model(LinearModel(theta, good.a_inv))))

    assert result.passed is False
    assert result.details["weights_finite"] is False
    assert result.details["estimates_finite"] is False
    assert result.reason == "failed: weights_finite, estimates_finite, probabilities_valid"


def test_sanity_fails_nan_weights_even_without_held_out_rows() -> None:
    good = good_model()
    broken = with_model(LinearModel(torch.full_like(good.theta, math.nan), good.a_inv))
    result = SanityValidator().validate(context_for(broken, rows=[]))
    assert result.passed is False
    assert result.reason == "failed: weights_finite"
    assert result.details["contexts_checked"] == 0


def test_sanity_fails_nan_estimates_and_the_later_validators_are_skipped() -> None:
    broken = with_model(NaNModel(good_model()))
    validators = [SanityValidator(), OffPolicyValidator(), LatencyValidator()]
    context = context_for(broken, learned(TRUE, version=1))
    report = run_validators([*validators, ThresholdsValidator()], context)

    sanity = report["validators"]["sanity"]
    assert sanity["details"]["weights_finite"] is True
    assert sanity["details"]["estimates_finite"] is False
    assert sanity["details"]["probabilities_valid"] is False
    assert report["passed"] is False
    assert report["reasons"] == ["sanity: failed: estimates_finite, probabilities_valid"]
    assert list(report["validators"]) == ["sanity"]
    assert list(context.results) == ["sanity"]
    json.dumps(report, allow_nan=False)


def test_a_validator_that_raises_fails_the_candidate_and_the_others_still_run() -> None:
    class Exploding:
        name = "exploding"

        def validate(self, context: ValidationContext) -> ValidatorResult:
            raise ValueError("kaput")

    report = run_validators([Exploding(), SanityValidator()], context_for(learned(TRUE)))
    assert report["passed"] is False
    assert report["reasons"] == ["exploding: raised ValueError: kaput"]
    assert report["validators"]["exploding"] == {
        "passed": False,
        "reason": "raised ValueError: kaput",
        "details": {},
    }
    assert report["validators"]["sanity"]["passed"] is True


def test_a_sanity_check_that_raises_skips_the_later_validators() -> None:
    broken = with_model(CrashingModel(good_model()))
    report = run_validators([SanityValidator(), OffPolicyValidator()], context_for(broken))
    assert report["reasons"] == ["sanity: raised RuntimeError: model crashed"]
    assert list(report["validators"]) == ["sanity"]


def test_a_validator_without_a_name_is_reported_by_its_class_name() -> None:
    class Unnamed:
        def validate(self, context: ValidationContext) -> ValidatorResult:
            raise RuntimeError("no")

    report = run_validators([Unnamed()], context_for(learned(TRUE)))
    assert report["reasons"] == ["Unnamed: raised RuntimeError: no"]


# -- latency -------------------------------------------------------------------------------


def _latency(
    budget: tuple[str, float] | None, rows: Sequence[Experience] | None = None
) -> ValidatorResult:
    configured = {} if budget is None else metric(ADAPTATION, "response_time", *budget)
    context = context_for(learned(TRUE), rows=rows, config=make_config(metrics=configured))
    return LatencyValidator().validate(context)


@pytest.mark.parametrize("budget", [("seconds", 10), ("milliseconds", 10_000)])
def test_latency_within_a_generous_budget(budget: tuple[str, float]) -> None:
    result = _latency(budget)
    assert result.passed is True, result.reason
    assert result.details["budget_us"] == pytest.approx(1e7)
    assert 0 < result.details["p50_us"] <= result.details["p99_us"] < 1e7
    assert re.fullmatch(r"p99 \d+ us within the budget 10000000 us", result.reason)


def test_latency_over_an_impossible_budget() -> None:
    result = _latency(("microseconds", 1))
    assert result.passed is False
    p99 = result.details["p99_us"]
    assert p99 > 1.0
    assert result.details["budget_us"] == pytest.approx(1.0)
    assert result.reason == f"p99 {p99:.0f} us over the budget 1 us"


def test_latency_without_a_budget_reports_and_passes() -> None:
    result = _latency(None)
    assert result.passed is True
    assert "budget_us" not in result.details
    assert re.fullmatch(r"p99 \d+ us \(no response_time set\)", result.reason)


def test_latency_without_held_out_rows_uses_an_empty_context() -> None:
    assert _latency(("seconds", 10), rows=[]).passed is True


# -- thresholds ----------------------------------------------------------------------------


def _thresholds(
    metrics: Mapping[str, Any],
    *,
    table: Table = TRUE,
    trained: Mapping[str, Any] | None = None,
    model: Mapping[str, Any] | None = None,
    ope: ValidatorResult | None = None,
) -> ValidatorResult:
    config = make_config(metrics=metrics, model=model)
    context = context_for(learned(table), config=config, metrics=trained)
    if ope is not None:
        context.results["ope"] = ope
    return ThresholdsValidator().validate(context)


def _accuracy_of(table: Table, rows: Sequence[Experience]) -> float:
    successes = [r for r in rows if r.reward is not None and r.reward > 0]
    ranked = [
        r.action == ACTIONS[int(np.argmax(table[str(r.context["topic"])]))] for r in successes
    ]
    return float(np.mean(ranked))


@pytest.mark.parametrize(
    ("threshold", "kind"), [(0.5, "ratio"), (0.5, "percentage"), (50, "percentage")]
)
@pytest.mark.parametrize(
    ("table", "passes"), [(TRUE, True), (SHIFTED, False)], ids=["good", "worse"]
)
def test_thresholds_accuracy(threshold: float, kind: str, table: Table, passes: bool) -> None:
    configured = metric(MODEL, "accuracy", kind, threshold)
    result = _thresholds(configured, table=table)
    check = result.details["accuracy"]
    expected = _accuracy_of(table, held_out(600))
    assert check == {"value": pytest.approx(expected), "threshold": 0.5, "passed": passes}
    # Among successes, the best action (0.8) is twice as likely as both others together (0.4).
    assert expected == pytest.approx(2 / 3 if passes else 1 / 6, abs=0.08)
    assert result.passed is passes
    if not passes:
        assert result.reason == f"accuracy {expected:.4g} < 0.5"


_CURVE = [{"holdout_loss": v} for v in (1.0, 0.5, 0.4, 0.6)]  # var 0.00667, std 0.0816


@pytest.mark.parametrize(("threshold", "passes"), [(5, True), (3, True), (2, False)])
def test_thresholds_convergence_is_the_best_epoch(threshold: int, passes: bool) -> None:
    configured = metric(MODEL, "convergence", "epochs", threshold)
    result = _thresholds(configured, trained={"best_epoch": 3})
    check = {"value": 3.0, "threshold": threshold, "passed": passes}
    assert result == ValidatorResult(
        "thresholds",
        passes,
        "all configured thresholds met" if passes else f"convergence 3 > {threshold}",
        {"convergence": check},
    )


# The last three losses are 0.5, 0.4 and 0.6: variance 0.00667, standard deviation 0.0816.
_CURVE = [{"holdout_loss": v} for v in (1.0, 0.5, 0.4, 0.6)]


@pytest.mark.parametrize(
    ("kind", "threshold", "passes", "value"),
    [
        ("variance", 0.01, True, 0.02 / 3),
        ("variance", 0.005, False, 0.02 / 3),
        ("std", 0.1, True, (0.02 / 3) ** 0.5),
        ("std", 0.05, False, (0.02 / 3) ** 0.5),
    ],
)
def test_thresholds_stability_of_the_last_three_losses(
    kind: str, threshold: float, passes: bool, value: float
) -> None:
    configured = metric(MODEL, "stability", kind, threshold)
    result = _thresholds(configured, trained={"loss_curve": _CURVE})
    check = result.details["stability"]
    assert check == {"value": pytest.approx(value), "threshold": threshold, "passed": passes}
    assert result.passed is passes
    if not passes:
        assert result.reason == f"stability {value:.4g} > {threshold:g}"


def _ope_result(difference: float, incumbent: float) -> ValidatorResult:
    details = {"difference": difference, "incumbent": {"name": "v1", "value": incumbent}}
    return ValidatorResult("ope", True, "hand-made", details)


@pytest.mark.parametrize(("threshold", "passes"), [(0.1, True), (0.2, True), (0.25, False)])
def test_thresholds_effectiveness_is_the_relative_gain(threshold: float, passes: bool) -> None:
    configured = metric(ADAPTATION, "effectiveness", "improvement", threshold)
    result = _thresholds(configured, ope=_ope_result(0.1, -0.5))  # gain 0.1 / |-0.5| = 0.2
    assert result.details["effectiveness"] == {
        "value": pytest.approx(0.2),
        "threshold": threshold,
        "passed": passes,
    }
    assert result.passed is passes
    if not passes:
        assert result.reason == "effectiveness 0.2 < 0.25"


@pytest.mark.parametrize(
    "ope",
    [None, _ope_result(0.1, 0.0), ValidatorResult("ope", True, "could not judge", {"rows": 3})],
    ids=["no-ope", "zero-incumbent", "not-judged"],
)
def test_thresholds_effectiveness_not_measurable(ope: ValidatorResult | None) -> None:
    configured = metric(ADAPTATION, "effectiveness", "improvement", 0.1)
    result = _thresholds(configured, ope=ope)
    assert result.passed is True
    assert result.details["effectiveness"] == {
        "value": None,
        "threshold": 0.1,
        "passed": True,
        "note": "not measurable",
    }


def test_thresholds_effectiveness_after_a_real_ope() -> None:
    metrics = metric(ADAPTATION, "effectiveness", "improvement", 0.1)
    config = make_config(metrics=metrics)
    better = context_for(learned(TRUE), learned(SHIFTED, version=1), config=config)
    report = run_validators([OffPolicyValidator(), ThresholdsValidator()], better)
    assert report["passed"] is True, report["reasons"]
    gain = report["validators"]["thresholds"]["details"]["effectiveness"]["value"]
    ope = report["validators"]["ope"]["details"]
    assert gain == pytest.approx(ope["difference"] / abs(ope["incumbent"]["value"]))
    assert gain > 1.0

    worse = context_for(learned(SHIFTED), learned(TRUE, version=1), config=config)
    report = run_validators([OffPolicyValidator(), ThresholdsValidator()], worse)
    assert report["passed"] is False
    assert [reason.split(":")[0] for reason in report["reasons"]] == ["ope", "thresholds"]
    assert report["reasons"][1].startswith("thresholds: effectiveness -0.")


_SMALL = {"type": "contextual_bandit", "architecture": "mlp", "parameters": {"epochs": 10}}


@pytest.mark.parametrize(("threshold", "passes"), [(0.5, True), (0.4, True), (0.3, False)])
def test_thresholds_efficiency_is_the_share_of_epochs(threshold: float, passes: bool) -> None:
    configured = metric(ADAPTATION, "efficiency", "resource_usage", threshold)
    result = _thresholds(configured, trained={"epochs": 4}, model=_SMALL)
    assert result.details["efficiency"] == {
        "value": pytest.approx(0.4),
        "threshold": threshold,
        "passed": passes,
    }
    assert result.passed is passes
    if not passes:
        assert result.reason == "efficiency 0.4 > 0.3"


@pytest.mark.parametrize(
    ("metrics", "trained", "model"),
    [
        (metric(MODEL, "convergence", "epochs", 1), {}, None),
        (
            metric(MODEL, "stability", "variance", 0.0),
            {"loss_curve": [{"holdout_loss": 1.0}]},
            None,
        ),
        (
            metric(ADAPTATION, "efficiency", "resource_usage", 0.1),
            {"epochs": 4},
            None,
        ),
        (
            metric(ADAPTATION, "efficiency", "resource_usage", 0.1),
            {},
            _SMALL,
        ),
    ],
    ids=["convergence", "stability", "efficiency-no-model", "efficiency-no-epochs"],
)
def test_thresholds_without_the_figure_are_not_measurable(
    metrics: dict[str, Any], trained: dict[str, Any], model: dict[str, Any] | None
) -> None:
    result = _thresholds(metrics, trained=trained, model=model)
    assert result.passed is True
    (check,) = result.details.values()
    assert check["note"] == "not measurable"
    assert check["passed"] is True


def test_thresholds_accuracy_ranks_only_the_offered_actions() -> None:
    # In t0 the candidate prefers a (0.9), then b (0.6); these decisions offered only b and c.
    table: Table = {**TRUE, "t0": (0.9, 0.6, 0.1)}
    offered = [
        row.model_copy(update={"actions": ("b", "c"), "action": "b", "action_index": 0})
        for row in held_out(30)
        if row.context["topic"] == "t0"
    ]
    successes = [row.model_copy(update={"reward": 1.0, "propensity": 0.5}) for row in offered]
    config = make_config(metrics=metric(MODEL, "accuracy", "ratio", 0.9))
    candidate = learned(table)
    result = ThresholdsValidator().validate(context_for(candidate, rows=successes, config=config))
    # The candidate itself would take b in each of them: every success is ranked like it.
    for row in successes:
        choice = candidate.choose(row.context, row.actions, None, random.Random(0))
        assert choice.probabilities[0] > choice.probabilities[1]
    assert result.details["accuracy"]["value"] == 1.0


def test_thresholds_accuracy_without_successes_is_not_measurable() -> None:
    rows = [r.model_copy(update={"reward": 0.0}) for r in held_out(60)]
    config = make_config(metrics=metric(MODEL, "accuracy", "ratio", 0.9))
    result = ThresholdsValidator().validate(context_for(learned(TRUE), rows=rows, config=config))
    assert result.passed is True
    assert result.details["accuracy"]["note"] == "not measurable"


def test_thresholds_unconfigured_are_skipped() -> None:
    result = _thresholds({}, trained={"best_epoch": 99, "epochs": 99}, ope=_ope_result(-1, 1))
    assert result == ValidatorResult("thresholds", True, "all configured thresholds met", {})


def test_thresholds_list_every_failure() -> None:
    metrics = {
        "model_performance": {
            "accuracy": {"type": "ratio", "threshold": 0.9},
            "convergence": {"type": "epochs", "threshold": 2},
        },
        "adaptation_performance": {"efficiency": {"type": "resource_usage", "threshold": 0.3}},
    }
    result = _thresholds(metrics, trained={"best_epoch": 3, "epochs": 4}, model=_SMALL)
    assert result.passed is False
    parts = result.reason.split("; ")
    assert [part.split(" ")[0] for part in parts] == ["accuracy", "convergence", "efficiency"]


# -- the report ----------------------------------------------------------------------------


def test_the_report_of_every_validator_is_strict_json() -> None:
    metrics = {
        "model_performance": {
            "accuracy": {"type": "percentage", "threshold": 0.5},
            "convergence": {"type": "epochs", "threshold": 5},
            "stability": {"type": "variance", "threshold": 0.01},
        },
        "adaptation_performance": {
            "response_time": {"type": "seconds", "threshold": 10},
            "effectiveness": {"type": "improvement", "threshold": 0.1},
            "efficiency": {"type": "resource_usage", "threshold": 0.8},
        },
    }
    trained = {"best_epoch": 2, "epochs": 5, "loss_curve": _CURVE}
    config = make_config(metrics=metrics, model=_SMALL)
    context = context_for(learned(TRUE), None, config=config, metrics=trained)
    validators = [SanityValidator(), OffPolicyValidator(), LatencyValidator()]
    report = run_validators([*validators, ThresholdsValidator()], context)

    assert set(report) == {"passed", "reasons", "validators"}
    assert report["passed"] is True, report["reasons"]
    assert report["reasons"] == []
    assert list(report["validators"]) == ["sanity", "ope", "latency", "thresholds"]
    for entry in report["validators"].values():
        assert set(entry) == {"passed", "reason", "details"}
        assert entry["passed"] is True
    checks = report["validators"]["thresholds"]["details"]
    assert set(checks) == {"accuracy", "convergence", "stability", "effectiveness", "efficiency"}
    assert all(check["passed"] is True for check in checks.values())
    assert json.loads(json.dumps(report, allow_nan=False)) == report


def test_a_failing_report_is_strict_json() -> None:
    context = context_for(learned(SHIFTED), learned(TRUE, version=1))
    report = run_validators(
        [SanityValidator(), OffPolicyValidator(), LatencyValidator(), ThresholdsValidator()],
        context,
    )
    assert report["passed"] is False
    assert len(report["reasons"]) == 1
    assert report["reasons"][0].startswith("ope: DR ")
    json.dumps(report, allow_nan=False)


# -- end to end: a worse learner is rejected, a good one activated --------------------------


class TickingClock:
    """A clock that moves one millisecond on every reading: distinct, ordered timestamps."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now


class WorseLearner:
    """Trains the linear model, then hands each action the estimates of the previous one."""

    name = "worse"

    def __init__(self, settings: LearnerSettings) -> None:
        self.settings = settings

    def fit(self, data: BanditData) -> tuple[LinearModel, dict[str, Any]]:
        model, metrics = LinearLearner(self.settings).fit(data)
        shifted = LinearModel(model.theta.roll(1, dims=0), model.a_inv.roll(1, dims=0))
        return shifted, metrics

    @staticmethod
    def load(tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> LinearModel:
        return LinearLearner.load(tensors, metadata)


def runtime(url: str, spill: Path, learner: str = "linear") -> Runtime:
    registry = PluginRegistry()
    registry.register(Plugin("learner", "worse", WorseLearner, "a deliberately worse learner"))
    config = load_config(
        {
            "database": {"url": url},
            "runtime": {
                "auto_migrate": True,
                "pipeline": "external",
                "seed": 7,
                "device": "cpu",
                "spill_dir": str(spill),
            },
            "agents": {"router": {"actions": list(ACTIONS), "learner": learner}},
            "experience_configuration": {"analysis": {"methods": ["trend_analysis"]}},
        }
    )
    return Runtime(config, registry=registry, clock=TickingClock())


async def play(rt: Runtime, rounds: int, rng: random.Random) -> set[int | None]:
    """Decide and reward ``rounds`` times; returns the versions that served."""
    versions: set[int | None] = set()
    for i in range(rounds):
        topic = TOPICS[i % 3]
        decision = await rt.decide("router", {"topic": topic})
        versions.add(decision.policy_version)
        mean = TRUE[topic][ACTIONS.index(decision.action)]
        await rt.reward(decision, float(rng.random() < mean))
    return versions


async def stored_versions(url: str) -> dict[int, PolicyVersion]:
    db = Database(DatabaseConfig(url=url))
    try:
        async with db.session() as session:
            rows = await repositories.list_policy_versions(session, "router")
    finally:
        await db.dispose()
    return {row.version: row for row in rows}


async def test_a_worse_candidate_is_rejected_and_the_active_version_keeps_serving(
    db_url: str, tmp_path: Path
) -> None:
    rng = random.Random(21)
    spill = tmp_path / "spill"
    async with runtime(db_url, spill) as rt:
        assert await play(rt, 450, rng) == {None}
        first = (await rt.run_cycle("router"))["router"]
        assert first.status == "activated", first.reason
        assert first.validation is not None
        assert first.validation["validators"]["ope"]["details"]["incumbent"]["name"] == "baseline"

    async with runtime(db_url, spill, learner="worse") as rt:
        assert rt.active_version("router") == 1
        assert await play(rt, 150, rng) == {1}
        cycle = (await rt.run_cycle("router"))["router"]
        assert cycle.status == "rejected"
        assert cycle.learner == "worse"
        assert (cycle.candidate_version, cycle.active_version) == (2, 1)
        assert cycle.reason is not None
        assert re.fullmatch(
            r"ope: DR -?\d\.\d{4} vs v1 \d\.\d{4}: difference -\d\.\d{4}, lower bound "
            r"-\d\.\d{4} at 90%, worse than the margin -0\.05",
            cycle.reason,
        ), cycle.reason
        assert cycle.validation is not None
        ope = cycle.validation["validators"]["ope"]
        assert ope["passed"] is False
        assert ope["details"]["difference"] < -0.2
        assert cycle.validation["validators"]["sanity"]["passed"] is True
        assert rt.active_version("router") == 1
        assert await play(rt, 30, rng) == {1}

    versions = await stored_versions(db_url)
    assert (versions[1].status, versions[1].status_reason) == ("active", None)
    rejected = versions[2]
    assert (rejected.status, rejected.learner, rejected.parent_version) == ("rejected", "worse", 1)
    assert rejected.status_reason == cycle.reason
    assert rejected.activated_at is None
    assert rejected.validation == cycle.validation

    async with runtime(db_url, spill) as rt:
        assert rt.active_version("router") == 1
        await play(rt, 60, rng)
        better = (await rt.run_cycle("router"))["router"]
        assert better.status == "activated", better.reason
        assert (better.candidate_version, better.active_version) == (3, 3)
        assert better.validation is not None
        assert better.validation["validators"]["ope"]["passed"] is True
        assert await play(rt, 30, rng) == {3}

    versions = await stored_versions(db_url)
    assert {v: row.status for v, row in versions.items()} == {
        1: "retired",
        2: "rejected",
        3: "active",
    }
    assert versions[3].parent_version == 1


async def test_a_candidate_is_judged_against_the_version_that_serves(
    sqlite_url: str, tmp_path: Path
) -> None:
    # Without an active version the incumbent is the uniform baseline.
    rng = random.Random(5)
    spill = tmp_path / "spill"
    async with runtime(sqlite_url, spill, learner="worse") as rt:
        await play(rt, 300, rng)
        report = (await rt.run_cycle("router"))["router"]
        # Against the uniform baseline the worse model loses.
        assert report.status == "rejected"
        assert report.reason is not None
        assert " vs baseline " in report.reason
        assert rt.active_version("router") is None

    async with runtime(sqlite_url, spill) as rt:
        await play(rt, 30, rng)
        good = (await rt.run_cycle("router"))["router"]
        assert good.status == "activated", good.reason
        assert good.candidate_version == 2
        assert good.validation is not None
        assert good.validation["validators"]["ope"]["details"]["difference"] > 0.2
