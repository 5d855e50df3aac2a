"""``agentrt worker``: the learning loop in its own process (``runtime.pipeline: external``)."""

from __future__ import annotations

import os
import signal
import socket
from typing import Annotated

import anyio
import typer

from agentrt.cli.common import DEFAULT_CONFIG, ConfigOption, console, handle_errors, load
from agentrt.config import AgentRTConfig
from agentrt.log import get_logger
from agentrt.pipeline.coordination import worker_file_lock
from agentrt.runtime import Runtime
from agentrt.schemas import CycleReport

__all__ = ["run_worker", "worker"]

log = get_logger(__name__)


async def run_worker(config: AgentRTConfig, *, once: bool = False) -> CycleReport | None:
    """Run the learning loop until SIGTERM/SIGINT (or one round with ``once``).

    The worker's own runtime never starts a second, embedded loop. On PostgreSQL several
    workers may run at once (each agent's cycle runs under an advisory lock); on SQLite a
    second worker on the same file is refused.
    """
    runtime_section = config.runtime.model_copy(update={"pipeline": "external"})
    own = config.model_copy(update={"runtime": runtime_section})
    async with Runtime(own) as rt:
        with worker_file_lock(rt.database):
            log.info(
                "worker_started",
                worker=f"{socket.gethostname()}:{os.getpid()}",
                agents=list(own.agents),
                database=rt.database.masked_url,
            )
            if once:
                return await rt.run_due_cycles()
            async with anyio.create_task_group() as tg:

                async def stop_on_signal() -> None:
                    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                        async for received in signals:
                            log.info("worker_stopping", signal=received.name)
                            rt.stop()
                            return

                tg.start_soon(stop_on_signal)
                await rt.run_learning_loop()
                tg.cancel_scope.cancel()
    return None


@handle_errors
def worker(
    config: ConfigOption = DEFAULT_CONFIG,
    once: Annotated[
        bool, typer.Option("--once", help="Run the cycles that are due now, then exit.")
    ] = False,
) -> None:
    """Run the learning loop for every configured agent until stopped (SIGTERM or Ctrl-C).

    Use with `runtime.pipeline: external`: the applications only decide and record, and this
    process extracts knowledge, trains, validates and rolls out on each agent's trigger.
    Several workers may share one PostgreSQL database; SQLite allows one worker per file.

    Example: agentrt worker --config config/agentrt.yaml
    """
    loaded = load(config)
    report = anyio.run(lambda: run_worker(loaded, once=once))
    if report is not None:
        for cycle in report.agents:
            console.print(
                f"{cycle.agent_id}: {cycle.status} ({cycle.trigger}) {cycle.reason or ''}",
                markup=False,
                highlight=False,
            )
        if not report.agents:
            console.print("no cycle was due", markup=False, highlight=False)
