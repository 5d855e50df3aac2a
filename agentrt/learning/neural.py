"""``neural``: a reward model over the context, trained by importance-weighted regression.

The network (``mlp`` or ``transformer`` from ``model_configuration``) maps features to one
predicted reward per action. Each logged row only shows the reward of the action taken, so the
loss is the squared error on that action, weighted by ``1 / propensity`` (clipped, normalised;
rows with an unknown propensity weigh 1). The weights re-balance the logged data towards
uniform action coverage, so the model is not fitted mostly to the actions the old policy
preferred. Training is mini-batch with the configured optimiser, early-stopped on a held-out
split, and deterministic on CPU under the seed.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from agentrt.learning.data import BanditData
from agentrt.learning.nets import (
    EarlyStopping,
    build_network,
    build_optimizer,
    network_from_spec,
    network_spec,
)
from agentrt.learning.settings import LearnerSettings
from agentrt.plugins import Plugin

__all__ = ["NeuralLearner", "NeuralModel", "plugin"]

Matrix = npt.NDArray[np.float64]


class NeuralModel:
    """A trained reward network, evaluated on CPU with its parameters frozen.

    Nothing in a forward then requires gradients, so autograd records nothing without an
    ``inference_mode`` guard, which per call costs about as much as a layer of a small network.
    """

    def __init__(self, network: torch.nn.Module, spec: dict[str, Any]) -> None:
        self.network = network.to("cpu").eval().requires_grad_(False)
        self.spec = spec

    def predict(self, features: npt.NDArray[np.float32]) -> tuple[Matrix, None]:
        """Predicted reward per action, shape (n, K); no uncertainty estimate."""
        if features.dtype != np.float32 or not features.flags.c_contiguous:
            features = np.ascontiguousarray(features, dtype=np.float32)
        out = self.network(torch.from_numpy(features))  # no copy of the features
        return out.numpy().astype(np.float64), None

    def tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.network.state_dict())

    def describe(self) -> dict[str, Any]:
        return {"network": self.spec}


class NeuralLearner:
    """Trains :class:`NeuralModel` on logged bandit feedback."""

    name = "neural"

    def __init__(self, settings: LearnerSettings) -> None:
        self.settings = settings

    def fit(self, data: BanditData) -> tuple[NeuralModel, dict[str, Any]]:
        """Train with early stopping on a held-out split; returns the model and metrics."""
        settings = self.settings
        torch.manual_seed(settings.seed)
        generator = torch.Generator().manual_seed(settings.seed)
        train, held_out = data.split(settings.training.holdout, settings.seed)
        spec = network_spec(
            settings.architecture, settings.parameters, data.features.shape[1], len(data.actions)
        )
        network = build_network(
            spec["architecture"], spec["inputs"], spec["outputs"], settings.parameters
        )
        network.to(settings.device)
        optimiser = build_optimizer(
            list(network.parameters()), settings.optimization, settings.parameters.learning_rate
        )
        tensors = _tensors(train, settings.training.importance_clip, settings.device)
        check = _tensors(held_out, settings.training.importance_clip, settings.device)
        stopping = EarlyStopping(network, settings.training.patience)
        started = time.perf_counter()
        batch = settings.parameters.batch_size
        epochs_run = 0
        for epoch in range(settings.parameters.epochs):
            epochs_run = epoch + 1
            network.train()
            order = torch.randperm(len(train), generator=generator).to(settings.device)
            total = 0.0
            for start in range(0, len(train), batch):
                rows = order[start : start + batch]
                loss = _loss(network, tensors, rows)
                optimiser.zero_grad()
                loss.backward()  # type: ignore[no-untyped-call]
                optimiser.step()
                total += loss.item() * len(rows)
            train_loss = total / max(len(train), 1)
            held_loss = _evaluate(network, check) if len(held_out) else train_loss
            stopping.record(epoch + 1, held_loss, train_loss=train_loss)
            if stopping.judge(epoch + 1, held_loss):
                break
        stopping.restore()
        seconds = time.perf_counter() - started
        metrics = {
            "rows": len(data),
            "train_rows": len(train),
            "holdout_rows": len(held_out),
            "epochs": epochs_run,
            **stopping.metrics(),
            "seconds": seconds,
            "samples_per_second": len(train) * epochs_run / seconds if seconds > 0 else None,
            "device": str(settings.device),
        }
        return NeuralModel(network, spec), metrics

    @staticmethod
    def load(tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> NeuralModel:
        """Rebuild a network from its spec and weights (strict: every tensor must match)."""
        spec = metadata["network"]
        return NeuralModel(network_from_spec(spec, tensors), spec)


def _tensors(data: BanditData, clip: float, device: torch.device) -> dict[str, torch.Tensor]:
    return {
        "x": torch.as_tensor(data.features, device=device),
        "a": torch.as_tensor(data.action_index, device=device),
        "r": torch.as_tensor(data.rewards, device=device),
        "w": torch.as_tensor(data.importance_weights(clip), device=device),
    }


def _loss(network: torch.nn.Module, t: dict[str, torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
    predicted = network(t["x"][rows]).gather(1, t["a"][rows].unsqueeze(1)).squeeze(1)
    loss: torch.Tensor = (t["w"][rows] * (predicted - t["r"][rows]) ** 2).mean()
    return loss


def _evaluate(network: torch.nn.Module, t: dict[str, torch.Tensor]) -> float:
    network.eval()
    with torch.no_grad():
        rows = torch.arange(t["x"].shape[0], device=t["x"].device)
        return float(_loss(network, t, rows))


plugin = Plugin("learner", "neural", NeuralLearner, "importance-weighted neural reward model")
