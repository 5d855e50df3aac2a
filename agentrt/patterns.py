"""The pattern finders behind :mod:`agentrt.analysis`: rules in contexts, changes in streams.

A rule says that an action does better (or worse) under a condition on the context than
without it: ``when topic=billing, action sql succeeds 0.82 vs 0.41 otherwise (n=311)``.
Conditions come from each context key: a string or boolean value (``topic=billing``), a
number with at most four distinct values (``tier=2``), or a quartile bin of a numeric key
(``len in [100, 450)``). Each (condition, action) pair is one test; a rule is kept when its
p-value, Bonferroni-corrected over every test made, is below the significance level.

A change detector watches a stream (rewards, in time order) for a shift of its mean; it
works one value at a time, so it runs on live streams as well as over stored arrays.

The distributions are computed here (no SciPy at run time): the normal from the standard
library and Student's t through the regularized incomplete beta function.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any, Literal, NamedTuple, Protocol

import numpy as np
import numpy.typing as npt

from agentrt.config import ChangeDetectionConfig
from agentrt.errors import InvalidInputError
from agentrt.schemas import ContextValue, Experience

__all__ = [
    "Alarm",
    "ChangeDetector",
    "ChangePoint",
    "Condition",
    "Cusum",
    "Direction",
    "Interval",
    "PageHinkley",
    "Rule",
    "RuleSearch",
    "conditions",
    "detect_changes",
    "make_detector",
    "mean_interval",
    "mine_rules",
    "student_t_quantile",
    "student_t_sf",
    "two_proportion_z_test",
    "welch_t_test",
]

_MAX_KEYS = 50  # context keys examined, the most often present first
_MAX_VALUES = 20  # categorical values per key, the most frequent first
_MAX_DISCRETE = 4  # a numeric key with at most this many distinct values is categorical
_TINY = 1e-300

Direction = Literal["increase", "decrease"]


# --- distributions ---------------------------------------------------------------------------


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, 500):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1.0) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1.0)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + numerator / c
            c = c if abs(c) > _TINY else _TINY
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _regularized_beta(a: float, b: float, x: float) -> float:
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def student_t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with ``df`` degrees of freedom.

    Raises:
        InvalidInputError: ``df`` is not positive.
    """
    if not df > 0:
        raise InvalidInputError("df", df, "must be > 0")
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    if df > 1e7:  # the normal is exact to 1e-7 there; the beta function loses digits
        return 0.5 * math.erfc(t / math.sqrt(2.0))
    tail = 0.5 * _regularized_beta(df / 2.0, 0.5, df / (df + t * t))
    return tail if t >= 0 else 1.0 - tail


def student_t_quantile(confidence: float, df: float) -> float:
    """The two-sided critical value: P(|T| <= q) = ``confidence``.

    Raises:
        InvalidInputError: ``confidence`` is not in (0, 1) or ``df`` is not positive.
    """
    if not 0.0 < confidence < 1.0:
        raise InvalidInputError("confidence", confidence, "must be in (0, 1)")
    target = (1.0 - confidence) / 2.0
    low, high = 0.0, 1.0
    while student_t_sf(high, df) > target:
        low, high = high, high * 2.0
    for _ in range(100):
        middle = (low + high) / 2.0
        if student_t_sf(middle, df) > target:
            low = middle
        else:
            high = middle
    return (low + high) / 2.0


def welch_t_test(mean1: float, var1: float, n1: int, mean2: float, var2: float, n2: int) -> float:
    """Two-sided p-value of Welch's t-test from the groups' means, sample variances and sizes.

    Two groups without spread have p = 0 when their means differ and 1 when they do not.

    Raises:
        InvalidInputError: a group has fewer than two values.
    """
    if min(n1, n2) < 2:
        raise InvalidInputError("n", min(n1, n2), "each group needs at least 2 values")
    a, b = var1 / n1, var2 / n2
    if a + b <= 0.0:
        return 0.0 if mean1 != mean2 else 1.0
    t = (mean1 - mean2) / math.sqrt(a + b)
    df = (a + b) ** 2 / (a * a / (n1 - 1) + b * b / (n2 - 1))
    return min(1.0, 2.0 * student_t_sf(abs(t), df))


