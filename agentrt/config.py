"""Configuration: one pydantic model per YAML section, and ``load_config()``.

The YAML is read with ``safe_load``, ``${VAR:-default}`` references are interpolated, and the
tree is validated with ``extra="forbid"`` everywhere. Every problem is reported at once in one
:class:`~agentrt.errors.ConfigError`, one ``key.path: problem (got value)`` line each.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import typing
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from agentrt.durations import format_duration, parse_duration
from agentrt.errors import ConfigError, ConfigIssue
from agentrt.interpolation import interpolate

__all__ = [
    "AgentConfig",
    "AgentRTConfig",
    "AnalysisConfig",
    "BaselineConfig",
    "ChangeDetectionConfig",
    "CollectionConfig",
    "DatabaseConfig",
    "ExperienceConfiguration",
    "ExplorationConfig",
    "LearningModelConfig",
    "LoggingConfig",
    "ModelConfiguration",
    "OptimizationParametersConfig",
    "PerformanceMetricsConfig",
    "PluginsConfig",
    "RetentionConfig",
    "RewardConfig",
    "RolloutConfig",
    "RuntimeConfig",
    "SQLitePragmasConfig",
    "TrainingConfig",
    "ValidationConfig",
    "load_config",
    "mask_url",
    "masked_dump",
]


def _between(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Any:
    left, right = ("(" if low_open else "["), (")" if high_open else "]")

    def check(value: float) -> float:
        ok_low = value > low if low_open else value >= low
        ok_high = value < high if high_open else value <= high
        if not (math.isfinite(value) and ok_low and ok_high):
            raise ValueError(
                f"must be between {low:g} and {high:g}, in {left}{low:g}, {high:g}{right}"
            )
        return value

    return AfterValidator(check)


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


def _positive_duration(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError("must be a duration greater than zero, such as 100ms or 30s")
    return value


_duration_serializer = PlainSerializer(format_duration, return_type=str, when_used="json")
Duration = Annotated[timedelta, BeforeValidator(parse_duration), _duration_serializer]
PositiveDuration = Annotated[Duration, AfterValidator(_positive_duration)]
Fraction = Annotated[float, _between(0.0, 1.0)]
OpenFraction = Annotated[float, _between(0.0, 1.0, low_open=True, high_open=True)]
FiniteFloat = Annotated[float, AfterValidator(_finite)]
PositiveFloat = Annotated[float, Field(gt=0), AfterValidator(_finite)]
PositiveInt = Annotated[int, Field(gt=0)]

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")


def _check_name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError(
            "must be 1-128 characters of letters, digits, '_', '.' or '-', "
            "not starting with '.' or '-'"
        )
    return value


Name = Annotated[str, AfterValidator(_check_name)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=True)


# --- database ---------------------------------------------------------------------------


class SQLitePragmasConfig(_Section):
    """PRAGMAs applied to every SQLite connection."""

    journal_mode: Literal["wal", "delete", "truncate", "persist", "memory"] = "wal"
    synchronous: Literal["off", "normal", "full", "extra"] = "normal"
    busy_timeout: Duration = timedelta(seconds=5)
    foreign_keys: bool = True
    cache_size: int | None = None


_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgres": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
}


def _normalise_url(value: str) -> str:
    try:
        url = make_url(value)
    except (ArgumentError, ValueError) as exc:
        raise ValueError("must be a database URL such as sqlite:///agentrt.db") from exc
    driver = _DRIVERS.get(url.drivername)
    if driver is None:
        raise ValueError(
            f"unsupported database driver {url.drivername!r}: use sqlite+aiosqlite:///FILE "
            "or postgresql+asyncpg://USER@HOST/DB"
        )
    return url.set(drivername=driver).render_as_string(hide_password=False)


class DatabaseConfig(_Section):
    """Where experience is stored: an SQLite file (default) or PostgreSQL."""

    url: Annotated[str, AfterValidator(_normalise_url)] = "sqlite+aiosqlite:///agentrt.db"
    pool_size: PositiveInt = 5
    max_overflow: Annotated[int, Field(ge=0)] = 10
    pool_timeout: PositiveDuration = timedelta(seconds=30)
    echo: bool = False
    sqlite_pragmas: SQLitePragmasConfig = SQLitePragmasConfig()

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")


# --- runtime ------------------------------------------------------------------------------


_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def _check_device(value: str) -> str:
    if not _DEVICE.match(value):
        raise ValueError("must be auto, cpu, cuda or cuda:N")
    return value


class RuntimeConfig(_Section):
    """How the runtime inside the application behaves."""

    durability: Literal["sync", "buffered"] = "buffered"
    buffer_size: PositiveInt = 10_000
    flush_interval: PositiveDuration = timedelta(milliseconds=100)
    backpressure: Literal["block", "error"] = "block"
    pipeline: Literal["embedded", "external"] = "embedded"
    # Where a learning cycle's heavy work (reading experience, analysis, training,
    # validation) runs: `process` keeps it off the serving process's interpreter (its GIL and
    # its cores); `thread` runs it in worker threads; `auto` = process with an embedded
    # pipeline, thread otherwise (a worker or an explicit run_cycle() serves nothing).
    training: Literal["auto", "thread", "process"] = "auto"
    device: Annotated[str, AfterValidator(_check_device)] = "auto"
    seed: int | None = None
    auto_migrate: bool | None = None
    shutdown_timeout: PositiveDuration = timedelta(seconds=10)
    policy_refresh_interval: PositiveDuration = timedelta(seconds=1)
    # How often the learning loop checks each agent's triggers (embedded or `agentrt worker`).
    trigger_check_interval: PositiveDuration = timedelta(seconds=1)
    # How often the loop applies experience_configuration.retention.
    retention_interval: PositiveDuration = timedelta(hours=1)
    max_context_bytes: PositiveInt = 65_536
    spill_dir: str | None = None


# --- agents -------------------------------------------------------------------------------


class BaselineConfig(_Section):
    """What answers before an agent has a learned policy: uniform, or a fixed action."""

    policy: Literal["uniform", "fixed"] = "uniform"
    action: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, str):
            return (
                {"policy": "uniform"} if data == "uniform" else {"policy": "fixed", "action": data}
            )
        return data

    @model_validator(mode="after")
    def _fixed_needs_action(self) -> BaselineConfig:
        if self.policy == "fixed" and not self.action:
            raise ValueError("a fixed baseline needs `action`, the default action's name")
        return self


class ExplorationConfig(_Section):
    """How the agent explores; the StrategyAdapter tunes these parameters."""

    method: Literal["epsilon_greedy", "softmax", "ucb", "thompson"] = "epsilon_greedy"
    epsilon: Fraction = 0.1
    decay: Annotated[float, _between(0.0, 1.0, low_open=True)] = 0.995
    floor: Fraction = 0.01
    temperature: PositiveFloat = 1.0
    confidence: Annotated[float, Field(ge=0), AfterValidator(_finite)] = 2.0
    window_size: PositiveInt | None = None

    @model_validator(mode="after")
    def _floor_below_epsilon(self) -> ExplorationConfig:
        if self.floor > self.epsilon:
            raise ValueError(f"floor ({self.floor:g}) must not exceed epsilon ({self.epsilon:g})")
        return self


class RolloutConfig(_Section):
    """How a validated candidate goes live: ``direct`` or ``canary``."""

    strategy: Name = "direct"
    fraction: OpenFraction = 0.1
    min_decisions: PositiveInt = 200
    min_duration: Duration = timedelta(0)
    confidence: OpenFraction = 0.95


class TriggerConfig(_Section):
    """When the learning loop runs a cycle for the agent: after ``rewards`` new rewarded
    decisions (default ``experience_configuration.collection.batch_size``), or once
    ``interval`` has passed with at least one (default: ``collection.frequency`` when it is a
    duration). A failed cycle is retried after ``backoff``, doubling up to ``max_backoff``."""

    rewards: PositiveInt | None = None
    interval: PositiveDuration | None = None
    backoff: PositiveDuration = timedelta(seconds=5)
    max_backoff: PositiveDuration = timedelta(minutes=10)


class ShadowConfig(_Section):
    """When an agent in shadow mode may switch to live: its policy's off-policy estimate on
    the shadow decisions must beat the application's own logic by ``margin`` (at
    ``confidence``) over at least ``min_rows`` rewarded shadow decisions."""

    margin: Annotated[float, Field(ge=0), AfterValidator(_finite)] = 0.02
    confidence: OpenFraction = 0.9
    min_rows: PositiveInt = 200
    switch: bool = True


class RewardConfig(_Section):
    """How feedback becomes one reward per decision."""

    combine: Literal["last", "sum", "mean", "max"] = "last"
    wait_window: PositiveDuration | None = None
    default: FiniteFloat | None = None

    @model_validator(mode="after")
    def _window_needs_default(self) -> RewardConfig:
        if self.wait_window is not None and self.default is None:
            raise ValueError("`default` is required when `wait_window` is set")
        return self


class TrainingConfig(_Section):
    """How an agent's learner is trained from its stored experience."""

    window: PositiveInt = 50_000
    min_rows: PositiveInt = 50
    holdout: Annotated[float, _between(0.0, 0.5, high_open=True)] = 0.2
    patience: PositiveInt = 3
    importance_clip: Annotated[float, Field(ge=1), AfterValidator(_finite)] = 20.0
    # Per-action ridge over standardised features: 10 prior rows' worth of shrinkage. With 1.0
    # the per-action fits overfit while actions have few rows (bench/learning.py: 0.70 -> 0.72
    # average with per-reward updates, digits 0.80 -> 0.86).
    ridge: PositiveFloat = 10.0
    feature_dim: PositiveInt = 64
    # Models that support it (``linear``) also learn from each reward between cycles.
    incremental: bool = True


