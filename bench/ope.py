"""Bias and RMSE of agentrt's IPS, SNIPS and DR against a known true value, beside a peer.

The logs are synthetic, so the target policy's true value is exact: 50 context types drawn from
a fixed distribution, 5 actions, Bernoulli rewards with known means ``mu(x, a)``; the logging
policy is epsilon-greedy (epsilon 0.3) on a noisy copy of the means and logs exact propensities;
the target is epsilon-greedy (epsilon 0.05) on a slightly wrong copy; DR's reward model is the
true means off by N(0, 0.05). Its true value is ``sum_x P(x) sum_a pi(a|x) mu(x, a)``.

The peer is the Open Bandit Pipeline (``obp.ope``) when it imports; otherwise the textbook
formulas computed inline with numpy (then the ratios check agentrt's arithmetic, nothing more).
Also reported: coverage of agentrt's 95% bootstrap intervals, and the time of one estimate with
1,000 resamples of 10,000 rows.

    python bench/ope.py [--seeds 50] [--n-bootstrap 200]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from agentrt.evaluation import Estimate, doubly_robust, evaluate, ips, snips
from agentrt.exploration import EpsilonGreedy

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = (500, 2_000, 10_000, 50_000)
ESTIMATORS = ("ips", "snips", "dr")
CONTEXTS, ACTIONS = 50, 5

Vector = npt.NDArray[np.float64]
Matrix = npt.NDArray[np.float64]


def policy(scores: Matrix, epsilon: float) -> Matrix:
    strategy = EpsilonGreedy(epsilon=epsilon)
    return np.stack([strategy.probabilities(row) for row in scores])


WORLD = np.random.default_rng(7)
CONTEXT_PROBABILITIES: Vector = WORLD.dirichlet(np.full(CONTEXTS, 2.0))
MEANS: Matrix = WORLD.uniform(0.05, 0.95, (CONTEXTS, ACTIONS))
LOGGING = policy(MEANS + WORLD.normal(0.0, 0.3, MEANS.shape), 0.3)
TARGET = policy(MEANS + WORLD.normal(0.0, 0.1, MEANS.shape), 0.05)
REWARD_MODEL = np.clip(MEANS + WORLD.normal(0.0, 0.05, MEANS.shape), 0.0, 1.0)
TRUE_VALUE = float(CONTEXT_PROBABILITIES @ np.sum(TARGET * MEANS, axis=1))


class Logs(NamedTuple):
    actions: npt.NDArray[np.int64]
    rewards: Vector
    propensities: Vector
    target_probabilities: Vector
    target_distribution: Matrix
    reward_estimates: Matrix


def simulate(rows: int, seed: int) -> Logs:
    rng = np.random.default_rng(seed)
    contexts = rng.choice(CONTEXTS, size=rows, p=CONTEXT_PROBABILITIES)
    drawn = np.sum(rng.random(rows)[:, None] >= np.cumsum(LOGGING[contexts], axis=1), axis=1)
    actions = np.minimum(drawn, ACTIONS - 1).astype(np.int64)
    rewards = (rng.random(rows) < MEANS[contexts, actions]).astype(np.float64)
    target = TARGET[contexts]
    return Logs(
        actions,
        rewards,
        LOGGING[contexts, actions],
        target[np.arange(rows), actions],
        target,
        REWARD_MODEL[contexts],
    )


def textbook(logs: Logs) -> dict[str, float]:
    """The three formulas as written in the literature, independently of agentrt."""
    w = logs.target_probabilities / logs.propensities
    r = logs.rewards
    q_logged = logs.reward_estimates[np.arange(r.size), logs.actions]
    direct = np.sum(logs.target_distribution * logs.reward_estimates, axis=1)
    return {
        "ips": float(np.mean(w * r)),
        "snips": float(np.sum(w * r) / np.sum(w)),
        "dr": float(np.mean(direct + w * (r - q_logged))),
    }


def obp_peer() -> tuple[str, Callable[[Logs], dict[str, float]] | None]:
    """The Open Bandit Pipeline's estimators, or why they cannot be used here."""
    try:
        import obp  # type: ignore[import-not-found, unused-ignore]
        from obp.ope import (  # type: ignore[import-not-found, unused-ignore]
            DoublyRobust,
            InverseProbabilityWeighting,
            SelfNormalizedInverseProbabilityWeighting,
        )
    except Exception as exc:  # an old package may fail on import in any way, not only ImportError
        return f"{type(exc).__name__}: {exc}", None

    def estimate(logs: Logs) -> dict[str, float]:
        common = {
            "reward": logs.rewards,
            "action": logs.actions,
            "pscore": logs.propensities,
            "action_dist": logs.target_distribution[:, :, None],
        }
        model = logs.reward_estimates[:, :, None]
        return {
            "ips": float(InverseProbabilityWeighting().estimate_policy_value(**common)),
            "snips": float(
                SelfNormalizedInverseProbabilityWeighting().estimate_policy_value(**common)
            ),
            "dr": float(
                DoublyRobust().estimate_policy_value(**common, estimated_rewards_by_reg_model=model)
            ),
        }

    return f"obp {obp.__version__}", estimate


