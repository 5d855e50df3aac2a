"""Shared aliases and the Protocols that plugins implement. Nothing else lives here."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol, runtime_checkable

if TYPE_CHECKING:
    from datetime import timedelta

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
    "FeatureExtractor",
    "IncrementalModel",
    "Learner",
    "PluginKind",
    "Processor",
    "RewardModel",
    "Rollout",
    "SequenceModel",
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
class IncrementalModel(RewardModel, Protocol):
    """A reward model that can learn from single rewards between training cycles.

    ``update`` adds logged rows (encoded contexts, the action taken, its reward) to the model
    in place; the runtime calls it in the event loop, in small batches, for the active version
    of an agent with ``training.incremental`` (the next cycle's refit reconciles everything).
    """

    def update(
        self,
        features: npt.NDArray[np.float32],
        action_index: npt.NDArray[np.int64],
        rewards: npt.NDArray[np.float32],
    ) -> None: ...


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
    """Decides how a validated candidate becomes the active policy.

    A rollout plugin's factory takes the agent's ``RolloutConfig``. ``initial_status`` is the
    status a validated candidate gets (``active`` or ``canary``); ``evaluate`` is called on
    each check of the learning loop while a canary serves, with the live rewards of the
    canary and of what it is compared with (the active version, or the baseline), the number
    of this look and the canary's age, and returns an ``agentrt.pipeline.rollout.Verdict``.
    """

    name: str

    def initial_status(self) -> Literal["active", "canary"]: ...

    def evaluate(self, canary: Any, reference: Any, look: int, age: timedelta) -> Any: ...


@runtime_checkable
class FeatureExtractor(Protocol):
    """Turns the values of one context key into ``dim`` numbers (e.g. a text into its embedding).

    A feature plugin's factory takes no arguments; ``agents.<id>.features`` maps a context key
    to the plugin's name. ``transform`` gets a batch (training encodes many contexts at once,
    serving one) of the key's values, never ``None``, and returns a ``(len(values), dim)``
    ``float32`` matrix of numbers of order one, which the encoder uses as they are (non-finite
    ones become 0). ``name`` is the name the plugin is registered under: a policy artifact
    records it, with ``dim``, to rebuild its encoder. Training (in a worker thread) and
    serving (in the event loop) may call ``transform`` at the same time.
    """

    @property
    def name(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def transform(self, values: Sequence[object]) -> npt.NDArray[np.float32]: ...
