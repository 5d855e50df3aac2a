"""Learning quality: the supervised-to-bandit protocol of the contextual bandit bake-off.

Bietti, Agarwal & Langford, "A Contextual Bandit Bake-off" (JMLR 2021): each labelled example
is one round. The policy sees the features and picks an action (a class); the reward is 1 when
it is the label, else 0, and only the chosen action's reward is revealed. The figure is the
progressive average reward over one pass of a shuffled dataset, averaged over seeds (each seed
is another shuffle, the same one for every policy).

Datasets: scikit-learn's bundled iris, wine, breast_cancer and digits, and two fixed
``make_classification`` sets (2,000 rows, 20 features, 10 informative, 5 and 10 classes,
``random_state=7``). Features are standardised over the whole dataset (constant columns become
0) and every policy sees the same values (``--raw-features`` passes them unscaled to everyone).

Policies, side by side in the same run:

- agentrt, through its public API only: one ``Runtime`` per (row, dataset, seed) on a
  temporary SQLite file with ``runtime.pipeline: external``, one agent, actions ``c0..cK``,
  contexts ``{"f0": x0, ...}``; each round ``decision = await rt.decide(...)`` then
  ``await rt.reward(decision, r)``. Reporting the reward with its ``Decision`` is what lets the
  runtime update an incremental active model (``training.incremental``, on by default; the
  ``linear`` learner supports it) between cycles. ``await rt.run_cycle(agent)`` (train on the
  stored window, validate, hot-swap) runs on the row's schedule:

  - N = 1 (``linear`` only): per-reward updates through the pipeline. ``await rt.flush()``
    after every reward, so the active model has learned from it before the next round; the
    first cycle as soon as ``training.min_rows`` rows exist (this row sets it to 10), then a
    cycle every ``--refit`` rounds (50), which refreshes the feature scaling.
  - N = 50, 500: a cycle every N rounds. The runtime would apply the incremental updates in
    the background every ``runtime.flush_interval``, but this loop never yields to the event
    loop between cycles (buffered ``decide()`` and ``reward()`` await nothing), so they land
    only at the cycle's own flush, just before the refit replaces the model: these rows
    measure a policy updated every N rounds. ``--flush-every K`` adds ``rt.flush()`` every K
    rounds (a deterministic stand-in for the background batches of an application that awaits
    I/O between rounds); ``--no-incremental`` sets ``training.incremental: false``.

  Configurations: ``linear`` (the default: ``linear`` learner, no exploration block, hence the
  exploration derived from ``optimization_parameters``, which for a learner with an uncertainty
  estimate is the ``exploitation`` method: UCB, confidence 2.0 times the model's posterior
  standard deviation, floor 0.01; the uniform baseline until the first version is active) and
  ``neural`` (``mlp``, 2 hidden layers of 32, 10 epochs, lr 3e-3, no incremental updates; its
  derived exploration is epsilon-greedy, epsilon 0.1 decaying by 0.995 per activated version,
  floor 0.01). Both use ``runtime.durability: buffered``, ``training.min_rows: 20``
  (10 for the N = 1 row), a window holding the whole pass, the default feature width (64 hashed
  slots) and validators; a rejected candidate is part of what is measured.
- ``--direct`` (a diagnostic, not the pipeline): the ``linear`` learner's ``LinearModel.update``
  driven directly after every reward from the empty ridge model, with a feature encoder whose
  running statistics follow every context and the configuration's exploration strategy. No
  cycles, validators, held-out split or database: the learner's best case.
- uniform random: the floor.
- Vowpal Wabbit ``--cb_explore_adf -q sa`` with ``--epsilon 0.05`` and with ``--squarecb``
  (``vowpalwabbit.Workspace``, ADF text: shared features, one line per action; learns after
  every round with cost ``1 - reward`` and the probability of the chosen action).
- MABWiser ``LinUCB(alpha=1.0)``, ``partial_fit`` every round (``--linucb-batch`` to batch).
- the ceiling: VW ``--oaa K --loss_function logistic``, an online logistic regression that sees
  every label (full information), predicting before learning. (scikit-learn's
  ``SGDClassifier.partial_fit`` costs 1.4-2.5 ms a round here, too slow for a default run.)

"Best peer" is the best of uniform, the two VW policies and LinUCB (the ceiling sees labels and
is not a peer). The project's target for agentrt's default configuration: the best average
across datasets, ahead of every peer, and no dataset below 0.95 of the best peer.

    python bench/learning.py                 # 6 datasets, 1 seed, N = 1, 50, 500 (~2 min, 2 cores)
    python bench/learning.py --quick         # iris, wine, breast_cancer; 2 seeds; N = 1, 50 (~15 s)
    python bench/learning.py --seeds 5       # the full protocol: 5 seeds (~8-10 min on 2 cores)

Diagnostics (agentrt settings the default run leaves alone):

    python bench/learning.py --configs linear --every 50 --validators sanity   # no OPE gate
    python bench/learning.py --configs linear --every 50 --exploration epsilon_greedy
    python bench/learning.py --configs linear --every 50 --exploration epsilon_greedy --epsilon 0.02
    python bench/learning.py --configs linear --every 50 --feature-dim 256      # fewer collisions
    python bench/learning.py --configs linear --every 50 --ridge 0.1 --holdout 0.1
    python bench/learning.py --configs linear --every 50 --no-incremental  # cycles alone
    python bench/learning.py --configs linear --every 1 --direct   # LinearModel.update, no runtime
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import statistics
import tempfile
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import anyio
import numpy as np
import numpy.typing as npt
import structlog

from agentrt import Runtime, load_config
from agentrt.exploration import from_config as exploration_from_config
from agentrt.learning.features import FeatureEncoder, FeatureSpec
from agentrt.learning.linear import LinearModel

RESULTS = Path(__file__).resolve().parent / "results"
DATASETS = ("iris", "wine", "breast_cancer", "digits", "synthetic_5", "synthetic_10")
QUICK_DATASETS = ("iris", "wine", "breast_cancer")
PEERS = ("uniform", "vw_epsilon", "vw_squarecb", "linucb")
CEILING = "ceiling"
CONFIGS = ("linear", "neural")
INCREMENTAL = ("linear",)  # configurations whose learner updates after every reward (N = 1)
DEFAULT_CONFIG = "linear"
DEFAULT_FEATURE_DIM = 64
MIN_ROWS = 20  # training.min_rows of the rows that cycle every N rounds
ONLINE_MIN_ROWS = 10  # training.min_rows of the N = 1 row: its first cycle comes this early
DIRECT = "agentrt linear direct"  # the --direct diagnostic
WIDTH = 54  # the policy column
LABELS = {
    "uniform": "uniform random",
    "vw_epsilon": "VW cb_explore_adf epsilon 0.05",
    "vw_squarecb": "VW cb_explore_adf squarecb",
    "linucb": "MABWiser LinUCB alpha=1",
    CEILING: "ceiling: VW oaa logistic (labels)",
}

Floats = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Dataset:
    name: str
    x: Floats
    y: npt.NDArray[np.int64]
    classes: int


def load_datasets(names: list[str], raw: bool) -> dict[str, Dataset]:
    from sklearn import datasets as sk

    loaders: dict[str, Callable[[], tuple[Any, Any]]] = {
        "iris": lambda: sk.load_iris(return_X_y=True),
        "wine": lambda: sk.load_wine(return_X_y=True),
        "breast_cancer": lambda: sk.load_breast_cancer(return_X_y=True),
        "digits": lambda: sk.load_digits(return_X_y=True),
        "synthetic_5": lambda: sk.make_classification(
            n_samples=2000, n_features=20, n_informative=10, n_classes=5, random_state=7
        ),
        "synthetic_10": lambda: sk.make_classification(
            n_samples=2000, n_features=20, n_informative=10, n_classes=10, random_state=7
        ),
    }
    out = {}
    for name in names:
        x, y = loaders[name]()
        x = np.asarray(x, dtype=np.float64)
        if not raw:
            std = x.std(axis=0)
            x = np.where(std > 0, (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0), 0.0)
        labels = np.asarray(y, dtype=np.int64)
        out[name] = Dataset(name, x, labels, int(labels.max()) + 1)
    return out


def hashed_slots(features: int, dim: int) -> int:
    """Distinct slots agentrt's hashing trick gives keys f0..f{features-1} (numbers hash
    ``n:KEY`` with CRC32 modulo the width, see agentrt/learning/features.py)."""
    return len({zlib.crc32(f"n:f{j}".encode()) % dim for j in range(features)})


# -- peers ------------------------------------------------------------------------------------


class Peer(Protocol):
    def choose(self, x: Floats) -> tuple[int, float]: ...

    def learn(self, x: Floats, action: int, reward: float, label: int) -> None: ...

    def close(self) -> None: ...


class Uniform:
    def __init__(self, classes: int, seed: int) -> None:
        self.classes = classes
        self.rng = np.random.default_rng(seed)

    def choose(self, x: Floats) -> tuple[int, float]:
        return int(self.rng.integers(self.classes)), 1.0 / self.classes

    def learn(self, x: Floats, action: int, reward: float, label: int) -> None:
        pass

    def close(self) -> None:
        pass


def vw_features(x: Floats) -> str:
    return " ".join(f"f{j}:{v:.6g}" for j, v in enumerate(x) if v != 0.0)


class VowpalBandit:
    """``--cb_explore_adf``: VW returns the distribution; the action is drawn here from it."""

    def __init__(self, classes: int, seed: int, exploration: str) -> None:
        from vowpalwabbit import Workspace

        self.vw = Workspace(f"--cb_explore_adf {exploration} -q sa --quiet --random_seed {seed}")
        self.classes = classes
        self.rng = np.random.default_rng(seed)
        self.actions = [f"|a a{k}" for k in range(classes)]
        self._last = 1.0 / classes

    def choose(self, x: Floats) -> tuple[int, float]:
        pmf = np.asarray(self.vw.predict([f"shared |s {vw_features(x)}", *self.actions]))
        pmf = pmf / pmf.sum()
        action = int(self.rng.choice(self.classes, p=pmf))
        self._last = float(pmf[action])
        return action, self._last

    def learn(self, x: Floats, action: int, reward: float, label: int) -> None:
        lines = [f"shared |s {vw_features(x)}", *self.actions]
        lines[action + 1] = f"0:{1.0 - reward}:{self._last} {self.actions[action]}"
        self.vw.learn(lines)

    def close(self) -> None:
        self.vw.finish()


class LinUCB:
    """MABWiser's LinUCB; ``partial_fit`` every ``batch`` rounds, uniform before the first."""

    def __init__(self, classes: int, seed: int, alpha: float, batch: int) -> None:
        from mabwiser.mab import MAB, LearningPolicy

        self.mab = MAB(list(range(classes)), LearningPolicy.LinUCB(alpha=alpha), seed=seed)
        self.classes = classes
        self.rng = np.random.default_rng(seed)
        self.batch = batch
        self.pending: tuple[list[int], list[float], list[Floats]] = ([], [], [])
        self.fitted = False

    def choose(self, x: Floats) -> tuple[int, float]:
        if not self.fitted:
            return int(self.rng.integers(self.classes)), 1.0 / self.classes
        return int(self.mab.predict(x[None, :])), 1.0  # deterministic argmax of the bound

    def learn(self, x: Floats, action: int, reward: float, label: int) -> None:
        actions, rewards, contexts = self.pending
        actions.append(action)
        rewards.append(reward)
        contexts.append(x)
        if len(actions) >= self.batch:
            self.mab.partial_fit(actions, rewards, np.vstack(contexts))
            self.fitted = True
            self.pending = ([], [], [])

    def close(self) -> None:
        pass


