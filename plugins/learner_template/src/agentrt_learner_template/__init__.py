"""A learner to copy: the smallest complete agentrt learner plugin, a torch reward network.

A learner turns logged experience into a *reward model*: for a context's features, the reward
it expects from each action. agentrt does the rest: it builds the features, calls
:meth:`TemplateLearner.fit` in a worker thread, validates the model (finite weights, an
off-policy estimate against the active policy, latency), stores it as safetensors with the
JSON from :meth:`TemplateModel.describe`, and serves it through the agent's exploration
strategy (epsilon-greedy over the predicted rewards by default). To write your own learner,
copy this package, rename it, and change :func:`build_network` and the loss in ``fit``.

The two protocols to satisfy (``agentrt.Learner`` and ``agentrt.RewardModel``):

- the plugin's factory takes one ``LearnerSettings`` (hyperparameters from the agent's
  ``model_configuration`` entry, the seed, the device) and returns a learner with a ``name``,
  ``fit(data) -> (model, metrics)`` and a static ``load(tensors, metadata) -> model``;
- the model has ``predict(features) -> (means, stds or None)``, ``tensors()`` (what is saved)
  and ``describe()`` (JSON that ``load`` needs to rebuild the model around the tensors).

Enable it with::

    plugins:
      enable: [template_learner]
    agents:
      router:
        learner: template_learner
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from agentrt.plugins import Plugin

if TYPE_CHECKING:
    from agentrt.learning.data import BanditData
    from agentrt.learning.settings import LearnerSettings

__all__ = ["TemplateLearner", "TemplateModel", "build_network", "plugin"]

Matrix = npt.NDArray[np.float64]


def build_network(inputs: int, hidden: int, actions: int) -> nn.Sequential:
    """Features in, one predicted reward per action out. Change the architecture here (and
    what :meth:`TemplateModel.describe` records so that ``load`` can build it again)."""
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, actions))


class TemplateModel:
    """A trained reward network.

    Args:
        network: the trained network (moved to the CPU: serving runs there, row by row).
        inputs, hidden, actions: its sizes, recorded by :meth:`describe`.
    """

    def __init__(self, network: nn.Module, inputs: int, hidden: int, actions: int) -> None:
        self.network = network.to("cpu").eval()
        self.inputs, self.hidden, self.actions = inputs, hidden, actions

    def predict(self, features: npt.NDArray[np.float32]) -> tuple[Matrix, None]:
        """Expected reward per action, shape ``(rows, actions)``.

        The second value is the standard deviation of each estimate, for UCB and Thompson
        sampling; this model has none, so exploration falls back to the estimates alone.
        """
        with torch.inference_mode():
            out = self.network(torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)))
        return out.numpy().astype(np.float64), None

    def tensors(self) -> dict[str, torch.Tensor]:
        """The weights to store. Only tensors: artifacts are safetensors, never pickles."""
        return {
            key: value.detach().contiguous() for key, value in self.network.state_dict().items()
        }

    def describe(self) -> dict[str, Any]:
        """Plain JSON with everything ``load`` needs besides the tensors."""
        return {"inputs": self.inputs, "hidden": self.hidden, "actions": self.actions}


class TemplateLearner:
    """Fits :class:`TemplateModel` by importance-weighted regression on the taken action.

    Args:
        settings: from the agent's ``model_configuration`` entry (``agents.<id>.model``):
            ``parameters`` (learning rate, batch size, epochs, hidden size...), ``training``
            (importance-weight clip...), ``seed`` and ``device``.
    """

    # The name the configuration uses (``learner: template_learner``); it is stored with each
    # policy version, and ``load`` is looked up by it when the version is loaded again.
    name = "template_learner"

    def __init__(self, settings: LearnerSettings) -> None:
        self.settings = settings

    def fit(self, data: BanditData) -> tuple[TemplateModel, dict[str, Any]]:
        """Train on logged bandit feedback; returns the model and JSON training metrics.

        ``data`` holds one row per logged decision: ``features`` (rows, inputs) as serving will
        compute them, ``action_index`` (which of ``data.actions`` was taken), ``rewards`` and
        ``propensities`` (the probability with which the action was taken).
        """
        parameters = self.settings.parameters
        device = self.settings.device
        # Same seed, same data: the same model, on CPU. agentrt reseeds every cycle.
        torch.manual_seed(self.settings.seed)
        shuffle = torch.Generator().manual_seed(self.settings.seed)

        inputs, actions = data.features.shape[1], len(data.actions)
        network = build_network(inputs, parameters.hidden_size, actions).to(device)
        optimizer = torch.optim.Adam(network.parameters(), lr=parameters.learning_rate)

        x = torch.as_tensor(data.features, device=device)
        taken = torch.as_tensor(data.action_index, device=device)
        reward = torch.as_tensor(data.rewards, device=device)
        # Each row shows the reward of one action only, the one the old policy chose. Weighting
        # a row by 1 / propensity (clipped, normalised to mean 1) makes actions the old policy
        # rarely chose count as much as those it preferred.
        weight = torch.as_tensor(
            data.importance_weights(self.settings.training.importance_clip), device=device
        )

        network.train()
        losses: list[float] = []
        for _epoch in range(parameters.epochs if len(data) else 0):
            order = torch.randperm(len(data), generator=shuffle).to(device)
            total = 0.0
            for start in range(0, len(data), parameters.batch_size):
                rows = order[start : start + parameters.batch_size]
                # The network predicts every action's reward; only the taken one has a target.
                predicted = network(x[rows]).gather(1, taken[rows, None]).squeeze(1)
                loss = (weight[rows] * (predicted - reward[rows]) ** 2).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += loss.item() * len(rows)
            losses.append(total / len(data))

        model = TemplateModel(network, inputs, parameters.hidden_size, actions)
        # Metrics are stored with the policy version and shown by `agentrt versions`.
        metrics = {
            "rows": len(data),
            "epochs": len(losses),
            "train_loss": losses[-1] if losses else None,
        }
        return model, metrics

    @staticmethod
    def load(tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> TemplateModel:
        """Rebuild a stored model from its tensors and :meth:`TemplateModel.describe`.

        A ``KeyError`` or ``RuntimeError`` here (weights that do not fit the description)
        makes agentrt refuse the version and keep serving the previous one.
        """
        network = build_network(metadata["inputs"], metadata["hidden"], metadata["actions"])
        network.load_state_dict(tensors, strict=True)
        return TemplateModel(network, metadata["inputs"], metadata["hidden"], metadata["actions"])


plugin = Plugin(
    kind="learner",
    name="template_learner",
    factory=TemplateLearner,
    description="template: a small torch reward network, importance-weighted",
)
