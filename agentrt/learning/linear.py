"""``linear``: LinUCB / linear Thompson sampling, one Bayesian ridge regression per action.

For each action ``a`` the closed form keeps ``A_a = ridge * I + sum x x^T`` and
``b_a = sum r x`` over the rows where ``a`` was taken (``x`` is the hashed context with a bias
term); the estimate is ``theta_a = A_a^-1 b_a``. Ridge regression on the rows of one action
estimates ``E[r | x, a]`` without importance weights, because the logging policy depends on
``x`` only: weighting would only add variance.

The uncertainty at ``x`` is the posterior standard deviation ``sigma_a * sqrt(x^T A_a^-1 x)``.
``sigma_a^2`` is the action's residual variance (``sum r^2 - theta_a^T b_a``, the penalised
residual sum of squares, over its rows), shrunk towards ``1`` (the noise LinUCB assumes) by
:data:`PRIOR_ROWS` pseudo-rows: rewards that are nearly predictable get a tight posterior,
an action with no rows keeps the unit-noise width. The uncertainty feeds UCB
(``mean + confidence * std``) and Thompson sampling (Gaussian posterior), which the agent's
exploration strategy applies.

:meth:`LinearModel.update` adds rows one at a time with Sherman-Morrison rank-one updates of
``A_a^-1`` (recursive least squares), so a served model can learn after every reward; the
result equals refitting on all the rows, up to rounding.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from agentrt.learning.data import BanditData
from agentrt.learning.settings import LearnerSettings
from agentrt.plugins import Plugin

__all__ = ["PRIOR_ROWS", "LinearLearner", "LinearModel", "plugin"]

Matrix = npt.NDArray[np.float64]

PRIOR_ROWS = 2.0
"""Pseudo-rows of unit noise variance that each action's residual variance is shrunk towards."""


def _f64(tensor: torch.Tensor) -> torch.Tensor:
    # torch.linalg.inv returns column-major matrices; a contiguous copy makes the trained
    # model and the one loaded from its artifact compute bit-identical estimates.
    return tensor.detach().to(torch.float64).cpu().contiguous().clone()