class ValidationConfig(_Section):
    """What a candidate must pass before it may go live."""

    validators: list[Name] = ["sanity", "ope", "latency", "thresholds"]
    estimator: Literal["dr", "snips"] = "dr"
    margin: Annotated[float, Field(ge=0), AfterValidator(_finite)] = 0.05
    confidence: OpenFraction = 0.9
    min_rows: PositiveInt = 50
    require_ope: bool = False
    n_bootstrap: PositiveInt = 500


class AgentConfig(_Section):
    """One agent: its actions, baseline, learner and how it explores and rolls out."""

    actions: list[Name] = []
    baseline: BaselineConfig = BaselineConfig()
    learner: Name | None = None
    model: Name | None = None
    exploration: ExplorationConfig | None = None
    rollout: RolloutConfig = RolloutConfig()
    reward: RewardConfig = RewardConfig()
    mode: Literal["live", "shadow"] = "live"
    shadow: ShadowConfig = ShadowConfig()
    trigger: TriggerConfig = TriggerConfig()
    # Context key -> feature plugin that turns its value (e.g. text) into numbers.
    features: dict[str, Name] = {}
    training: TrainingConfig = TrainingConfig()
    validation: ValidationConfig = ValidationConfig()

    @field_validator("actions")
    @classmethod
    def _unique(cls, actions: list[str]) -> list[str]:
        duplicates = sorted({a for a in actions if actions.count(a) > 1})
        if duplicates:
            raise ValueError(f"action names must be unique; repeated: {', '.join(duplicates)}")
        return actions

    @model_validator(mode="after")
    def _baseline_action_offered(self) -> AgentConfig:
        action = self.baseline.action
        if self.actions and action is not None and action not in self.actions:
            raise ValueError(
                f"baseline action {action!r} is not one of the agent's actions "
                f"({', '.join(self.actions)})"
            )
        return self


