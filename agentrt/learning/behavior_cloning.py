"""``behavior_cloning``: imitate the best logged episodes, with an advantage-weighted variant.

The learner trains a classifier of the action that was taken, from the step history of its
episode, by cross-entropy. Which logged steps it imitates, and how much, is the whole method:

- **Episodes.** Rows sharing ``BanditData.episodes`` form an episode, ordered by ``steps``
  (rows with an unknown step, -1, come first; equal steps keep their row order); a row outside
  any episode is an episode of one step. Only the rows in the data count: a step that was
  never rewarded is not a training row, and windows skip it. An episode's **return** is the
  sum of its rewards in the data.
- **Plain cloning** (default). Episodes are ranked by return and those in the top
  ``parameters.top_quantile`` share are kept: with ``E`` episodes and ``k = ceil(q * E)`` (at
  least 1), the threshold is the ``k``-th best return and *every* episode whose return is
  ``>=`` it is kept, so ties at the threshold are all kept (more than ``k`` episodes when
  several share that return; all of them when every return is equal). A quantile above
  ``1 - 1/E`` clones everything. Every step of a kept episode weighs 1.
- **Advantage-weighted** (``parameters.advantage_weighted: true``). Every episode is used and
  each step weighs ``min(exp((G_t - b_t) / advantage_temperature), 20)``, normalised to mean 1
  over the steps used. ``G_t`` is the discounted return-to-go (``parameters.gamma``) from that
  step to the end of its episode, and the baseline ``b_t`` is the mean of ``G_t`` over all
  steps with the same index in their episode (0 for first steps, 1 for second steps...). The
  temperature is in reward units: smaller values imitate only the clearly better steps.
  ``top_quantile`` is not used.

**Networks.** With ``architecture: lstm`` the input of a training row is the window of its
episode's last ``parameters.history`` steps ending at that row (each step's feature vector),
oldest first and left-padded to exactly ``history`` steps. Each step carries one extra input,
1 for a real step and 0 for padding, so a padded step is never confused with an all-zero
context. Serving pads a shorter history (the first steps of an episode, or a decision outside
any episode) in exactly the same way and keeps only the last ``history`` steps of a longer one,
so training and serving see identical inputs (a policy activated in the middle of an episode
sees that episode's steps from then on). An LSTM (``hidden_size``, ``num_layers``,
``dropout``) reads the window and a linear head scores the actions from its last output. With
``mlp``, ``transformer`` or ``linear`` the history is one step: the network of that name (a
linear layer for ``linear``) reads the current step only.

**Scores.** The model's scores are the **log-probabilities** of each action under the cloned
policy (``predict`` and ``predict_sequence``, float64, shape ``(rows, actions)``). Exploration
strategies act on them: epsilon-greedy takes the most probable action; ``softmax`` with
temperature 1 samples the cloned policy itself (renormalised over the allowed actions), and
a lower temperature sharpens it. They are not reward estimates: off-policy estimators that use
scores as reward estimates (doubly robust) and ``holdout_mse`` mean nothing for this learner.

Training is mini-batch with the configured optimiser, early-stopped (``training.patience``) on
the cross-entropy of a held-out share (``training.holdout``) of *episodes*, and deterministic on
CPU under the seed. The model is returned on CPU and evaluated under ``torch.inference_mode``.
"""

from __future__ import annotations

import math
import time
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from agentrt.config import ModelParametersConfig
from agentrt.errors import InvalidInputError
from agentrt.learning.data import BanditData
from agentrt.learning.nets import MLP, EarlyStopping, build_network, build_optimizer
from agentrt.learning.settings import LearnerSettings
from agentrt.plugins import Plugin

__all__ = ["BehaviorCloningLearner", "BehaviorCloningModel", "plugin"]

Matrix = npt.NDArray[np.float64]
Indices = npt.NDArray[np.int64]

WEIGHT_CLIP = 20.0
"""The largest advantage weight, before normalisation."""

ARCHITECTURES = ("lstm", "mlp", "transformer", "linear")


# -- networks ------------------------------------------------------------------------------