def two_proportion_z_test(successes1: int, n1: int, successes2: int, n2: int) -> float:
    """Two-sided p-value of the pooled two-proportion z-test.

    Raises:
        InvalidInputError: a group is empty.
    """
    if min(n1, n2) < 1:
        raise InvalidInputError("n", min(n1, n2), "each group needs at least 1 value")
    pooled = (successes1 + successes2) / (n1 + n2)
    variance = pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2)
    if variance <= 0.0:
        return 1.0  # every value is 0, or every value is 1: the proportions are equal
    z = (successes1 / n1 - successes2 / n2) / math.sqrt(variance)
    return math.erfc(abs(z) / math.sqrt(2.0))


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


# --- intervals ---------------------------------------------------------------------------------


class Interval(NamedTuple):
    """A mean with its confidence interval.

    Attributes:
        mean: the sample mean.
        low: the lower bound; None when it cannot be estimated (one non-binary value).
        high: the upper bound.
        method: ``wilson`` (values all 0 or 1) or ``normal``.
    """

    mean: float
    low: float | None
    high: float | None
    method: Literal["wilson", "normal"]


def mean_interval(values: Sequence[float], confidence: float) -> Interval:
    """The mean of ``values`` with a two-sided interval at ``confidence``.

    Values that are all 0 or 1 get the Wilson score interval; others the normal
    approximation ``mean ± z·s/√n`` with the sample standard deviation.

    Raises:
        InvalidInputError: ``values`` is empty or ``confidence`` is not in (0, 1).
    """
    n = len(values)
    if n == 0:
        raise InvalidInputError("values", values, "need at least one value")
    if not 0.0 < confidence < 1.0:
        raise InvalidInputError("confidence", confidence, "must be in (0, 1)")
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    mean = math.fsum(v / n for v in values)  # divided first: a sum near the float limit overflows
    if all(v in (0.0, 1.0) for v in values):
        denominator = 1.0 + z * z / n
        centre = (mean + z * z / (2 * n)) / denominator
        half = z * math.sqrt(mean * (1.0 - mean) / n + z * z / (4 * n * n)) / denominator
        return Interval(mean, max(0.0, centre - half), min(1.0, centre + half), "wilson")
    if n < 2:
        return Interval(mean, None, None, "normal")
    spread = math.sqrt(math.fsum((v - mean) * (v - mean) for v in values) / (n - 1))
    half = z * spread / math.sqrt(n)
    return Interval(mean, _finite_or_none(mean - half), _finite_or_none(mean + half), "normal")


# --- conditions ------------------------------------------------------------------------------


class Condition(NamedTuple):
    """A yes/no question about a context, with its answer for each row.

    Attributes:
        feature: the context key.
        label: how a rule prints it (``topic=billing``, ``len in [100, 450)``).
        mask: True where the condition holds; a missing key never satisfies it.
    """

    feature: str
    label: str
    mask: npt.NDArray[np.bool_]


def _show(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _numeric_column(values: Sequence[ContextValue]) -> npt.NDArray[np.float64] | None:
    """The values as floats (NaN where missing), or None if one is not a finite number."""
    numbers: list[float] = []
    for value in values:
        if value is None:
            numbers.append(math.nan)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)  # contexts hold 64-bit integers at most: no overflow
            if not math.isfinite(number):
                return None
            numbers.append(number)
        else:
            return None
    return np.array(numbers, dtype=np.float64)


def _quartile_conditions(key: str, column: npt.NDArray[np.float64]) -> list[Condition]:
    present = column[~np.isnan(column)]
    edges = np.unique(np.quantile(present, [0.0, 0.25, 0.5, 0.75, 1.0]))
    found = []
    for i in range(len(edges) - 1):
        low, high = float(edges[i]), float(edges[i + 1])
        last = i == len(edges) - 2
        mask = (column >= low) & ((column <= high) if last else (column < high))
        label = f"{key} in [{low:.4g}, {high:.4g}{']' if last else ')'}"
        found.append(Condition(key, label, mask))
    return found


def conditions(contexts: Sequence[Mapping[str, ContextValue]]) -> list[Condition]:
    """The conditions worth testing on these contexts.

    Lists are skipped. A key holding only finite numbers with more than four distinct values is
    cut at its quartiles; any other key gives one condition per value (the 20 most frequent).
    Only the 50 keys present most often are examined.
    """
    presence: Counter[str] = Counter(
        key for context in contexts for key, value in context.items() if value is not None
    )
    found: list[Condition] = []
    for key, _ in sorted(presence.items(), key=lambda item: (-item[1], item[0]))[:_MAX_KEYS]:
        values = [context.get(key) for context in contexts]
        present = [value for value in values if value is not None]
        if any(isinstance(value, list) for value in present):
            continue
        column = _numeric_column(values)
        if column is not None and len(set(present)) > _MAX_DISCRETE:
            found.extend(_quartile_conditions(key, column))
            continue
        labels = [None if v is None else _show(v) for v in values]
        counts = Counter(label for label in labels if label is not None)
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:_MAX_VALUES]
        for label, _ in ranked:
            mask = np.fromiter((v == label for v in labels), dtype=np.bool_, count=len(labels))
            found.append(Condition(key, f"{key}={label}", mask))
    return found


