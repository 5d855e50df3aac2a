"""Where a learning cycle's heavy work runs: worker threads, or a training process.

``runtime.training: process`` (the default with an embedded pipeline) moves what a cycle
computes — reading the experience window, the analyzers, fitting the learner, the validators —
into a child process that the runtime keeps between cycles (anyio's process pool; it exits
after five idle minutes and with the runtime). In threads that work would share the serving
process's interpreter: every pure-Python stretch of it holds the GIL, and a ``decide()``
waiting for the GIL waits up to the interpreter's switch interval (5 ms), hundreds of times its
own cost. The child opens its own connections to the same database and builds its own plugin
registry from ``plugins.enable``, so only plugins named in the configuration can be used there
(:func:`resolve_training` says which mode applies and why). It runs at a lower CPU priority
(nice 10) with torch on all cores but one, so the application keeps a core.

What crosses the process boundary is plain data: the configuration, the agent's exploration
strategy, the active policy as a safetensors artifact, and back a :class:`Candidate` (artifacts
as bytes) or the extractor's findings. The parent stores the candidate and verifies its
artifact again when it loads it to serve. A failure in the child comes back as
:class:`~agentrt.errors.TrainingProcessError`.
"""

from __future__ import annotations

import functools
import os
import traceback
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

import anyio
import anyio.to_process
import structlog
from anyio import BrokenWorkerProcess

from agentrt.config import AgentRTConfig
from agentrt.errors import ConfigError, ConfigIssue, TrainingProcessError
from agentrt.exploration import Strategy
from agentrt.log import get_logger
from agentrt.plugins import PluginRegistry
from agentrt.storage.engine import Database

if TYPE_CHECKING:  # the updater imports torch; the serving process may not need it yet
    from agentrt.pipeline.updater import Candidate
    from agentrt.policy import LearnedPolicy
    from agentrt.schemas import Knowledge

__all__ = [
    "ActiveArtifact",
    "candidate_in_process",
    "extract_in_process",
    "resolve_training",
    "shadow_in_process",
]

log = get_logger(__name__)

T = TypeVar("T")

# The training process's CPU priority relative to the application (higher is lower priority).
CHILD_NICENESS = 10


def resolve_training(
    config: AgentRTConfig, registry: PluginRegistry
) -> tuple[Literal["thread", "process"], str]:
    """Where this runtime's cycles run, and why.

    Raises:
        ConfigError: ``runtime.training: process`` with plugins registered in code or an
            in-memory SQLite database, which a training process could not see.
    """
    runtime = config.runtime
    obstacles = []
    if registry.registered_in_code:
        obstacles.append(
            f"plugins registered in code ({', '.join(registry.registered_in_code)}) are not "
            "in a training process's registry: enable them under plugins.enable"
        )
    if config.database.is_sqlite and _in_memory(config.database.url):
        obstacles.append("an in-memory SQLite database is not visible to another process")
    if runtime.training == "process":
        if obstacles:
            raise ConfigError(
                [ConfigIssue("runtime.training", f"process: {why}", "process") for why in obstacles]
            )
        return "process", "runtime.training: process"
    if runtime.training == "thread":
        return "thread", "runtime.training: thread"
    if runtime.pipeline != "embedded":
        return "thread", "runtime.training: auto with runtime.pipeline: external"
    if obstacles:
        return "thread", "runtime.training: auto, but " + "; ".join(obstacles)
    return "process", "runtime.training: auto with runtime.pipeline: embedded"


def _in_memory(url: str) -> bool:
    from sqlalchemy.engine import make_url

    database = make_url(url).database
    return not database or database == ":memory:" or "mode=memory" in url


@dataclass(frozen=True)
class ActiveArtifact:
    """The active policy as it serves now (its in-memory updates included), for validation in
    the training process."""

    version: int
    learner: str
    artifact: bytes
    sha256: str
    exploration: Strategy

    def policy(self, agent_id: str, registry: PluginRegistry) -> LearnedPolicy:
        """The policy again, verified against its SHA-256."""
        from agentrt.pipeline.updater import policy_from_artifact

        return policy_from_artifact(
            agent_id,
            self.version,
            self.learner,
            self.artifact,
            self.sha256,
            registry,
            self.exploration,
        )


@dataclass(frozen=True)
class _Outcome(Generic[T]):
    """What a job sends back: its result (or failure) and its log events."""

    pid: int
    result: T | _Failure
    events: list[dict[str, Any]]


@dataclass(frozen=True)
class _Failure:
    """An exception raised in the training process, as text (it may not survive pickling)."""

    kind: str
    message: str
    trace: str


async def candidate_in_process(
    config: AgentRTConfig,
    agent_id: str,
    *,
    cycle: int,
    optimizer: tuple[float, float] | None,
    exploration: Strategy,
    active: ActiveArtifact | None,
    limiter: anyio.CapacityLimiter,
) -> Candidate:
    """:meth:`ModelUpdater.candidate` in the training process.

    Raises:
        TrainingProcessError: training or validation failed there, or the process died.
    """
    return await _run(
        limiter, _candidate_job, config, agent_id, cycle, optimizer, exploration, active
    )


async def extract_in_process(
    config: AgentRTConfig,
    agent_id: str,
    window: tuple[datetime | None, datetime | None],
    limiter: anyio.CapacityLimiter,
) -> tuple[list[Knowledge], tuple[datetime | None, datetime | None]]:
    """:meth:`KnowledgeExtractor.extract` in the training process, from the extractor's
    window; returns the findings (already stored) and the window the next extraction starts
    from.

    Raises:
        TrainingProcessError: the extraction failed there, or the process died.
    """
    return await _run(limiter, _extract_job, config, agent_id, window)