# --- plugins and logging -------------------------------------------------------------------


_PLUGIN_REF = re.compile(r"^([A-Za-z_][\w.\-]*|[A-Za-z_][\w.]*:[A-Za-z_][\w.]*)$")


def _check_plugin_ref(value: str) -> str:
    if not _PLUGIN_REF.match(value):
        raise ValueError("must be an entry point name or a module:attribute path")
    return value


class PluginsConfig(_Section):
    """Third-party plugins to enable: entry point names (group ``agentrt.plugins``) or paths."""

    enable: list[Annotated[str, AfterValidator(_check_plugin_ref)]] = []


class LoggingConfig(_Section):
    """How the CLI and the worker render logs; an embedding application keeps its own."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "console", "json"] = "auto"


# --- model_configuration -------------------------------------------------------------------


class ModelParametersConfig(_Section):
    learning_rate: PositiveFloat = 1e-3
    batch_size: PositiveInt = 64
    epochs: PositiveInt = 10
    hidden_size: PositiveInt = 64
    num_layers: PositiveInt = 2
    dropout: Annotated[float, _between(0.0, 1.0, high_open=True)] = 0.0
    # Episodic learners (``dqn``, ``behavior_cloning``).
    gamma: Annotated[float, _between(0.0, 1.0)] = 0.99
    target_sync: PositiveInt = 100
    conservative_weight: Annotated[float, Field(ge=0), AfterValidator(_finite)] = 1.0
    history: PositiveInt = 8
    top_quantile: Annotated[float, _between(0.0, 1.0, low_open=True)] = 0.5
    advantage_weighted: bool = False
    advantage_temperature: PositiveFloat = 1.0


class OptimizerParametersConfig(_Section):
    beta1: Annotated[float, _between(0.0, 1.0, high_open=True)] = 0.9
    beta2: Annotated[float, _between(0.0, 1.0, high_open=True)] = 0.999
    alpha: OpenFraction = 0.99
    momentum: Annotated[float, _between(0.0, 1.0, high_open=True)] = 0.0
    weight_decay: Annotated[float, Field(ge=0), AfterValidator(_finite)] = 0.0


class OptimizationConfig(_Section):
    method: Literal["adam", "rmsprop", "sgd"] = "adam"
    parameters: OptimizerParametersConfig = OptimizerParametersConfig()


class LearningModelConfig(_Section):
    """One named model: what it learns, its network, its hyperparameters and optimiser."""

    type: Literal["contextual_bandit", "reinforcement_learning", "behavioral_learning"]
    architecture: Literal["mlp", "lstm", "transformer", "linear"] = "mlp"
    parameters: ModelParametersConfig = ModelParametersConfig()
    optimization: OptimizationConfig = OptimizationConfig()


class ModelConfiguration(_Section):
    learning_models: dict[Name, LearningModelConfig] = {}


# --- experience_configuration --------------------------------------------------------------


def _frequency(value: object) -> object:
    if value in (None, "real_time"):
        return None
    return parse_duration(value)


Frequency = Annotated[
    timedelta | None,
    BeforeValidator(_frequency),
    PlainSerializer(lambda v: "real_time" if v is None else format_duration(v), return_type=str),
]


class CollectionConfig(_Section):
    frequency: Frequency = None
    batch_size: PositiveInt = 1000
    storage_format: Literal["database", "parquet"] = "database"


class MethodsConfig(_Section):
    methods: list[Name] = []


class RetentionConfig(_Section):
    policy: Literal["none", "time_based"] = "none"
    duration: PositiveDuration = timedelta(days=30)
    compression: Literal["snappy", "gzip", "zstd", "none"] = "snappy"
    archive_dir: str = "archive"


class ChangeDetectionConfig(_Section):
    """The sequential change detector on an agent's reward stream.

    ``delta`` and ``threshold`` are in standard deviations of the reward (estimated online).
    """

    method: Literal["page_hinkley", "cusum"] = "page_hinkley"
    delta: Annotated[float, Field(ge=0), AfterValidator(_finite)] = 0.25
    threshold: PositiveFloat = 25.0
    min_samples: PositiveInt = 30


class AnalysisConfig(_Section):
    """Which analyzers run in each extraction, and their sensitivity."""

    methods: list[Name] = []
    change_detection: ChangeDetectionConfig = ChangeDetectionConfig()
    anomaly_threshold: PositiveFloat = 3.5
    pattern_min_support: PositiveInt = 30
    significance: OpenFraction = 0.01
    confidence: OpenFraction = 0.95


class ExperienceConfiguration(_Section):
    collection: CollectionConfig = CollectionConfig()
    processing: MethodsConfig = MethodsConfig()
    analysis: AnalysisConfig = AnalysisConfig()
    retention: RetentionConfig = RetentionConfig()


# --- performance_metrics -------------------------------------------------------------------


class _Metric(_Section):
    threshold: FiniteFloat


class AccuracyMetric(_Metric):
    """Share of held-out decisions on which the candidate picks the best logged action."""

    type: Literal["percentage", "ratio"]


class ConvergenceMetric(_Metric):
    """Training must reach its best validation loss within this many epochs."""

    type: Literal["epochs"]


class StabilityMetric(_Metric):
    """Variance (or standard deviation) of the validation loss over the last epochs."""

    type: Literal["variance", "std"]


class ResponseTimeMetric(_Metric):
    """p99 latency of one decision's inference."""

    type: Literal["milliseconds", "microseconds", "seconds"]


