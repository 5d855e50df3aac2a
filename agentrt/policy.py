"""What answers ``decide()``: the agent's baseline until a learned policy is active.

A policy returns the whole probability distribution over the offered actions, so that every
decision logs the exact probability of the action it took (its propensity).
"""

from __future__ import annotations

import math
import random
import uuid
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from agentrt.config import BaselineConfig
from agentrt.errors import PolicyError
from agentrt.exploration import Strategy, ThompsonSampling, UpperConfidenceBound, greedy_split
from agentrt.learning.features import FeatureEncoder
from agentrt.types import RewardModel, SequenceModel

__all__ = ["BaselinePolicy", "Choice", "LearnedPolicy"]

# Open episodes whose step history a sequence model keeps; the oldest is forgotten beyond.
MAX_OPEN_EPISODES = 10_000
# Offered action sets whose model columns a policy remembers (cleared beyond).
_MAX_ACTION_SETS = 256


@runtime_checkable
class _MeansModel(Protocol):
    """A reward model that can give its means without its uncertainty (``linear``)."""

    def predict_means(self, features: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]: ...


class Choice(NamedTuple):
    """A policy's answer: the chosen index and the distribution it was drawn from."""

    action_index: int
    probabilities: tuple[float, ...]
    policy_version: int | None
    exploration: dict[str, Any]


def _uniform(allowed: tuple[bool, ...] | None, count: int, rng: random.Random) -> Choice:
    if allowed is None:
        p = 1.0 / count
        return Choice(rng.randrange(count), (p,) * count, None, {"method": "uniform"})
    indices = [i for i, ok in enumerate(allowed) if ok]
    p = 1.0 / len(indices)
    probabilities = tuple(p if ok else 0.0 for ok in allowed)
    return Choice(indices[rng.randrange(len(indices))], probabilities, None, {"method": "uniform"})


class BaselinePolicy:
    """The configured baseline: uniform over the allowed actions, or always one fixed action.

    A fixed baseline whose action is not offered (or masked out) in a call answers uniformly
    over the allowed actions for that call, and says so in ``exploration``.
    """

    def __init__(self, config: BaselineConfig) -> None:
        self.config = config

    def choose(
        self, actions: tuple[str, ...], allowed: tuple[bool, ...] | None, rng: random.Random
    ) -> Choice:
        """Draw an action for one call."""
        fixed = self.config.action
        if self.config.policy != "fixed" or fixed is None:
            return _uniform(allowed, len(actions), rng)
        if fixed in actions:
            index = actions.index(fixed)
            if allowed is None or allowed[index]:
                probabilities = tuple(1.0 if i == index else 0.0 for i in range(len(actions)))
                return Choice(index, probabilities, None, {"method": "fixed"})
        choice = _uniform(allowed, len(actions), rng)
        return choice._replace(exploration={"method": "uniform", "reason": "fixed_unavailable"})


