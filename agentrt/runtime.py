"""The Runtime: what an application embeds to decide, report and learn.

``async with Runtime.from_yaml(path) as rt:`` opens the database (upgrading an SQLite schema
when allowed), stores the configured agents, starts the ExperienceCollector and the
reward-window sweep in one task group, and on exit drains and flushes everything within
``runtime.shutdown_timeout``. Decisions never wait on learning; in ``buffered`` mode they never
wait on the database either.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
import random
import socket
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar

import anyio
import numpy as np
from anyio import AsyncContextManagerMixin

from agentrt.clock import utcnow
from agentrt.config import AgentConfig, AgentRTConfig, load_config
from agentrt.episode import ActiveEpisode
from agentrt.errors import (
    AgentRTError,
    InvalidInputError,
    StorageError,
    UnknownActionError,
    UnknownDecisionError,
)
from agentrt.exploration import Strategy
from agentrt.exploration import from_config as exploration_from_config
from agentrt.ids import new_id
from agentrt.inputs import (
    check_actions,
    check_context,
    check_decision_id,
    check_distribution,
    check_mask,
    check_propensity,
    check_reward,
    checked_context,
    checked_outcome,
)
from agentrt.log import get_logger
from agentrt.pipeline.adapter import StrategyAdapter, live_rewards, roll_back
from agentrt.pipeline.adapter import describe as describe_strategy
from agentrt.pipeline.collector import (
    CollectorStats,
    ExperienceCollector,
    KnownDecisions,
    default_spill_dir,
    process_owner,
)
from agentrt.pipeline.coordination import agent_lock, listen_for_policy_changes
from agentrt.pipeline.extractor import KnowledgeExtractor
from agentrt.pipeline.offload import resolve_training
from agentrt.pipeline.spill import ExperienceRecord, SpillDirectory
from agentrt.plugins import PluginRegistry
from agentrt.policy import BaselinePolicy, Choice, LearnedPolicy
from agentrt.schemas import (
    AgentCycle,
    CycleReport,
    Decision,
    DecisionMode,
    Episode,
    Feedback,
    Knowledge,
    PolicyVersion,
    StrategyUpdate,
)
from agentrt.storage import bulk, flat, repositories
from agentrt.storage.engine import Database
from agentrt.storage.migrate import ensure_schema
from agentrt.types import IncrementalModel, Processor, Rollout

if TYPE_CHECKING:
    # torch is imported only once a runtime learns or serves a learned policy.
    from agentrt.pipeline.loop import LearningLoop
    from agentrt.pipeline.offload import ActiveArtifact
    from agentrt.pipeline.rollout import Verdict
    from agentrt.pipeline.updater import Candidate, ModelUpdater

__all__ = ["Runtime"]

log = get_logger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

_MODES = ("live", "shadow", "deferred")
# Rewards an incremental model may still owe itself between two updates (oldest dropped).
_ONLINE_BACKLOG = 100_000
# Which process ran a cycle (recorded with it; several workers may share a database).
_PROCESS = f"{socket.gethostname()}:{os.getpid()}"
# Default rewards get deterministic ids, so two processes sweeping the same window agree.
_DEFAULT_REWARD_NAMESPACE = uuid.UUID("6f1d8c1e-5b7a-4f43-9d59-5a0c2b7e9a11")


class Runtime(AsyncContextManagerMixin):
    """The runtime an application embeds.

    Args:
        config: the validated configuration (see :func:`agentrt.load_config`).
        registry: the plugin registry (default: built from ``config.plugins``).
        clock: returns the current aware UTC time; tests inject a fake one.
    """

    def __init__(
        self,
        config: AgentRTConfig,
        *,
        registry: PluginRegistry | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.config = config
        self.registry = registry or PluginRegistry.from_config(config.plugins.enable)
        self._clock = clock
        self._rng = random.Random(config.runtime.seed)
        self._baselines = {
            agent_id: BaselinePolicy(agent.baseline) for agent_id, agent in config.agents.items()
        }
        self._actions = {
            agent_id: tuple(agent.actions) for agent_id, agent in config.agents.items()
        }
        self._known = KnownDecisions()
        self._sync = config.runtime.durability == "sync"
        self._max_bytes = config.runtime.max_context_bytes
        self._db: Database | None = None
        self._collector: ExperienceCollector | None = None
        self._updater: ModelUpdater | None = None
        self._extractor: KnowledgeExtractor | None = None
        self._adapter: StrategyAdapter | None = None
        self._limiter: anyio.CapacityLimiter | None = None
        # Where cycles compute (see `runtime.training`), resolved at start.
        self._training: Literal["thread", "process"] = "thread"
        self._process_limiter = anyio.CapacityLimiter(1)
        self._stopping = anyio.Event()
        self._swept: dict[str, datetime] = {}
        # Serving: per agent the active learned policy, then its predecessor (the fallback).
        self._policies: dict[str, list[LearnedPolicy]] = {}
        # Per agent the (version, sha256) of an active version refused at load: not retried.
        self._refused: dict[str, tuple[int, str]] = {}
        self._exploration: dict[str, Strategy] = {
            agent_id: exploration_from_config(config.exploration_for(agent_id))
            for agent_id in config.agents
        }
        self._cycles: dict[str, int] = dict.fromkeys(config.agents, 0)
        self._cycle_locks = {agent_id: anyio.Lock() for agent_id in config.agents}
        # Per agent the canary serving a fraction of decisions, since when, and its looks.
        self._canaries: dict[str, LearnedPolicy] = {}
        self._canary_started: dict[str, datetime] = {}
        self._canary_looks: dict[str, int] = {}
        self._refresh_now = anyio.Event()
        self._loop: LearningLoop | None = None
        # Per agent the (learning rate, momentum) of its next training run, once adapted.
        self._optimizer: dict[str, tuple[float, float]] = {}
        # Per agent, rewards waiting to update an incremental active model (between cycles):
        # (context, action, reward, when it was reported).
        self._online: dict[str, deque[tuple[dict[str, Any], str, float, datetime]]] = {
            agent_id: deque(maxlen=_ONLINE_BACKLOG)
            for agent_id, agent in config.agents.items()
            if agent.training.incremental
        }
        # Shadow agents that switched to live (see `agents.<id>.shadow`).
        self._modes: dict[str, Literal["live", "shadow"]] = {}
        self.fallbacks: dict[str, int] = dict.fromkeys(config.agents, 0)
        self._fallbacks_recorded: dict[str, int] = dict.fromkeys(config.agents, 0)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str], **overrides: Any) -> Runtime:
        """A runtime configured from a YAML file; keyword arguments override its sections.

        Example: ``Runtime.from_yaml("config/agentrt.yaml", runtime={"durability": "sync"})``.
        """
        return cls(load_config(path, overrides))

    # -- lifecycle -----------------------------------------------------------------------

    @asynccontextmanager
    async def __asynccontextmanager__(self) -> AsyncIterator[Runtime]:
        self._require_plugins()
        self._training, why = resolve_training(self.config, self.registry)
        db = Database(self.config.database)
        try:
            await ensure_schema(db, self.config.runtime.auto_migrate)
            async with db.session() as session:
                await repositories.upsert_agents(session, self.config.agents)
            collector = self._build_collector(db)
            self._db, self._collector = db, collector
            self._limiter = anyio.CapacityLimiter(1)
            self._extractor = KnowledgeExtractor(self.config, db, self.registry, self._limiter)
            self._adapter = StrategyAdapter(self.config, db)
            await self.refresh_policies()
            stopped = anyio.Event()
            self._stopping = anyio.Event()

            async def run_collector(*, task_status: anyio.abc.TaskStatus[None]) -> None:
                try:
                    await collector.run(task_status=task_status)
                finally:
                    stopped.set()

            # The periodic stages, each with an event set when it has returned.
            stages: list[tuple[Callable[[], Coroutine[Any, Any, None]], anyio.Event]] = []

            def stage(run: Callable[[], Coroutine[Any, Any, None]]) -> None:
                done = anyio.Event()

                async def tracked() -> None:
                    try:
                        await run()
                    finally:
                        done.set()

                stages.append((tracked, done))

            if any(a.reward.wait_window for a in self.config.agents.values()):
                stage(self._sweep_forever)
            stage(self._refresh_forever)
            if self._online:
                stage(self._learn_online_forever)
            if db.dialect == "postgresql":
                stage(self._listen_forever)
            if self.config.runtime.pipeline == "embedded":
                stage(self.run_learning_loop)

            async with anyio.create_task_group() as tg:
                await tg.start(run_collector)
                for run, _ in stages:
                    tg.start_soon(run)
                log.info(
                    "runtime_started",
                    database=db.masked_url,
                    agents=list(self.config.agents),
                    training=self._training,
                    training_reason=why,
                )
                try:
                    yield self
                finally:
                    # The periodic stages finish what they are doing (a learning cycle in
                    # progress stores its candidate or nothing) and stop at their next wait:
                    # cancelling them inside a database call would leave its cleanup running
                    # past the end of the task group.
                    self.stop()
                    collector.close()
                    deadline = self.config.runtime.shutdown_timeout.total_seconds()
                    with anyio.move_on_after(deadline, shield=True) as scope:
                        await stopped.wait()
                        for _, done in stages:
                            await done.wait()
                    if scope.cancelled_caught:
                        log.error(
                            "shutdown_deadline_exceeded",
                            seconds=deadline,
                            spill=str(collector.spill.current.path),
                        )
                    tg.cancel_scope.cancel()
            with anyio.CancelScope(shield=True):
                await self._record_fallbacks()
            log.info("runtime_stopped", **vars(collector.stats))
        finally:
            self._collector = None
            self._db = None
            self._updater = None
            self._extractor = None
            self._adapter = None
            self._limiter = None
            self._loop = None
            with anyio.CancelScope(shield=True):
                await db.dispose()

    def _require_plugins(self) -> None:
        """Every learner, rollout and feature plugin the agents name exists (checked before
        anything starts, without importing them: a typo fails here, not at the first cycle).

        Raises:
            PluginNotFoundError: a named plugin is not known; the message lists those that are.
        """
        for agent_id, agent in self.config.agents.items():
            self.registry.require("learner", self.config.learner_for(agent_id))
            self.registry.require("rollout", agent.rollout.strategy)
            for plugin in agent.features.values():
                self.registry.require("feature", plugin)

    def _build_collector(self, db: Database) -> ExperienceCollector:
        runtime = self.config.runtime
        experience = self.config.experience_configuration
        processors: list[Processor] = [
            self.registry.create("processor", name, self.config)
            for name in experience.processing.methods
        ]
        spill = SpillDirectory(default_spill_dir(db, runtime.spill_dir), process_owner())
        return ExperienceCollector(
            db,
            buffer_size=runtime.buffer_size,
            batch_size=experience.collection.batch_size,
            flush_interval=runtime.flush_interval.total_seconds(),
            backpressure=runtime.backpressure,
            spill=spill,
            processors=processors,
            known=self._known,
        )

    @property
    def collector(self) -> ExperienceCollector:
        if self._collector is None:
            raise StorageError("the runtime is not open: use `async with runtime:` first")
        return self._collector

    @property
    def database(self) -> Database:
        """The runtime's database (open while the runtime is)."""
        if self._db is None:
            raise StorageError("the runtime is not open: use `async with runtime:` first")
        return self._db

    @property
    def stats(self) -> CollectorStats:
        """Counters of the experience collector."""
        return self.collector.stats

    async def flush(self) -> None:
        """Return once every record accepted before this call is committed (or spilled), and
        incremental models have learned from every reward reported before it."""
        await self.collector.flush()
        self._learn_online()

    def _learn_online(self) -> int:
        """Update each agent's incremental active model with the rewards reported since the
        last call (in the event loop: the model is not read elsewhere meanwhile). Skipped for
        an agent whose cycle is running; the next call catches up."""
        learned = 0
        for agent_id, pending in self._online.items():
            if not pending or self._cycle_locks[agent_id].locked():
                continue
            rows = list(pending)
            pending.clear()
            policies = self._policies.get(agent_id)
            model = policies[0].model if policies else None
            if policies is None or not isinstance(model, IncrementalModel):
                continue
            policy = policies[0]
            index = {action: i for i, action in enumerate(policy.actions)}
            kept = [row for row in rows if row[1] in index]
            if not kept:
                continue
            features = policy.encoder.encode_many([row[0] for row in kept])
            actions = np.array([index[row[1]] for row in kept], dtype=np.int64)
            rewards = np.array([row[2] for row in kept], dtype=np.float32)
            model.update(features, actions, rewards)
            learned += len(kept)
        return learned

    def _forget_learned(self, agent_id: str, newest: str | None) -> None:
        """Drop the waiting rewards that a new version was trained on (reported while its
        cycle ran, and stored before it read the window): it must not learn them twice."""
        pending = self._online.get(agent_id)
        if not pending or newest is None:
            return
        learned = datetime.fromisoformat(newest)
        if learned.tzinfo is None:  # stored times are UTC
            learned = learned.replace(tzinfo=UTC)
        kept = [row for row in pending if row[3] > learned]
        pending.clear()
        pending.extend(kept)

    async def _learn_online_forever(self) -> None:
        interval = self.config.runtime.flush_interval.total_seconds()
        while await self.pause(interval):
            try:
                self._learn_online()
            except Exception as exc:  # the stage supervisor: log, keep serving
                log.error("stage_failed", stage="online_learning", error=repr(exc))

    async def _submit(self, *records: ExperienceRecord) -> None:
        collector = self.collector
        if self._sync:
            await collector.submit_and_wait(*records)
        elif not collector.offer(records):
            await collector.submit(*records)

    def _agent(self, agent_id: object) -> AgentConfig:
        agent = self.config.agents.get(agent_id) if isinstance(agent_id, str) else None
        if agent is None:
            known = ", ".join(self.config.agents) or "none"
            raise InvalidInputError(
                "agent_id",
                agent_id,
                f"is not a configured agent (configured: {known}); add it under `agents`",
            )
        return agent

    # -- deciding ------------------------------------------------------------------------

    async def decide(
        self,
        agent_id: str,
        context: Mapping[str, Any],
        actions: Sequence[str] | None = None,
        *,
        mask: Sequence[str] | Sequence[bool] | None = None,
        episode_id: uuid.UUID | None = None,
        step: int | None = None,
        mode: DecisionMode | None = None,
        app_action: str | None = None,
    ) -> Decision:
        """Choose an action for ``agent_id`` in ``context`` and log the decision.

        Args:
            agent_id: a configured agent.
            context: names mapped to numbers, booleans, strings, None or lists of those.
            actions: the actions offered in this call (default: the agent's configured actions;
                when the agent has configured actions these must be among them).
            mask: the actions allowed now (names, or one boolean per offered action); masked
                actions get probability zero.
            episode_id: the episode this decision belongs to (see :meth:`episode`).
            step: the step number within the episode.
            mode: ``live`` (the chosen action is executed), ``shadow`` (the application's own
                ``app_action`` is executed and logged, the policy's choice stored beside it),
                or ``deferred`` (counts for learning only after :meth:`activate`). Default: the
                agent's configured mode.
            app_action: in shadow mode, the action the application's own logic chose.

        Returns:
            The decision, with the exact propensity of its action and the whole distribution.

        Raises:
            InvalidInputError: a bad argument (``UnknownActionError`` for unknown actions).
            BackpressureError: the buffer is full and ``runtime.backpressure`` is ``error``.
        """
        agent = self._agent(agent_id)
        offered = (
            self._actions[agent_id]
            if actions is None and agent.actions
            else check_actions(agent_id, agent.actions, actions)
        )
        allowed = check_mask(mask, offered)
        ctx = check_context(context, self._max_bytes)
        chosen_mode: DecisionMode = self._modes.get(agent_id, agent.mode) if mode is None else mode
        if chosen_mode not in _MODES:
            raise InvalidInputError("mode", mode, "must be live, shadow or deferred")
        if chosen_mode == "live" and mode is None and agent.mode == "shadow":
            # A shadow agent that switched to live: the application's choice is no longer
            # executed (it executes `decision.action`), so it is not logged either.
            app_action = None
        _check_step(episode_id, step)
        # Every argument is checked before the policy runs: a bad call costs no inference.
        if chosen_mode == "shadow":
            if app_action is None:
                raise InvalidInputError(
                    "app_action",
                    None,
                    "is required in shadow mode: the action your own logic chose",
                )
            if app_action not in offered:
                raise UnknownActionError(
                    "app_action", app_action, f"is not offered ({', '.join(offered)})"
                )
        elif app_action is not None:
            raise InvalidInputError("app_action", app_action, "is only used in shadow mode")
        choice = self._choose(agent_id, ctx, offered, allowed, episode_id)
        policy_action: str | None = None
        if app_action is not None:
            index, propensity = offered.index(app_action), None
            policy_action = offered[choice.action_index]
        else:
            index = choice.action_index
            propensity = choice.probabilities[index]
        decision = Decision.trusted(
            id=new_id(),
            agent_id=agent_id,
            action=offered[index],
            action_index=index,
            actions=offered,
            context=ctx,
            propensity=propensity,
            probabilities=choice.probabilities,
            policy_version=choice.policy_version,
            exploration=choice.exploration,
            mode=chosen_mode,
            episode_id=episode_id,
            step=step,
            policy_action=policy_action,
            created_at=self._clock(),
        )
        await self._submit(decision)
        self._known.add(decision.id, agent_id, chosen_mode)
        return decision

    def _choose(
        self,
        agent_id: str,
        context: dict[str, Any],
        offered: tuple[str, ...],
        allowed: tuple[bool, ...] | None,
        episode_id: uuid.UUID | None = None,
    ) -> Choice:
        """The active policy's choice (or, for a share of decisions, the canary's); on failure
        its predecessor's, then the baseline's."""
        policies: Sequence[LearnedPolicy] = self._policies.get(agent_id, ())
        if self._canaries:
            canary = self._canaries.get(agent_id)
            fraction = self.config.agents[agent_id].rollout.fraction
            # One draw per episode, not per step: a sequence model must see every step of the
            # episodes it serves (each policy keeps the history of the steps it answered).
            draw = self._rng.random() if episode_id is None else (episode_id.int >> 64) / 2**64
            if canary is not None and draw < fraction:
                policies = (canary, *policies)
        for policy in policies:
            try:
                return policy.choose(context, offered, allowed, self._rng, episode_id)
            except Exception as exc:  # any failure of a model must leave the decision served
                self.fallbacks[agent_id] += 1
                log.warning(
                    "policy_fallback",
                    agent=agent_id,
                    policy_version=policy.version,
                    error=f"{type(exc).__name__}: {exc}",
                )
        return self._baselines[agent_id].choose(offered, allowed, self._rng)

    def active_version(self, agent_id: str) -> int | None:
        """The version serving ``agent_id`` in this process (None: the baseline)."""
        policies = self._policies.get(agent_id)
        return policies[0].version if policies else None

    async def refresh_policies(self) -> None:
        """Load each agent's active version (and canary) if it changed (another process may
        have trained, promoted or rolled back). A version whose artifact does not verify is
        refused and logged; its predecessor (or the baseline) serves instead, and the refusal
        is recorded in ``metrics``."""
        for agent_id in self.config.agents:
            async with self.database.session() as session:
                canary = await repositories.policy_with_status(session, agent_id, "canary")
                active = await repositories.active_policy_version(session, agent_id)
                parent = (
                    await repositories.load_policy_version(session, agent_id, active.parent_version)
                    if active is not None and active.parent_version is not None
                    else None
                )
            await self._refresh_canary(agent_id, canary)
            if self.config.agents[agent_id].mode == "shadow" and agent_id not in self._modes:
                async with self.database.session() as session:
                    switch = await repositories.last_strategy_update(session, agent_id, "mode")
                if switch is not None and switch.updated.get("mode") == "live":
                    self._modes[agent_id] = "live"
                    log.info("shadow_switched_to_live", agent=agent_id)
            if active is None:
                # Another process may have rolled back to the baseline.
                if self._policies.pop(agent_id, None):
                    log.info("policy_loaded", agent=agent_id, policy_version=None)
                continue
            if active.version == self.active_version(agent_id):
                continue
            if self._refused.get(agent_id) == (active.version, active.sha256):
                continue
            chain = [
                policy
                for row in (active, parent)
                if row is not None and (policy := await self._load(agent_id, row)) is not None
            ]
            self._policies[agent_id] = chain
            log.info("policy_loaded", agent=agent_id, policy_version=self.active_version(agent_id))

    async def _refresh_canary(self, agent_id: str, row: PolicyVersion | None) -> None:
        current = self._canaries.get(agent_id)
        if row is None:
            if current is not None:
                self._drop_canary(agent_id)
            return
        if current is not None and current.version == row.version:
            return
        if self._refused.get(agent_id) == (row.version, row.sha256):
            return
        self._drop_canary(agent_id)
        policy = await self._load(agent_id, row)
        if policy is not None:
            self._canaries[agent_id] = policy
            log.info("canary_loaded", agent=agent_id, policy_version=row.version)

    async def _load(self, agent_id: str, row: PolicyVersion) -> LearnedPolicy | None:
        """Verify and rebuild a stored version; None (logged, recorded) when refused."""
        from agentrt.pipeline.updater import load_policy

        try:
            return load_policy(row, self.registry, self._exploration[agent_id])
        except AgentRTError as exc:
            if row.status in ("active", "canary"):
                self._refused[agent_id] = (row.version, row.sha256)
            log.error("policy_refused", agent=agent_id, policy_version=row.version, error=str(exc))
            async with self.database.session() as session:
                await repositories.record_metric(
                    session,
                    "policy_refused",
                    float(row.version),
                    agent_id=agent_id,
                    stage="serving",
                    details={"error": str(exc)},
                )
            return None

    def stop(self) -> None:
        """Ask the periodic stages (learning loop, refresh, reward window) to end at their
        next wait; a cycle in progress finishes first. Leaving ``async with`` does the rest."""
        self._stopping.set()
        self._refresh_now.set()

    async def run_learning_loop(self) -> None:
        """Run the learning loop in the calling task until :meth:`stop` or the runtime
        closes (what ``agentrt worker`` does; ``runtime.pipeline: embedded`` starts it by
        itself)."""
        await self._learning_loop().run_forever()

    def now(self) -> datetime:
        """The runtime's clock (aware UTC; a fake one in tests)."""
        return self._clock()

    @property
    def canaries(self) -> dict[str, int]:
        """Per agent with a canary in this process, the canary's version."""
        return {agent_id: policy.version for agent_id, policy in self._canaries.items()}

    async def pause(self, seconds: float) -> bool:
        """Wait ``seconds``; False when the runtime is stopping (the loop should end)."""
        with anyio.move_on_after(seconds):
            await self._stopping.wait()
        return not self._stopping.is_set()

    async def _refresh_forever(self) -> None:
        """Reload changed versions every ``policy_refresh_interval``, or at once when a
        PostgreSQL notification says an agent's versions changed."""
        interval = self.config.runtime.policy_refresh_interval.total_seconds()
        while not self._stopping.is_set():
            with anyio.move_on_after(interval):
                await self._refresh_now.wait()
            if self._stopping.is_set():
                return
            self._refresh_now = anyio.Event()
            try:
                await self.refresh_policies()
            except Exception as exc:  # the stage supervisor: log, keep serving
                log.error("stage_failed", stage="policy_refresh", error=repr(exc))

    async def _record_fallbacks(self) -> None:
        for agent_id, count in self.fallbacks.items():
            new = count - self._fallbacks_recorded[agent_id]
            if new <= 0 or self._db is None:
                continue
            try:
                async with self._db.session() as session:
                    await repositories.record_metric(
                        session, "policy_fallbacks", float(new), agent_id=agent_id, stage="serving"
                    )
                self._fallbacks_recorded[agent_id] = count
            except StorageError as exc:
                log.warning("metric_not_recorded", metric="policy_fallbacks", error=str(exc))

    async def _listen_forever(self) -> None:
        """LISTEN for policy changes (PostgreSQL) until the runtime stops; polling goes on
        regardless, so a lost listener only costs latency."""
        try:
            async with listen_for_policy_changes(self.database, self._policy_changed) as active:
                if active:
                    log.debug("policy_listener_started")
                    await self._stopping.wait()
        except Exception as exc:  # the stage supervisor: log, keep serving (polling)
            log.warning("stage_failed", stage="policy_listener", error=repr(exc))

    def _policy_changed(self, agent_id: str) -> None:
        if agent_id in self.config.agents:
            self._refresh_now.set()

    # -- learning ------------------------------------------------------------------------

    def _learning_loop(self) -> LearningLoop:
        if self._loop is None:
            from agentrt.pipeline.loop import LearningLoop

            self._loop = LearningLoop(self)
        return self._loop

    async def run_due_cycles(self) -> CycleReport:
        """Check every agent's trigger once and run the cycles that are due (what the
        embedded pipeline and ``agentrt worker`` do every ``trigger_check_interval``; tests
        drive the loop with this call and a fake clock). Pending experience is flushed first.
        """
        await self.flush()
        reports = await self._learning_loop().run_due()
        await self._record_fallbacks()
        return CycleReport(agents=tuple(reports))

    async def _judge_canary(self, agent_id: str) -> None:
        """The loop's canary check between cycles: decide it if the live evidence is in
        (under the agent's locks; skipped when another process holds them)."""
        async with (
            self._cycle_locks[agent_id],
            agent_lock(self.database, agent_id, wait=False) as obtained,
        ):
            if obtained:
                await self._check_canary(agent_id)

    async def _cycle_if_due(
        self, agent_id: str, reason: str, due: Callable[[str], Awaitable[str | None]]
    ) -> AgentCycle | None:
        """The loop's cycle: skipped when another process holds the agent's lock, or when
        the trigger was consumed meanwhile."""

        async def still_due() -> bool:
            return await due(agent_id) is not None

        return await self._cycle(agent_id, trigger=reason, wait=False, still_due=still_due)

    async def run_cycle(self, agent_id: str | None = None) -> CycleReport:
        """Run one learning cycle for one agent (or every agent) and report what happened.

        Everything accepted before the call is flushed first, so the cycle sees it. A trained
        candidate that passes its checks becomes the active version at once (hot swap); one
        that fails is stored as ``rejected`` and the active version keeps serving.
        """
        if agent_id is not None:
            self._agent(agent_id)
        await self.flush()
        targets = [agent_id] if agent_id is not None else list(self.config.agents)
        reports = []
        for target in targets:
            report = await self._cycle(target, wait=True)
            assert report is not None  # noqa: S101 (waits for the lock; no trigger check)
            reports.append(report)
        await self._record_fallbacks()
        return CycleReport(agents=tuple(reports))

    def _model_updater(self) -> ModelUpdater:
        if self._updater is None:
            from agentrt.pipeline.updater import ModelUpdater

            self._updater = ModelUpdater(self.config, self.database, self.registry, self._limiter)
        return self._updater

    async def _cycle(
        self,
        agent_id: str,
        *,
        trigger: str = "run_cycle",
        wait: bool = True,
        still_due: Callable[[], Awaitable[bool]] | None = None,
    ) -> AgentCycle | None:
        """One cycle under the agent's locks (in this process, and across processes on
        PostgreSQL). None when ``wait`` is False and another process holds the lock, or when
        ``still_due`` says the trigger was consumed meanwhile (another worker ran it)."""
        async with (
            self._cycle_locks[agent_id],
            agent_lock(self.database, agent_id, wait=wait) as obtained,
        ):
            if not obtained:
                log.debug("cycle_locked_elsewhere", agent=agent_id)
                return None
            if still_due is not None and not await still_due():
                return None
            return await self._locked_cycle(agent_id, trigger)

    async def _locked_cycle(self, agent_id: str, trigger: str) -> AgentCycle:
        started = time.perf_counter()
        started_at = self._clock()
        self._cycles[agent_id] += 1
        parent = self.active_version(agent_id)
        extracted: dict[str, Any] = {}
        try:
            if self._extractor is not None:
                knowledge = await self._extract(self._extractor, agent_id)
                extracted = {item.kind: item.payload for item in knowledge}
            await self._check_regression(agent_id)
            canary = await self._check_canary(agent_id)
            exploration = self._exploration[agent_id]
            active = self._policies.get(agent_id, [])
            parent = active[0].version if active else None
            if canary is not None and canary.action == "wait":
                report = AgentCycle(
                    agent_id=agent_id,
                    status="skipped",
                    reason=f"canary v{self._canaries[agent_id].version} is serving: "
                    f"{canary.reason}",
                    active_version=parent,
                    knowledge=extracted,
                    canary=canary.numbers,
                )
            else:
                report = await self._train_and_validate(
                    agent_id, exploration, active, parent, extracted
                )
            await self._consider_going_live(agent_id)
        except Exception as exc:  # the stage supervisor: log, record, keep serving
            log.error("stage_failed", stage="updater", agent=agent_id, error=repr(exc))
            report = AgentCycle(
                agent_id=agent_id,
                status="failed",
                reason=f"{type(exc).__name__}: {exc}",
                active_version=parent,
                knowledge=extracted,
            )
        report = report.model_copy(
            update={"seconds": time.perf_counter() - started, "trigger": trigger}
        )
        log.info(
            "learning_cycle",
            agent=agent_id,
            trigger=trigger,
            status=report.status,
            reason=report.reason,
            rows=report.rows,
            learner=report.learner,
            candidate_version=report.candidate_version,
            policy_version=report.active_version,
            fit_seconds=report.metrics.get("fit_seconds"),
            seconds=round(report.seconds, 3),
        )
        try:
            async with self.database.session() as session:
                await repositories.record_metric(
                    session,
                    "learning_cycle",
                    report.seconds,
                    agent_id=agent_id,
                    stage="updater",
                    details={
                        "status": report.status,
                        "reason": report.reason,
                        "trigger": trigger,
                        "started_at": started_at.isoformat(),
                        "process": _PROCESS,
                        "rows": report.rows,
                        "candidate_version": report.candidate_version,
                        "active_version": report.active_version,
                    },
                )
        except StorageError as exc:
            log.warning("metric_not_recorded", metric="learning_cycle", error=str(exc))
        return report

    async def _extract(self, extractor: KnowledgeExtractor, agent_id: str) -> list[Knowledge]:
        if self._training == "thread":
            return await extractor.extract(agent_id)
        from agentrt.pipeline.offload import extract_in_process

        findings, window = await extract_in_process(
            self.config, agent_id, extractor.window(agent_id), self._process_limiter
        )
        extractor.resume(agent_id, window)
        return findings

    async def _candidate(
        self, agent_id: str, exploration: Strategy, active: LearnedPolicy | None
    ) -> Candidate:
        cycle, optimizer = self._cycles[agent_id], self._optimizer.get(agent_id)
        if self._training == "thread":
            return await self._model_updater().candidate(
                agent_id,
                cycle=cycle,
                optimizer=optimizer,
                exploration=exploration,
                active=active,
                baseline=self._baselines[agent_id],
            )
        from agentrt.pipeline.offload import candidate_in_process

        return await candidate_in_process(
            self.config,
            agent_id,
            cycle=cycle,
            optimizer=optimizer,
            exploration=exploration,
            active=None if active is None else self._active_artifact(active),
            limiter=self._process_limiter,
        )

    @staticmethod
    def _active_artifact(policy: LearnedPolicy) -> ActiveArtifact:
        """A serving policy as it is now (its in-memory updates included), for the training
        process."""
        from agentrt.learning.artifacts import sha256
        from agentrt.pipeline.offload import ActiveArtifact
        from agentrt.pipeline.updater import serving_artifact

        artifact = serving_artifact(policy)
        return ActiveArtifact(
            policy.version, policy.learner, artifact, sha256(artifact), policy.exploration
        )

    async def _train_and_validate(
        self,
        agent_id: str,
        exploration: Strategy,
        active: list[LearnedPolicy],
        parent: int | None,
        extracted: dict[str, Any],
    ) -> AgentCycle:
        candidate = await self._candidate(agent_id, exploration, active[0] if active else None)
        if candidate.artifact is None:
            minimum = self.config.agents[agent_id].training.min_rows
            return AgentCycle(
                agent_id=agent_id,
                status="skipped",
                reason=f"{candidate.rows} usable rows, fewer than training.min_rows ({minimum})",
                rows=candidate.rows,
                learner=candidate.learner,
                active_version=parent,
                knowledge=extracted,
            )
        validation = candidate.validation
        rollout = self._rollout(agent_id)
        stored = await self._model_updater().store(
            agent_id, candidate, parent, rollout.initial_status()
        )
        before = describe_strategy(parent, exploration)
        kind = "reject"
        status: Literal["activated", "canary", "rejected"] = "rejected"
        if candidate.passed and candidate.serving is not None:
            from agentrt.learning.artifacts import sha256
            from agentrt.pipeline.updater import policy_from_artifact

            # What serves is rebuilt from its artifact and verified like any stored version.
            load = functools.partial(
                policy_from_artifact,
                agent_id,
                stored.version,
                candidate.learner,
                candidate.serving,
                sha256(candidate.serving),
                self.registry,
                exploration,
            )
            policy = await anyio.to_thread.run_sync(load, limiter=self._limiter)
            if stored.status == "canary":
                self._canaries[agent_id] = policy
                self._canary_started[agent_id] = self._clock()
                self._canary_looks[agent_id] = 0
                kind, status = "canary", "canary"
            else:
                self._policies[agent_id] = [policy, *active[:1]]
                self._forget_learned(agent_id, candidate.metrics.get("newest_reward_at"))
                kind, status = "promote", "activated"
        details: dict[str, Any] = {
            "candidate_version": stored.version,
            "reasons": validation.get("reasons", []),
            "ope": validation["validators"].get("ope", {}).get("reason"),
        }
        if kind == "canary":
            rollout_config = self.config.agents[agent_id].rollout
            details.update(
                fraction=rollout_config.fraction,
                started_at=self._canary_started[agent_id].isoformat(),
            )
        await self._strategy().record(
            agent_id,
            kind,
            before,
            describe_strategy(self.active_version(agent_id), exploration),
            details,
        )
        await self._retune(agent_id, extracted, promoted=kind == "promote")
        await self._adapt_learning_rate(agent_id, candidate.metrics)
        return AgentCycle(
            agent_id=agent_id,
            status=status,
            reason=stored.status_reason,
            rows=candidate.rows,
            learner=candidate.learner,
            candidate_version=stored.version,
            active_version=self.active_version(agent_id),
            metrics=stored.metrics,
            validation=stored.validation,
            knowledge=extracted,
        )

    async def _consider_going_live(self, agent_id: str) -> None:
        """A shadow agent switches to live once its policy's off-policy estimate beats the
        application's own logic by ``shadow.margin``; recorded as a ``mode`` update."""
        agent = self.config.agents[agent_id]
        policies = self._policies.get(agent_id)
        if agent.mode != "shadow" or not agent.shadow.switch or agent_id in self._modes:
            return
        if not policies:
            return
        if self._training == "thread":
            from agentrt.pipeline.shadow import judge_shadow

            judged = judge_shadow(self.config, self.database, agent_id, policies[0], self._limiter)
        else:
            from agentrt.pipeline.offload import shadow_in_process

            judged = shadow_in_process(
                self.config, agent_id, self._active_artifact(policies[0]), self._process_limiter
            )
        better, numbers = await judged
        if not better:
            log.debug("shadow_stays", agent=agent_id, **numbers)
            return
        self._modes[agent_id] = "live"
        await self._strategy().record(
            agent_id,
            "mode",
            {"mode": "shadow", "active_version": policies[0].version},
            {"mode": "live", "active_version": policies[0].version},
            {
                "reason": f"v{policies[0].version}'s estimate {numbers['policy_estimate']:.4f} "
                f"beats the application's {numbers['application_reward']:.4f} by "
                f"{numbers['difference']:+.4f} (lower bound {numbers['difference_lower']:+.4f} "
                f"> margin {agent.shadow.margin:g})",
                **numbers,
            },
        )
        log.warning("shadow_switched_to_live", agent=agent_id, **numbers)

    async def _adapt_learning_rate(self, agent_id: str, metrics: dict[str, Any]) -> None:
        current = self._optimizer.get(agent_id)
        updated, why = self._strategy().adapt_learning_rate(agent_id, metrics, current)
        if why is None or updated is None:
            return
        self._optimizer[agent_id] = updated
        describe = {"learning_rate": current[0], "momentum": current[1]} if current else None
        await self._strategy().record(
            agent_id,
            "learning_rate",
            {"optimizer": describe},
            {"optimizer": {"learning_rate": updated[0], "momentum": updated[1]}},
            {"reason": why},
        )
        log.info("learning_rate_adapted", agent=agent_id, reason=why)

    def _rollout(self, agent_id: str) -> Rollout:
        config = self.config.agents[agent_id].rollout
        rollout: Rollout = self.registry.create("rollout", config.strategy, config)
        return rollout

    async def _check_canary(self, agent_id: str) -> Verdict | None:
        """Evaluate the agent's canary on live rewards and promote or roll it back; None when
        it has none. Returns the verdict (``wait``: it keeps serving)."""
        canary = self._canaries.get(agent_id)
        if canary is None:
            return None
        started = self._canary_started.get(agent_id)
        if started is None:
            async with self.database.session() as session:
                update = await repositories.last_strategy_update(session, agent_id, "canary")
            recorded = (update.details.get("started_at") if update is not None else None) or ""
            try:
                started = datetime.fromisoformat(recorded)
            except ValueError:
                started = self._clock()
            self._canary_started[agent_id] = started
        reference_version = self.active_version(agent_id)
        rewards = await live_rewards(
            self.database, agent_id, [canary.version, reference_version], since=started
        )
        look = self._canary_looks.get(agent_id, 0) + 1
        verdict: Verdict = self._rollout(agent_id).evaluate(
            rewards.get(canary.version),
            rewards.get(reference_version),
            look,
            self._clock() - started,
        )
        if "look" in verdict.numbers:
            self._canary_looks[agent_id] = look
        if verdict.action == "wait":
            return verdict
        exploration = self._exploration[agent_id]
        before = describe_strategy(reference_version, exploration)
        active = self._policies.get(agent_id, [])
        async with self.database.session() as session:
            if verdict.action == "promote":
                await repositories.retire_active_versions(
                    session, agent_id, superseded_by=canary.version
                )
                await repositories.set_policy_status(
                    session, agent_id, canary.version, "active", f"canary: {verdict.reason}"
                )
            else:
                await repositories.set_policy_status(
                    session, agent_id, canary.version, "rejected", f"canary: {verdict.reason}"
                )
        self._drop_canary(agent_id)
        if verdict.action == "promote":
            self._policies[agent_id] = [canary, *active[:1]]
        kind = "promote" if verdict.action == "promote" else "rollback"
        await self._strategy().record(
            agent_id,
            kind,
            before,
            describe_strategy(self.active_version(agent_id), exploration),
            {
                "canary_version": canary.version,
                "canary": True,
                "reason": verdict.reason,
                **verdict.numbers,
            },
        )
        log.info(
            "canary_decided",
            agent=agent_id,
            canary_version=canary.version,
            action=verdict.action,
            reason=verdict.reason,
        )
        return verdict

    def _drop_canary(self, agent_id: str) -> None:
        self._canaries.pop(agent_id, None)
        self._canary_started.pop(agent_id, None)
        self._canary_looks.pop(agent_id, None)

    def _strategy(self) -> StrategyAdapter:
        if self._adapter is None:
            raise StorageError("the runtime is not open: use `async with runtime:` first")
        return self._adapter

    async def _retune(self, agent_id: str, knowledge: dict[str, Any], *, promoted: bool) -> None:
        current = self._exploration[agent_id]
        updated, why = self._strategy().retune(agent_id, current, knowledge, promoted)
        if why is None:
            return
        self._exploration[agent_id] = updated
        self._policies[agent_id] = [
            p.with_exploration(updated) for p in self._policies.get(agent_id, [])
        ]
        version = self.active_version(agent_id)
        await self._strategy().record(
            agent_id,
            "exploration",
            describe_strategy(version, current),
            describe_strategy(version, updated),
            {"reason": why},
        )
        log.info("exploration_retuned", agent=agent_id, reason=why, **updated.describe())

    async def _check_regression(self, agent_id: str) -> None:
        """Roll back when the active version's live reward fell significantly below its
        predecessor's (or the baseline's)."""
        policies = self._policies.get(agent_id, [])
        if not policies:
            return
        active = policies[0]
        async with self.database.session() as session:
            row = await repositories.load_policy_version(session, agent_id, active.version)
        parent = row.parent_version if row is not None else None
        regressed, numbers = await self._strategy().regression(agent_id, active.version, parent)
        if not regressed:
            return
        reference = numbers["reference"]
        target = reference["version"]
        reason = (
            f"live reward {numbers['active']['mean']:.4f} (n={numbers['active']['n']}) fell "
            f"below {'v' + str(target) if target is not None else 'the baseline'}'s "
            f"{reference['mean']:.4f} (n={reference['n']})"
        )
        await self._roll_back(
            agent_id, target if target is not None else parent, reason, numbers, manual=False
        )

    async def _roll_back(
        self,
        agent_id: str,
        to: int | None,
        reason: str,
        numbers: dict[str, Any],
        *,
        manual: bool,
    ) -> StrategyUpdate:
        exploration = self._exploration[agent_id]
        before = describe_strategy(self.active_version(agent_id), exploration)
        retired, activated = await roll_back(self.database, agent_id, to, reason)
        self._policies.pop(agent_id, None)
        await self.refresh_policies()
        update = await self._strategy().record(
            agent_id,
            "rollback",
            before,
            describe_strategy(self.active_version(agent_id), exploration),
            {
                "reason": reason,
                "retired": retired,
                "activated": activated,
                "manual": manual,
                **numbers,
            },
        )
        log.warning(
            "policy_rolled_back",
            agent=agent_id,
            retired=retired,
            activated=activated,
            reason=reason,
        )
        return update

    async def rollback(self, agent_id: str, to: int | None = None) -> StrategyUpdate:
        """Roll the agent back by hand: retire the active version and serve ``to`` (default:
        the active version's predecessor, or the baseline when it has none). Recorded in
        ``strategy_updates`` as a ``rollback`` with ``details.manual = true``.

        Raises:
            InvalidInputError: ``to`` is not a version the agent can return to.
        """
        self._agent(agent_id)
        reason = f"rolled back by hand to {'v' + str(to) if to is not None else 'the predecessor'}"
        return await self._roll_back(agent_id, to, reason, {}, manual=True)

    # -- reporting -----------------------------------------------------------------------

    async def reward(
        self,
        decision: Decision | uuid.UUID | str,
        reward: float,
        *,
        outcome: Mapping[str, Any] | None = None,
        source: str | None = None,
    ) -> Feedback:
        """Report the reward of a decision, now or much later, from this or another process.

        Several rewards for one decision are combined by the agent's ``reward.combine`` rule.

        Raises:
            InvalidInputError: a bad argument (NaN/infinite reward, non-JSON outcome...).
            UnknownDecisionError: sync mode only: no such decision was recorded. Buffered mode
                keeps such a reward as orphan feedback (it joins if the decision arrives later)
                and counts it in ``stats.orphan_feedback``.
        """
        decision_id = check_decision_id(decision)
        value = check_reward(reward)
        result, result_json = checked_outcome(outcome, self._max_bytes)
        checked_source = _check_source(source)
        feedback = await self._feedback(
            decision_id, "reward", value, result, checked_source, outcome_json=result_json
        )
        if self._online and isinstance(decision, Decision) and decision.mode != "deferred":
            pending = self._online.get(decision.agent_id)
            if pending is not None:
                pending.append((decision.context, decision.action, value, feedback.created_at))
        return feedback

    async def activate(self, decision: Decision | uuid.UUID | str) -> Feedback:
        """Say that a deferred decision's action was really taken; it now counts for learning.

        Raises:
            InvalidInputError: the decision is known and not deferred.
            UnknownDecisionError: sync mode only, as for :meth:`reward`.
        """
        decision_id = check_decision_id(decision)
        known = self._known.get(decision_id)
        if known is not None and known[1] != "deferred":
            raise InvalidInputError(
                "decision",
                str(decision_id),
                f"is a {known[1]} decision; only deferred ones are activated",
            )
        return await self._feedback(decision_id, "activation", None, None, None)

    async def _feedback(
        self,
        decision_id: uuid.UUID,
        kind: Literal["reward", "activation"],
        reward: float | None,
        outcome: dict[str, Any] | None,
        source: str | None,
        *,
        outcome_json: str | None = None,
    ) -> Feedback:
        if self._sync:
            await self._require_known(decision_id)
        feedback = Feedback.trusted(
            id=new_id(),
            decision_id=decision_id,
            kind=kind,
            reward=reward,
            outcome=outcome,
            source=source,
            created_at=self._clock(),
        )
        collector = self.collector
        if self._sync:
            await collector.submit_and_wait(feedback)
        else:
            entry = flat.feedback(feedback, outcome_json=outcome_json)  # as record() does
            if not collector.offer(entry):
                await collector.enqueue(entry)
        return feedback

    async def _require_known(self, decision_id: uuid.UUID) -> None:
        if decision_id in self._known:
            return
        if await bulk.existing_decision_ids(self.database, [decision_id]):
            return
        raise UnknownDecisionError(
            "decision",
            str(decision_id),
            "no decision with this id was recorded; reward decisions after they are made",
        )

    async def record(
        self,
        agent_id: str,
        context: Mapping[str, Any],
        action: str,
        reward: float,
        *,
        actions: Sequence[str] | None = None,
        propensity: float | None = None,
        probabilities: Sequence[float] | None = None,
        outcome: Mapping[str, Any] | None = None,
        episode_id: uuid.UUID | None = None,
        step: int | None = None,
        source: str | None = None,
    ) -> Decision:
        """Log a finished execution (decision and reward at once) made by the application.

        Args:
            agent_id: a configured agent.
            context: as for :meth:`decide`.
            action: the action that was taken.
            reward: its reward.
            actions: the actions that were available (default: the agent's configured
                actions, or just ``action``).
            propensity: the probability with which ``action`` was chosen; None when unknown
                (such rows are left out of off-policy estimates).
            probabilities: the whole distribution over ``actions``, when known.
            outcome: anything measured (latency, cost...), as JSON.
            episode_id, step: the episode and step, for multi-step tasks.
            source: who reported the reward.

        Returns:
            The stored decision.
        """
        agent = self._agent(agent_id)
        if actions is None and agent.actions:
            offered: tuple[str, ...] = self._actions[agent_id]
        elif actions is None:
            offered = check_actions(agent_id, (), [action])
        else:
            offered = check_actions(agent_id, agent.actions, actions)
        if action not in offered:
            raise UnknownActionError(
                "action", action, f"is not among the actions ({', '.join(offered)})"
            )
        index = offered.index(action)
        _check_step(episode_id, step)
        known_propensity = check_propensity(propensity)
        distribution = check_distribution(probabilities, offered, index, known_propensity)
        if distribution is not None and known_propensity is None:
            known_propensity = distribution[index]
        now = self._clock()
        plain_context, context_json = checked_context(context, self._max_bytes)
        decision = Decision.trusted(
            id=new_id(),
            agent_id=agent_id,
            action=action,
            action_index=index,
            actions=offered,
            context=plain_context,
            propensity=known_propensity,
            probabilities=distribution,
            policy_version=None,
            exploration={"method": "recorded"},
            mode="live",
            episode_id=episode_id,
            step=step,
            policy_action=None,
            created_at=now,
        )
        value = check_reward(reward)
        plain_outcome, outcome_json = checked_outcome(outcome, self._max_bytes)
        checked_source = _check_source(source)
        collector = self.collector
        if self._sync:
            feedback = Feedback.trusted(
                id=new_id(),
                decision_id=decision.id,
                kind="reward",
                reward=value,
                outcome=plain_outcome,
                source=checked_source,
                created_at=now,
            )
            await collector.submit_and_wait(decision, feedback)
        else:
            # Buffered as plain values (agentrt.storage.flat): the Decision returned here is
            # not held by the buffer, so the garbage collector's collections do not walk it.
            execution = flat.execution(
                decision,
                value,
                plain_outcome,
                checked_source,
                context_json=context_json,
                outcome_json=outcome_json,
            )
            if not collector.offer(execution):
                await collector.enqueue(execution)
        self._known.add(decision.id, agent_id, "live")
        return decision

    # -- episodes and tracking -----------------------------------------------------------

    @asynccontextmanager
    async def episode(self, agent_id: str) -> AsyncIterator[ActiveEpisode]:
        """A multi-step task: ``ep.decide()`` numbers the steps, ``ep.reward()`` sums the return.

        The episode's row (return, length, status) is written when the block exits; the
        status is ``failed`` when an exception leaves the block (the exception propagates).
        """
        self._agent(agent_id)
        active = ActiveEpisode(self, agent_id, self._clock())
        status: Literal["completed", "failed"] = "completed"
        error: str | None = None
        try:
            yield active
        except BaseException as exc:
            status, error = "failed", f"{type(exc).__name__}: {exc}"[:2000]
            raise
        finally:
            canary = self._canaries.get(agent_id)
            for policy in (*self._policies.get(agent_id, ()), *([canary] if canary else [])):
                policy.end_episode(active.id)
            record = Episode(
                id=active.id,
                agent_id=agent_id,
                started_at=active.started_at,
                ended_at=self._clock(),
                status=status,
                episode_return=active.episode_return if active.rewarded else None,
                length=active.length,
                error=error,
            )
            with anyio.CancelScope(shield=True):
                await self._submit(record)

    def track(
        self,
        agent_id: str,
        *,
        reward: Callable[[Any], float] | None = None,
        failure_reward: float = 0.0,
        action: str | None = None,
        arguments: Sequence[str] | None = None,
        context: Callable[..., Mapping[str, Any]] | None = None,
    ) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
        """Decorate an async function so that each call is recorded as an execution.

        Args:
            agent_id: a configured agent.
            reward: computes the reward from the return value (default: 1.0 for success).
            failure_reward: the reward of a call that raised (the exception propagates).
            action: the action name recorded (default: the function's name).
            arguments: the parameters stored as context (default: every parameter whose value
                is a number, boolean, string or None).
            context: computes the context from the call's arguments instead.

        Each call records its context, the action, the reward, and an outcome with
        ``latency_ms``, ``ok`` and, on failure, ``error``.
        """
        self._agent(agent_id)
        checked_failure = check_reward(failure_reward, "failure_reward")

        def decorator(func: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
            name = action or func.__name__
            signature = inspect.signature(func)
            unknown = [a for a in arguments or () if a not in signature.parameters]
            if unknown:
                raise InvalidInputError(
                    "arguments",
                    unknown,
                    f"are not parameters of {func.__name__} ({', '.join(signature.parameters)})",
                )

            @functools.wraps(func)
            async def tracked(*args: P.args, **kwargs: P.kwargs) -> R:
                if context is not None:
                    ctx = context(*args, **kwargs)
                else:
                    ctx = _project_arguments(signature, args, kwargs, arguments)
                started = time.perf_counter()
                try:
                    result = await func(*args, **kwargs)
                except Exception as exc:
                    latency = (time.perf_counter() - started) * 1000
                    outcome = {
                        "latency_ms": latency,
                        "ok": False,
                        "error": f"{type(exc).__name__}: {exc}"[:500],
                    }
                    await self.record(
                        agent_id, ctx, name, checked_failure, outcome=outcome, source="track"
                    )
                    raise
                latency = (time.perf_counter() - started) * 1000
                value = 1.0 if reward is None else reward(result)
                outcome = {"latency_ms": latency, "ok": True}
                await self.record(agent_id, ctx, name, value, outcome=outcome, source="track")
                return result

            return tracked

        return decorator

    # -- the reward wait window ----------------------------------------------------------

    async def apply_default_rewards(self) -> int:
        """Give each decision past its agent's ``reward.wait_window`` without a reward the
        configured default reward (``source = 'default'``); returns how many were given.

        Runs periodically inside the runtime; safe to call from several processes at once
        (the default rewards have deterministic ids, so none is written twice).
        """
        now = self._clock()
        given = 0
        for agent_id, agent in self.config.agents.items():
            window, default = agent.reward.wait_window, agent.reward.default
            if window is None or default is None:
                continue
            cutoff = now - window
            # Look back a day behind the previous sweep: decisions that reach the database
            # late (buffered, replayed from a spill file, written by another process) still
            # get their default. The first sweep after start scans everything.
            swept = self._swept.get(agent_id)
            since = None if swept is None else swept - max(timedelta(days=1), 2 * window)
            async with self.database.session() as session:
                pending = await repositories.unrewarded_decision_ids(
                    session, agent_id, before=cutoff, since=since
                )
            records = [
                Feedback(
                    id=uuid.uuid5(_DEFAULT_REWARD_NAMESPACE, str(decision_id)),
                    decision_id=decision_id,
                    reward=default,
                    source="default",
                    created_at=now,
                )
                for decision_id in pending
            ]
            if records:
                await self._submit(*records)
                log.debug("default_rewards", agent=agent_id, count=len(records))
            self._swept[agent_id] = cutoff
            given += len(records)
        return given

    async def _sweep_forever(self) -> None:
        windows = [
            a.reward.wait_window for a in self.config.agents.values() if a.reward.wait_window
        ]
        interval = min(max(min(windows) / 4, timedelta(seconds=1)), timedelta(minutes=1))
        while await self.pause(interval.total_seconds()):
            try:
                await self.apply_default_rewards()
            except Exception as exc:  # the stage supervisor: log, record, keep serving
                log.error("stage_failed", stage="reward_window", error=repr(exc))


def _check_step(episode_id: object, step: object) -> None:
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
        raise InvalidInputError("step", step, "must be a non-negative integer")
    if episode_id is not None and not isinstance(episode_id, uuid.UUID):
        raise InvalidInputError("episode_id", episode_id, "must be a UUID")


def _check_source(source: object) -> str | None:
    if source is None:
        return None
    if not isinstance(source, str) or len(source) > 128:
        raise InvalidInputError("source", source, "must be a string of at most 128 characters")
    return source


def _project_arguments(
    signature: inspect.Signature,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    names: Sequence[str] | None,
) -> dict[str, Any]:
    bound = signature.bind_partial(*args, **kwargs)
    bound.apply_defaults()
    chosen = names if names is not None else list(bound.arguments)
    context: dict[str, Any] = {}
    for name in chosen:
        value = bound.arguments.get(name)
        if isinstance(value, float) and not math.isfinite(value):
            continue
        if isinstance(value, str):
            context[name] = value[:1000]
        elif value is None or isinstance(value, bool | int | float):
            context[name] = value
    return context