class Ceiling:
    """Full information: VW one-against-all logistic regression, trained on every label."""

    def __init__(self, classes: int, seed: int) -> None:
        from vowpalwabbit import Workspace

        self.vw = Workspace(
            f"--oaa {classes} --loss_function logistic --quiet --random_seed {seed}"
        )

    def choose(self, x: Floats) -> tuple[int, float]:
        return int(self.vw.predict(f"|s {vw_features(x)}")) - 1, 1.0

    def learn(self, x: Floats, action: int, reward: float, label: int) -> None:
        self.vw.learn(f"{label + 1} |s {vw_features(x)}")

    def close(self) -> None:
        self.vw.finish()


def make_peer(name: str, classes: int, seed: int, args: argparse.Namespace) -> Peer:
    if name == "uniform":
        return Uniform(classes, seed)
    if name == "vw_epsilon":
        return VowpalBandit(classes, seed, "--epsilon 0.05")
    if name == "vw_squarecb":
        return VowpalBandit(classes, seed, "--squarecb")
    if name == "linucb":
        return LinUCB(classes, seed, args.linucb_alpha, args.linucb_batch)
    return Ceiling(classes, seed)


def run_peer(name: str, data: Dataset, order: npt.NDArray[np.int64], seed: int, args: Any) -> float:
    peer = make_peer(name, data.classes, seed, args)
    total = 0.0
    try:
        for i in order:
            x, label = data.x[i], int(data.y[i])
            action, _ = peer.choose(x)
            reward = 1.0 if action == label else 0.0
            peer.learn(x, action, reward, label)
            total += reward
    finally:
        peer.close()
    return total / len(order)