# --- rules -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rule:
    """An action whose mean reward differs when a condition holds.

    Attributes:
        condition: the condition's label.
        feature: the context key it reads.
        action: the action compared.
        support: the action's rewarded decisions under the condition.
        mean_when: their mean reward.
        n_otherwise: the action's rewarded decisions where the condition does not hold.
        mean_otherwise: their mean reward.
        lift: ``mean_when / mean_otherwise``; None when ``mean_otherwise`` is 0.
        p_value: of the test, before correction.
        p_adjusted: Bonferroni-corrected over every test made.
        test: ``two_proportion_z`` (rewards all 0 or 1) or ``welch_t``.
    """

    condition: str
    feature: str
    action: str
    support: int
    mean_when: float
    n_otherwise: int
    mean_otherwise: float
    lift: float | None
    p_value: float
    p_adjusted: float
    test: Literal["two_proportion_z", "welch_t"]

    @property
    def difference(self) -> float:
        """``mean_when - mean_otherwise``: the effect size rules are ranked by."""
        return self.mean_when - self.mean_otherwise

    @property
    def text(self) -> str:
        """The rule in words."""
        verb = "succeeds" if self.test == "two_proportion_z" else "averages"
        return (
            f"when {self.condition}, action {self.action} {verb} {self.mean_when:.2f} vs "
            f"{self.mean_otherwise:.2f} otherwise (n={self.support})"
        )

    def as_dict(self) -> dict[str, Any]:
        """The rule as JSON data: its text, its fields and the difference of means."""
        return {"rule": self.text, **asdict(self), "difference": _finite_or_none(self.difference)}


class RuleSearch(NamedTuple):
    """The significant rules, strongest effect first, and how many comparisons were made."""

    rules: list[Rule]
    tested: int


def mine_rules(
    rows: Sequence[Experience],
    *,
    min_support: int,
    significance: float,
    max_rules: int = 20,
) -> RuleSearch:
    """Find the conditions under which an action does significantly better or worse.

    For each condition and action, the action's rewarded decisions are split by whether the
    condition holds. A pair is tested only when both sides hold at least ``min_support``
    decisions; rewards that are all 0 or 1 use the two-proportion z-test, others Welch's
    t-test. Rules whose Bonferroni-corrected p-value is below ``significance`` are kept,
    largest absolute difference of means first, at most ``max_rules``.

    Args:
        rows: the window; rows without a finite reward are ignored.
        min_support: decisions needed on each side of a comparison (2 at the least, since
            a side's variance needs two).
        significance: the family-wise error rate.
        max_rules: how many rules to return.

    Returns:
        The rules and the number of comparisons made.
    """
    if min_support < 1:
        raise InvalidInputError("min_support", min_support, "must be at least 1")
    if not 0.0 < significance < 1.0:
        raise InvalidInputError("significance", significance, "must be in (0, 1)")
    rewarded = [r for r in rows if r.reward is not None and math.isfinite(r.reward)]
    rewards = np.array([r.reward for r in rewarded], dtype=np.float64)
    binary = bool(np.all((rewards == 0.0) | (rewards == 1.0)))
    candidates = list(_comparisons(rewarded, rewards, max(2, min_support)))
    rules: list[Rule] = []
    for condition, action, inside, outside in candidates:
        if binary:
            p = two_proportion_z_test(
                round(inside.mean * inside.n), inside.n, round(outside.mean * outside.n), outside.n
            )
        else:
            p = welch_t_test(*inside, *outside)
        adjusted = min(1.0, p * len(candidates))
        if adjusted < significance:
            rules.append(
                Rule(
                    condition=condition.label,
                    feature=condition.feature,
                    action=action,
                    support=inside.n,
                    mean_when=inside.mean,
                    n_otherwise=outside.n,
                    mean_otherwise=outside.mean,
                    lift=_finite_or_none(inside.mean / outside.mean) if outside.mean else None,
                    p_value=p,
                    p_adjusted=adjusted,
                    test="two_proportion_z" if binary else "welch_t",
                )
            )
    rules.sort(key=lambda rule: (-abs(rule.difference), rule.p_value, rule.text))
    return RuleSearch(rules[:max_rules], len(candidates))


