"""Exploration strategies: from action scores to the exact probability of every offered action.

Each strategy returns the whole distribution over the offered actions; the runtime then draws
the action from that distribution, so the logged propensity is exactly the probability with
which the action was taken. Masked actions get probability zero; ties share their mass
equally. Every strategy keeps at least ``floor / allowed`` on each allowed action (epsilon
greedy's epsilon plays that role), so logs stay usable for off-policy evaluation.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from agentrt.config import ExplorationConfig
from agentrt.plugins import Plugin

__all__ = [
    "EpsilonGreedy",
    "Softmax",
    "ThompsonSampling",
    "UpperConfidenceBound",
    "from_config",
    "greedy_split",
    "plugins",
]

Vector = npt.NDArray[np.float64]
Mask = npt.NDArray[np.bool_]

_TIE = 1e-12


def _allowed(scores: Vector, allowed: Mask | None) -> Mask:
    mask = np.isfinite(scores)
    if allowed is not None:
        mask &= allowed
    if not mask.any():
        raise ValueError("no allowed action has a finite score")
    return mask


def _greedy(values: Vector, mask: Mask) -> Vector:
    """Uniform over the best allowed actions (ties within 1e-12 share the mass)."""
    best = np.max(values[mask])
    winners = mask & (values >= best - _TIE)
    out: Vector = winners / winners.sum()
    return out


def _mix(greedy: Vector, mask: Mask, floor: float) -> Vector:
    uniform = mask / mask.sum()
    out: Vector = (1.0 - floor) * greedy + floor * uniform
    normalised: Vector = out / out.sum()
    return normalised


# -- every action allowed, every score finite ---------------------------------------------
# The common decide(): no mask, and the model scores every action. These give exactly the
# numbers of the masked forms above (the same float operations in the same order) with fewer
# small numpy calls: the masks are all true, so the uniform share is one number and the
# greedy split is done on Python floats.


def _plain(scores: Vector, allowed: Mask | None) -> list[float] | None:
    """The scores as Python floats when no action is masked out and every score is a finite
    float64; None when the masked forms must decide."""
    if allowed is not None or scores.dtype != np.float64 or scores.ndim != 1:
        return None
    listed: list[float] = scores.tolist()
    return listed if listed and all(map(math.isfinite, listed)) else None


def _mix_plain(greedy: Vector, floor: float) -> Vector:
    """``_mix(greedy, mask, floor)`` with every action allowed."""
    out: Vector = (1.0 - floor) * greedy + floor * (1.0 / greedy.shape[0])
    normalised: Vector = out / out.sum()
    return normalised


def _winners(values: list[float]) -> tuple[bool, ...]:
    """Which values are the best (within 1e-12)."""
    best = max(values) - _TIE
    return tuple([value >= best for value in values])


def _greedy_mix_plain(values: list[float], floor: float) -> Vector:
    """``_mix(_greedy(values, mask), mask, floor)`` with every action allowed."""
    return _split(_winners(values), floor).copy()


@functools.lru_cache(maxsize=4096)
def _split(winners: tuple[bool, ...], floor: float) -> Vector:
    """The greedy distribution mixed with ``floor``, for one pattern of best actions: it
    depends on nothing else, so each pattern is computed once (read-only; callers copy)."""
    share = 1.0 / winners.count(True)
    keep = 1.0 - floor
    uniform = floor * (1.0 / len(winners))
    out = np.array([keep * (share if winner else 0.0) + uniform for winner in winners])
    normalised: Vector = out / out.sum()
    normalised.flags.writeable = False
    return normalised


@functools.lru_cache(maxsize=4096)
def _split_floats(winners: tuple[bool, ...], floor: float) -> tuple[float, ...]:
    return tuple(_split(winners, floor).tolist())


@dataclass(frozen=True)
class EpsilonGreedy:
    """With probability ``epsilon`` a uniformly random allowed action, else the best one."""

    epsilon: float = 0.1
    decay: float = 0.995
    floor: float = 0.01
    name: str = "epsilon_greedy"

    def probabilities(
        self, scores: Vector, allowed: Mask | None = None, uncertainty: Vector | None = None
    ) -> Vector:
        plain = _plain(scores, allowed)
        if plain is not None:
            return _greedy_mix_plain(plain, self.epsilon)
        mask = _allowed(scores, allowed)
        return _mix(_greedy(scores, mask), mask, self.epsilon)

    def decayed(self) -> EpsilonGreedy:
        """The strategy after one learning cycle: epsilon times decay, never below floor."""
        return replace(self, epsilon=max(self.floor, self.epsilon * self.decay))

    def describe(self) -> dict[str, Any]:
        return {"method": self.name, "epsilon": self.epsilon}


@dataclass(frozen=True)
class Softmax:
    """Probabilities proportional to ``exp(score / temperature)``, mixed with ``floor``."""

    temperature: float = 1.0
    floor: float = 0.01
    name: str = "softmax"

    def probabilities(
        self, scores: Vector, allowed: Mask | None = None, uncertainty: Vector | None = None
    ) -> Vector:
        if _plain(scores, allowed) is not None:
            logits = scores / self.temperature
            weights = np.exp(logits - np.max(logits))
            return _mix_plain(weights / weights.sum(), self.floor)
        mask = _allowed(scores, allowed)
        logits = np.where(mask, scores / self.temperature, -np.inf)
        weights = np.exp(logits - np.max(logits[mask]))
        return _mix(weights / weights.sum(), mask, self.floor)

    def describe(self) -> dict[str, Any]:
        return {"method": self.name, "temperature": self.temperature}


@dataclass(frozen=True)
class UpperConfidenceBound:
    """The action with the highest ``score + confidence * uncertainty``, mixed with ``floor``.

    Without an uncertainty estimate from the learner, per-action counts from the sliding
    window give the classic ``sqrt(2 ln n / n_a)`` bonus.
    """

    confidence: float = 2.0
    window_size: int | None = None
    floor: float = 0.01
    name: str = "ucb"

    def probabilities(
        self, scores: Vector, allowed: Mask | None = None, uncertainty: Vector | None = None
    ) -> Vector:
        listed = None if allowed is not None else self._greedy_values(scores, uncertainty)
        if listed is not None:
            return _greedy_mix_plain(listed, self.floor)
        mask = None if _plain(scores, allowed) is not None else _allowed(scores, allowed)
        bonus = np.zeros_like(scores) if uncertainty is None else uncertainty
        values = scores + self.confidence * bonus
        if mask is None:
            plain = _plain(values, None)  # a bonus may still be NaN or infinite
            if plain is not None:
                return _greedy_mix_plain(plain, self.floor)
            mask = _allowed(scores, None)
        return _mix(_greedy(values, mask), mask, self.floor)

    def _greedy_values(self, scores: Vector, uncertainty: Vector | None) -> list[float] | None:
        """``scores + confidence * uncertainty`` on Python floats (the same float64
        operations) when both are float64 vectors and every value is finite (then so is
        every score); None when the array forms must decide."""
        if (
            uncertainty is None
            or not scores.dtype == uncertainty.dtype == np.float64
            or scores.ndim != 1
            or scores.shape != uncertainty.shape
        ):
            return None
        confidence = self.confidence
        pairs = zip(scores.tolist(), uncertainty.tolist(), strict=True)
        listed = [s + confidence * u for s, u in pairs]
        return listed if listed and all(map(math.isfinite, listed)) else None

    @staticmethod
    def count_bonus(counts: Vector) -> Vector:
        """The UCB1 bonus ``sqrt(2 ln(n + 1) / n_a)`` for per-action pull counts (a very large
        bonus, 1e6, for untried actions)."""
        total = max(float(counts.sum()), 1.0)
        with np.errstate(divide="ignore"):
            bonus: Vector = np.sqrt(2.0 * math.log(total + 1.0) / counts)
        return np.where(counts > 0, bonus, 1e6)

    def describe(self) -> dict[str, Any]:
        return {"method": self.name, "confidence": self.confidence, "window_size": self.window_size}


@dataclass(frozen=True)
class ThompsonSampling:
    """The probability that each action's sampled value is the highest (posterior sampling).

    Scores are posterior means and ``uncertainty`` posterior standard deviations (Gaussian);
    the probability of being best is estimated from ``samples`` joint draws with a generator
    seeded by the scores, so the same posterior always gives the same distribution. The action
    is then drawn from that distribution, which makes the logged propensity exact.
    """

    samples: int = 512
    floor: float = 0.01
    name: str = "thompson"

    def probabilities(
        self, scores: Vector, allowed: Mask | None = None, uncertainty: Vector | None = None
    ) -> Vector:
        plain = _plain(scores, allowed)
        if plain is not None and (
            uncertainty is None
            or (uncertainty.shape == scores.shape and not np.any(uncertainty > 0))
        ):
            return _greedy_mix_plain(plain, self.floor)
        mask = _allowed(scores, allowed)
        if uncertainty is None or not np.any(uncertainty[mask] > 0):
            return _mix(_greedy(scores, mask), mask, self.floor)
        seed = int.from_bytes(
            np.ascontiguousarray(scores, dtype=np.float64).tobytes()[:8], "little"
        )
        rng = np.random.default_rng(seed)
        draws = rng.standard_normal((self.samples, scores.shape[0])) * uncertainty + scores
        draws[:, ~mask] = -np.inf
        wins = np.bincount(np.argmax(draws, axis=1), minlength=scores.shape[0]).astype(np.float64)
        return _mix(wins / wins.sum(), mask, self.floor)

    @staticmethod
    def beta_posterior(successes: Vector, failures: Vector) -> tuple[Vector, Vector]:
        """Mean and standard deviation of Beta(1 + successes, 1 + failures) per action."""
        a, b = successes + 1.0, failures + 1.0
        mean = a / (a + b)
        std = np.sqrt(a * b / ((a + b) ** 2 * (a + b + 1.0)))
        return mean, std

    def describe(self) -> dict[str, Any]:
        return {"method": self.name, "samples": self.samples}


Strategy = EpsilonGreedy | Softmax | UpperConfidenceBound | ThompsonSampling


def greedy_split(
    strategy: Strategy, scores: Vector, uncertainty: Vector | None
) -> tuple[float, ...] | None:
    """``strategy.probabilities(scores, None, uncertainty)`` as floats, when it is a greedy
    split of finite float64 values (epsilon-greedy; UCB over an uncertainty), taken from a
    cache of splits without building an array; None otherwise (ask ``probabilities``)."""
    if isinstance(strategy, EpsilonGreedy):
        values, weight = _plain(scores, None), strategy.epsilon
    elif isinstance(strategy, UpperConfidenceBound):
        values, weight = strategy._greedy_values(scores, uncertainty), strategy.floor
    else:
        return None
    return None if values is None else _split_floats(_winners(values), weight)


def from_config(config: ExplorationConfig) -> Strategy:
    """The strategy an agent's ``exploration`` block describes."""
    if config.method == "epsilon_greedy":
        return EpsilonGreedy(epsilon=config.epsilon, decay=config.decay, floor=config.floor)
    if config.method == "softmax":
        return Softmax(temperature=config.temperature, floor=config.floor)
    if config.method == "ucb":
        return UpperConfidenceBound(
            confidence=config.confidence, window_size=config.window_size, floor=config.floor
        )
    return ThompsonSampling(floor=config.floor)


plugins = [
    Plugin("exploration", "epsilon_greedy", EpsilonGreedy, "epsilon-greedy with decay and floor"),
    Plugin("exploration", "softmax", Softmax, "Boltzmann exploration with a temperature"),
    Plugin("exploration", "ucb", UpperConfidenceBound, "upper confidence bound"),
    Plugin("exploration", "thompson", ThompsonSampling, "Thompson sampling (posterior sampling)"),
]
