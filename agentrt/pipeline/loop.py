"""The learning loop: runs each agent's cycle when its trigger fires, and retention.

Every ``runtime.trigger_check_interval`` the loop asks, per agent, whether a cycle is due:

- ``N`` new rewarded decisions since the start of the agent's last cycle (``trigger.rewards``,
  default ``experience_configuration.collection.batch_size``), or
- ``trigger.interval`` elapsed since then with at least one new rewarded decision (default
  ``collection.frequency`` when it is a duration), or
- the last cycle failed and its backoff (``trigger.backoff`` doubling per failure up to
  ``trigger.max_backoff``) has passed.

The start of the last cycle is read from the database (the ``learning_cycle`` row in
``metrics``), so several processes sharing a database agree on what is due; the check is
repeated under the agent's lock, so a trigger is consumed by exactly one of them. A cycle is
the same code as ``Runtime.run_cycle()``: extract, check live regressions and canaries,
train, validate, roll out, retune exploration. While a canary serves, each check also
compares it live with the active version and promotes or rolls it back.

The loop runs inside the application (``runtime.pipeline: embedded``, training in worker
threads) or in ``agentrt worker`` (``external``). A failure of one check or one cycle is
logged with structlog, recorded in ``metrics`` and retried; decisions keep being served.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from agentrt.durations import format_duration
from agentrt.errors import AgentRTError
from agentrt.log import get_logger
from agentrt.pipeline.coordination import agent_lock
from agentrt.schemas import AgentCycle
from agentrt.storage import repositories

if TYPE_CHECKING:
    from agentrt.runtime import Runtime

__all__ = ["LearningLoop"]

log = get_logger(__name__)

# Retention runs under this lock name so one process of many prunes at a time.
_RETENTION_LOCK = "*retention*"


@dataclass
class _Backoff:
    failures: int
    retry_at: datetime


class LearningLoop:
    """Checks triggers and runs due cycles for the agents of one runtime."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.config = runtime.config
        self._backoff: dict[str, _Backoff] = {}
        self._retained_at: datetime | None = None

    async def due(self, agent_id: str) -> str | None:
        """Why a cycle is due for ``agent_id`` now, or None."""
        now = self.runtime.now()
        rewards, interval = self.config.trigger_for(agent_id)
        async with self.runtime.database.session() as session:
            last = await repositories.last_metric(session, agent_id, "learning_cycle")
            details = last.details if last is not None else {}
            started = _parse_time(details.get("started_at"))
            count = await repositories.count_new_rewards(session, agent_id, started, limit=rewards)
        if details.get("status") == "failed":
            backoff = self._backoff.get(agent_id)
            if backoff is None or now >= backoff.retry_at:
                return "retry after a failed cycle"
            return None
        if count >= rewards:
            return f"{count} new rewarded decisions"
        if interval is not None and count > 0 and (started is None or now - started >= interval):
            return (
                f"interval {format_duration(interval)} passed with {count} new rewarded decisions"
            )
        return None

    async def run_due(self) -> list[AgentCycle]:
        """Run every due cycle once; returns the cycles run."""
        ran: list[AgentCycle] = []
        for agent_id in self.config.agents:
            reason = await self.due(agent_id)
            if reason is None:
                if agent_id in self.runtime.canaries:
                    # No cycle is due, but the canary is compared live at every check.
                    await self.runtime._judge_canary(agent_id)
                continue
            report = await self.runtime._cycle_if_due(agent_id, reason, self.due)
            if report is None:
                continue
            self._note(agent_id, report)
            ran.append(report)
        return ran

    def _note(self, agent_id: str, report: AgentCycle) -> None:
        if report.status != "failed":
            self._backoff.pop(agent_id, None)
            return
        trigger = self.config.agents[agent_id].trigger
        failures = self._backoff[agent_id].failures + 1 if agent_id in self._backoff else 1
        delay = min(trigger.backoff * 2 ** (failures - 1), trigger.max_backoff)
        self._backoff[agent_id] = _Backoff(failures, self.runtime.now() + delay)
        log.warning("cycle_backoff", agent=agent_id, failures=failures, retry_in=str(delay))

    async def retain(self) -> None:
        """Apply ``experience_configuration.retention`` when ``runtime.retention_interval``
        has passed since this loop last did (one process at a time on PostgreSQL)."""
        retention = self.config.experience_configuration.retention
        if retention.policy == "none":
            return
        now = self.runtime.now()
        interval: timedelta = self.config.runtime.retention_interval
        if self._retained_at is not None and now - self._retained_at < interval:
            return
        from agentrt.pipeline.retention import apply_retention

        db = self.runtime.database
        async with agent_lock(db, _RETENTION_LOCK, wait=False) as obtained:
            if not obtained:
                return
            started = time.perf_counter()
            report = await apply_retention(db, self.config, now)
            self._retained_at = now
            async with db.session() as session:
                await repositories.record_metric(
                    session,
                    "retention",
                    time.perf_counter() - started,
                    stage="retention",
                    details=report.as_dict(),
                )
            log.info("retention_applied", **report.as_dict())

    async def run_forever(self) -> None:
        """Check triggers (and retention) every ``runtime.trigger_check_interval`` until the
        runtime stops; a failing check is logged, recorded and retried at the next one."""
        interval = self.config.runtime.trigger_check_interval.total_seconds()
        while await self.runtime.pause(interval):
            for stage, step in (("loop", self.run_due), ("retention", self.retain)):
                try:
                    await step()
                except Exception as exc:  # the stage supervisor: log, record, keep serving
                    log.error("stage_failed", stage=stage, error=repr(exc))
                    await self._record_failure(stage, exc)

    async def _record_failure(self, stage: str, exc: Exception) -> None:
        try:
            async with self.runtime.database.session() as session:
                await repositories.record_metric(
                    session,
                    "stage_failed",
                    None,
                    stage=stage,
                    details={"error": f"{type(exc).__name__}: {exc}"[:2000]},
                )
        except AgentRTError as storage_exc:
            log.warning("metric_not_recorded", metric="stage_failed", error=str(storage_exc))


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None