class EffectivenessMetric(_Metric):
    """Estimated improvement of the candidate over the active policy (off-policy)."""

    type: Literal["improvement"]


class EfficiencyMetric(_Metric):
    """Share of the training budget (epochs) the candidate used."""

    type: Literal["resource_usage"]


class ModelPerformanceConfig(_Section):
    accuracy: AccuracyMetric | None = None
    convergence: ConvergenceMetric | None = None
    stability: StabilityMetric | None = None


class AdaptationPerformanceConfig(_Section):
    response_time: ResponseTimeMetric | None = None
    effectiveness: EffectivenessMetric | None = None
    efficiency: EfficiencyMetric | None = None


class LearningMetricsConfig(_Section):
    model_performance: ModelPerformanceConfig = ModelPerformanceConfig()
    adaptation_performance: AdaptationPerformanceConfig = AdaptationPerformanceConfig()


class PerformanceMetricsConfig(_Section):
    learning_metrics: LearningMetricsConfig = LearningMetricsConfig()


# --- optimization_parameters ---------------------------------------------------------------


class ExplorationDefaultsConfig(_Section):
    method: Literal["epsilon_greedy", "softmax", "ucb", "thompson"] = "epsilon_greedy"
    epsilon: Fraction = 0.1
    decay: Annotated[float, _between(0.0, 1.0, low_open=True)] = 0.995
    floor: Fraction = 0.01