class LearnedPolicy:
    """A trained model serving decisions: features, estimates, exploration, a draw.

    Args:
        version: the policy version number.
        learner: the learner that trained it.
        model: the trained reward model.
        encoder: the feature encoder frozen at training time.
        actions: the action set the model scores.
        exploration: turns estimates into probabilities.
    """

    def __init__(
        self,
        version: int,
        learner: str,
        model: RewardModel,
        encoder: FeatureEncoder,
        actions: tuple[str, ...],
        exploration: Strategy,
    ) -> None:
        self.version = version
        self.learner = learner
        self.model = model
        self.encoder = encoder
        self.actions = actions
        self.exploration = exploration
        self._index = {action: i for i, action in enumerate(actions)}
        # The model's column of each offered action, by offered action set.
        self._columns: dict[tuple[str, ...], list[int]] = {}
        self._sequence = isinstance(model, SequenceModel) and model.history > 1
        # Epsilon-greedy and softmax ignore the uncertainty: skip it when the model can.
        self._means = (
            model.predict_means
            if isinstance(model, _MeansModel)
            and not self._sequence
            and not isinstance(exploration, UpperConfidenceBound | ThompsonSampling)
            else None
        )
        # Per open episode, the encoded contexts of its latest decisions (sequence models).
        self._histories: OrderedDict[uuid.UUID, deque[npt.NDArray[np.float32]]] = OrderedDict()
        # UCB over a model without uncertainty: how often each action was chosen (within the
        # last ``window_size`` decisions), for the count bonus.
        self._chosen: _ChoiceCounts | None = (
            _ChoiceCounts(len(actions), exploration.window_size)
            if isinstance(exploration, UpperConfidenceBound)
            else None
        )

    def with_exploration(self, exploration: Strategy) -> LearnedPolicy:
        """The same model (and open episode histories) with another exploration strategy."""
        policy = LearnedPolicy(
            self.version, self.learner, self.model, self.encoder, self.actions, exploration
        )
        policy._histories = self._histories
        if self._chosen is not None and policy._chosen is not None:
            policy._chosen = self._chosen.resized(policy._chosen.window)
        return policy

    def end_episode(self, episode_id: uuid.UUID) -> None:
        """Forget an episode's step history (called when the episode ends)."""
        self._histories.pop(episode_id, None)

    def _predict(
        self, features: npt.NDArray[np.float32], episode_id: uuid.UUID | None
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64] | None]:
        if not self._sequence:
            return self.model.predict(features[None, :])
        model = self.model
        assert isinstance(model, SequenceModel)  # noqa: S101 (checked in __init__)
        if episode_id is None:
            return model.predict_sequence(features[None, None, :])
        history = self._histories.get(episode_id)
        if history is None:
            history = self._histories[episode_id] = deque(maxlen=model.history)
            if len(self._histories) > MAX_OPEN_EPISODES:
                self._histories.popitem(last=False)
        else:
            self._histories.move_to_end(episode_id)
        history.append(features)
        return model.predict_sequence(np.stack(history)[None, :, :])

    def choose(
        self,
        context: Mapping[str, Any],
        actions: tuple[str, ...],
        allowed: tuple[bool, ...] | None,
        rng: random.Random,
        episode_id: uuid.UUID | None = None,
    ) -> Choice:
        """Draw an action; raises :class:`PolicyError` when the policy cannot answer.

        ``episode_id`` lets a sequence model see the episode's earlier steps.
        """
        columns = self._columns.get(actions) or self._columns_of(actions)
        if self._means is not None:
            means, stds = self._means(self.encoder.encode(context)[None, :]), None
        else:
            means, stds = self._predict(self.encoder.encode(context), episode_id)
        if actions == self.actions and means.shape[1] == len(actions):
            scores, spread = means[0], None if stds is None else stds[0]  # views, no copies
        else:
            scores, spread = means[0, columns], None if stds is None else stds[0, columns]
        counted = spread is None and self._chosen is not None
        if counted:
            assert self._chosen is not None  # noqa: S101 (just checked)
            spread = UpperConfidenceBound.count_bonus(self._chosen.counts[columns])
        mask = None
        # A mask that allows every offered action is no mask (exploration's fast path).
        if allowed is not None and not (len(allowed) == len(actions) and all(allowed)):
            mask = np.array(allowed, dtype=bool)
        split = None if mask is not None else greedy_split(self.exploration, scores, spread)
        probabilities = (
            split
            if split is not None
            else tuple(self.exploration.probabilities(scores, mask, spread).tolist())
        )
        total = sum(probabilities)  # not finite when any probability is not
        if not (math.isfinite(total) and abs(total - 1.0) < 1e-6):
            raise PolicyError(f"policy v{self.version} produced invalid probabilities")
        index = _draw(probabilities, rng)
        if counted:
            assert self._chosen is not None  # noqa: S101 (just checked)
            self._chosen.add(columns[index])
        return Choice(index, probabilities, self.version, self.exploration.describe())

    def _columns_of(self, actions: tuple[str, ...]) -> list[int]:
        unknown = [action for action in actions if action not in self._index]
        if unknown:
            raise PolicyError(
                f"policy v{self.version} does not know action(s) {', '.join(unknown)}"
            )
        columns = [self._index[action] for action in actions]
        if len(self._columns) >= _MAX_ACTION_SETS:
            self._columns.clear()
        self._columns[actions] = columns
        return columns


class _ChoiceCounts:
    """How often each action was chosen, over the last ``window`` choices (all when None)."""

    def __init__(self, actions: int, window: int | None) -> None:
        self.window = window
        self.counts = np.zeros(actions)
        self._recent: deque[int] = deque()

    def add(self, action: int) -> None:
        self.counts[action] += 1.0
        if self.window is not None:
            self._recent.append(action)
            if len(self._recent) > self.window:
                self.counts[self._recent.popleft()] -= 1.0

    def resized(self, window: int | None) -> _ChoiceCounts:
        """The same history under another window (an exploration retune keeps the counts)."""
        counts = _ChoiceCounts(len(self.counts), window)
        if self.window is None:
            counts.counts = self.counts.copy()
        else:
            for action in self._recent:
                counts.add(action)
        return counts


def _draw(probabilities: Sequence[float] | npt.NDArray[np.float64], rng: random.Random) -> int:
    u = rng.random()
    cumulative = 0.0
    last = 0
    for i, p in enumerate(probabilities):
        if p <= 0.0:
            continue
        last = i
        cumulative += float(p)
        if u < cumulative:
            return i
    return last
