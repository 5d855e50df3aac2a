"""Promotion validators: no candidate policy goes live on faith.

Each validator is a plugin of kind ``validator``: ``validate(context) -> ValidatorResult``. The
updater runs the agent's ``validation.validators`` in order on every candidate and stores the
full report in ``policy_versions.validation``; a candidate that fails any of them is stored as
``rejected`` with the reasons, and the active version keeps serving.

- ``sanity``: finite weights and estimates, valid probabilities on real held-out contexts.
- ``ope``: the candidate's off-policy value on held-out logged decisions (doubly robust or
  SNIPS) minus the active policy's (or the baseline's), by a paired bootstrap: the lower bound
  at ``validation.confidence`` must not be below ``-validation.margin``.
- ``latency``: the p99 of single-decision inference (features, model, exploration) within
  ``performance_metrics.learning_metrics.adaptation_performance.response_time``.
- ``thresholds``: the other ``performance_metrics`` thresholds:
  ``accuracy`` (share of held-out decisions that succeeded on which the candidate's best
  action is the logged one), ``convergence`` (the best held-out epoch is at most this),
  ``stability`` (variance, or std, of the held-out loss over the last three epochs),
  ``effectiveness`` (estimated improvement over the active policy, relative to its value) and
  ``efficiency`` (share of the configured epochs that training used).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from agentrt.config import AgentRTConfig
from agentrt.evaluation import doubly_robust, logs_support_ope, snips
from agentrt.learning.data import usable_for_learning
from agentrt.plugins import Plugin
from agentrt.policy import BaselinePolicy, LearnedPolicy
from agentrt.schemas import Experience
from agentrt.types import SequenceModel

__all__ = [
    "LatencyValidator",
    "OffPolicyValidator",
    "SanityValidator",
    "ThresholdsValidator",
    "ValidationContext",
    "ValidatorResult",
    "plugins",
    "policy_matrix",
    "run_validators",
]

Matrix = npt.NDArray[np.float64]


class ValidatorResult(NamedTuple):
    """One validator's verdict, with the numbers behind it."""

    name: str
    passed: bool
    reason: str
    details: dict[str, Any]


@dataclass
class ValidationContext:
    """What validators see: the candidate, what it would replace, and held-out experience."""

    agent_id: str
    config: AgentRTConfig
    candidate: LearnedPolicy
    active: LearnedPolicy | None
    baseline: BaselinePolicy
    held_out: Sequence[Experience]
    metrics: dict[str, Any]
    results: dict[str, ValidatorResult] = field(default_factory=dict)


# -- distributions of the candidate and the incumbent on the held-out rows --------------


def _rows(context: ValidationContext) -> list[Experience]:
    known = set(context.candidate.actions)
    return [r for r in context.held_out if usable_for_learning(r) and r.action in known]


def model_scores(policy: LearnedPolicy, rows: Sequence[Experience]) -> tuple[Matrix, Matrix | None]:
    """The model's scores (and spreads) for each row, shape (n, policy actions).

    A sequence model sees, for each row, the rows of its episode up to that step (oldest
    first, at most ``history``), as serving would have shown them; held-out rows are whole
    episodes, so those are the episode's steps.
    """
    features = policy.encoder.encode_many([r.context for r in rows])
    model = policy.model
    if not (isinstance(model, SequenceModel) and model.history > 1):
        return model.predict(features)
    members: dict[object, list[int]] = {}
    for i, row in enumerate(rows):
        members.setdefault(i if row.episode_id is None else row.episode_id, []).append(i)
    means = np.zeros((len(rows), len(policy.actions)))
    stds: Matrix | None = None
    for indices in members.values():
        indices.sort(key=lambda i: (rows[i].step if rows[i].step is not None else -1, i))
        for end, i in enumerate(indices):
            window = features[indices[max(0, end + 1 - model.history) : end + 1]]
            mean, std = model.predict_sequence(window[None])
            means[i] = mean[0]
            if std is not None:
                stds = np.zeros_like(means) if stds is None else stds
                stds[i] = std[0]
    return means, stds


def policy_matrix(
    policy: LearnedPolicy, rows: Sequence[Experience], actions: tuple[str, ...]
) -> tuple[Matrix, Matrix]:
    """(estimates, distribution) of ``policy`` over ``actions`` for each row, shape (n, k)."""
    means, stds = model_scores(policy, rows)
    columns = [policy.actions.index(a) if a in policy.actions else -1 for a in actions]
    estimates = np.zeros((len(rows), len(actions)))
    distribution = np.zeros((len(rows), len(actions)))
    for i, row in enumerate(rows):
        offered = np.array(
            [a in row.actions and c >= 0 for a, c in zip(actions, columns, strict=True)]
        )
        scores = np.array([means[i, c] if c >= 0 else -np.inf for c in columns])
        spread = (
            None if stds is None else np.array([stds[i, c] if c >= 0 else 0.0 for c in columns])
        )
        estimates[i] = np.where(np.isfinite(scores), scores, 0.0)
        distribution[i] = policy.exploration.probabilities(scores, offered, spread)
    return estimates, distribution


