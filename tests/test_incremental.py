"""Incremental learning around cycles: every reward counts once in the model that serves.

The linear learner on the three-topic task of helpers.steered; the background flush is an hour
away, so the test decides when rewards reach the database (`collector.flush()`) and when the
active model learns the waiting ones (`rt.flush()`). A gate analyzer holds the cycle after it
took the agent's lock and before it reads the training window, so that rewards arrive, reach
the database and wait for the model while the cycle runs, as they do in a busy application.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Sequence
from pathlib import Path

import anyio
import anyio.to_thread
import pytest
from helpers.steered import ACTIONS, TickingClock, play

from agentrt.config import AgentRTConfig, load_config
from agentrt.plugins import Plugin, PluginRegistry
from agentrt.runtime import Runtime
from agentrt.schemas import AgentCycle, Experience, Knowledge

pytestmark = pytest.mark.anyio


class Gate:
    """An analyzer that waits, in the cycle's worker thread, until the test opens it."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()

    def __call__(self, config: AgentRTConfig) -> Gate:
        return self

    def analyze(self, agent_id: str, rows: Sequence[Experience]) -> list[Knowledge]:
        self.entered.set()
        self.opened.wait(timeout=60)
        return []


def runtime(url: str, tmp_path: Path, gate: Gate) -> Runtime:
    registry = PluginRegistry()
    registry.register(Plugin("analyzer", "gate", gate, "holds a cycle"))
    config = load_config(
        {
            "database": {"url": url},
            "runtime": {
                "auto_migrate": True,
                "pipeline": "external",
                "seed": 4,
                "device": "cpu",
                "flush_interval": "1h",
                "spill_dir": str(tmp_path / "spill"),
            },
            "experience_configuration": {"analysis": {"methods": ["gate"]}},
            "agents": {
                "router": {
                    "actions": list(ACTIONS),
                    "learner": "linear",
                    "training": {"min_rows": 50, "incremental": True},
                    "validation": {"validators": ["sanity"]},
                    "trigger": {"rewards": 60},
                }
            },
        }
    )
    return Runtime(config, registry=registry, clock=TickingClock())


def rows_learned(rt: Runtime) -> float:
    return float(rt._policies["router"][0].model.tensors()["rows"].sum().item())


async def test_rewards_a_cycle_trained_on_are_not_learned_again_afterwards(
    sqlite_url: str, tmp_path: Path
) -> None:
    rng = random.Random(21)
    gate = Gate()
    async with runtime(sqlite_url, tmp_path, gate) as rt:
        gate.opened.set()
        await play(rt, 60, rng)
        assert (await rt.run_cycle("router"))["router"].status == "activated"
        assert rows_learned(rt) == 60
        await play(rt, 60, rng)
        gate.opened.clear()
        gate.entered.clear()
        async with anyio.create_task_group() as tg:
            cycles: list[AgentCycle] = []

            async def loop() -> None:
                cycles.extend((await rt.run_due_cycles()).agents)

            tg.start_soon(loop)
            await anyio.to_thread.run_sync(gate.entered.wait)
            # While the cycle holds the agent: 60 more rewards, stored before it reads.
            await play(rt, 60, rng)
            await rt.collector.flush()
            gate.opened.set()
        [cycle] = cycles
        assert cycle.status == "activated"
        assert cycle.rows == 180
        # The new version trained on all 180 (its held-out rows learned after validation);
        # the 60 that waited meanwhile are in them and must not be learned twice.
        await rt.flush()
        assert rows_learned(rt) == 180
        # Rewards after the cycle are learned, once each.
        await play(rt, 30, rng)
        await rt.flush()
        assert rows_learned(rt) == 210
