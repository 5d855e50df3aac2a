"""Shared aliases and the Protocols that plugins implement. Nothing else lives here."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import torch

    from agentrt.learning.data import BanditData
    from agentrt.schemas import Decision, Episode, Experience, Feedback, Knowledge

__all__ = [
    "PLUGIN_KINDS",
    "Analyzer",
    "ExperienceBatch",
    "ExplorationStrategy",
    "Learner",
    "PluginKind",
    "Processor",
    "RewardModel",
    "Rollout",
    "Validator",
]

PluginKind = Literal[
    "processor", "analyzer", "learner", "validator", "exploration", "rollout", "feature"
]
PLUGIN_KINDS: tuple[PluginKind, ...] = (
    "processor",
    "analyzer",
    "learner",
    "validator",
    "exploration",
    "rollout",
    "feature",
)


class ExperienceBatch(NamedTuple):
    """What the collector writes in one transaction.

    Processors may change rewards and outcomes, drop records, or add ``knowledge`` rows; they
    must not change contexts (training must see what the policy saw when it decided).
    """

    decisions: Sequence[Decision]
    feedback: Sequence[Feedback]
    episodes: Sequence[Episode]
    knowledge: Sequence[Knowledge] = ()


@runtime_checkable
class Processor(Protocol):
    """Transforms experience in the collector task, before it is written."""

    def process(self, batch: ExperienceBatch) -> ExperienceBatch: ...


@runtime_checkable
class Analyzer(Protocol):
    """Finds knowledge (statistics, trends, anomalies, patterns) in a window of experience."""

    def analyze(self, agent_id: str, rows: Sequence[Experience]) -> list[Knowledge]: ...


@runtime_checkable
class ExplorationStrategy(Protocol):
    """Turns action scores into the probability of choosing each offered action.

    ``allowed`` marks the actions that may be chosen in this call; the probabilities of the
    others must be exactly zero, and the result must sum to one.
    """

    def probabilities(
        self,
        scores: npt.NDArray[np.float64],
        allowed: npt.NDArray[np.bool_] | None = None,
        uncertainty: npt.NDArray[np.float64] | None = None,
    ) -> npt.NDArray[np.float64]: ...


@runtime_checkable
class RewardModel(Protocol):
    """A trained model: estimated reward (and, optionally, its uncertainty) per action."""

    def predict(
        self, features: npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64] | None]:
        """Means (and standard deviations, or None) of shape (rows, actions)."""
        ...

    def tensors(self) -> dict[str, torch.Tensor]:
        """The weights, for a safetensors artifact."""
        ...

    def describe(self) -> dict[str, Any]:
        """JSON metadata needed to rebuild the model from its tensors."""
        ...


@runtime_checkable
class SequenceModel(RewardModel, Protocol):
    """A reward model that reads the episode's step history, not only the current context.

    Serving keeps, per open episode, the encoded contexts of its last ``history`` decisions
    and calls ``predict_sequence`` with them (oldest first, the current step last); a decision
    outside an episode is a history of one step. ``predict`` (used by validation on single
    rows) is the one-step case.
    """

    history: int

    def predict_sequence(
        self, features: npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64] | None]:
        """Scores for the last step of each sequence: features (rows, steps, dim) to (rows,
        actions)."""
        ...


@runtime_checkable
class Learner(Protocol):
    """Trains a candidate policy from logged experience.

    A learner plugin's factory takes a ``LearnerSettings``; ``load`` rebuilds a trained model
    from an artifact's tensors and metadata.
    """

    name: str

    def fit(self, data: BanditData) -> tuple[RewardModel, dict[str, Any]]:
        """Train on ``data``; returns the model and JSON training metrics."""
        ...

    @staticmethod
    def load(tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> RewardModel:
        """Rebuild a trained model."""
        ...


@runtime_checkable
class Validator(Protocol):
    """Decides whether a candidate policy may go live."""

    name: str


@runtime_checkable
class Rollout(Protocol):
    """Decides how a validated candidate becomes the active policy."""

    name: str
