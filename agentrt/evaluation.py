"""Off-policy evaluation: what a target policy would have earned, estimated from logged decisions.

Every logged decision carries the propensity ``mu(a_i|x_i)`` of its action, so a target policy
``pi`` can be scored on the logs with the importance weight ``w_i = pi(a_i|x_i) / mu(a_i|x_i)``
(optionally clipped): IPS ``mean(w_i r_i)`` (unbiased), SNIPS ``sum(w_i r_i) / sum(w_i)`` (less
variable) and DR ``mean(sum_a pi(a|x_i) q(x_i, a) + w_i (r_i - q(x_i, a_i)))`` with a reward
model ``q`` (unbiased if either the propensities or ``q`` are right). Rows whose propensity is
unknown (NaN) are excluded and counted. Intervals are bootstrap percentiles from a seeded
``np.random.default_rng``, resampled as index matrices in memory-bounded chunks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from agentrt.errors import InvalidInputError

__all__ = [
    "Estimate",
    "OpeSupport",
    "doubly_robust",
    "evaluate",
    "ips",
    "logs_support_ope",
    "snips",
]

Vector = npt.NDArray[np.float64]

# Probabilities computed in float32 (BanditData) may overshoot 1 or miss each other by this much.
_TOLERANCE = 1e-5
# Resampled cells gathered at once: bounds one bootstrap chunk to about 32 MB per column.
_CHUNK_CELLS = 4_000_000


@dataclass(frozen=True)
class Estimate:
    """One off-policy estimate of a target policy's mean reward per decision.

    Attributes:
        estimator: ``"ips"``, ``"snips"`` or ``"dr"``.
        value: the point estimate (NaN when no row is usable).
        ci_low: lower end of the bootstrap percentile interval (NaN without resamples).
        ci_high: upper end of that interval.
        standard_error: plug-in standard error (delta method for SNIPS; NaN below 2 rows).
        effective_sample_size: Kish's ``(sum w)^2 / sum w^2`` over the weights used.
        rows_used: rows with a known propensity.
        rows_excluded_unknown_propensity: rows left out because their propensity is NaN.
        clipped: rows whose importance weight exceeded ``clip`` and was capped at it.
        confidence: the interval's nominal coverage.
        n_bootstrap: resamples behind the interval.
    """

    estimator: str
    value: float
    ci_low: float
    ci_high: float
    standard_error: float
    effective_sample_size: float
    rows_used: int
    rows_excluded_unknown_propensity: int
    clipped: int
    confidence: float
    n_bootstrap: int


@dataclass(frozen=True)
class OpeSupport:
    """Whether logged propensities can support off-policy evaluation, and why not.

    Attributes:
        supported: True when no check failed.
        rows: logged rows.
        unknown_share: share of rows without a propensity (NaN).
        deterministic_share: share of the rows with a known propensity where it equals 1.
        min_propensity: smallest known propensity (NaN when none is known).
        reason: what is wrong and what to do, when ``supported`` is False.
    """

    supported: bool
    rows: int
    unknown_share: float
    deterministic_share: float
    min_propensity: float
    reason: str | None


class _Weighted(NamedTuple):
    """The rows with a known propensity: their rewards and (clipped) importance weights."""

    keep: npt.NDArray[np.bool_]
    rewards: Vector
    weights: Vector
    excluded: int
    clipped: int


def _vector(name: str, values: npt.ArrayLike) -> Vector:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise InvalidInputError(name, array.shape, "must be one-dimensional")
    return array


def _propensities(name: str, values: npt.ArrayLike) -> Vector:
    p = _vector(name, values)
    known = p[~np.isnan(p)]
    bad = ~((known > 0.0) & (known <= 1.0 + _TOLERANCE))
    if bad.any():
        raise InvalidInputError(name, float(known[bad][0]), "must be in (0, 1], or NaN if unknown")
    return p


def _check(clip: float | None, confidence: float, n_bootstrap: int) -> None:
    if clip is not None and not clip > 0:
        raise InvalidInputError("clip", clip, "must be > 0 (or None for no clipping)")
    if not 0.0 < confidence < 1.0:
        raise InvalidInputError("confidence", confidence, "must be strictly between 0 and 1")
    if n_bootstrap < 0:
        raise InvalidInputError("n_bootstrap", n_bootstrap, "must be >= 0")


def _weighted(
    rewards: npt.ArrayLike,
    logged_propensities: npt.ArrayLike,
    target_probabilities: npt.ArrayLike,
    clip: float | None,
) -> _Weighted:
    """Validate the inputs shared by every estimator and compute the importance weights."""
    r = _vector("rewards", rewards)
    p = _propensities("logged_propensities", logged_propensities)
    t = _vector("target_probabilities", target_probabilities)
    if not r.shape == p.shape == t.shape:
        lengths = (r.size, p.size, t.size)
        raise InvalidInputError("rewards", lengths, "inputs differ in length")
    if not np.isfinite(r).all():
        raise InvalidInputError("rewards", float(r[~np.isfinite(r)][0]), "must be finite")
    bad = ~((t >= 0.0) & (t <= 1.0 + _TOLERANCE))
    if bad.any():
        raise InvalidInputError("target_probabilities", float(t[bad][0]), "must be in [0, 1]")
    keep = ~np.isnan(p)
    weights = t[keep] / p[keep]
    clipped = 0
    if clip is not None:
        clipped = int(np.count_nonzero(weights > clip))
        weights = np.minimum(weights, clip)
    return _Weighted(keep, r[keep], weights, int(np.count_nonzero(~keep)), clipped)


def _resampled_means(columns: list[Vector], n_bootstrap: int, seed: int) -> list[Vector]:
    """Each column's mean over ``n_bootstrap`` resamples of the rows (drawn with replacement)."""
    rows = columns[0].size
    out = [np.full(n_bootstrap, np.nan) for _ in columns]
    if rows == 0:
        return out
    rng = np.random.default_rng(seed)
    step = max(1, _CHUNK_CELLS // rows)
    for start in range(0, n_bootstrap, step):
        stop = min(start + step, n_bootstrap)
        index = rng.integers(0, rows, size=(stop - start, rows))
        for column, means in zip(columns, out, strict=True):
            means[start:stop] = column[index].mean(axis=1)
    return out


def _estimate(
    name: str, value: float, resampled: Vector, se: float, logs: _Weighted, confidence: float
) -> Estimate:
    finite = resampled[np.isfinite(resampled)]
    low = high = float("nan")
    if finite.size:
        alpha = 1.0 - confidence
        low, high = (float(v) for v in np.quantile(finite, [alpha / 2.0, 1.0 - alpha / 2.0]))
    w = logs.weights
    squares = float(np.sum(w * w))
    ess = float(np.sum(w)) ** 2 / squares if squares > 0.0 else 0.0
    return Estimate(
        estimator=name,
        value=value,
        ci_low=low,
        ci_high=high,
        standard_error=se,
        effective_sample_size=ess,
        rows_used=int(w.size),
        rows_excluded_unknown_propensity=logs.excluded,
        clipped=logs.clipped,
        confidence=confidence,
        n_bootstrap=int(resampled.size),
    )


def _mean_estimate(
    name: str, terms: Vector, logs: _Weighted, confidence: float, n_bootstrap: int, seed: int
) -> Estimate:
    value = float(np.mean(terms)) if terms.size else float("nan")
    se = float(np.std(terms, ddof=1) / np.sqrt(terms.size)) if terms.size >= 2 else float("nan")
    (resampled,) = _resampled_means([terms], n_bootstrap, seed)
    return _estimate(name, value, resampled, se, logs, confidence)


def ips(
    rewards: npt.ArrayLike,
    logged_propensities: npt.ArrayLike,
    target_probabilities: npt.ArrayLike,
    *,
    clip: float | None = None,
    confidence: float = 0.95,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> Estimate:
    """Inverse propensity scoring: ``V = mean(w_i r_i)`` with ``w_i = pi(a_i|x_i) / mu(a_i|x_i)``.

    Args:
        rewards: observed reward of each logged decision, shape (n,).
        logged_propensities: probability the logging policy gave the logged action, (n,);
            NaN where unknown (those rows are excluded and counted).
        target_probabilities: probability the target policy gives the logged action, (n,).
        clip: cap on the importance weight ``w_i`` (None: no cap); capped rows are counted.
        confidence: nominal coverage of the bootstrap percentile interval.
        n_bootstrap: resamples behind the interval (0: no interval, NaN bounds).
        seed: seed of ``np.random.default_rng`` for the resamples.

    Returns:
        The estimate; its standard error is ``std(w r) / sqrt(n)``.

    Raises:
        InvalidInputError: arrays of different lengths, a propensity outside (0, 1], a target
            probability outside [0, 1], a non-finite reward, or an invalid setting.
    """
    _check(clip, confidence, n_bootstrap)
    logs = _weighted(rewards, logged_propensities, target_probabilities, clip)
    return _mean_estimate("ips", logs.weights * logs.rewards, logs, confidence, n_bootstrap, seed)


def snips(
    rewards: npt.ArrayLike,
    logged_propensities: npt.ArrayLike,
    target_probabilities: npt.ArrayLike,
    *,
    clip: float | None = None,
    confidence: float = 0.95,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> Estimate:
    """Self-normalised IPS: ``V = sum(w_i r_i) / sum(w_i)``.

    Arguments and errors are those of :func:`ips`. The value is NaN when every weight is zero
    (the target policy never takes a logged action), and such resamples are left out of the
    interval. The standard error is the delta method's ``sqrt(sum(w^2 (r - V)^2)) / sum(w)``.
    """
    _check(clip, confidence, n_bootstrap)
    logs = _weighted(rewards, logged_propensities, target_probabilities, clip)
    w, r = logs.weights, logs.rewards
    total = float(np.sum(w))
    value = float(np.sum(w * r)) / total if total > 0.0 else float("nan")
    se = float("nan")
    if total > 0.0 and w.size >= 2:
        se = float(np.sqrt(np.sum(w * w * (r - value) ** 2))) / total
    numerators, denominators = _resampled_means([w * r, w], n_bootstrap, seed)
    with np.errstate(divide="ignore", invalid="ignore"):
        resampled = numerators / denominators
    return _estimate("snips", value, resampled, se, logs, confidence)


def doubly_robust(
    rewards: npt.ArrayLike,
    logged_propensities: npt.ArrayLike,
    target_probabilities: npt.ArrayLike,
    *,
    actions: npt.ArrayLike,
    reward_estimates: npt.ArrayLike,
    target_distribution: npt.ArrayLike,
    clip: float | None = None,
    confidence: float = 0.95,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> Estimate:
    """Doubly robust: ``V = mean(sum_a pi(a|x_i) q(x_i, a) + w_i (r_i - q(x_i, a_i)))``.

    The reward model's value of the target policy (the direct method), corrected by the
    importance-weighted residual of the logged action.

    Arguments are those of :func:`ips`, plus:

    Args:
        actions: logged action indices, (n,); ``target_probabilities[i]`` must equal
            ``target_distribution[i, actions[i]]``.
        reward_estimates: the reward model's ``q(x_i, a)`` for every action, shape (n, k).
        target_distribution: the target policy's ``pi(a|x_i)`` over every action, (n, k).

    Returns:
        The estimate; its standard error is ``std(terms) / sqrt(n)``.

    Raises:
        InvalidInputError: the checks of :func:`ips`; mis-shaped or non-finite model arrays,
            non-distribution rows, out-of-range actions, or disagreeing target probabilities.
    """
    _check(clip, confidence, n_bootstrap)
    logs = _weighted(rewards, logged_propensities, target_probabilities, clip)
    n = logs.keep.size
    a = np.asarray(actions)
    q = np.asarray(reward_estimates, dtype=np.float64)
    pi = np.asarray(target_distribution, dtype=np.float64)
    if q.ndim != 2 or q.shape[0] != n or not np.isfinite(q).all():
        raise InvalidInputError("reward_estimates", q.shape, f"must be finite, shape ({n}, k)")
    if pi.shape != q.shape or not (
        np.all(pi >= 0.0) and np.all(np.abs(pi.sum(axis=1) - 1.0) <= _TOLERANCE * q.shape[1])
    ):
        problem = f"must have shape {q.shape}, each row a probability distribution"
        raise InvalidInputError("target_distribution", pi.shape, problem)
    if a.shape != (n,) or not np.issubdtype(a.dtype, np.integer):
        raise InvalidInputError("actions", a.shape, f"must be {n} integer action indices")
    if n and (a.min() < 0 or a.max() >= q.shape[1]):
        raise InvalidInputError("actions", (int(a.min()), int(a.max())), f"must be < {q.shape[1]}")
    rows = np.arange(n)
    t = np.asarray(target_probabilities, dtype=np.float64)
    mismatch = np.abs(pi[rows, a] - t) > _TOLERANCE
    if mismatch.any():
        problem = "must equal target_distribution[i, actions[i]] (same action order?)"
        raise InvalidInputError("target_probabilities", float(t[mismatch][0]), problem)
    direct = np.sum(pi * q, axis=1)[logs.keep]
    terms = direct + logs.weights * (logs.rewards - q[rows, a][logs.keep])
    return _mean_estimate("dr", terms, logs, confidence, n_bootstrap, seed)


def evaluate(
    rewards: npt.ArrayLike,
    logged_propensities: npt.ArrayLike,
    target_probabilities: npt.ArrayLike,
    *,
    actions: npt.ArrayLike,
    reward_estimates: npt.ArrayLike,
    target_distribution: npt.ArrayLike,
    clip: float | None = None,
    confidence: float = 0.95,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Estimate]:
    """IPS, SNIPS and DR on the same logs, keyed ``"ips"``, ``"snips"`` and ``"dr"``.

    Arguments are those of :func:`doubly_robust`. The three share ``seed`` and so resample the
    same rows, which makes their intervals comparable.
    """
    logged = (rewards, logged_propensities, target_probabilities)
    return {
        "ips": ips(*logged, clip=clip, confidence=confidence, n_bootstrap=n_bootstrap, seed=seed),
        "snips": snips(
            *logged, clip=clip, confidence=confidence, n_bootstrap=n_bootstrap, seed=seed
        ),
        "dr": doubly_robust(
            *logged,
            actions=actions,
            reward_estimates=reward_estimates,
            target_distribution=target_distribution,
            clip=clip,
            confidence=confidence,
            n_bootstrap=n_bootstrap,
            seed=seed,
        ),
    }


def logs_support_ope(
    propensities: npt.ArrayLike,
    *,
    max_unknown_share: float = 0.5,
    max_deterministic_share: float = 0.5,
) -> OpeSupport:
    """Whether logged propensities can support off-policy evaluation.

    They cannot when there are no rows, when too many rows have no propensity, or when too
    many were logged with propensity 1: a logging policy that never explores says nothing
    about the actions it did not take.

    Args:
        propensities: logged propensities, NaN where unknown.
        max_unknown_share: largest acceptable share of unknown propensities.
        max_deterministic_share: largest acceptable share of propensity-1 rows among the known.

    Returns:
        The shares, the smallest known propensity, and a ``reason`` when not supported.

    Raises:
        InvalidInputError: a known propensity outside (0, 1].
    """
    p = _propensities("propensities", propensities)
    rows = int(p.size)
    known = p[~np.isnan(p)]
    unknown_share = (rows - known.size) / rows if rows else 0.0
    deterministic = int(np.count_nonzero(known >= 1.0 - _TOLERANCE))
    deterministic_share = deterministic / known.size if known.size else 0.0
    reasons: list[str] = []
    if rows == 0:
        reasons.append("there are no logged decisions")
    elif unknown_share > max_unknown_share:
        reasons.append(
            f"{rows - known.size} of {rows} rows have no logged propensity and cannot be "
            "reweighted; take decisions through decide(), which logs it"
        )
    if known.size and deterministic_share > max_deterministic_share:
        reasons.append(
            f"{deterministic} of {known.size} rows were logged with propensity 1: the logging "
            "policy did not explore, so only a policy that copies it can be evaluated; enable "
            "exploration (e.g. epsilon_greedy) before comparing other policies"
        )
    return OpeSupport(
        supported=not reasons,
        rows=rows,
        unknown_share=unknown_share,
        deterministic_share=deterministic_share,
        min_propensity=float(known.min()) if known.size else float("nan"),
        reason="; ".join(reasons) if reasons else None,
    )