class LinearModel:
    """Per-action ridge estimates: ``theta`` (K, D) and ``a_inv`` (K, D, D), D = features + 1.

    ``sse`` (K,) is each action's penalised residual sum of squares and ``rows`` (K,) its
    row count; they give the residual variance that scales the uncertainty. Models saved
    before they existed load with ``sse = rows = 0``, that is with unit noise.
    """

    def __init__(
        self,
        theta: torch.Tensor,
        a_inv: torch.Tensor,
        sse: torch.Tensor | None = None,
        rows: torch.Tensor | None = None,
    ) -> None:
        k = theta.shape[0]
        self.theta = _f64(theta)
        self.a_inv = _f64(a_inv)
        self.sse = torch.zeros(k, dtype=torch.float64) if sse is None else _f64(sse)
        self.rows = torch.zeros(k, dtype=torch.float64) if rows is None else _f64(rows)
        # numpy views share memory with the tensors: in-place updates keep both in step.
        self._theta = self.theta.numpy()
        self._a_inv = self.a_inv.numpy()
        self._sse = self.sse.numpy()
        self._rows = self.rows.numpy()
        d = self._theta.shape[1]
        self._a_inv_stacked = self._a_inv.reshape(k * d, d)  # a view too
        self._noise = self.noise()  # kept current by update()

    @classmethod
    def prior(cls, actions: int, inputs: int, ridge: float) -> LinearModel:
        """The model before any row: every estimate 0 with the prior's unit-noise uncertainty.

        Args:
            actions: number of actions K.
            inputs: width of the encoded features (the bias term is added here).
            ridge: the ridge penalty, as in ``training.ridge``.
        """
        d = inputs + 1
        return cls(
            torch.zeros(actions, d, dtype=torch.float64),
            torch.eye(d, dtype=torch.float64).repeat(actions, 1, 1) / ridge,
        )

    def noise(self) -> Matrix:
        """Residual variance per action, shrunk towards 1 by :data:`PRIOR_ROWS` pseudo-rows."""
        variance: Matrix = (np.maximum(self._sse, 0.0) + PRIOR_ROWS) / (self._rows + PRIOR_ROWS)
        return variance

    def _inputs(self, features: npt.NDArray[np.float32]) -> Matrix:
        x = np.empty((features.shape[0], self._theta.shape[1]))
        x[:, :-1] = features
        x[:, -1] = 1.0
        return x

    def predict(self, features: npt.NDArray[np.float32]) -> tuple[Matrix, Matrix]:
        """Mean reward and its posterior standard deviation per action, shape (n, K) each."""
        x = self._inputs(features)
        means: Matrix = x @ self._theta.T
        n = x.shape[0]
        k, d = self._theta.shape
        # x^T A_a^-1 x per row and action: one product with the stacked (K*D, D) inverses,
        # then per row (one row: a matrix-vector product; more: a two-operand einsum, as with
        # three einsum loops over all n*K*D*D terms one by one).
        if n == 1:
            row = x[0]
            variance: Matrix = ((self._a_inv_stacked @ row).reshape(k, d) @ row)[None, :]
        else:
            projected = (self._a_inv_stacked @ x.T).reshape(k, d, n)
            variance = np.einsum("kdn,nd->nk", projected, x)
        variance *= self._noise
        np.maximum(variance, 0.0, out=variance)
        return means, np.sqrt(variance, out=variance)

    def predict_means(self, features: npt.NDArray[np.float32]) -> Matrix:
        """The means of :meth:`predict` (the same numbers), without the uncertainty: what a
        policy that does not explore by it (epsilon-greedy, softmax) needs."""
        means: Matrix = self._inputs(features) @ self._theta.T
        return means

    def update(
        self,
        features: npt.NDArray[np.float32],
        action_index: npt.NDArray[np.int64],
        rewards: npt.NDArray[np.float32],
    ) -> None:
        """Add rows in order, in place, by rank-one (Sherman-Morrison) updates.

        Args:
            features: encoded contexts, shape (n, features).
            action_index: the action taken in each row, shape (n,).
            rewards: the reward of each row, shape (n,).
        """
        x = np.concatenate([features.astype(np.float64), np.ones((features.shape[0], 1))], axis=1)
        for row, action, reward in zip(x, action_index, rewards, strict=True):
            a = int(action)
            a_inv = self._a_inv[a]
            gain = a_inv @ row
            denominator = 1.0 + float(row @ gain)
            error = float(reward) - float(row @ self._theta[a])
            # A^-1 stays symmetric in exact arithmetic; the outer product keeps it so here.
            a_inv -= np.outer(gain, gain) / denominator
            self._theta[a] += gain * (error / denominator)
            self._sse[a] += error * error / denominator
            self._rows[a] += 1.0
        self._noise = self.noise()

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"theta": self.theta, "a_inv": self.a_inv, "sse": self.sse, "rows": self.rows}

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
        squares = torch.zeros(k, dtype=torch.float64, device=device)
        counts = torch.zeros(k, dtype=torch.float64, device=device)
        for action in range(k):
            rows = a == action
            xa, ra = x[rows], r[rows]
            gram[action] += xa.T @ xa
            target[action] += xa.T @ ra
            squares[action] = ra @ ra
            counts[action] = float(rows.sum())
        # One Cholesky factorisation per action gives the inverse; theta follows from it.
        a_inv = torch.cholesky_inverse(torch.linalg.cholesky(gram))
        theta = (a_inv @ target.unsqueeze(-1)).squeeze(-1)
        # sum r^2 - theta^T b: the residual sum of squares plus the ridge penalty.
        sse = (squares - (theta * target).sum(dim=1)).clamp(min=0.0)
        model = LinearModel(theta, a_inv, sse, counts)
        fitted = (x * theta[a]).sum(dim=1)
        metrics = {
            "rows": len(data),
            "train_mse": float(((fitted - r) ** 2).mean()) if len(data) else None,
            "rows_per_action": [int(c) for c in counts.tolist()],
            "noise_per_action": [round(float(v), 6) for v in model.noise()],
        }
        return model, metrics

    @staticmethod
    def load(tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> LinearModel:
        """Rebuild a model saved with :meth:`LinearModel.tensors`."""
        return LinearModel(
            tensors["theta"], tensors["a_inv"], tensors.get("sse"), tensors.get("rows")
        )


plugin = Plugin("learner", "linear", LinearLearner, "LinUCB / linear Thompson sampling")