def _baseline_matrix(
    baseline: BaselinePolicy, rows: Sequence[Experience], actions: tuple[str, ...]
) -> Matrix:
    distribution = np.zeros((len(rows), len(actions)))
    rng = random.Random(0)
    for i, row in enumerate(rows):
        offered = tuple(a for a in actions if a in row.actions)
        choice = baseline.choose(offered, None, rng)
        for action, p in zip(offered, choice.probabilities, strict=True):
            distribution[i, actions.index(action)] = p
    return distribution


# -- validators ---------------------------------------------------------------------------


class SanityValidator:
    """Finite weights, finite estimates and valid probabilities on real held-out contexts."""

    name = "sanity"

    def validate(self, context: ValidationContext) -> ValidatorResult:
        candidate = context.candidate
        weights_finite = all(
            bool(np.all(np.isfinite(t.detach().cpu().numpy())))
            for t in candidate.model.tensors().values()
            if t.is_floating_point()
        )
        sample = list(context.held_out[:256])
        checks: dict[str, Any] = {"weights_finite": weights_finite, "contexts_checked": len(sample)}
        estimates_finite = probabilities_valid = True
        if sample:
            means, stds = model_scores(candidate, sample)
            estimates_finite = bool(np.all(np.isfinite(means))) and (
                stds is None or bool(np.all(np.isfinite(stds)))
            )
            if estimates_finite:
                for i in range(min(len(sample), 64)):
                    p = candidate.exploration.probabilities(
                        means[i], None, None if stds is None else stds[i]
                    )
                    if not (np.all(p >= 0) and abs(float(p.sum()) - 1.0) < 1e-6):
                        probabilities_valid = False
                        break
            else:
                probabilities_valid = False
        checks.update(estimates_finite=estimates_finite, probabilities_valid=probabilities_valid)
        failed = [
            name
            for name in ("weights_finite", "estimates_finite", "probabilities_valid")
            if not checks[name]
        ]
        reason = (
            "finite weights and estimates, valid probabilities"
            if not failed
            else "failed: " + ", ".join(failed)
        )
        return ValidatorResult(self.name, not failed, reason, checks)


class OffPolicyValidator:
    """The candidate must not be estimated worse than the incumbent by more than the margin."""

    name = "ope"

    def validate(self, context: ValidationContext) -> ValidatorResult:
        settings = context.config.agents[context.agent_id].validation
        rows = _rows(context)
        propensities = np.array([np.nan if r.propensity is None else r.propensity for r in rows])
        support = logs_support_ope(propensities) if rows else None
        known = int(np.count_nonzero(np.isfinite(propensities)))
        if support is None or not support.supported or known < settings.min_rows:
            why = (
                f"only {known} held-out decisions with a known propensity (validation.min_rows "
                f"is {settings.min_rows})"
                if support is None or support.supported
                else f"the logs cannot support off-policy evaluation: {support.reason}"
            )
            passed = not settings.require_ope
            verdict = "could not judge, passed" if passed else "rejected (validation.require_ope)"
            return ValidatorResult(self.name, passed, f"{verdict}: {why}", {"rows": len(rows)})
        actions = context.candidate.actions
        logged = np.array([actions.index(r.action) for r in rows])
        rewards = np.array([r.reward for r in rows], dtype=np.float64)
        estimates, candidate = policy_matrix(context.candidate, rows, actions)
        if context.active is not None:
            _, incumbent = policy_matrix(context.active, rows, actions)
            incumbent_name = f"v{context.active.version}"
        else:
            incumbent = _baseline_matrix(context.baseline, rows, actions)
            incumbent_name = "baseline"
        clip = context.config.agents[context.agent_id].training.importance_clip
        index = np.arange(len(rows))
        values = {}
        for label, distribution in (("candidate", candidate), ("incumbent", incumbent)):
            kwargs: dict[str, Any] = {
                "clip": clip,
                "confidence": settings.confidence,
                "n_bootstrap": settings.n_bootstrap,
            }
            target = distribution[index, logged]
            if settings.estimator == "dr":
                values[label] = doubly_robust(
                    rewards, propensities, target, actions=logged, reward_estimates=estimates,
                    target_distribution=distribution, **kwargs,
                )  # fmt: skip
            else:
                values[label] = snips(rewards, propensities, target, **kwargs)
        difference = _paired_difference(
            rewards, propensities, logged, estimates, candidate, incumbent, clip,
            settings.n_bootstrap, settings.estimator,
        )  # fmt: skip
        lower = (
            float(np.quantile(difference, 1.0 - settings.confidence))
            if difference.size
            else math.nan
        )
        mean = values["candidate"].value - values["incumbent"].value
        passed = bool(np.isfinite(lower) and lower >= -settings.margin)
        details = {
            "estimator": settings.estimator,
            "candidate": _estimate_dict(values["candidate"]),
            "incumbent": {"name": incumbent_name, **_estimate_dict(values["incumbent"])},
            "difference": _finite(mean),
            "difference_lower": _finite(lower),
            "confidence": settings.confidence,
            "margin": settings.margin,
            "rows": len(rows),
        }
        relation = "not worse than" if passed else "worse than"
        reason = (
            f"{settings.estimator.upper()} {values['candidate'].value:.4f} vs {incumbent_name} "
            f"{values['incumbent'].value:.4f}: difference {mean:+.4f}, lower bound {lower:+.4f} at "
            f"{settings.confidence:.0%}, {relation} the margin -{settings.margin:g}"
        )
        return ValidatorResult(self.name, passed, reason, details)