# -- agentrt --------------------------------------------------------------------------------


@dataclass
class AgentRun:
    reward: float
    seconds: float
    cycle_seconds: float
    fit_seconds: float
    statuses: Counter[str] = field(default_factory=Counter)
    rejected_by: Counter[str] = field(default_factory=Counter)
    final_exploration: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Schedule:
    """When an agentrt row learns: ``run_cycle`` after ``first`` rounds (when set) and every
    ``every`` rounds; ``rt.flush()`` every ``flush`` rounds (0: never), so an incremental model
    has learned from the rewards so far before the next decision."""

    every: int
    first: int | None = None
    flush: int = 0
    min_rows: int = MIN_ROWS

    @classmethod
    def for_row(cls, every: int, args: argparse.Namespace) -> Schedule:
        if every == 1:
            return cls(args.refit, first=ONLINE_MIN_ROWS, flush=1, min_rows=ONLINE_MIN_ROWS)
        return cls(every, flush=args.flush_every)

    def due(self, rounds: int) -> bool:
        return rounds == self.first or rounds % self.every == 0

    def flushes(self, rounds: int) -> bool:
        return self.flush > 0 and rounds % self.flush == 0


def row_label(config: str, every: int) -> str:
    return f"agentrt {config} N={every}"


def row_title(config: str, every: int, args: argparse.Namespace) -> str:
    """What the row is, as printed (the N = 1 row's cycles are not every round)."""
    if every > 1 and args.flush_every:
        return f"agentrt {config}, cycle every {every}, flush every {args.flush_every}"
    if every > 1:
        return f"agentrt {config}, cycle every {every}"
    if args.no_incremental:
        return f"agentrt {config}, cycle at {ONLINE_MIN_ROWS} + every {args.refit}, no per-reward"
    return f"agentrt {config}, per-reward updates + cycle every {args.refit}"