def agentrt_estimates(logs: Logs, n_bootstrap: int, seed: int) -> dict[str, Estimate]:
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


def bias_rmse(values: list[float]) -> tuple[float, float]:
    errors = np.array(values) - TRUE_VALUE
    return float(errors.mean()), float(np.sqrt(np.mean(errors**2)))


def bootstrap_seconds(rows: int = 10_000, resamples: int = 1_000) -> dict[str, float]:
    """Wall time of one estimate, interval included, per estimator (best of 3)."""
    logs = simulate(rows, seed=123_456)
    logged = (logs.rewards, logs.propensities, logs.target_probabilities)
    model = (logs.actions, logs.reward_estimates, logs.target_distribution)
    calls: dict[str, Callable[[], Estimate]] = {
        "ips": lambda: ips(*logged, n_bootstrap=resamples),
        "snips": lambda: snips(*logged, n_bootstrap=resamples),
        "dr": lambda: doubly_robust(
            *logged,
            actions=model[0],
            reward_estimates=model[1],
            target_distribution=model[2],
            n_bootstrap=resamples,
        ),
    }
    seconds: dict[str, float] = {}
    for name, call in calls.items():
        times = []
        for _ in range(3):
            started = time.perf_counter()
            call()
            times.append(time.perf_counter() - started)
        seconds[name] = round(min(times), 4)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument("--n-bootstrap", type=int, default=200)
    args = parser.parse_args()

    peer_name, peer = obp_peer()
    if peer is None:
        print(f"obp unavailable ({peer_name}); the peer is the textbook formulas computed inline")
        peer_name, peer = "textbook formulas (numpy, inline)", textbook
    print(f"true value {TRUE_VALUE:.4f}; {args.seeds} seeds per size; peer: {peer_name}\n")

    rows_out: list[dict[str, float | int | str]] = []
    header = f"{'rows':>7} {'est':>5} {'bias':>9} {'RMSE':>8} {'peer bias':>10} {'peer RMSE':>10}"
    print(f"{header} {'ratio':>6} {'95% CI cover':>13} {'mean ESS':>9}")
    for size in SIZES:
        ours: dict[str, list[Estimate]] = {name: [] for name in ESTIMATORS}
        theirs: dict[str, list[float]] = {name: [] for name in ESTIMATORS}
        for seed in range(args.seeds):
            logs = simulate(size, seed=size * 1_000 + seed)
            for name, estimate in agentrt_estimates(logs, args.n_bootstrap, seed).items():
                ours[name].append(estimate)
            for name, value in peer(logs).items():
                theirs[name].append(value)
        for name in ESTIMATORS:
            bias, rmse = bias_rmse([e.value for e in ours[name]])
            peer_bias, peer_rmse = bias_rmse(theirs[name])
            coverage = np.mean([e.ci_low <= TRUE_VALUE <= e.ci_high for e in ours[name]])
            ess = np.mean([e.effective_sample_size for e in ours[name]])
            ratio = rmse / peer_rmse
            print(
                f"{size:>7} {name:>5} {bias:>+9.5f} {rmse:>8.5f} {peer_bias:>+10.5f} "
                f"{peer_rmse:>10.5f} {ratio:>6.3f} {coverage:>13.0%} {ess:>9.0f}"
            )
            rows_out.append(
                {"rows": size, "estimator": name, "bias": round(bias, 6), "rmse": round(rmse, 6),
                 "peer_bias": round(peer_bias, 6), "peer_rmse": round(peer_rmse, 6),
                 "rmse_ratio": round(ratio, 4), "ci_coverage": round(float(coverage), 3),
                 "mean_ess": round(float(ess), 1)}
            )  # fmt: skip

    seconds = bootstrap_seconds()
    largest = {r["estimator"]: r for r in rows_out if r["rows"] == SIZES[-1]}
    figure = ", ".join(f"{n.upper()} {largest[n]['rmse']:.5f}" for n in ESTIMATORS)
    ratios = ", ".join(f"{n.upper()} {largest[n]['rmse_ratio']:.3f}" for n in ESTIMATORS)
    timing = ", ".join(f"{n.upper()} {s * 1000:.0f} ms" for n, s in seconds.items())
    print(f"\nfigure: RMSE at {SIZES[-1]:,} rows: {figure}")
    print(f"ratio agentrt RMSE / peer RMSE at {SIZES[-1]:,} rows: {ratios}")
    print(f"one estimate with 1,000 resamples of 10,000 rows: {timing}")

    RESULTS.mkdir(exist_ok=True)
    report = {
        "true_value": TRUE_VALUE,
        "seeds": args.seeds,
        "n_bootstrap": args.n_bootstrap,
        "peer": peer_name,
        "results": rows_out,
        "bootstrap_seconds_10k_rows_1000_resamples": seconds,
    }
    (RESULTS / "ope.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