class _Group(NamedTuple):
    mean: float
    var: float
    n: int


def _comparisons(
    rows: Sequence[Experience], rewards: npt.NDArray[np.float64], min_support: int
) -> Iterator[tuple[Condition, str, _Group, _Group]]:
    """Every (condition, action) with ``min_support`` rewards on each side, and both sides."""
    if not rows:
        return
    names = sorted({r.action for r in rows})
    codes = np.array([names.index(r.action) for r in rows], dtype=np.int64)
    # Rewards near the float limit overflow the sums; those comparisons are dropped.
    with np.errstate(over="ignore", invalid="ignore"):
        centre = float(np.sum(rewards / len(rewards)))  # centring keeps the squares accurate
        shifted = rewards - centre
        total = _moments(codes, shifted, len(names))
        for condition in conditions([r.context for r in rows]):
            inside = _moments(codes[condition.mask], shifted[condition.mask], len(names))
            for k, action in enumerate(names):
                sides = (
                    _group(inside[0][k], inside[1][k], inside[2][k], centre),
                    _group(
                        total[0][k] - inside[0][k],
                        total[1][k] - inside[1][k],
                        total[2][k] - inside[2][k],
                        centre,
                    ),
                )
                if all(g.n >= min_support and math.isfinite(g.mean) for g in sides):
                    yield condition, action, *sides