def agentrt_config(
    path: Path,
    variant: str,
    seed: int,
    datasets: dict[str, Dataset],
    args: argparse.Namespace,
    min_rows: int = MIN_ROWS,
) -> Any:
    training: dict[str, Any] = {
        "min_rows": min_rows,
        "window": 100_000,
        "feature_dim": args.feature_dim,
        "incremental": not args.no_incremental,
    }
    if args.ridge is not None:
        training["ridge"] = args.ridge
    if args.holdout is not None:
        training["holdout"] = args.holdout
    agent: dict[str, Any] = {"training": training}
    if variant == "neural":
        agent.update(learner="neural", model="small_mlp")
    if args.validators is not None:
        agent["validation"] = {"validators": args.validators}
    if args.exploration is not None:
        agent["exploration"] = {"method": args.exploration}
        if args.epsilon is not None:
            agent["exploration"].update(epsilon=args.epsilon, floor=min(args.epsilon, 0.01))
        if args.confidence is not None:
            agent["exploration"].update(confidence=args.confidence)
    return load_config(
        None,
        {
            "database": {"url": f"sqlite+aiosqlite:///{path}"},
            "runtime": {
                "durability": "buffered",
                "seed": seed,
                "auto_migrate": True,
                # Cycles run every N rounds, as the protocol says, not on the loop's trigger.
                "pipeline": "external",
            },
            "agents": {
                name: {**agent, "actions": [f"c{k}" for k in range(data.classes)]}
                for name, data in datasets.items()
            },
            "model_configuration": {
                "learning_models": {
                    "small_mlp": {
                        "type": "contextual_bandit",
                        "architecture": "mlp",
                        "parameters": {
                            "hidden_size": 32,
                            "num_layers": 2,
                            "epochs": 10,
                            "learning_rate": 3e-3,
                            "batch_size": 64,
                        },
                    }
                }
            },
        },
    )


