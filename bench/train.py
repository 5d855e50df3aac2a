"""Training throughput and serving latency per learner, against bare numpy/torch in the same run.

Training: synthetic logged bandit data (``--rows`` rows, ``--features`` features, ``--actions``
actions logged uniformly, propensity 1/K, Bernoulli rewards from a hidden linear-logistic
model) goes straight into the learner classes (``LearnerSettings``, ``BanditData``):

- ``linear``: ``LinearLearner.fit`` (closed-form ridge per action); samples/s = rows / seconds;
- ``neural`` ``mlp`` and ``transformer``: ``NeuralLearner.fit`` with the configured defaults
  (batch 64, hidden 64, 2 layers, Adam, 10 epochs; early stopping is disabled so every epoch
  runs); samples/s = training rows x epochs / seconds. The reference is a bare torch loop on
  the same network, optimiser, batches and weighted loss (no held-out pass, no per-batch
  ``.item()``, no checkpoint copies), in the same run.

Each runs on CPU, and on CUDA too when ``torch.cuda.is_available()``. torch runs with one
intra-op thread by default (``--threads``): on a small shared machine torch's default (one per
core) makes these small batches several times slower and the timings erratic.

Serving: ``LearnedPolicy.choose()`` on one context (64 numeric keys, encoded by a fitted
``FeatureEncoder``), p50/p99 over ``--calls`` single calls, against a bare torch forward of the
same model under ``torch.inference_mode`` (entered once per turn of calls, not per call):

- ``linear``, epsilon-greedy: the model's means as a ``torch.nn.Linear`` (float64, as the
  model computes) on the 1 x D input;
- ``linear/ucb``, UCB (the linear learner's default exploration): the same layer plus the
  posterior standard deviation ``sqrt(noise_a x^T A_a^-1 x)`` in torch, which UCB needs;
- ``neural/mlp`` and ``neural/transformer``, epsilon-greedy: the network's forward.

Target: choose() p99 <= 2 x bare p99 + 20 us. A breakdown (encode, predict, exploration) says
where the time goes (predict: what choose() asks of the model). All five take turns, 500 calls
at a time, so that the noise of a shared machine falls on each alike.

    python bench/train.py                        # 20k rows, 64 features, 20k calls
    python bench/train.py --rows 100000 --calls 50000
    python bench/train.py --threads 0            # torch's default thread count
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agentrt.config import ModelParametersConfig, TrainingConfig
from agentrt.exploration import EpsilonGreedy, Strategy, UpperConfidenceBound
from agentrt.learning.data import BanditData
from agentrt.learning.features import FeatureEncoder, FeatureSpec
from agentrt.learning.linear import LinearLearner
from agentrt.learning.nets import build_network, build_optimizer
from agentrt.learning.neural import NeuralLearner
from agentrt.learning.settings import LearnerSettings
from agentrt.policy import LearnedPolicy

RESULTS = Path(__file__).resolve().parent / "results"
LEARNERS = (("linear", "linear"), ("neural", "mlp"), ("neural", "transformer"))


def synthetic(rows: int, features: int, actions: int, seed: int) -> BanditData:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, features)).astype(np.float32)
    weights = rng.standard_normal((actions, features)) / np.sqrt(features)
    logged = rng.integers(actions, size=rows)
    logits = np.einsum("nd,nd->n", x, weights[logged])
    rewards = (rng.random(rows) < 1 / (1 + np.exp(-2 * logits))).astype(np.float32)
    return BanditData(
        actions=tuple(f"a{k}" for k in range(actions)),
        features=x,
        action_index=logged.astype(np.int64),
        rewards=rewards,
        propensities=np.full(rows, 1 / actions, dtype=np.float32),
    )


def settings(architecture: str, device: torch.device, epochs: int) -> LearnerSettings:
    return LearnerSettings(
        architecture=architecture,
        parameters=ModelParametersConfig(epochs=epochs),
        # patience = epochs: early stopping never cuts a measured run short
        training=TrainingConfig(patience=epochs),
        seed=0,
        device=device,
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_agentrt(
    learner: str, architecture: str, data: BanditData, device: torch.device, epochs: int
) -> tuple[float, Any]:
    """samples/s of the learner's ``fit``, and the trained model."""
    config = settings(architecture, device, epochs)
    if learner == "linear":
        fit = LinearLearner(config)
        fit.fit(data.subset(np.arange(min(len(data), 1000))))  # warm-up (torch linalg)
        sync(device)
        started = time.perf_counter()
        model, _ = fit.fit(data)
        sync(device)
        return len(data) / (time.perf_counter() - started), model
    neural = NeuralLearner(config)
    sync(device)
    started = time.perf_counter()
    model, metrics = neural.fit(data)
    sync(device)
    elapsed = time.perf_counter() - started
    return metrics["train_rows"] * metrics["epochs"] / elapsed, model


