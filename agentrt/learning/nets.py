"""Networks and optimisers built from ``model_configuration`` (architecture, sizes, optimiser)."""

from __future__ import annotations

import copy
import math
from typing import Any, Literal

import torch
from torch import nn

from agentrt.config import ModelParametersConfig, OptimizationConfig

__all__ = [
    "MLP",
    "EarlyStopping",
    "TabularTransformer",
    "build_network",
    "build_optimizer",
    "network_from_spec",
    "network_spec",
    "pick_device",
]


class MLP(nn.Module):
    """``num_layers`` hidden layers of ``hidden_size`` with ReLU and dropout, then a linear head."""

    def __init__(self, inputs: int, outputs: int, hidden: int, layers: int, dropout: float) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        width = inputs
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden
        blocks.append(nn.Linear(width, outputs))
        self.body = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.body(x)
        return out


class TabularTransformer(nn.Module):
    """A transformer encoder over the feature vector cut into ``tokens`` equal chunks.

    Each chunk is projected to ``hidden`` and given a learned position; the encoder's mean
    token feeds a linear head. Suited to wide hashed contexts where features interact.
    """

    def __init__(
        self, inputs: int, outputs: int, hidden: int, layers: int, dropout: float, tokens: int = 8
    ) -> None:
        super().__init__()
        self.tokens = tokens
        self.chunk = -(-inputs // tokens)
        self.pad = self.chunk * tokens - inputs
        heads = 4 if hidden % 4 == 0 else 1
        self.embed = nn.Linear(self.chunk, hidden)
        self.position = nn.Parameter(torch.zeros(tokens, hidden))
        layer = nn.TransformerEncoderLayer(
            hidden, heads, dim_feedforward=2 * hidden, dropout=dropout, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(hidden, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad:
            x = nn.functional.pad(x, (0, self.pad))
        tokens = self.embed(x.view(x.shape[0], self.tokens, self.chunk)) + self.position
        out: torch.Tensor = self.head(self.encoder(tokens).mean(dim=1))
        return out


def build_network(
    architecture: Literal["mlp", "transformer"],
    inputs: int,
    outputs: int,
    parameters: ModelParametersConfig,
) -> nn.Module:
    """The network ``model_configuration`` describes."""
    if architecture == "transformer":
        return TabularTransformer(
            inputs, outputs, parameters.hidden_size, parameters.num_layers, parameters.dropout
        )
    return MLP(inputs, outputs, parameters.hidden_size, parameters.num_layers, parameters.dropout)


def build_optimizer(
    params: list[nn.Parameter], optimization: OptimizationConfig, learning_rate: float
) -> torch.optim.Optimizer:
    """Adam (beta1, beta2), RMSprop (alpha, momentum) or SGD (momentum), with weight decay."""
    p = optimization.parameters
    if optimization.method == "rmsprop":
        return torch.optim.RMSprop(
            params,
            lr=learning_rate,
            alpha=p.alpha,
            momentum=p.momentum,
            weight_decay=p.weight_decay,
        )
    if optimization.method == "sgd":
        return torch.optim.SGD(
            params, lr=learning_rate, momentum=p.momentum, weight_decay=p.weight_decay
        )
    return torch.optim.Adam(
        params, lr=learning_rate, betas=(p.beta1, p.beta2), weight_decay=p.weight_decay
    )


def pick_device(setting: str) -> torch.device:
    """``auto`` is cuda when torch sees a GPU, else cpu; ``cuda:N`` must exist."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def network_spec(
    architecture: str, parameters: ModelParametersConfig, inputs: int, outputs: int
) -> dict[str, Any]:
    """The JSON description a stored network is rebuilt from: ``transformer`` or ``mlp``
    (any other architecture), sizes and dropout from ``model_configuration``."""
    return {
        "architecture": "transformer" if architecture == "transformer" else "mlp",
        "inputs": inputs,
        "outputs": outputs,
        "hidden_size": parameters.hidden_size,
        "num_layers": parameters.num_layers,
        "dropout": parameters.dropout,
    }


def network_from_spec(spec: dict[str, Any], tensors: dict[str, torch.Tensor]) -> nn.Module:
    """Rebuild a network from its :func:`network_spec` and weights (strict: every tensor
    must match)."""
    parameters = ModelParametersConfig(
        hidden_size=spec["hidden_size"], num_layers=spec["num_layers"], dropout=spec["dropout"]
    )
    architecture: Literal["mlp", "transformer"] = (
        "transformer" if spec["architecture"] == "transformer" else "mlp"
    )
    network = build_network(architecture, spec["inputs"], spec["outputs"], parameters)
    network.load_state_dict(tensors, strict=True)
    return network


class EarlyStopping:
    """Early stopping on the held-out loss: keeps the loss curve and the weights of the best
    epoch, and says when ``patience`` epochs in a row did not improve it."""

    def __init__(self, network: nn.Module, patience: int) -> None:
        self.network = network
        self.patience = patience
        self.curve: list[dict[str, float]] = []
        self.best_loss = math.inf
        self.best_epoch = 0
        self._best_state: dict[str, Any] | None = None
        self._stale = 0

    def record(self, epoch: int, held_loss: float, **losses: float) -> None:
        """One epoch's point of the loss curve (``losses``: the training losses)."""
        self.curve.append({"epoch": epoch, **losses, "holdout_loss": held_loss})

    def judge(self, epoch: int, held_loss: float) -> bool:
        """Keep the weights if ``held_loss`` is the best so far; True when training stops."""
        if held_loss < self.best_loss - 1e-9:
            self.best_loss, self.best_epoch, self._stale = held_loss, epoch, 0
            self._best_state = copy.deepcopy(self.network.state_dict())
            return False
        self._stale += 1
        return self._stale >= self.patience

    def restore(self) -> None:
        """Load the best epoch's weights back (nothing when no epoch was judged)."""
        if self._best_state is not None:
            self.network.load_state_dict(self._best_state)

    def metrics(self) -> dict[str, Any]:
        return {
            "best_epoch": self.best_epoch,
            "holdout_loss": self.best_loss,
            "loss_curve": self.curve,
        }