def _paired_difference(
    rewards: Matrix,
    propensities: Matrix,
    logged: npt.NDArray[np.int64],
    estimates: Matrix,
    candidate: Matrix,
    incumbent: Matrix,
    clip: float,
    n_bootstrap: int,
    estimator: str,
) -> Matrix:
    """Bootstrap resamples of V(candidate) - V(incumbent) on the same rows (paired)."""
    keep = np.isfinite(propensities)
    r, p, a = rewards[keep], propensities[keep], logged[keep]
    q, pc, pi = estimates[keep], candidate[keep], incumbent[keep]
    rows = np.arange(r.size)
    wc = np.minimum(pc[rows, a] / p, clip)
    wi = np.minimum(pi[rows, a] / p, clip)
    rng = np.random.default_rng(0)
    draws = rng.integers(0, r.size, size=(n_bootstrap, r.size))
    if estimator == "dr":
        residual = r - q[rows, a]
        terms = (np.sum(pc * q, axis=1) + wc * residual) - (np.sum(pi * q, axis=1) + wi * residual)
        out: Matrix = terms[draws].mean(axis=1)
        return out
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = (wc * r)[draws].sum(axis=1) / wc[draws].sum(axis=1)
        si = (wi * r)[draws].sum(axis=1) / wi[draws].sum(axis=1)
    difference: Matrix = (sc - si)[np.isfinite(sc - si)]
    return difference


def _estimate_dict(estimate: Any) -> dict[str, Any]:
    return {
        "value": _finite(estimate.value),
        "ci_low": _finite(estimate.ci_low),
        "ci_high": _finite(estimate.ci_high),
        "effective_sample_size": _finite(estimate.effective_sample_size),
        "rows_used": estimate.rows_used,
        "clipped": estimate.clipped,
    }


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


class LatencyValidator:
    """The p99 of one decision's inference must fit ``response_time``."""

    name = "latency"

    def validate(self, context: ValidationContext) -> ValidatorResult:
        metric = (
            context.config.performance_metrics.learning_metrics.adaptation_performance.response_time
        )
        sample = list(context.held_out[:50])
        rng = random.Random(0)
        timings: list[float] = []
        for i in range(200):
            row = sample[i % len(sample)] if sample else None
            ctx = row.context if row is not None else {}
            actions = context.candidate.actions
            started = time.perf_counter()
            context.candidate.choose(ctx, actions, None, rng)
            timings.append(time.perf_counter() - started)
        p99 = float(np.quantile(np.array(timings), 0.99))
        details: dict[str, Any] = {"p50_us": float(np.median(timings)) * 1e6, "p99_us": p99 * 1e6}
        if metric is None:
            return ValidatorResult(
                self.name, True, f"p99 {p99 * 1e6:.0f} us (no response_time set)", details
            )
        budget = (
            metric.threshold
            * {"seconds": 1.0, "milliseconds": 1e-3, "microseconds": 1e-6}[metric.type]
        )
        details["budget_us"] = budget * 1e6
        passed = p99 <= budget
        where = "within" if passed else "over"
        reason = f"p99 {p99 * 1e6:.0f} us {where} the budget {budget * 1e6:.0f} us"
        return ValidatorResult(self.name, passed, reason, details)