# Learners whose estimates come with their uncertainty: without a configured exploration
# block they explore by the ``exploitation`` method (UCB by default). On the supervised-to-
# bandit protocol of bench/learning.py (6 datasets, 5 seeds, per-reward updates) the linear
# learner averages 0.698 with UCB on its uncertainty against 0.626 with epsilon-greedy 0.1.
_UNCERTAIN_LEARNERS = ("linear",)
_EXPLOITATION_METHODS: dict[str, Literal["epsilon_greedy", "ucb", "thompson"]] = {
    "ucb": "ucb",
    "thompson": "thompson",
    "greedy": "epsilon_greedy",
}


class ExploitationConfig(_Section):
    method: Literal["ucb", "greedy", "thompson"] = "ucb"
    # Multiplies the learner's standard deviation of the estimate (the linear learner's is
    # scaled by the residual noise of each action).
    confidence: Annotated[float, Field(ge=0), AfterValidator(_finite)] = 2.0
    window_size: PositiveInt = 1000


class AdaptationConfig(_Section):
    method: Literal["dynamic", "fixed"] = "dynamic"
    learning_rate: PositiveFloat = 0.01
    momentum: Annotated[float, _between(0.0, 1.0, high_open=True)] = 0.9


class StrategyOptimizationConfig(_Section):
    exploration: ExplorationDefaultsConfig = ExplorationDefaultsConfig()
    exploitation: ExploitationConfig = ExploitationConfig()
    adaptation: AdaptationConfig = AdaptationConfig()


