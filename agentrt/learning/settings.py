"""What a learner is given: hyperparameters from ``model_configuration``, seed and device."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from agentrt.config import (
    LearningModelConfig,
    ModelParametersConfig,
    OptimizationConfig,
    TrainingConfig,
)

__all__ = ["LearnerSettings"]


@dataclass(frozen=True)
class LearnerSettings:
    """Everything a learner needs besides the data.

    Attributes:
        architecture: ``mlp``, ``transformer``, ``lstm`` or ``linear``.
        parameters: learning rate, batch size, epochs, sizes, dropout.
        optimization: the optimiser and its parameters.
        training: held-out share, early-stopping patience, importance-weight clip, ridge.
        seed: makes CPU training deterministic.
        device: where training runs.
    """

    architecture: str = "mlp"
    parameters: ModelParametersConfig = field(default_factory=ModelParametersConfig)
    optimization: OptimizationConfig = field(default_factory=OptimizationConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @classmethod
    def from_model(
        cls,
        model: LearningModelConfig | None,
        training: TrainingConfig,
        seed: int,
        device: torch.device,
    ) -> LearnerSettings:
        if model is None:
            return cls(training=training, seed=seed, device=device)
        return cls(
            architecture=model.architecture,
            parameters=model.parameters,
            optimization=model.optimization,
            training=training,
            seed=seed,
            device=device,
        )
