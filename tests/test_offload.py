"""Cycles in a training process (`runtime.training: process`): same results as in threads, the
application's process only stores and serves, failures come back as errors, nothing is lost.

The three-topic task of helpers.steered, seeded, on real SQLite files and PostgreSQL. The
failing learners live in helpers.crashing and are enabled through `plugins.enable`, the only
way a training process (which builds its registry from the configuration) can have them.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers.crashing import MESSAGE
from helpers.steered import (
    ACTIONS,
    BEST,
    P_BEST,
    P_OTHER,
    Steer,
    TickingClock,
    play,
    steered_registry,
)
from sqlalchemy import select
from structlog.testing import capture_logs

from agentrt.config import AgentRTConfig, load_config
from agentrt.errors import ConfigError
from agentrt.pipeline.offload import CHILD_NICENESS, resolve_training
from agentrt.plugins import PluginRegistry
from agentrt.runtime import Runtime
from agentrt.schemas import AgentCycle
from agentrt.storage.tables import KnowledgeRow, MetricRow

pytestmark = pytest.mark.anyio

TOPICS = ("t0", "t1", "t2")


def config(
    url: str,
    tmp_path: Path,
    *,
    training: str = "process",
    pipeline: str = "external",
    learners: dict[str, str] | None = None,
    **extra: Any,
) -> AgentRTConfig:
    agents: dict[str, Any] = {
        agent: {
            "actions": list(ACTIONS),
            "learner": learner,
            "training": {"min_rows": 30},
            **extra,
        }
        for agent, learner in (learners or {"router": "linear"}).items()
    }
    return load_config(
        {
            "database": {"url": url},
            "runtime": {
                "auto_migrate": True,
                "pipeline": pipeline,
                "training": training,
                "seed": 3,
                "device": "cpu",
                "spill_dir": str(tmp_path / "spill"),
            },
            "plugins": {"enable": ["helpers.crashing:PLUGINS"]},
            "agents": agents,
        }
    )


async def train_once(cfg: AgentRTConfig) -> tuple[AgentCycle, np.ndarray, set[str]]:
    """Play 150 seeded rounds, run one cycle, return its report, the served policy's
    probabilities per topic, and the knowledge kinds stored."""
    async with Runtime(cfg, clock=TickingClock()) as rt:
        await play(rt, 150, random.Random(5))
        report = (await rt.run_cycle("router"))["router"]
        served = []
        for topic in TOPICS:
            decision = await rt.decide("router", {"topic": topic})
            served.append(decision.probabilities)
        async with rt.database.session() as session:
            kinds = set((await session.scalars(select(KnowledgeRow.kind))).all())
    return report, np.array(served), kinds


async def test_a_training_process_trains_what_a_thread_trains(
    tmp_path: Path, one_torch_thread: None
) -> None:
    # Two databases filled by the same seeded run; one cycle each.
    urls = {mode: f"sqlite+aiosqlite:///{tmp_path / mode}.db" for mode in ("thread", "process")}
    results = {
        mode: await train_once(config(url, tmp_path / mode, training=mode))
        for mode, url in urls.items()
    }
    (in_thread, thread_probs, thread_kinds) = results["thread"]
    (in_process, process_probs, process_kinds) = results["process"]
    assert in_thread.status == in_process.status == "activated"
    assert in_thread.rows == in_process.rows == 150
    # Trained elsewhere: the candidate's metrics say which process fitted it.
    here = f":{os.getpid()}"
    assert in_thread.metrics["process"].endswith(here)
    assert not in_process.metrics["process"].endswith(here)
    assert in_process.metrics["train_rows"] == in_thread.metrics["train_rows"]
    assert _same_verdicts(in_process, in_thread)
    # The same seed, data and learner: the same policy serves.
    np.testing.assert_allclose(process_probs, thread_probs, atol=1e-9)
    assert in_process.knowledge.keys() == in_thread.knowledge.keys()
    assert {"action_statistics", "exploration_health"} <= process_kinds == thread_kinds


def _same_verdicts(one: AgentCycle, other: AgentCycle) -> bool:
    """The same validators passed (their timings, e.g. the latency validator's, differ)."""
    verdicts = [
        {name: result["passed"] for name, result in (report.validation or {})["validators"].items()}
        for report in (one, other)
    ]
    return verdicts[0] == verdicts[1]


async def test_the_training_process_validates_against_the_active_policy(
    db_url: str, tmp_path: Path
) -> None:
    cfg = config(db_url, tmp_path)
    async with Runtime(cfg, clock=TickingClock()) as rt:
        rng = random.Random(9)
        await play(rt, 300, rng)
        first = (await rt.run_cycle("router"))["router"]
        assert first.status == "activated"
        await play(rt, 300, rng)
        second = (await rt.run_cycle("router"))["router"]
        assert second.status == "activated", second.reason
        assert second.active_version == first.active_version + 1  # type: ignore[operator]
        # The first cycle had no active policy to compare with; the second compares the
        # candidate with v1 as it serves in this process (sent to the training process).
        incumbents = [
            (report.validation or {})["validators"]["ope"]["details"]["incumbent"]["name"]
            for report in (first, second)
        ]
        assert incumbents == ["baseline", f"v{first.active_version}"]
        learned = await play(rt, 300, rng)
    assert learned.mean_reward > 0.6  # uniform earns 0.4 on this task


async def test_the_training_process_logs_through_the_applications_logging(
    sqlite_url: str, tmp_path: Path
) -> None:
    async with Runtime(config(sqlite_url, tmp_path), clock=TickingClock()) as rt:
        await play(rt, 40, random.Random(4))
        with capture_logs() as logs:
            report = (await rt.run_cycle("router"))["router"]
            again = (await rt.run_cycle("router"))["router"]
    [started] = [event for event in logs if event["event"] == "training_process_started"]
    child = started["training_process"]
    assert started["parent"] == os.getpid() != child
    assert started["log_level"] == "info"
    assert started["niceness"] >= CHILD_NICENESS
    # One process serves both cycles (and the extraction of each).
    assert report.metrics["process"].endswith(f":{child}")
    assert again.status == "activated"
    assert again.metrics["process"] == report.metrics["process"]


async def test_a_shadow_agent_is_judged_in_the_training_process(
    sqlite_url: str, tmp_path: Path
) -> None:
    rng = random.Random(8)
    shadow = {"min_rows": 100, "margin": 0.05}
    cfg = config(sqlite_url, tmp_path, mode="shadow", shadow=shadow)
    async with Runtime(cfg, clock=TickingClock()) as rt:
        for i in range(300):  # the application chooses at random and reports what it earned
            topic = TOPICS[i % 3]
            decision = await rt.decide("router", {"topic": topic}, app_action=rng.choice(ACTIONS))
            won = rng.random() < (P_BEST if decision.action == BEST[topic] else P_OTHER)
            await rt.reward(decision, float(won))
        with capture_logs() as logs:
            report = (await rt.run_cycle("router"))["router"]
        assert report.status == "activated"
        assert (await rt.decide("router", {"topic": "t0"}, app_action="c")).mode == "live"
    [switched] = [event for event in logs if event["event"] == "shadow_switched_to_live"]
    assert switched["difference_lower"] > 0.05
    assert switched["application_reward"] < 0.5 < switched["policy_estimate"]


async def test_a_failure_in_the_training_process_fails_the_cycle_not_the_runtime(
    sqlite_url: str, tmp_path: Path
) -> None:
    cfg = config(sqlite_url, tmp_path, learners={"router": "raising"})
    async with Runtime(cfg, clock=TickingClock()) as rt:
        await play(rt, 60, random.Random(1))
        report = (await rt.run_cycle("router"))["router"]
        assert report.status == "failed"
        assert report.reason is not None
        assert "TrainingProcessError" in report.reason
        assert f"ValueError: {MESSAGE}" in report.reason
        decision = await rt.decide("router", {"topic": "t0"})
        assert decision.policy_version is None  # the baseline keeps serving
        async with rt.database.session() as session:
            statuses = (
                await session.scalars(
                    select(MetricRow.details).where(MetricRow.name == "learning_cycle")
                )
            ).all()
    assert [row["status"] for row in statuses] == ["failed"]


async def test_a_training_process_that_dies_is_replaced_at_the_next_cycle(
    sqlite_url: str, tmp_path: Path
) -> None:
    cfg = config(sqlite_url, tmp_path, learners={"doomed": "exiting", "router": "linear"})
    async with Runtime(cfg, clock=TickingClock()) as rt:
        rng = random.Random(2)
        for _ in range(60):
            for agent in ("doomed", "router"):
                decision = await rt.decide(agent, {"topic": "t1"})
                await rt.reward(decision, float(rng.random() < 0.5))
        died = (await rt.run_cycle("doomed"))["doomed"]
        assert died.status == "failed"
        assert died.reason is not None
        assert "training process died" in died.reason
        after = (await rt.run_cycle("router"))["router"]
        assert after.status == "activated", after.reason
        assert (await rt.decide("router", {"topic": "t1"})).policy_version == after.active_version


def test_auto_trains_in_a_process_for_an_embedded_pipeline_only(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'a.db'}"
    registry = PluginRegistry()
    embedded = config(url, tmp_path, training="auto", pipeline="embedded")
    assert resolve_training(embedded, registry)[0] == "process"
    external = config(url, tmp_path, training="auto", pipeline="external")
    mode, why = resolve_training(external, registry)
    assert (mode, why) == ("thread", "runtime.training: auto with runtime.pipeline: external")
    threads = config(url, tmp_path, training="thread", pipeline="embedded")
    assert resolve_training(threads, registry)[0] == "thread"


def test_auto_stays_in_threads_when_a_process_could_not_see_the_plugins(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'a.db'}"
    embedded = config(url, tmp_path, training="auto", pipeline="embedded")
    mode, why = resolve_training(embedded, steered_registry(Steer()))
    assert mode == "thread"
    assert "learner/steered" in why
    assert "plugins.enable" in why


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("sqlite+aiosqlite:///:memory:", "in-memory SQLite"),
        ("sqlite+aiosqlite:///{tmp}/a.db", "learner/steered"),
    ],
)
def test_a_process_that_could_not_work_is_a_configuration_error(
    tmp_path: Path, url: str, needle: str
) -> None:
    cfg = config(url.format(tmp=tmp_path), tmp_path, training="process")
    registry = steered_registry(Steer()) if needle.startswith("learner") else PluginRegistry()
    with pytest.raises(ConfigError) as caught:
        resolve_training(cfg, registry)
    assert caught.value.issues[0].path == "runtime.training"
    assert needle in str(caught.value)


async def test_a_runtime_refuses_to_start_with_a_process_it_could_not_feed(
    sqlite_url: str, tmp_path: Path
) -> None:
    cfg = config(sqlite_url, tmp_path, training="process")
    with pytest.raises(ConfigError, match=r"runtime\.training"):
        async with Runtime(cfg, registry=steered_registry(Steer())):
            pass  # pragma: no cover


async def test_a_cycle_without_rows_is_a_skip_in_a_process_too(
    sqlite_url: str, tmp_path: Path
) -> None:
    cfg = config(sqlite_url, tmp_path)
    async with Runtime(cfg, clock=TickingClock()) as rt:
        report = (await rt.run_cycle("router"))["router"]
        async with rt.database.session() as session:
            kinds = (await session.scalars(select(KnowledgeRow.kind))).all()
    assert report.status == "skipped"
    assert report.reason == "0 usable rows, fewer than training.min_rows (30)"
    assert kinds == []