class OptimizationParametersConfig(_Section):
    strategy_optimization: StrategyOptimizationConfig = StrategyOptimizationConfig()


# --- the whole file ------------------------------------------------------------------------


class AgentRTConfig(_Section):
    """The whole configuration file."""

    database: DatabaseConfig = DatabaseConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    agents: dict[Name, AgentConfig] = {}
    plugins: PluginsConfig = PluginsConfig()
    logging: LoggingConfig = LoggingConfig()
    model_configuration: ModelConfiguration = ModelConfiguration()
    experience_configuration: ExperienceConfiguration = ExperienceConfiguration()
    performance_metrics: PerformanceMetricsConfig = PerformanceMetricsConfig()
    optimization_parameters: OptimizationParametersConfig = OptimizationParametersConfig()

    def trigger_for(self, agent_id: str) -> tuple[int, timedelta | None]:
        """The agent's cycle trigger: (new rewarded decisions, interval or None)."""
        trigger = self.agents[agent_id].trigger
        collection = self.experience_configuration.collection
        rewards = trigger.rewards if trigger.rewards is not None else collection.batch_size
        interval = trigger.interval if trigger.interval is not None else collection.frequency
        return rewards, interval

    def learner_for(self, agent_id: str) -> str:
        """The agent's learner: configured, else implied by its model's type, else ``linear``."""
        agent = self.agents[agent_id]
        if agent.learner:
            return agent.learner
        model = self.model_configuration.learning_models.get(agent.model or "")
        if model is None:
            return "linear"
        if model.type == "contextual_bandit":
            return "linear" if model.architecture == "linear" else "neural"
        return {"reinforcement_learning": "dqn", "behavioral_learning": "behavior_cloning"}[
            model.type
        ]

    def exploration_for(self, agent_id: str) -> ExplorationConfig:
        """The agent's exploration block, or the one derived from ``optimization_parameters``.

        Derived: the ``exploration`` block of ``strategy_optimization`` when the file has one.
        Without one, an agent whose learner is ``linear`` (which estimates its uncertainty)
        explores by the ``exploitation`` method (default ``ucb`` with ``confidence`` 2.0;
        ``greedy``: the epsilon-greedy defaults); other learners by epsilon-greedy.
        """
        own = self.agents[agent_id].exploration
        if own is not None:
            return own
        strategy = self.optimization_parameters.strategy_optimization
        seed = strategy.exploration
        method = seed.method
        configured = "exploration" in strategy.model_fields_set
        if not configured and self.learner_for(agent_id) in _UNCERTAIN_LEARNERS:
            method = _EXPLOITATION_METHODS[strategy.exploitation.method]
        return ExplorationConfig(
            method=method,
            epsilon=seed.epsilon,
            decay=seed.decay,
            floor=min(seed.floor, seed.epsilon),
            confidence=strategy.exploitation.confidence,
            window_size=strategy.exploitation.window_size,
        )


