"""``linear``: LinUCB / linear Thompson sampling, one ridge regression per action.

For each action ``a`` the closed form keeps ``A_a = ridge * I + sum x x^T`` and
``b_a = sum r x`` over the rows where ``a`` was taken (``x`` is the hashed context with a bias
term); the estimate is ``theta_a = A_a^-1 b_a`` and its uncertainty at ``x`` is
``sqrt(x^T A_a^-1 x)``. Ridge regression on the rows of one action estimates
``E[r | x, a]`` without importance weights, because the logging policy depends on ``x`` only.
The uncertainty feeds UCB (``mean + confidence * std``) and Thompson sampling (Gaussian
posterior), which the agent's exploration strategy applies.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from agentrt.learning.data import BanditData
from agentrt.learning.settings import LearnerSettings
from agentrt.plugins import Plugin

__all__ = ["LinearLearner", "LinearModel", "plugin"]

Matrix = npt.NDArray[np.float64]


class LinearModel:
    """Per-action ridge estimates: ``theta`` (K, D) and ``a_inv`` (K, D, D), D = features + 1."""

    def __init__(self, theta: torch.Tensor, a_inv: torch.Tensor) -> None:
        # torch.linalg.inv returns column-major matrices; a contiguous copy makes the trained
        # model and the one loaded from its artifact compute bit-identical estimates.
        self.theta = theta.to(torch.float64).cpu().contiguous()
        self.a_inv = a_inv.to(torch.float64).cpu().contiguous()
        self._theta = self.theta.numpy()
        self._a_inv = self.a_inv.numpy()

    def predict(self, features: npt.NDArray[np.float32]) -> tuple[Matrix, Matrix]:
        """Mean reward and its standard deviation per action, shape (n, K) each."""
        x = np.concatenate([features.astype(np.float64), np.ones((features.shape[0], 1))], axis=1)
        means = x @ self._theta.T
        variance = np.einsum("nd,kde,ne->nk", x, self._a_inv, x)
        return means, np.sqrt(np.maximum(variance, 0.0))

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"theta": self.theta, "a_inv": self.a_inv}

    def describe(self) -> dict[str, Any]:
        return {"actions": int(self.theta.shape[0]), "inputs": int(self.theta.shape[1]) - 1}


class LinearLearner:
    """Fits :class:`LinearModel` in closed form (torch linear algebra, float64)."""

    name = "linear"

    def __init__(self, settings: LearnerSettings) -> None:
        self.settings = settings

    def fit(self, data: BanditData) -> tuple[LinearModel, dict[str, Any]]:
        """Train on all of ``data``; returns the model and its training metrics."""
        device = self.settings.device
        x = torch.as_tensor(data.features, dtype=torch.float64, device=device)
        x = torch.cat([x, torch.ones(x.shape[0], 1, dtype=torch.float64, device=device)], dim=1)
        r = torch.as_tensor(data.rewards, dtype=torch.float64, device=device)
        a = torch.as_tensor(data.action_index, device=device)
        k, d = len(data.actions), x.shape[1]
        ridge = self.settings.training.ridge
        gram = ridge * torch.eye(d, dtype=torch.float64, device=device).repeat(k, 1, 1)
        target = torch.zeros(k, d, dtype=torch.float64, device=device)
        counts = []
        for action in range(k):
            rows = a == action
            xa = x[rows]
            gram[action] += xa.T @ xa
            target[action] += xa.T @ r[rows]
            counts.append(int(rows.sum()))
        theta = torch.linalg.solve(gram, target.unsqueeze(-1)).squeeze(-1)
        a_inv = torch.linalg.inv(gram)
        model = LinearModel(theta, a_inv)
        fitted = (x * theta[a]).sum(dim=1)
        metrics = {
            "rows": len(data),
            "train_mse": float(((fitted - r) ** 2).mean()) if len(data) else None,
            "rows_per_action": counts,
        }
        return model, metrics

    @staticmethod
    def load(tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> LinearModel:
        """Rebuild a model saved with :meth:`LinearModel.tensors`."""
        return LinearModel(tensors["theta"], tensors["a_inv"])


plugin = Plugin("learner", "linear", LinearLearner, "LinUCB / linear Thompson sampling")