async def shadow_in_process(
    config: AgentRTConfig,
    agent_id: str,
    active: ActiveArtifact,
    limiter: anyio.CapacityLimiter,
) -> tuple[bool, dict[str, Any]]:
    """:func:`~agentrt.pipeline.shadow.judge_shadow` in the training process.

    Raises:
        TrainingProcessError: the comparison failed there, or the process died.
    """
    return await _run(limiter, _shadow_job, config, agent_id, active)


async def _run(limiter: anyio.CapacityLimiter, job: Callable[..., _Outcome[T]], *args: Any) -> T:
    try:
        outcome = await anyio.to_process.run_sync(job, *args, cancellable=True, limiter=limiter)
    except BrokenWorkerProcess as exc:
        raise TrainingProcessError(
            f"the training process died during {job.__name__.strip('_')} "
            f"({exc.__cause__!r}); the next cycle starts a new one"
        ) from exc
    for event in outcome.events:  # the child's log lines, through this process's logging
        fields = dict(event)
        level = str(fields.pop("log_level", "info"))
        name = str(fields.pop("event", ""))
        method = getattr(log, level if level in _LEVELS else "info")
        method(name, training_process=outcome.pid, **fields)
    result = outcome.result
    if isinstance(result, _Failure):
        log.error("training_process_failed", error=result.kind, trace=result.trace)
        raise TrainingProcessError(f"in the training process: {result.kind}: {result.message}")
    return result


# -- in the training process ---------------------------------------------------------------


# A job's log events, sent back with its result (the worker's standard streams are closed
# to user code: stdout carries the results).
_EVENTS: list[dict[str, Any]] = []
_LEVELS = ("debug", "info", "warning", "error", "critical")


def _keep_event(_: Any, method: str, event: MutableMapping[str, Any]) -> Any:
    _EVENTS.append({**event, "log_level": "error" if method == "exception" else method})
    raise structlog.DropEvent


@functools.cache
def _prepare() -> None:
    """Once per training process: log events kept for the parent, lower priority, and
    torch on every core but one."""
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, _keep_event],
        cache_logger_on_first_use=False,
    )
    try:
        os.nice(CHILD_NICENESS)
    except OSError as exc:  # not permitted here: run at the same priority, and say so
        log.warning("training_process_priority_unchanged", error=str(exc))
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))
    log.info(
        "training_process_started",
        parent=os.getppid(),
        niceness=os.nice(0),
        torch_threads=torch.get_num_threads(),
    )


def _in_child(config: AgentRTConfig, work: Callable[[Database, PluginRegistry], Awaitable[T]]) -> T:
    registry = PluginRegistry.from_config(config.plugins.enable)

    async def main() -> T:
        db = Database(config.database)
        try:
            return await work(db, registry)
        finally:
            with anyio.CancelScope(shield=True):
                await db.dispose()

    return anyio.run(main)


def _candidate_job(
    config: AgentRTConfig,
    agent_id: str,
    cycle: int,
    optimizer: tuple[float, float] | None,
    exploration: Strategy,
    active: ActiveArtifact | None,
) -> _Outcome[Candidate]:
    from agentrt.pipeline.updater import ModelUpdater
    from agentrt.policy import BaselinePolicy

    async def work(db: Database, registry: PluginRegistry) -> Candidate:
        serving = None if active is None else active.policy(agent_id, registry)
        return await ModelUpdater(config, db, registry).candidate(
            agent_id,
            cycle=cycle,
            optimizer=optimizer,
            exploration=exploration,
            active=serving,
            baseline=BaselinePolicy(config.agents[agent_id].baseline),
        )

    return _guarded(config, work)


def _shadow_job(
    config: AgentRTConfig, agent_id: str, active: ActiveArtifact
) -> _Outcome[tuple[bool, dict[str, Any]]]:
    from agentrt.pipeline.shadow import judge_shadow

    async def work(db: Database, registry: PluginRegistry) -> tuple[bool, dict[str, Any]]:
        return await judge_shadow(config, db, agent_id, active.policy(agent_id, registry))

    return _guarded(config, work)


def _extract_job(
    config: AgentRTConfig, agent_id: str, window: tuple[datetime | None, datetime | None]
) -> _Outcome[tuple[list[Knowledge], tuple[datetime | None, datetime | None]]]:
    from agentrt.pipeline.extractor import KnowledgeExtractor

    async def work(
        db: Database, registry: PluginRegistry
    ) -> tuple[list[Knowledge], tuple[datetime | None, datetime | None]]:
        extractor = KnowledgeExtractor(config, db, registry)
        extractor.resume(agent_id, window)
        findings = await extractor.extract(agent_id)
        return findings, extractor.window(agent_id)

    return _guarded(config, work)


def _guarded(
    config: AgentRTConfig, work: Callable[[Database, PluginRegistry], Awaitable[T]]
) -> _Outcome[T]:
    _EVENTS.clear()
    _prepare()
    result: T | _Failure
    try:
        result = _in_child(config, work)
    except Exception as exc:  # sent back as text: the parent raises TrainingProcessError
        result = _Failure(type(exc).__name__, str(exc), traceback.format_exc())
    events = list(_EVENTS)
    _EVENTS.clear()
    return _Outcome(os.getpid(), result, events)
