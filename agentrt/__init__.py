"""agentrt: an async runtime that lets agent applications learn from their own executions.

The public API is what this module exports; plugin authors also use :mod:`agentrt.plugins`.
Everything else is internal and may change without notice.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

from agentrt.config import AgentRTConfig, load_config
from agentrt.episode import ActiveEpisode
from agentrt.errors import (
    AgentRTError,
    ArtifactIntegrityError,
    BackpressureError,
    ConfigError,
    InvalidInputError,
    PluginError,
    PluginNotFoundError,
    PolicyError,
    SchemaOutdatedError,
    StorageError,
    TrainingProcessError,
    UnknownActionError,
    UnknownDecisionError,
)
from agentrt.runtime import Runtime
from agentrt.schemas import (
    AgentCycle,
    CycleReport,
    Decision,
    Episode,
    Experience,
    Feedback,
    Knowledge,
    PolicyVersion,
    StrategyUpdate,
)
from agentrt.types import (
    Analyzer,
    ExperienceBatch,
    ExplorationStrategy,
    FeatureExtractor,
    IncrementalModel,
    Learner,
    Processor,
    RewardModel,
    Rollout,
    SequenceModel,
    Validator,
)

try:
    __version__ = _version("agentrt")
except _PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = [
    "ActiveEpisode",
    "AgentCycle",
    "AgentRTConfig",
    "AgentRTError",
    "Analyzer",
    "ArtifactIntegrityError",
    "BackpressureError",
    "ConfigError",
    "CycleReport",
    "Decision",
    "Episode",
    "Experience",
    "ExperienceBatch",
    "ExplorationStrategy",
    "FeatureExtractor",
    "Feedback",
    "IncrementalModel",
    "InvalidInputError",
    "Knowledge",
    "Learner",
    "PluginError",
    "PluginNotFoundError",
    "PolicyError",
    "PolicyVersion",
    "Processor",
    "RewardModel",
    "Rollout",
    "Runtime",
    "SchemaOutdatedError",
    "SequenceModel",
    "StorageError",
    "StrategyUpdate",
    "TrainingProcessError",
    "UnknownActionError",
    "UnknownDecisionError",
    "Validator",
    "__version__",
    "load_config",
]
