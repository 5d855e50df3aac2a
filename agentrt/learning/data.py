"""Training sets built from stored experience, with the features serving will compute."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from agentrt.learning.features import FeatureEncoder
from agentrt.schemas import Experience

__all__ = ["BanditData", "usable_for_learning"]


def usable_for_learning(row: Experience) -> bool:
    """A row counts when it has a reward and its action was really taken (activated)."""
    return row.reward is not None and math.isfinite(row.reward) and row.activated_at is not None


@dataclass(frozen=True)
class BanditData:
    """Logged feedback: features, chosen action, reward, propensity (NaN if unknown).

    Attributes:
        actions: the action set; ``action_index`` indexes into it.
        episodes: per row a small integer naming its episode (-1: not part of one); rows of
            one episode share the code. Episodic learners rebuild transitions from it.
        steps: per row its step number within the episode (-1 when unknown).
    """

    actions: tuple[str, ...]
    features: npt.NDArray[np.float32]
    action_index: npt.NDArray[np.int64]
    rewards: npt.NDArray[np.float32]
    propensities: npt.NDArray[np.float32]
    episodes: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    steps: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))

    def __post_init__(self) -> None:
        # Bandit-only data (no episode information) gets "no episode" for every row.
        n = len(self)
        if self.episodes.shape[0] != n:
            object.__setattr__(self, "episodes", np.full(n, -1, dtype=np.int64))
        if self.steps.shape[0] != n:
            object.__setattr__(self, "steps", np.full(n, -1, dtype=np.int64))

    def __len__(self) -> int:
        return int(self.rewards.shape[0])

    @classmethod
    def from_experience(
        cls, rows: Sequence[Experience], encoder: FeatureEncoder, actions: Sequence[str]
    ) -> BanditData:
        """Usable rows whose action is in ``actions``, encoded with ``encoder``."""
        index = {action: i for i, action in enumerate(actions)}
        kept = [r for r in rows if usable_for_learning(r) and r.action in index]
        codes: dict[object, int] = {}
        episodes = [
            -1 if r.episode_id is None else codes.setdefault(r.episode_id, len(codes)) for r in kept
        ]
        return cls(
            actions=tuple(actions),
            features=encoder.encode_many([r.context for r in kept]),
            action_index=np.array([index[r.action] for r in kept], dtype=np.int64),
            rewards=np.array([r.reward for r in kept], dtype=np.float32),
            propensities=np.array(
                [math.nan if r.propensity is None else r.propensity for r in kept],
                dtype=np.float32,
            ),
            episodes=np.array(episodes, dtype=np.int64),
            steps=np.array([-1 if r.step is None else r.step for r in kept], dtype=np.int64),
        )

    def subset(self, rows: npt.NDArray[np.int64]) -> BanditData:
        return BanditData(
            self.actions,
            self.features[rows],
            self.action_index[rows],
            self.rewards[rows],
            self.propensities[rows],
            self.episodes[rows],
            self.steps[rows],
        )

    def split(self, holdout: float, seed: int) -> tuple[BanditData, BanditData]:
        """(train, held-out) by a seeded shuffle; held-out is empty when too few rows."""
        order = np.random.default_rng(seed).permutation(len(self))
        cut = int(len(self) * holdout) if len(self) >= 20 else 0
        return self.subset(order[cut:]), self.subset(order[:cut])

    def importance_weights(self, clip: float) -> npt.NDArray[np.float32]:
        """``1 / propensity`` clipped at ``clip`` and normalised to mean 1 (1 where unknown)."""
        p = self.propensities
        weights = np.where(np.isfinite(p) & (p > 0), 1.0 / np.maximum(p, 1e-12), 1.0)
        weights = np.minimum(weights, clip).astype(np.float32)
        mean = float(weights.mean()) if len(weights) else 1.0
        normalised: npt.NDArray[np.float32] = (weights / mean if mean > 0 else weights).astype(
            np.float32
        )
        return normalised