def _moments(
    codes: npt.NDArray[np.int64], values: npt.NDArray[np.float64], groups: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Per group: count, sum and sum of squares."""
    return (
        np.bincount(codes, minlength=groups).astype(np.float64),
        np.bincount(codes, weights=values, minlength=groups).astype(np.float64),
        np.bincount(codes, weights=values * values, minlength=groups).astype(np.float64),
    )


def _group(count: float, total: float, squares: float, centre: float) -> _Group:
    n = round(count)
    if n < 2:
        return _Group(math.nan, math.nan, n)
    mean = total / n
    var = (squares - total * mean) / (n - 1)
    return _Group(mean + centre if math.isfinite(var) else math.nan, max(0.0, var), n)


# --- change detection ------------------------------------------------------------------------


class Alarm(NamedTuple):
    """What a detector found when it fired.

    Attributes:
        start: samples seen since the detector's last reset before the change began.
        direction: ``increase`` or ``decrease`` of the mean.
    """

    start: int
    direction: Direction


class ChangeDetector(Protocol):
    """A sequential detector of a shift in a stream's mean.

    ``update`` returns True when the detector fires; it then records ``last_alarm`` and
    resets itself, so it can run on an endless stream.
    """

    last_alarm: Alarm | None

    def update(self, x: float) -> bool: ...

    def reset(self) -> None: ...


def _check_sample(x: float) -> float:
    if not math.isfinite(x):
        raise InvalidInputError("x", x, "must be a finite number")
    return x


class _Detector:
    """Settings, validation and alarm bookkeeping shared by the two detectors."""

    def __init__(self, delta: float = 0.25, threshold: float = 25.0, min_samples: int = 30) -> None:
        if not (math.isfinite(delta) and delta >= 0.0):
            raise InvalidInputError("delta", delta, "must be a finite number >= 0")
        if not (math.isfinite(threshold) and threshold > 0.0):
            raise InvalidInputError("threshold", threshold, "must be a finite number > 0")
        if min_samples < 1:
            raise InvalidInputError("min_samples", min_samples, "must be at least 1")
        self.delta = delta
        self.threshold = threshold
        self.min_samples = min_samples
        self.last_alarm: Alarm | None = None
        self.reset()

    def reset(self) -> None:
        """Forget the stream (``last_alarm`` stays)."""
        self.samples = 0
        self._mean = self._m2 = 0.0

    def _learn(self, x: float) -> None:
        """Welford's update of the running mean and sum of squared deviations."""
        self.samples += 1
        deviation = x - self._mean
        self._mean += deviation / self.samples
        self._m2 += deviation * (x - self._mean)

    def _fire(self, alarm: Alarm) -> bool:
        self.last_alarm = alarm
        self.reset()
        return True


class PageHinkley(_Detector):
    """Two-sided Page-Hinkley test, in units of the stream's running standard deviation.

    Each value is standardised by the running mean and standard deviation (since the last
    reset, the value included). The test sums ``z - delta`` and fires on an increase when the
    sum rises more than ``threshold`` above its minimum; symmetrically, it sums ``z + delta``
    and fires on a decrease when that sum falls ``threshold`` below its maximum. The change
    is estimated to start right after the extreme. Standardising makes the parameters mean
    the same for 0/1 rewards and for rewards in dollars: ``delta`` is the drift tolerated and
    ``threshold`` the evidence required, both in standard deviations.

    Args:
        delta: drift tolerated per sample (>= 0).
        threshold: accumulated deviation that raises an alarm (> 0).
        min_samples: samples since the last reset before an alarm may be raised.
    """

    def reset(self) -> None:
        """Forget the stream (``last_alarm`` stays)."""
        super().reset()
        self._up = self._up_min = self._down = self._down_max = 0.0
        self._up_min_at = self._down_max_at = 0

    def update(self, x: float) -> bool:
        """Add one value; True when it raises an alarm.

        Raises:
            InvalidInputError: ``x`` is NaN or infinite.
        """
        self._learn(_check_sample(x))
        if self._m2 <= 0.0:
            return False  # no spread yet to measure deviations against
        z = (x - self._mean) / math.sqrt(self._m2 / (self.samples - 1))
        self._up += z - self.delta
        if self._up < self._up_min:
            self._up_min, self._up_min_at = self._up, self.samples
        self._down += z + self.delta
        if self._down > self._down_max:
            self._down_max, self._down_max_at = self._down, self.samples
        if self.samples < self.min_samples:
            return False
        if self._up - self._up_min > self.threshold:
            return self._fire(Alarm(self._up_min_at, "increase"))
        if self._down_max - self._down > self.threshold:
            return self._fire(Alarm(self._down_max_at, "decrease"))
        return False


class Cusum(_Detector):
    """Two-sided self-starting CUSUM, in units of the stream's running standard deviation.

    The first ``min_samples`` values after a reset only estimate the mean and standard
    deviation. Each later value is standardised by the estimates from the values before it
    (which keep updating), and the statistics ``S+ = max(0, S+ + z - delta)`` and
    ``S- = max(0, S- - z - delta)`` fire when one exceeds ``threshold``. The change is
    estimated to start after the statistic's last zero.

    Args:
        delta: the allowance per sample, in standard deviations (>= 0).
        threshold: the decision interval, in standard deviations (> 0).
        min_samples: burn-in values after each reset.
    """

    def reset(self) -> None:
        """Forget the stream (``last_alarm`` stays)."""
        super().reset()
        self._up = self._down = 0.0
        self._up_start = self._down_start = 0

    def update(self, x: float) -> bool:
        """Add one value; True when it raises an alarm.

        Raises:
            InvalidInputError: ``x`` is NaN or infinite.
        """
        x = _check_sample(x)
        if self.samples >= self.min_samples and self._m2 > 0.0:
            z = (x - self._mean) / math.sqrt(self._m2 / (self.samples - 1))
            self._up = max(0.0, self._up + z - self.delta)
            self._down = max(0.0, self._down - z - self.delta)
        self._learn(x)
        if self._up == 0.0:
            self._up_start = self.samples
        if self._down == 0.0:
            self._down_start = self.samples
        if self._up > self.threshold:
            return self._fire(Alarm(self._up_start, "increase"))
        if self._down > self.threshold:
            return self._fire(Alarm(self._down_start, "decrease"))
        return False


def make_detector(config: ChangeDetectionConfig) -> PageHinkley | Cusum:
    """The detector ``analysis.change_detection`` describes."""
    kind = PageHinkley if config.method == "page_hinkley" else Cusum
    return kind(config.delta, config.threshold, config.min_samples)


class ChangePoint(NamedTuple):
    """A change found in an array.

    Attributes:
        position: where the detector fired.
        start: the estimated first position of the new regime.
        direction: ``increase`` or ``decrease``.
    """

    position: int
    start: int
    direction: Direction


def detect_changes(values: npt.ArrayLike, detector: ChangeDetector) -> list[ChangePoint]:
    """Run ``detector`` (after a reset) over ``values`` in order; every alarm it raises.

    Raises:
        InvalidInputError: a value is NaN or infinite.
    """
    detector.reset()
    found: list[ChangePoint] = []
    origin = 0
    for index, value in enumerate(np.asarray(values, dtype=np.float64).ravel().tolist()):
        if detector.update(value) and detector.last_alarm is not None:
            alarm = detector.last_alarm
            found.append(ChangePoint(index, origin + alarm.start, alarm.direction))
            origin = index + 1
    return found