def _cross_reference_issues(tree: object) -> list[ConfigIssue]:
    """Problems between sections, found on the raw tree so they are reported with the rest."""
    if not isinstance(tree, Mapping):
        return []
    issues: list[ConfigIssue] = []
    models_section = tree.get("model_configuration")
    models = models_section.get("learning_models") if isinstance(models_section, Mapping) else None
    known = list(models) if isinstance(models, Mapping) else []
    agents = tree.get("agents")
    for agent_id, agent in agents.items() if isinstance(agents, Mapping) else ():
        model = agent.get("model") if isinstance(agent, Mapping) else None
        if isinstance(model, str) and model not in known:
            defined = ", ".join(known) or "none defined"
            issues.append(
                ConfigIssue(
                    f"agents.{agent_id}.model",
                    f"no model_configuration.learning_models entry named {model!r} "
                    f"(defined: {defined})",
                    model,
                )
            )
    return issues


# --- loading -------------------------------------------------------------------------------


def load_config(
    source: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> AgentRTConfig:
    """Read, interpolate and validate a configuration.

    Args:
        source: a YAML file path, an already parsed mapping, or None for all defaults.
        overrides: values merged over the file before validation; nested mappings merge
            key by key and dotted keys (``"runtime.durability"``) address nested sections.
        environ: the variables for ``${VAR}`` interpolation (default: ``os.environ``).

    Returns:
        The validated configuration.

    Raises:
        ConfigError: listing every problem, one line each with its key path.
    """
    origin: str | None = None
    if source is None:
        raw: object = {}
    elif isinstance(source, Mapping):
        raw = dict(source)
    else:
        origin = os.fspath(source)
        raw = _read_yaml(Path(origin))
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(
            [ConfigIssue("", "the configuration must be a mapping of sections", raw)], origin
        )
    tree = dict(raw)
    for key, value in (overrides or {}).items():
        _merge_override(tree, key.split("."), value)

    issues: list[ConfigIssue] = []
    resolved = interpolate(tree, os.environ if environ is None else environ, issues)
    try:
        config = AgentRTConfig.model_validate(resolved)
    except ValidationError as exc:
        unresolved = {issue.path for issue in issues}
        found = (_issue_from_error(error) for error in exc.errors())
        issues.extend(issue for issue in found if issue.path not in unresolved)
    issues.extend(_cross_reference_issues(resolved))
    if issues:
        raise ConfigError(_dedupe(issues), origin)
    return config


def _read_yaml(path: Path) -> object:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            [ConfigIssue("", f"cannot read the file: {exc.strerror}")], str(path)
        ) from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([ConfigIssue("", f"{where}invalid YAML: {problem}")], str(path)) from exc


def _merge_override(tree: dict[str, Any], keys: list[str], value: Any) -> None:
    head, rest = keys[0], keys[1:]
    if rest:
        child = tree.get(head)
        child = dict(child) if isinstance(child, Mapping) else {}
        _merge_override(child, rest, value)
        tree[head] = child
    elif isinstance(value, Mapping) and isinstance(tree.get(head), Mapping):
        merged = dict(tree[head])
        for key, item in value.items():
            _merge_override(merged, [key], item)
        tree[head] = merged
    else:
        tree[head] = value


def _dedupe(issues: list[ConfigIssue]) -> list[ConfigIssue]:
    return list(dict.fromkeys(issues))


# --- turning pydantic errors into one-line issues ------------------------------------------