class LSTMPolicy(nn.Module):
    """An LSTM over (features, is-a-step flag) windows; a linear head on its last output."""

    def __init__(self, inputs: int, outputs: int, hidden: int, layers: int, dropout: float) -> None:
        super().__init__()
        # Between-layer dropout only exists with two layers or more (torch warns otherwise).
        self.lstm = nn.LSTM(
            inputs + 1, hidden, layers, batch_first=True, dropout=dropout if layers > 1 else 0.0
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        logits: torch.Tensor = self.head(self.dropout(out[:, -1]))
        return logits


class StepPolicy(nn.Module):
    """A one-step network: reads the features of the window's last step only."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.body(x[:, -1, :-1])
        return logits


def _network(spec: dict[str, Any]) -> nn.Module:
    architecture = spec["architecture"]
    inputs, outputs = int(spec["inputs"]), int(spec["outputs"])
    hidden, layers = int(spec["hidden_size"]), int(spec["num_layers"])
    dropout = float(spec["dropout"])
    if architecture == "lstm":
        return LSTMPolicy(inputs, outputs, hidden, layers, dropout)
    if architecture == "linear":
        return StepPolicy(MLP(inputs, outputs, hidden, 0, dropout))
    if architecture in ("mlp", "transformer"):
        parameters = ModelParametersConfig(hidden_size=hidden, num_layers=layers, dropout=dropout)
        return StepPolicy(build_network(architecture, inputs, outputs, parameters))
    raise InvalidInputError(
        "architecture", architecture, f"behavior_cloning supports {', '.join(ARCHITECTURES)}"
    )


# -- the model -----------------------------------------------------------------------------


class BehaviorCloningModel:
    """The cloned policy: log-probability of each action given the episode's recent steps.

    Attributes:
        history: how many recent steps the network reads (1 for one-step networks).
        network: the torch module, on CPU, in eval mode.
        spec: the JSON description the network is rebuilt from.
    """

    def __init__(self, network: nn.Module, spec: dict[str, Any]) -> None:
        self.network = network.to("cpu").eval()
        self.spec = spec
        self.history = int(spec["history"])

    def predict(self, features: npt.NDArray[np.float32]) -> tuple[Matrix, None]:
        """Log-probabilities per action for single steps (no history), shape (n, K)."""
        if features.ndim != 2:
            raise InvalidInputError("features", features.shape, "must have shape (rows, dim)")
        return self.predict_sequence(features[:, None, :])

    def predict_sequence(self, features: npt.NDArray[np.float32]) -> tuple[Matrix, None]:
        """Log-probabilities per action for the last step of each sequence.

        Args:
            features: shape (rows, steps, dim), oldest step first. Only the last ``history``
                steps are read; shorter sequences are left-padded as in training.

        Returns:
            Log-probabilities of shape (rows, actions), float64, and no uncertainty.

        Raises:
            InvalidInputError: wrong shape or feature width, or no step.
        """
        dim = int(self.spec["inputs"])
        if features.ndim != 3 or features.shape[1] == 0 or features.shape[2] != dim:
            raise InvalidInputError(
                "features",
                features.shape,
                f"must have shape (rows, steps >= 1, {dim}) for this behavior_cloning model",
            )
        steps = min(features.shape[1], self.history)
        window = np.zeros((features.shape[0], self.history, dim + 1), dtype=np.float32)
        window[:, self.history - steps :, :dim] = features[:, -steps:, :]
        window[:, self.history - steps :, dim] = 1.0
        with torch.inference_mode():
            logits = self.network(torch.from_numpy(window))
            scores = torch.log_softmax(logits.to(torch.float64), dim=1)
        return scores.numpy(), None

    def tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.network.state_dict())

    def describe(self) -> dict[str, Any]:
        return {"network": self.spec}


# -- training data: episodes, windows, weights ---------------------------------------------


class Samples(NamedTuple):
    """The training samples, one per used row, in episode and step order."""

    rows: Indices  # the row of each sample
    windows: Indices  # (samples, history): rows of its window, len(data) for padding
    episode: Indices  # the episode number of each sample (0..episodes-1)
    weights: npt.NDArray[np.float32]


class Episodes(NamedTuple):
    """Rows grouped into episodes and ordered by step."""

    order: Indices  # rows sorted by episode, then step
    episode: Indices  # episode number of each sorted row
    position: Indices  # index of each sorted row within its episode
    returns: Matrix  # undiscounted return per episode


def _episodes(data: BanditData) -> Episodes:
    n = len(data)
    codes = data.episodes.copy()
    lone = codes < 0
    codes[lone] = codes.max(initial=-1) + 1 + np.arange(int(lone.sum()))
    order = np.lexsort((np.arange(n), data.steps, codes)).astype(np.int64)
    sorted_codes = codes[order]
    first = np.concatenate([[True], sorted_codes[1:] != sorted_codes[:-1]])
    starts = np.flatnonzero(first)
    episode = (np.cumsum(first) - 1).astype(np.int64)
    position = np.arange(n, dtype=np.int64) - starts[episode]
    returns = np.add.reduceat(data.rewards[order].astype(np.float64), starts)
    return Episodes(order, episode, position, returns)


def _windows(episodes: Episodes, history: int, n: int) -> Indices:
    """Per sorted row, the rows of its episode's last ``history`` steps (n pads the left)."""
    windows = np.full((n, history), n, dtype=np.int64)
    sorted_positions = np.arange(n)
    for k in range(history):
        back = history - 1 - k
        present = episodes.position >= back
        windows[present, k] = episodes.order[sorted_positions[present] - back]
    return windows


def _returns_to_go(rewards: Matrix, episode: Indices, gamma: float) -> Matrix:
    """Discounted return from each (sorted) step to the end of its episode."""
    out = np.zeros_like(rewards)
    following = 0.0
    for i in range(len(rewards) - 1, -1, -1):
        last = i == len(rewards) - 1 or episode[i + 1] != episode[i]
        following = rewards[i] + (0.0 if last else gamma * following)
        out[i] = following
    return out


def _threshold(returns: Matrix, quantile: float) -> float:
    """The smallest return among the best ``ceil(quantile * episodes)`` episodes."""
    keep = max(1, math.ceil(quantile * len(returns) - 1e-9))
    return float(np.sort(returns)[::-1][min(keep, len(returns)) - 1])


def _check(data: BanditData) -> None:
    if len(data) == 0:
        raise InvalidInputError("data", 0, "behavior_cloning needs at least one logged row")
    if not data.actions:
        raise InvalidInputError("data.actions", data.actions, "needs at least one action")
    if not np.all(np.isfinite(data.rewards)):
        raise InvalidInputError("data.rewards", data.rewards, "every reward must be finite")
    if not np.all(np.isfinite(data.features)):
        raise InvalidInputError("data.features", data.features, "every feature must be finite")
    index = data.action_index
    if index.min() < 0 or index.max() >= len(data.actions):
        raise InvalidInputError(
            "data.action_index", index, f"must index the {len(data.actions)} actions"
        )


# -- the learner ---------------------------------------------------------------------------


class BehaviorCloningLearner:
    """Trains :class:`BehaviorCloningModel` on logged episodes (see the module docstring)."""

    name = "behavior_cloning"

    def __init__(self, settings: LearnerSettings) -> None:
        self.settings = settings

    def _spec(self, inputs: int, outputs: int) -> dict[str, Any]:
        p = self.settings.parameters
        architecture = self.settings.architecture
        return {
            "architecture": architecture,
            "inputs": inputs,
            "outputs": outputs,
            "hidden_size": p.hidden_size,
            "num_layers": p.num_layers,
            "dropout": p.dropout,
            "history": p.history if architecture == "lstm" else 1,
        }

    def _samples(
        self, data: BanditData, episodes: Episodes, history: int
    ) -> tuple[Samples, dict[str, Any]]:
        """The rows to imitate, their windows and weights, and what was chosen (metrics)."""
        p = self.settings.parameters
        n = len(data)
        windows = _windows(episodes, history, n)
        extra: dict[str, Any] = {}
        threshold: float | None = None
        if p.advantage_weighted:
            rewards = data.rewards[episodes.order].astype(np.float64)
            to_go = _returns_to_go(rewards, episodes.episode, p.gamma)
            baseline = np.bincount(episodes.position, weights=to_go) / np.bincount(
                episodes.position
            )
            advantage = to_go - baseline[episodes.position]
            exponent = np.minimum(advantage / p.advantage_temperature, math.log(WEIGHT_CLIP))
            raw = np.exp(exponent)
            weights = (raw / raw.mean()).astype(np.float32)
            used = np.ones(n, dtype=bool)
            extra = {
                "weight_max": float(weights.max()),
                "weights_clipped": int(np.count_nonzero(exponent >= math.log(WEIGHT_CLIP))),
                "effective_sample_size": float(weights.sum() ** 2 / (weights**2).sum()),
            }
        else:
            threshold = _threshold(episodes.returns, p.top_quantile)
            used = episodes.returns[episodes.episode] >= threshold
            weights = np.ones(int(used.sum()), dtype=np.float32)
        kept = np.unique(episodes.episode[used])
        chosen = {
            "variant": "advantage_weighted" if p.advantage_weighted else "top_quantile",
            "episodes": len(episodes.returns),
            "episodes_kept": len(kept),
            "rows_kept": int(used.sum()),
            "top_quantile": None if p.advantage_weighted else p.top_quantile,
            "threshold_return": threshold,
            "mean_return": float(episodes.returns.mean()),
            "kept_mean_return": float(episodes.returns[kept].mean()),
            **extra,
        }
        samples = Samples(episodes.order[used], windows[used], episodes.episode[used], weights)
        return samples, chosen

    def _split(self, samples: Samples) -> tuple[Indices, Indices, int]:
        """(train, held-out) sample indices by a seeded shuffle of whole episodes."""
        settings = self.settings
        kept = np.unique(samples.episode)
        shuffled = np.random.default_rng(settings.seed).permutation(kept)
        cut = int(len(kept) * settings.training.holdout) if len(kept) >= 10 else 0
        held = np.isin(samples.episode, shuffled[:cut])
        return np.flatnonzero(~held), np.flatnonzero(held), cut

    def fit(self, data: BanditData) -> tuple[BehaviorCloningModel, dict[str, Any]]:
        """Train with early stopping on held-out episodes; returns the model and metrics.

        Raises:
            InvalidInputError: no rows, no actions, non-finite rewards or features, or an
                unknown architecture.
        """
        _check(data)
        settings = self.settings
        spec = self._spec(data.features.shape[1], len(data.actions))
        torch.manual_seed(settings.seed)
        generator = torch.Generator().manual_seed(settings.seed)
        network = _network(spec).to(settings.device)
        samples, chosen = self._samples(data, _episodes(data), spec["history"])
        train, held_out, held_episodes = self._split(samples)
        optimiser = build_optimizer(
            list(network.parameters()), settings.optimization, settings.parameters.learning_rate
        )
        tensors = _Tensors.build(data, samples, settings.device)
        stopping = EarlyStopping(network, settings.training.patience)
        started = time.perf_counter()
        batch = settings.parameters.batch_size
        epochs_run = 0
        check = torch.as_tensor(held_out, device=settings.device)
        for epoch in range(settings.parameters.epochs):
            epochs_run = epoch + 1
            network.train()
            order = torch.as_tensor(train)[torch.randperm(len(train), generator=generator)]
            order = order.to(settings.device)
            total = 0.0
            for start in range(0, len(train), batch):
                picked = order[start : start + batch]
                loss = tensors.loss(network, picked)
                optimiser.zero_grad()
                loss.backward()  # type: ignore[no-untyped-call]
                optimiser.step()
                total += loss.item() * len(picked)
            train_loss = total / max(len(train), 1)
            held_loss = tensors.evaluate(network, check) if len(held_out) else train_loss
            stopping.record(epoch + 1, held_loss, train_loss=train_loss)
            if stopping.judge(epoch + 1, held_loss):
                break
        stopping.restore()
        seconds = time.perf_counter() - started
        metrics = {
            "rows": len(data),
            **chosen,
            "architecture": spec["architecture"],
            "history": spec["history"],
            "train_rows": len(train),
            "holdout_rows": len(held_out),
            "holdout_episodes": held_episodes,
            "epochs": epochs_run,
            **stopping.metrics(),
            "seconds": seconds,
            "samples_per_second": len(train) * epochs_run / seconds if seconds > 0 else None,
            "device": str(settings.device),
        }
        return BehaviorCloningModel(network, spec), metrics

    @staticmethod
    def load(tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> BehaviorCloningModel:
        """Rebuild a model from its spec and weights (strict: every tensor must match)."""
        spec = dict(metadata["network"])
        network = _network(spec)
        network.load_state_dict(tensors, strict=True)
        return BehaviorCloningModel(network, spec)


class _Tensors(NamedTuple):
    """The training set on the device: features with a zero row for padding, windows, labels."""

    features: torch.Tensor  # (rows + 1, dim)
    windows: torch.Tensor  # (samples, history)
    actions: torch.Tensor  # (samples,)
    weights: torch.Tensor  # (samples,)

    @classmethod
    def build(cls, data: BanditData, samples: Samples, device: torch.device) -> _Tensors:
        padded = np.concatenate(
            [data.features, np.zeros((1, data.features.shape[1]), dtype=np.float32)]
        )
        return cls(
            torch.as_tensor(padded, device=device),
            torch.as_tensor(samples.windows, device=device),
            torch.as_tensor(data.action_index[samples.rows], device=device),
            torch.as_tensor(samples.weights, device=device),
        )

    def inputs(self, picked: torch.Tensor) -> torch.Tensor:
        """(batch, history, dim + 1): each window's features and its is-a-step flag."""
        window = self.windows[picked]
        present = (window < self.features.shape[0] - 1).unsqueeze(-1)
        return torch.cat([self.features[window], present.to(self.features.dtype)], dim=-1)

    def loss(self, network: nn.Module, picked: torch.Tensor) -> torch.Tensor:
        logits = network(self.inputs(picked))
        losses = nn.functional.cross_entropy(logits, self.actions[picked], reduction="none")
        weights = self.weights[picked]
        loss: torch.Tensor = (weights * losses).sum() / weights.sum()
        return loss

    def evaluate(self, network: nn.Module, picked: torch.Tensor) -> float:
        network.eval()
        with torch.no_grad():
            return float(self.loss(network, picked))


plugin = Plugin(
    "learner",
    "behavior_cloning",
    BehaviorCloningLearner,
    "behaviour cloning of the best episodes (lstm over the step history), advantage-weighted",
)
