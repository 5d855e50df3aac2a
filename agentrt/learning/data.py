"""Training sets built from stored experience, with the features serving will compute."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

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
    """Logged bandit feedback: features, chosen action, reward, propensity (NaN if unknown).

    Attributes:
        actions: the action set; ``action_index`` indexes into it.
    """

    actions: tuple[str, ...]
    features: npt.NDArray[np.float32]
    action_index: npt.NDArray[np.int64]
    rewards: npt.NDArray[np.float32]
    propensities: npt.NDArray[np.float32]

    def __len__(self) -> int:
        return int(self.rewards.shape[0])

    @classmethod
    def from_experience(
        cls, rows: Sequence[Experience], encoder: FeatureEncoder, actions: Sequence[str]
    ) -> BanditData:
        """Usable rows whose action is in ``actions``, encoded with ``encoder``."""
        index = {action: i for i, action in enumerate(actions)}
        kept = [r for r in rows if usable_for_learning(r) and r.action in index]
        return cls(
            actions=tuple(actions),
            features=encoder.encode_many([r.context for r in kept]),
            action_index=np.array([index[r.action] for r in kept], dtype=np.int64),
            rewards=np.array([r.reward for r in kept], dtype=np.float32),
            propensities=np.array(
                [math.nan if r.propensity is None else r.propensity for r in kept],
                dtype=np.float32,
            ),
        )

    def subset(self, rows: npt.NDArray[np.int64]) -> BanditData:
        return BanditData(
            self.actions,
            self.features[rows],
            self.action_index[rows],
            self.rewards[rows],
            self.propensities[rows],
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