async def run_agentrt(
    variant: str,
    schedule: Schedule,
    seed: int,
    data: Dataset,
    order: npt.NDArray[np.int64],
    path: Path,
    args: argparse.Namespace,
) -> AgentRun:
    """One pass of ``data`` through a fresh runtime (its own database), on ``schedule``."""
    name = data.name
    config = agentrt_config(path, variant, seed, {name: data}, args, schedule.min_rows)
    contexts = [{f"f{j}": float(v) for j, v in enumerate(row)} for row in data.x]
    labels = [f"c{k}" for k in data.y]
    run = AgentRun(0.0, 0.0, 0.0, 0.0)
    total = 0.0
    n = len(order)
    async with Runtime(config) as rt:
        started = time.perf_counter()
        for i, row in enumerate(order):
            decision = await rt.decide(name, contexts[row])
            reward = 1.0 if decision.action == labels[row] else 0.0
            # The Decision, not its id: it carries what the incremental update needs.
            await rt.reward(decision, reward)
            if schedule.flushes(i + 1):
                await rt.flush()
            total += reward
            if i + 1 < n and schedule.due(i + 1):
                report = (await rt.run_cycle(name))[name]
                run.cycle_seconds += report.seconds
                run.fit_seconds += float(report.metrics.get("fit_seconds") or 0.0)
                run.statuses[report.status] += 1
                if report.status == "rejected" and report.reason:
                    for part in report.reason.split("; "):
                        run.rejected_by[part.split(":", 1)[0]] += 1
            run.final_exploration = dict(decision.exploration or {})
        run.seconds = time.perf_counter() - started
    run.reward = total / n
    return run


def run_incremental(
    seed: int,
    datasets: dict[str, Dataset],
    orders: dict[str, npt.NDArray[np.int64]],
    workdir: Path,
    args: argparse.Namespace,
) -> dict[str, AgentRun]:
    """``--direct``: the ``linear`` learner updated after every reward, outside the runtime."""
    config = agentrt_config(workdir / "unused.db", "linear", seed, datasets, args)
    runs: dict[str, AgentRun] = {}
    for name, data in datasets.items():
        agent = config.agents[name]
        strategy = exploration_from_config(config.exploration_for(name))
        encoder = FeatureEncoder(FeatureSpec(dim=agent.training.feature_dim))
        k = data.classes
        model = LinearModel.prior(k, agent.training.feature_dim, agent.training.ridge)
        rng = random.Random(seed)
        total = 0.0
        started = time.perf_counter()
        for row in orders[name]:
            context = {f"f{j}": float(v) for j, v in enumerate(data.x[row])}
            encoder.update(context)
            features = encoder.encode(context)[None, :]
            means, stds = model.predict(features)
            probabilities = strategy.probabilities(means[0], None, stds[0])
            action = rng.choices(range(k), weights=probabilities.tolist())[0]
            reward = 1.0 if action == data.y[row] else 0.0
            model.update(
                features, np.array([action], dtype=np.int64), np.array([reward], np.float32)
            )
            total += reward
        run = AgentRun(total / len(orders[name]), time.perf_counter() - started, 0.0, 0.0)
        run.final_exploration = strategy.describe()
        runs[name] = run
    return runs