def train_bare(architecture: str, data: BanditData, device: torch.device, epochs: int) -> float:
    """samples/s of a bare torch loop: same network, optimiser, batches and weighted loss."""
    config = settings(architecture, device, epochs)
    train, _ = data.split(config.training.holdout, config.seed)
    torch.manual_seed(0)
    arch = "transformer" if architecture == "transformer" else "mlp"
    network = build_network(arch, data.features.shape[1], len(data.actions), config.parameters)
    network.to(device).train()
    optimiser = build_optimizer(
        list(network.parameters()), config.optimization, config.parameters.learning_rate
    )
    x = torch.as_tensor(train.features, device=device)
    a = torch.as_tensor(train.action_index, device=device)
    r = torch.as_tensor(train.rewards, device=device)
    w = torch.as_tensor(train.importance_weights(config.training.importance_clip), device=device)
    batch = config.parameters.batch_size
    generator = torch.Generator().manual_seed(0)
    sync(device)
    started = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(train), generator=generator).to(device)
        for start in range(0, len(train), batch):
            rows = order[start : start + batch]
            predicted = network(x[rows]).gather(1, a[rows].unsqueeze(1)).squeeze(1)
            loss = (w[rows] * (predicted - r[rows]) ** 2).mean()
            optimiser.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimiser.step()
    sync(device)
    return len(train) * epochs / (time.perf_counter() - started)


# -- serving -----------------------------------------------------------------------------------