_MESSAGES: dict[str, Callable[[dict[str, Any]], str]] = {
    "missing": lambda ctx: "required key is missing",
    "int_type": lambda ctx: "must be an integer",
    "int_parsing": lambda ctx: "must be an integer",
    "int_from_float": lambda ctx: "must be a whole number",
    "float_type": lambda ctx: "must be a number",
    "float_parsing": lambda ctx: "must be a number",
    "finite_number": lambda ctx: "must be a finite number",
    "bool_type": lambda ctx: "must be true or false",
    "bool_parsing": lambda ctx: "must be true or false",
    "string_type": lambda ctx: "must be a string",
    "list_type": lambda ctx: "must be a list",
    "dict_type": lambda ctx: "must be a mapping",
    "model_type": lambda ctx: "must be a mapping",
    "model_attributes_type": lambda ctx: "must be a mapping",
    "literal_error": lambda ctx: f"must be one of {ctx.get('expected', '')}",
    "greater_than": lambda ctx: f"must be > {ctx.get('gt')}",
    "greater_than_equal": lambda ctx: f"must be >= {ctx.get('ge')}",
    "less_than": lambda ctx: f"must be < {ctx.get('lt')}",
    "less_than_equal": lambda ctx: f"must be <= {ctx.get('le')}",
}


def _issue_from_error(error: ErrorDetails) -> ConfigIssue:
    loc = [part for part in error["loc"] if not _is_union_tag(part)]
    path = _format_path(loc)
    kind = error["type"]
    value = error.get("input")
    if kind == "extra_forbidden":
        return ConfigIssue(path, _unknown_key_message(loc), value)
    if kind in ("value_error", "assertion_error"):
        message = error["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    else:
        render = _MESSAGES.get(kind)
        message = render(dict(error.get("ctx") or {})) if render else error["msg"]
    if kind != "missing" and not isinstance(value, Mapping | list):
        message = f"{message} (got {_show(path, value)})"
    return ConfigIssue(path, message, value)


def _is_union_tag(part: int | str) -> bool:
    return isinstance(part, str) and ("[" in part or part in {"function-after", "function-before"})


def _format_path(loc: list[int | str]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path = f"{path}.{part}" if path else part
    return path


def _show(path: str, value: object) -> str:
    if isinstance(value, str) and path.endswith("url"):
        return repr(mask_url(value))
    return repr(value)


def _unknown_key_message(loc: list[int | str]) -> str:
    model: Any = AgentRTConfig
    for part in loc[:-1]:
        model = _child_model(model, part)
        if model is None:
            return "unknown key"
    allowed = sorted(model.model_fields)
    key = str(loc[-1])
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown key; {hint}allowed keys: {', '.join(allowed)}"


def _child_model(model: Any, part: int | str) -> Any:
    if isinstance(part, int) or not (isinstance(model, type) and issubclass(model, BaseModel)):
        return _element_model(model)
    field = model.model_fields.get(part)
    if field is None:
        return _element_model(model)
    return _unwrap(field.annotation)


def _unwrap(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (dict, list):
        return annotation  # the next path part is a key or an index into it
    for arg in getattr(annotation, "__args__", ()):
        found = _unwrap(arg)
        if found is not None:
            return found
    return None


def _element_model(container: Any) -> Any:
    args = getattr(container, "__args__", ())
    for arg in reversed(args):
        found = _unwrap(arg)
        if isinstance(found, type) and issubclass(found, BaseModel):
            return found
    return None


# --- display -------------------------------------------------------------------------------

_SECRET_KEYS = re.compile(r"password|secret|token|api_key", re.IGNORECASE)


def mask_url(url: str) -> str:
    """Return a database URL with its password replaced by ``***``."""
    try:
        parsed = make_url(url)
        secrets = {key: "***" for key in parsed.query if _SECRET_KEYS.search(key)}
        return parsed.update_query_dict(secrets).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", url)


def masked_dump(config: AgentRTConfig) -> dict[str, Any]:
    """The resolved configuration as plain data, with passwords and secrets masked."""
    data = config.model_dump(mode="json")
    data["database"]["url"] = mask_url(config.database.url)
    return _mask_secrets(data)  # type: ignore[no-any-return]


def _mask_secrets(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {
            key: "***"
            if _SECRET_KEYS.search(str(key)) and isinstance(value, str) and value
            else _mask_secrets(value)
            for key, value in tree.items()
        }
    if isinstance(tree, list):
        return [_mask_secrets(item) for item in tree]
    return tree
