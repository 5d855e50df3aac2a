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
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any, Literal, ParamSpec, TypeVar

import anyio
from anyio import AsyncContextManagerMixin

from agentrt.clock import utcnow
from agentrt.config import AgentConfig, AgentRTConfig, load_config
from agentrt.episode import ActiveEpisode
from agentrt.errors import InvalidInputError, StorageError, UnknownActionError, UnknownDecisionError
from agentrt.inputs import (
    check_actions,
    check_context,
    check_decision_id,
    check_distribution,
    check_mask,
    check_outcome,
    check_propensity,
    check_reward,
)
from agentrt.log import get_logger
from agentrt.pipeline.collector import (
    CollectorStats,
    ExperienceCollector,
    KnownDecisions,
    default_spill_dir,
    process_owner,
)
from agentrt.pipeline.spill import ExperienceRecord, SpillDirectory
from agentrt.plugins import PluginRegistry
from agentrt.policy import BaselinePolicy
from agentrt.schemas import Decision, DecisionMode, Episode, Feedback
from agentrt.storage import bulk, repositories
from agentrt.storage.engine import Database
from agentrt.storage.migrate import ensure_schema
from agentrt.types import Processor

__all__ = ["Runtime"]

log = get_logger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

_MODES = ("live", "shadow", "deferred")
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
        self._known = KnownDecisions()
        self._sync = config.runtime.durability == "sync"
        self._max_bytes = config.runtime.max_context_bytes
        self._db: Database | None = None
        self._collector: ExperienceCollector | None = None
        self._swept: dict[str, datetime] = {}

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str], **overrides: Any) -> Runtime:
        """A runtime configured from a YAML file; keyword arguments override its sections.

        Example: ``Runtime.from_yaml("config/agentrt.yaml", runtime={"durability": "sync"})``.
        """
        return cls(load_config(path, overrides))

    # -- lifecycle -----------------------------------------------------------------------

    @asynccontextmanager
    async def __asynccontextmanager__(self) -> AsyncIterator[Runtime]:
        db = Database(self.config.database)
        try:
            await ensure_schema(db, self.config.runtime.auto_migrate)
            async with db.session() as session:
                await repositories.upsert_agents(session, self.config.agents)
            collector = self._build_collector(db)
            self._db, self._collector = db, collector
            stopped = anyio.Event()

            async def run_collector(*, task_status: anyio.abc.TaskStatus[None]) -> None:
                try:
                    await collector.run(task_status=task_status)
                finally:
                    stopped.set()

            async with anyio.create_task_group() as tg:
                await tg.start(run_collector)
                if any(a.reward.wait_window for a in self.config.agents.values()):
                    tg.start_soon(self._sweep_forever)
                log.info("runtime_started", database=db.masked_url, agents=list(self.config.agents))
                try:
                    yield self
                finally:
                    collector.close()
                    deadline = self.config.runtime.shutdown_timeout.total_seconds()
                    with anyio.move_on_after(deadline, shield=True) as scope:
                        await stopped.wait()
                    if scope.cancelled_caught:
                        log.error(
                            "shutdown_deadline_exceeded",
                            seconds=deadline,
                            spill=str(collector.spill.current.path),
                        )
                    tg.cancel_scope.cancel()
            log.info("runtime_stopped", **vars(collector.stats))
        finally:
            self._collector = None
            with anyio.CancelScope(shield=True):
                await db.dispose()

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
        """Return once every record accepted before this call is committed (or spilled)."""
        await self.collector.flush()

    async def _submit(self, *records: ExperienceRecord) -> None:
        if self._sync:
            await self.collector.submit_and_wait(*records)
        else:
            await self.collector.submit(*records)

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
        offered = check_actions(agent_id, agent.actions, actions)
        allowed = check_mask(mask, offered)
        ctx = check_context(context, self._max_bytes)
        chosen_mode: DecisionMode = agent.mode if mode is None else mode
        if chosen_mode not in _MODES:
            raise InvalidInputError("mode", mode, "must be live, shadow or deferred")
        if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
            raise InvalidInputError("step", step, "must be a non-negative integer")
        if episode_id is not None and not isinstance(episode_id, uuid.UUID):
            raise InvalidInputError("episode_id", episode_id, "must be a UUID")
        choice = self._baselines[agent_id].choose(offered, allowed, self._rng)
        policy_action: str | None = None
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
            index, propensity = offered.index(app_action), None
            policy_action = offered[choice.action_index]
        else:
            if app_action is not None:
                raise InvalidInputError("app_action", app_action, "is only used in shadow mode")
            index = choice.action_index
            propensity = choice.probabilities[index]
        decision = Decision.model_construct(
            id=uuid.uuid4(),
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
        self._known.add(decision.id, agent_id, chosen_mode)
        await self._submit(decision)
        return decision

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
        result = check_outcome(outcome, self._max_bytes)
        checked_source = _check_source(source)
        if self._sync:
            await self._require_known(decision_id)
        feedback = Feedback.model_construct(
            id=uuid.uuid4(),
            decision_id=decision_id,
            kind="reward",
            reward=value,
            outcome=result,
            source=checked_source,
            created_at=self._clock(),
        )
        await self._submit(feedback)
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
        if self._sync:
            await self._require_known(decision_id)
        feedback = Feedback.model_construct(
            id=uuid.uuid4(),
            decision_id=decision_id,
            kind="activation",
            reward=None,
            outcome=None,
            source=None,
            created_at=self._clock(),
        )
        await self._submit(feedback)
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
        if actions is None and not agent.actions:
            offered: tuple[str, ...] = check_actions(agent_id, (), [action])
        else:
            offered = check_actions(agent_id, agent.actions, actions)
        if action not in offered:
            raise UnknownActionError(
                "action", action, f"is not among the actions ({', '.join(offered)})"
            )
        index = offered.index(action)
        known_propensity = check_propensity(propensity)
        distribution = check_distribution(probabilities, offered, index, known_propensity)
        if distribution is not None and known_propensity is None:
            known_propensity = distribution[index]
        now = self._clock()
        decision = Decision.model_construct(
            id=uuid.uuid4(),
            agent_id=agent_id,
            action=action,
            action_index=index,
            actions=offered,
            context=check_context(context, self._max_bytes),
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
        feedback = Feedback.model_construct(
            id=uuid.uuid4(),
            decision_id=decision.id,
            kind="reward",
            reward=check_reward(reward),
            outcome=check_outcome(outcome, self._max_bytes),
            source=_check_source(source),
            created_at=now,
        )
        self._known.add(decision.id, agent_id, "live")
        await self._submit(decision, feedback)
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
            since = self._swept.get(agent_id)
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
        while True:
            await anyio.sleep(interval.total_seconds())
            try:
                await self.apply_default_rewards()
            except Exception as exc:  # the stage supervisor: log, record, keep serving
                log.error("stage_failed", stage="reward_window", error=repr(exc))


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