# -- report -----------------------------------------------------------------------------------


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def print_dataset(
    data: Dataset,
    scores: dict[str, dict[str, list[float]]],
    agentrt_labels: list[str],
    agent_runs: dict[str, dict[str, list[AgentRun]]],
    feature_dim: int,
    titles: dict[str, str],
) -> None:
    name = data.name
    slots = hashed_slots(data.x.shape[1], feature_dim)
    print(
        f"\n{name}: {len(data.y)} rounds, {data.classes} actions, {data.x.shape[1]} features "
        f"(agentrt hashes them into {slots} distinct slots of {feature_dim})"
    )
    best_peer = max(statistics.fmean(scores[p][name]) for p in PEERS)
    print(f"  {'policy':<{WIDTH}} {'reward':>7} {'± std':>7}  {'/ best peer':>11}")
    for label in [CEILING, *PEERS, *agentrt_labels]:
        m, s = mean_std(scores[label][name])
        spread = f"{s:7.3f}" if len(scores[label][name]) > 1 else f"{'-':>7}"
        extra = ""
        if label in agent_runs:
            runs = agent_runs[label][name]
            statuses: Counter[str] = sum((r.statuses for r in runs), Counter())
            rejected: Counter[str] = sum((r.rejected_by for r in runs), Counter())
            spent = sum(r.cycle_seconds for r in runs)
            cycle = spent / max(sum(statuses.values()), 1)
            fit = sum(r.fit_seconds for r in runs) / spent if spent else 0.0
            eps = runs[-1].final_exploration.get("epsilon")
            extra = "  cycles " + ", ".join(f"{k} {v}" for k, v in sorted(statuses.items()))
            if label == DIRECT:
                extra = "  LinearModel.update after every reward, no runtime"
            elif not statuses:
                extra = "  no cycle (the pass is not longer than N)"
            if rejected:
                extra += " (by " + ", ".join(f"{k} {v}" for k, v in rejected.most_common()) + ")"
            if statuses:
                extra += f"; {cycle * 1000:.0f} ms/cycle ({fit:.0%} in fit)"
            if eps is not None:
                extra += f"; final epsilon {eps:.3f}"
        print(f"  {titles[label]:<{WIDTH}} {m:7.3f} {spread}  {m / best_peer:11.3f}{extra}")


def verdict(
    label: str, scores: dict[str, dict[str, list[float]]], names: list[str]
) -> dict[str, Any]:
    averages = {p: statistics.fmean(statistics.fmean(scores[p][n]) for n in names) for p in PEERS}
    own = statistics.fmean(statistics.fmean(scores[label][n]) for n in names)
    ranking = sorted(
        [*PEERS, label], key=lambda p: own if p == label else averages[p], reverse=True
    )
    ratios = {
        n: statistics.fmean(scores[label][n]) / max(statistics.fmean(scores[p][n]) for p in PEERS)
        for n in names
    }
    best_peer = max(averages, key=lambda p: averages[p])
    ahead = own > averages[best_peer]
    floor = min(ratios.values())
    return {
        "average": own,
        "rank": ranking.index(label) + 1,
        "of": len(ranking),
        "best_peer": best_peer,
        "best_peer_average": averages[best_peer],
        "ratio_to_best_peer": ratios,
        "min_ratio": floor,
        "target_met": ahead and floor >= 0.95,
    }