def percentiles(samples_ns: list[int]) -> tuple[float, float]:
    ordered = sorted(samples_ns)
    return ordered[len(ordered) // 2] / 1000, ordered[int(len(ordered) * 0.99)] / 1000


def timed(
    calls: int,
    parts: dict[str, Callable[[int], object]],
    scopes: dict[str, Callable[[], AbstractContextManager[object]]],
    block: int = 500,
) -> dict[str, tuple[float, float]]:
    """p50/p99 (us) of ``calls`` single calls of each part. The parts take turns, ``block``
    calls at a time (each turn inside its part's scope, if any): on a shared machine a noisy
    spell then falls on every part alike, not on whichever part it happened to coincide with."""
    for name, call in parts.items():  # warm-up
        with scopes.get(name, nullcontext)():
            for i in range(min(calls, 1000)):
                call(i)
    samples: dict[str, list[int]] = {name: [] for name in parts}
    for start in range(0, calls, block):
        for name, call in parts.items():
            taken = samples[name]
            with scopes.get(name, nullcontext)():
                for i in range(start, min(start + block, calls)):
                    started = time.perf_counter_ns()
                    call(i)
                    taken.append(time.perf_counter_ns() - started)
    return {name: percentiles(taken) for name, taken in samples.items()}


def linear_layer(model: Any) -> torch.nn.Linear:
    """The linear model's means as a torch layer: ``x @ W.T + b``, float64 as the model."""
    theta = model.theta
    layer = torch.nn.Linear(theta.shape[1] - 1, theta.shape[0], dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(theta[:, :-1])
        layer.bias.copy_(theta[:, -1])
    return layer.eval()


def serving(
    learner: str,
    model: Any,
    features: int,
    actions: tuple[str, ...],
    calls: int,
    seed: int,
    exploration: Strategy,
) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    values = rng.standard_normal((calls, features))
    contexts = [{f"f{j}": float(v) for j, v in enumerate(row)} for row in values]
    encoder = FeatureEncoder(FeatureSpec(dim=features)).fit(contexts[:2000])
    policy = LearnedPolicy(1, learner, model, encoder, actions, exploration)
    draw = random.Random(seed)
    encoded = encoder.encode_many(contexts[:1000])
    scopes: dict[str, Callable[[], AbstractContextManager[object]]] = {}
    # Entered once per turn, not per call.
    scopes["bare"] = torch.inference_mode
    if learner == "linear":
        layer = linear_layer(model)
        rows = [torch.from_numpy(row[None, :].astype(np.float64)) for row in encoded]
        if isinstance(exploration, UpperConfidenceBound):
            # The posterior standard deviation too: sqrt(noise_a * x^T A_a^-1 x), x with bias.
            k, d = model.theta.shape
            stacked = model.a_inv.reshape(k * d, d)
            noise = torch.from_numpy(model.noise())
            biased = [torch.cat([row[0], torch.ones(1, dtype=torch.float64)]) for row in rows]

            def bare(i: int) -> object:
                x = biased[i % 1000]
                variance = (stacked @ x).view(k, d) @ x * noise
                return layer(rows[i % 1000]), variance.clamp_(min=0.0).sqrt_()

            bare_name = "torch linear + std"
        else:

            def bare(i: int) -> object:
                return layer(rows[i % 1000])

            bare_name = "torch nn.Linear (f64)"
    else:
        network = model.network
        tensors = [torch.from_numpy(row[None, :].copy()) for row in encoded]

        def bare(i: int) -> object:
            return network(tensors[i % 1000])

        bare_name = "torch forward"
    means, stds = model.predict(encoded[:1])
    spread = None if stds is None else stds[0]
    # What choose() asks of the model: the means alone when the exploration ignores the rest.
    predict = model.predict
    if learner == "linear" and not isinstance(exploration, UpperConfidenceBound):
        predict = model.predict_means
    parts: dict[str, Callable[[int], object]] = {
        "choose": lambda i: policy.choose(contexts[i], actions, None, draw),
        "bare": bare,
        "encode": lambda i: encoder.encode(contexts[i]),
        "predict": lambda i: predict(encoded[i % 1000][None, :]),
        "explore": lambda i: exploration.probabilities(means[0], None, spread),
    }
    result: dict[str, Any] = dict(timed(calls, parts, scopes))
    result["bare_name"] = bare_name
    return result


def main(args: argparse.Namespace) -> None:
    default_threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    data = synthetic(args.rows, args.features, args.actions, seed=0)
    report: dict[str, Any] = {
        "rows": args.rows,
        "features": args.features,
        "actions": args.actions,
        "epochs": args.epochs,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_default_threads": default_threads,
        "training": {},
        "serving": {},
    }
    print(
        f"training on {args.rows:,} logged rows x {args.features} features, {args.actions} "
        f"actions ({args.epochs} epochs for neural; torch {torch.__version__}, "
        f"{torch.get_num_threads()} intra-op threads, torch's default here {default_threads})"
    )
    models: dict[str, Any] = {}
    for learner, architecture in LEARNERS:
        name = learner if learner == "linear" else f"{learner}/{architecture}"
        for device in devices:
            if learner == "neural":  # warm-up: allocator, kernels, first-call dispatch
                small = data.subset(np.arange(min(len(data), 2000)))
                train_agentrt(learner, architecture, small, device, 1)
                train_bare(architecture, small, device, 1)
            rate, bare, model = 0.0, 0.0, None
            for _ in range(args.repeats):  # best of the repeats, alternating the two
                measured, model = train_agentrt(learner, architecture, data, device, args.epochs)
                rate = max(rate, measured)
                if learner == "neural":
                    bare = max(bare, train_bare(architecture, data, device, args.epochs))
            entry: dict[str, float] = {"samples_per_second": rate}
            line = f"  {name:<20} {device.type:<4} {rate:>12,.0f} samples/s"
            if learner == "neural":
                entry.update(bare_samples_per_second=bare, ratio=rate / bare)
                line += f"   bare torch loop {bare:>10,.0f} samples/s   ratio {rate / bare:.2f}"
            print(line)
            report["training"][f"{name}/{device.type}"] = entry
            if device.type == "cpu":
                models[name] = model
    print(
        f"\nserving: LearnedPolicy.choose() on one context, {args.calls:,} single calls "
        "(target: p99 <= 2 x bare p99 + 20 us)"
    )
    rows = [(name, name, EpsilonGreedy()) for name in models]
    # The linear learner's default exploration (no exploration block): UCB on its uncertainty.
    rows.insert(1, ("linear/ucb", "linear", UpperConfidenceBound()))
    for name, trained, exploration in rows:
        learner = trained.split("/")[0]
        model = models[trained]
        figures = serving(learner, model, args.features, data.actions, args.calls, 1, exploration)
        (p50, p99), (b50, b99) = figures["choose"], figures["bare"]
        budget = 2 * b99 + 20
        ok = p99 <= budget
        print(
            f"  {name:<20} choose p50 {p50:6.1f} us  p99 {p99:6.1f} us   "
            f"bare {figures['bare_name']:<22} p50 {b50:5.1f} us  p99 {b99:5.1f} us   "
            f"p99 ratio {p99 / b99:5.1f}   p99 <= {budget:.0f} us: {'ok' if ok else 'MISSED'}"
        )
        print(
            "  " + " " * 20 + " breakdown p50/p99: "
            + ", ".join(
                f"{part} {figures[part][0]:.1f}/{figures[part][1]:.1f} us"
                for part in ("encode", "predict", "explore")
            )
        )  # fmt: skip
        report["serving"][name] = {
            "exploration": exploration.describe(),
            "choose_p50_us": p50,
            "choose_p99_us": p99,
            "bare": figures["bare_name"],
            "bare_p50_us": b50,
            "bare_p99_us": b99,
            "p99_ratio": p99 / b99,
            "budget_us": budget,
            "target_met": ok,
            "breakdown_p50_p99_us": {k: figures[k] for k in ("encode", "predict", "explore")},
        }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "train.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=20_000, help="logged rows to train on")
    parser.add_argument("--features", type=int, default=64, help="feature width")
    parser.add_argument("--actions", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=10, help="epochs for the neural learner")
    parser.add_argument("--calls", type=int, default=20_000, help="timed choose() calls")
    parser.add_argument("--repeats", type=int, default=1, help="training runs; the best counts")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads for the whole run (0: torch's default)",
    )
    main(parser.parse_args())