class ThresholdsValidator:
    """The remaining ``performance_metrics`` thresholds (see the module docstring)."""

    name = "thresholds"

    def validate(self, context: ValidationContext) -> ValidatorResult:
        metrics = context.config.performance_metrics.learning_metrics
        checks: dict[str, Any] = {}
        failures: list[str] = []

        def check(name: str, value: float | None, threshold: float, *, at_most: bool) -> None:
            if value is None or not math.isfinite(value):
                checks[name] = {
                    "value": None,
                    "threshold": threshold,
                    "passed": True,
                    "note": "not measurable",
                }
                return
            passed = value <= threshold if at_most else value >= threshold
            checks[name] = {"value": value, "threshold": threshold, "passed": passed}
            if not passed:
                failures.append(f"{name} {value:.4g} {'>' if at_most else '<'} {threshold:g}")

        model = metrics.model_performance
        adaptation = metrics.adaptation_performance
        if model.accuracy is not None:
            threshold = model.accuracy.threshold / (100.0 if model.accuracy.threshold > 1 else 1.0)
            check("accuracy", _accuracy(context), threshold, at_most=False)
        curve = context.metrics.get("loss_curve") or []
        if model.convergence is not None:
            best = context.metrics.get("best_epoch")
            check(
                "convergence",
                None if best is None else float(best),
                model.convergence.threshold,
                at_most=True,
            )
        if model.stability is not None:
            losses = [point["holdout_loss"] for point in curve[-3:]]
            spread = float(np.var(losses)) if len(losses) >= 2 else None
            if spread is not None and model.stability.type == "std":
                spread = math.sqrt(spread)
            check("stability", spread, model.stability.threshold, at_most=True)
        if adaptation.effectiveness is not None:
            ope = context.results.get("ope")
            gain = None
            if ope is not None and ope.details.get("difference") is not None:
                base = ope.details["incumbent"]["value"]
                gain = ope.details["difference"] / abs(base) if base else None
            check("effectiveness", gain, adaptation.effectiveness.threshold, at_most=False)
        if adaptation.efficiency is not None:
            budget = context.config.agents[context.agent_id]
            epochs = context.metrics.get("epochs")
            model_config = context.config.model_configuration.learning_models.get(
                budget.model or ""
            )
            total = model_config.parameters.epochs if model_config is not None else None
            share = epochs / total if epochs is not None and total else None
            check("efficiency", share, adaptation.efficiency.threshold, at_most=True)
        reason = "all configured thresholds met" if not failures else "; ".join(failures)
        return ValidatorResult(self.name, not failures, reason, checks)


def _accuracy(context: ValidationContext) -> float | None:
    rows = [r for r in _rows(context) if r.reward is not None and r.reward > 0]
    if not rows:
        return None
    actions = context.candidate.actions
    estimates, _ = policy_matrix(context.candidate, rows, actions)
    offered = np.array([[a in r.actions for a in actions] for r in rows])
    best = np.argmax(np.where(offered, estimates, -np.inf), axis=1)
    logged = np.array([context.candidate.actions.index(r.action) for r in rows])
    return float(np.mean(best == logged))


def run_validators(validators: Sequence[Any], context: ValidationContext) -> dict[str, Any]:
    """Run validators in order; returns the report stored in ``policy_versions.validation``.

    A validator that raises fails the candidate with the error as its reason; after a failed
    ``sanity`` check the others are skipped (they assume finite estimates).
    """
    for validator in validators:
        name = getattr(validator, "name", type(validator).__name__)
        try:
            result = validator.validate(context)
        except Exception as exc:  # a broken validator must reject, not crash the cycle
            result = ValidatorResult(name, False, f"raised {type(exc).__name__}: {exc}", {})
        context.results[result.name] = result
        if result.name == "sanity" and not result.passed:
            break
    failed = [r for r in context.results.values() if not r.passed]
    return {
        "passed": not failed,
        "reasons": [f"{r.name}: {r.reason}" for r in failed],
        "validators": {
            name: {"passed": r.passed, "reason": r.reason, "details": r.details}
            for name, r in context.results.items()
        },
    }


def _factory(cls: type) -> Any:
    def build(config: AgentRTConfig) -> Any:
        return cls()

    return build


plugins = [
    Plugin(
        "validator", "sanity", _factory(SanityValidator), "finite weights, estimates, probabilities"
    ),
    Plugin(
        "validator", "ope", _factory(OffPolicyValidator), "off-policy value vs the active policy"
    ),
    Plugin(
        "validator", "latency", _factory(LatencyValidator), "inference p99 within response_time"
    ),
    Plugin(
        "validator", "thresholds", _factory(ThresholdsValidator), "performance_metrics thresholds"
    ),
]