async def main(args: argparse.Namespace) -> None:
    # The benchmark is the application here: it keeps agentrt's info lines off the table.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    if args.quick:
        args.datasets, args.seeds, args.every = list(QUICK_DATASETS), 2, [1, 50]
    datasets = load_datasets(args.datasets, args.raw_features)
    seeds = list(range(args.seeds))
    orders = {
        seed: {
            n: np.random.default_rng(1000 + seed).permutation(len(d.y)) for n, d in datasets.items()
        }
        for seed in seeds
    }
    rows = [(c, n) for c in args.configs for n in args.every if n > 1 or c in INCREMENTAL]
    agentrt_labels = [row_label(c, n) for c, n in rows]
    titles = {**LABELS, **{row_label(c, n): row_title(c, n, args) for c, n in rows}}
    if args.direct:
        agentrt_labels.append(DIRECT)
        titles[DIRECT] = "diagnostic: LinearModel.update direct (no pipeline)"
    scores: dict[str, dict[str, list[float]]] = {
        p: {n: [] for n in datasets} for p in [CEILING, *PEERS, *agentrt_labels]
    }
    seconds: defaultdict[str, float] = defaultdict(float)
    agent_runs: dict[str, dict[str, list[AgentRun]]] = {
        label: {n: [] for n in datasets} for label in agentrt_labels
    }
    print(
        f"supervised-to-bandit, one pass per seed; datasets {', '.join(datasets)}; "
        f"seeds {len(seeds)}; agentrt cycles every N = {', '.join(map(str, args.every))} rounds "
        f"(N = 1: per-reward updates through the runtime, rt.flush() every round, cycles at "
        f"{ONLINE_MIN_ROWS} rows and every {args.refit}); incremental updates "
        f"{'off' if args.no_incremental else 'on'}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            for peer in [CEILING, *PEERS]:
                started = time.perf_counter()
                for name, data in datasets.items():
                    scores[peer][name].append(run_peer(peer, data, orders[seed][name], seed, args))
                seconds[peer] += time.perf_counter() - started
            for config, every in rows:
                label = row_label(config, every)
                schedule = Schedule.for_row(every, args)
                for name, data in datasets.items():
                    path = Path(tmp) / f"learning-{config}-{every}-{name}-{seed}.db"
                    started = time.perf_counter()
                    run = await run_agentrt(
                        config, schedule, seed, data, orders[seed][name], path, args
                    )
                    seconds[label] += time.perf_counter() - started
                    scores[label][name].append(run.reward)
                    agent_runs[label][name].append(run)
            if args.direct:
                started = time.perf_counter()
                runs = run_incremental(seed, datasets, orders[seed], Path(tmp), args)
                seconds[DIRECT] += time.perf_counter() - started
                for name, run in runs.items():
                    scores[DIRECT][name].append(run.reward)
                    agent_runs[DIRECT][name].append(run)
            print(f"  seed {seed} done ({sum(seconds.values()):.0f} s so far)", flush=True)

    names = list(datasets)
    for data in datasets.values():
        print_dataset(data, scores, agentrt_labels, agent_runs, args.feature_dim, titles)

    print(f"\naverage progressive reward across {len(names)} datasets (wall seconds, all seeds):")
    for label in [CEILING, *PEERS, *agentrt_labels]:
        avg = statistics.fmean(statistics.fmean(scores[label][n]) for n in names)
        print(f"  {titles[label]:<{WIDTH}} {avg:7.3f}   {seconds[label]:7.1f} s")

    report: dict[str, Any] = {
        "protocol": "supervised-to-bandit, one pass, progressive average reward",
        "datasets": {
            n: {"rows": len(d.y), "classes": d.classes, "features": d.x.shape[1]}
            for n, d in datasets.items()
        },
        "seeds": len(seeds),
        "every": args.every,
        "incremental": not args.no_incremental,
        "flush_every": args.flush_every,
        "online_schedule": {"min_rows": ONLINE_MIN_ROWS, "refit": args.refit},
        "titles": {label: titles[label] for label in agentrt_labels},
        "feature_dim": args.feature_dim,
        "raw_features": args.raw_features,
        "validators": args.validators,
        "exploration": args.exploration,
        "epsilon": args.epsilon,
        "confidence": args.confidence,
        "ridge": args.ridge,
        "holdout": args.holdout,
        "scores": {label: {n: v for n, v in per.items()} for label, per in scores.items()},
        "means": {
            label: {n: statistics.fmean(v) for n, v in per.items()} for label, per in scores.items()
        },
        "averages": {
            label: statistics.fmean(statistics.fmean(v) for v in per.values())
            for label, per in scores.items()
        },
        "seconds": dict(seconds),
        "agentrt_cycles": {
            label: {
                n: {
                    "statuses": dict(sum((r.statuses for r in runs), Counter())),
                    "rejected_by": dict(sum((r.rejected_by for r in runs), Counter())),
                    "cycle_seconds": sum(r.cycle_seconds for r in runs),
                    "fit_seconds": sum(r.fit_seconds for r in runs),
                }
                for n, runs in per.items()
            }
            for label, per in agent_runs.items()
        },
        "targets": {},
    }
    if DEFAULT_CONFIG in args.configs:
        config = agentrt_config(Path("unused.db"), DEFAULT_CONFIG, 0, datasets, args)
        first = next(iter(datasets))
        exploration = exploration_from_config(config.exploration_for(first)).describe()
        print(
            f"\nagentrt {DEFAULT_CONFIG} configuration (exploration {exploration}; ridge "
            f"{config.agents[first].training.ridge:g}). Target: best average across datasets, "
            f"ahead of every peer, no dataset below 0.95 of the best peer."
        )
        for label in agentrt_labels:
            if label == DIRECT or not label.startswith(f"agentrt {DEFAULT_CONFIG} "):
                continue
            result = verdict(label, scores, names)
            report["targets"][label] = result
            ratios = ", ".join(f"{n} {r:.2f}" for n, r in result["ratio_to_best_peer"].items())
            print(
                f"  {titles[label]}: average {result['average']:.3f}, rank {result['rank']} of "
                f"{result['of']} (best peer {LABELS[result['best_peer']]} "
                f"{result['best_peer_average']:.3f}); ratio to the best peer: {ratios}; "
                f"target {'MET' if result['target_met'] else 'NOT MET'}"
            )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "learning.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--seeds", type=int, default=1, help="shuffles (the protocol uses 5)")
    parser.add_argument(
        "--every",
        type=int,
        nargs="+",
        default=[1, 50, 500],
        help="rounds between learning cycles (1: per-reward updates, linear only)",
    )
    parser.add_argument(
        "--refit",
        type=int,
        default=50,
        help="N = 1 row: rounds between its cycles (after the first, at 10 rows)",
    )
    parser.add_argument(
        "--no-incremental",
        action="store_true",
        help="agentrt training.incremental: false (no per-reward updates between cycles)",
    )
    parser.add_argument(
        "--flush-every",
        type=int,
        default=0,
        help="N > 1 rows: rt.flush() every K rounds, so incremental updates land between "
        "cycles (default 0: only the cycle's own flush)",
    )
    parser.add_argument(
        "--direct",
        action="store_true",
        help="add the diagnostic row: LinearModel.update driven directly, not the pipeline",
    )
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    parser.add_argument(
        "--quick", action="store_true", help="3 small datasets, 2 seeds, N=1 and 50"
    )
    parser.add_argument("--feature-dim", type=int, default=DEFAULT_FEATURE_DIM)
    parser.add_argument("--raw-features", action="store_true", help="do not standardise")
    parser.add_argument(
        "--validators", nargs="+", help="agentrt validators (default: agentrt's own list)"
    )
    parser.add_argument(
        "--exploration",
        choices=("epsilon_greedy", "softmax", "ucb", "thompson"),
        help="agentrt exploration method (default: the one derived from optimization_parameters)",
    )
    parser.add_argument("--epsilon", type=float, help="with --exploration epsilon_greedy")
    parser.add_argument("--confidence", type=float, help="with --exploration ucb")
    parser.add_argument("--ridge", type=float, help="agentrt training.ridge")
    parser.add_argument("--holdout", type=float, help="agentrt training.holdout")
    parser.add_argument("--linucb-alpha", type=float, default=1.0)
    parser.add_argument("--linucb-batch", type=int, default=1, help="rounds per partial_fit")
    parsed = parser.parse_args()
    if any(n < 1 for n in parsed.every):
        parser.error("--every must be at least 1")
    if parsed.refit < 1:
        parser.error("--refit must be at least 1")
    if parsed.flush_every < 0:
        parser.error("--flush-every must not be negative")
    if not math.isfinite(parsed.linucb_alpha):
        parser.error("--linucb-alpha must be finite")
    anyio.run(main, parsed)
