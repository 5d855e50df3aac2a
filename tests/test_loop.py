"""The learning loop: triggers, backoff, canary rollouts, the embedded pipeline, workers.

The loop is driven with ``Runtime.run_due_cycles()`` and a clock the tests move by hand; the
background pipeline is observed through its own reports, never through sleeps. Real SQLite
files and real PostgreSQL databases; the learners are real (the steered linear learner of
``helpers.steered``).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml
from helpers.steered import (
    ACTIONS,
    BEST,
    Steer,
    TickingClock,
    play,
    steered_registry,
)
from sqlalchemy import select

from agentrt.config import RolloutConfig, load_config
from agentrt.errors import PluginNotFoundError, StorageError
from agentrt.pipeline.adapter import LiveReward, StrategyAdapter
from agentrt.pipeline.coordination import worker_file_lock
from agentrt.pipeline.rollout import CanaryRollout
from agentrt.plugins import Plugin
from agentrt.runtime import Runtime
from agentrt.schemas import AgentCycle
from agentrt.storage.engine import Database
from agentrt.storage.tables import MetricRow, PolicyVersionRow, StrategyUpdateRow


def tree(url: str, tmp_path: Path, **agent: Any) -> dict[str, Any]:
    """A configuration whose router cycles after 60 new rewarded decisions."""
    router: dict[str, Any] = {
        "actions": list(ACTIONS),
        "learner": "steered",
        "training": {"min_rows": 50},
        "validation": {"validators": ["sanity"]},
        "trigger": {"rewards": 60},
    }
    router.update(agent)
    return {
        "database": {"url": url},
        "runtime": {
            "auto_migrate": True,
            "pipeline": "external",
            "seed": 7,
            "device": "cpu",
            "spill_dir": str(tmp_path / "spill"),
            "policy_refresh_interval": "1h",
        },
        "logging": {"format": "json", "level": "error"},
        "agents": {"router": router},
    }


def runtime(
    url: str,
    tmp_path: Path,
    steer: Steer | None = None,
    clock: TickingClock | None = None,
    **agent: Any,
) -> Runtime:
    config = load_config(tree(url, tmp_path, **agent))
    return Runtime(
        config, registry=steered_registry(steer or Steer()), clock=clock or TickingClock()
    )


async def rows(url: str, table: Any, **where: Any) -> list[Any]:
    db = Database(load_config({"database": {"url": url}}).database)
    try:
        query = select(table).filter_by(**where).order_by(table.id)
        async with db.session() as session:
            return list((await session.scalars(query)).all())
    finally:
        await db.dispose()


# -- triggers --------------------------------------------------------------------------------


async def test_a_cycle_runs_after_n_new_rewarded_decisions_and_consumes_them(
    db_url: str, tmp_path: Path
) -> None:
    rng = random.Random(1)
    async with runtime(db_url, tmp_path) as rt:
        await play(rt, 59, rng)
        assert (await rt.run_due_cycles()).agents == ()
        await play(rt, 1, rng)
        report = await rt.run_due_cycles()
        [cycle] = report.agents
        assert cycle.status == "activated"
        assert cycle.trigger == "60 new rewarded decisions"
        assert rt.active_version("router") == cycle.candidate_version
        # The trigger was consumed: nothing is due until 60 more rewards arrive.
        assert (await rt.run_due_cycles()).agents == ()
        await play(rt, 59, rng)
        assert (await rt.run_due_cycles()).agents == ()
        await play(rt, 1, rng)
        [second] = (await rt.run_due_cycles()).agents
        assert second.status == "activated"
    cycles = await rows(db_url, MetricRow, name="learning_cycle", agent_id="router")
    assert [c.details["trigger"] for c in cycles] == ["60 new rewarded decisions"] * 2
    assert all(c.details["process"].endswith(f":{os.getpid()}") for c in cycles)


async def test_unrewarded_decisions_do_not_count(sqlite_url: str, tmp_path: Path) -> None:
    async with runtime(sqlite_url, tmp_path) as rt:
        for i in range(100):
            await rt.decide("router", {"topic": f"t{i % 3}"})
        assert (await rt.run_due_cycles()).agents == ()


async def test_an_interval_trigger_needs_time_and_at_least_one_new_reward(
    sqlite_url: str, tmp_path: Path
) -> None:
    clock = TickingClock()
    rng = random.Random(2)
    trigger = {"rewards": 10_000, "interval": "10m"}
    async with runtime(sqlite_url, tmp_path, clock=clock, trigger=trigger) as rt:
        await play(rt, 60, rng)
        # The interval counts from the start of the last cycle; with none, one is due at once.
        [first] = (await rt.run_due_cycles()).agents
        assert first.trigger == "interval 10m passed with 60 new rewarded decisions"
        clock.now += timedelta(minutes=11)
        assert (await rt.run_due_cycles()).agents == (), "no new reward since the last cycle"
        await play(rt, 5, rng)
        [second] = (await rt.run_due_cycles()).agents
        assert second.trigger == "interval 10m passed with 5 new rewarded decisions"
        await play(rt, 7, rng)
        clock.now += timedelta(minutes=9)
        assert (await rt.run_due_cycles()).agents == (), "9 minutes is not 10"
        clock.now += timedelta(minutes=2)
        [third] = (await rt.run_due_cycles()).agents
        assert third.trigger == "interval 10m passed with 7 new rewarded decisions"


class Broken:
    """A learner whose training always raises."""

    name = "broken"

    def __init__(self, settings: object) -> None:
        self.settings = settings

    def fit(self, data: object) -> Any:
        raise RuntimeError("the broken learner cannot train")

    @staticmethod
    def load(tensors: object, metadata: object) -> Any:
        raise RuntimeError("nothing to load")


async def test_a_failing_cycle_is_recorded_and_retried_with_backoff(
    sqlite_url: str, tmp_path: Path
) -> None:
    clock = TickingClock()
    rng = random.Random(3)
    rt = runtime(
        sqlite_url,
        tmp_path,
        clock=clock,
        learner="broken",
        trigger={"rewards": 60, "backoff": "10s", "max_backoff": "25s"},
    )
    rt.registry.register(Plugin("learner", "broken", Broken, "always fails"))
    async with rt:
        await play(rt, 60, rng)
        [failed] = (await rt.run_due_cycles()).agents
        assert failed.status == "failed"
        assert "the broken learner cannot train" in (failed.reason or "")
        # Decisions keep being served by the baseline.
        decision = await rt.decide("router", {"topic": "t0"})
        assert decision.policy_version is None
        retries = []
        for wait in (9, 2, 19, 2, 24, 2, 24, 2):  # backoff 10 s, then 20 s, then 25 s (max)
            clock.now += timedelta(seconds=wait)
            retries.append(len((await rt.run_due_cycles()).agents))
        assert retries == [0, 1, 0, 1, 0, 1, 0, 1]
    failures = await rows(sqlite_url, MetricRow, name="learning_cycle", agent_id="router")
    assert [f.details["status"] for f in failures] == ["failed"] * 5
    assert {f.details["trigger"] for f in failures[1:]} == {"retry after a failed cycle"}


# -- canary ----------------------------------------------------------------------------------


CANARY = {"strategy": "canary", "fraction": 0.5, "min_decisions": 100, "confidence": 0.95}


async def decided_canary(rt: Runtime, rng: random.Random, rounds: int = 300) -> AgentCycle:
    """Play until the loop decides the canary; returns the cycle that did."""
    for _ in range(20):
        await play(rt, rounds, rng)
        for cycle in (await rt.run_due_cycles()).agents:
            if cycle.status != "skipped" or not (cycle.reason or "").startswith("canary"):
                return cycle
    raise AssertionError("the canary was never decided")


async def test_a_worse_canary_is_rolled_back_and_a_better_one_promoted(
    db_url: str, tmp_path: Path
) -> None:
    steer = Steer()
    rng = random.Random(4)
    rt = runtime(db_url, tmp_path, steer, rollout=CANARY, trigger={"rewards": 60})
    async with rt:
        # v1 learns the task; against the baseline it is a canary first.
        await play(rt, 60, rng)
        [first] = (await rt.run_due_cycles()).agents
        assert first.status == "canary"
        assert rt.canaries == {"router": first.candidate_version}
        assert rt.active_version("router") is None
        # Half of the decisions are the canary's.
        served = await play(rt, 200, rng)
        assert served.versions == {None, first.candidate_version}
        # Live, v1 is much better than the baseline: promoted; the same cycle then trains
        # v2, which ranks the actions upside down, as the next canary.
        steer.mode = "worst"
        second = await decided_canary(rt, rng)
        assert rt.active_version("router") == first.candidate_version
        assert second.status == "canary"
        assert rt.canaries == {"router": second.candidate_version}
        # Live, v2 is much worse than v1: rolled back; v1 keeps serving, v3 is the next canary.
        steer.mode = "good"
        third = await decided_canary(rt, rng)
        assert rt.active_version("router") == first.candidate_version
        assert rt.canaries == {"router": third.candidate_version}
    versions = {
        v.version: (v.status, v.status_reason)
        for v in await rows(db_url, PolicyVersionRow, agent_id="router")
    }
    assert versions[first.candidate_version or 0][0] == "active"
    status, reason = versions[second.candidate_version or 0]
    assert status == "rejected"
    assert reason is not None
    assert reason.startswith("canary: significantly worse live")
    kinds = [
        (u.kind, u.details.get("canary_version") or u.details.get("candidate_version"))
        for u in await rows(db_url, StrategyUpdateRow, agent_id="router")
        if u.kind in ("canary", "promote", "rollback")
    ]
    assert kinds == [
        ("canary", first.candidate_version),
        ("promote", first.candidate_version),
        ("canary", second.candidate_version),
        ("rollback", second.candidate_version),
        ("canary", third.candidate_version),
    ]


def test_the_canary_test_waits_for_enough_decisions_and_spends_alpha_per_look() -> None:
    rollout = CanaryRollout(RolloutConfig(strategy="canary", min_decisions=100, confidence=0.95))
    reference = LiveReward(1000, 0.5, 0.25)
    few = rollout.evaluate(LiveReward(99, 0.9, 0.09), reference, 1, timedelta(0))
    assert few.action == "wait"
    # The same evidence that is decisive at the first look is not at the 20th.
    slightly_better = LiveReward(400, 0.58, 0.2436)
    assert rollout.evaluate(slightly_better, reference, 1, timedelta(0)).action == "promote"
    assert rollout.evaluate(slightly_better, reference, 20, timedelta(0)).action == "wait"
    worse = LiveReward(400, 0.40, 0.24)
    assert rollout.evaluate(worse, reference, 3, timedelta(0)).action == "roll_back"
    # Neither better nor worse after 10x the minimum: promoted (it passed validation).
    same = LiveReward(1000, 0.5, 0.25)
    assert rollout.evaluate(same, reference, 5, timedelta(0)).action == "promote"
    assert rollout.evaluate(LiveReward(500, 0.5, 0.25), reference, 5, timedelta(0)).action == "wait"


# -- embedded pipeline and workers -----------------------------------------------------------


async def test_the_embedded_pipeline_learns_in_the_background(
    sqlite_url: str, tmp_path: Path
) -> None:
    config = tree(sqlite_url, tmp_path)
    config["runtime"].update(pipeline="embedded", trigger_check_interval="10ms")
    rt = Runtime(load_config(config), registry=steered_registry(Steer()))
    ran = anyio.Event()
    async with rt:
        loop = rt._learning_loop()
        note = loop._note

        def observe(agent_id: str, report: AgentCycle) -> None:
            note(agent_id, report)
            ran.set()

        loop._note = observe  # type: ignore[method-assign]
        await play(rt, 60, random.Random(5))
        with anyio.fail_after(60):
            await ran.wait()
        assert rt.active_version("router") is not None
        # Decisions are served while and after the loop trains.
        decision = await rt.decide("router", {"topic": "t1"})
        assert decision.policy_version == rt.active_version("router")


async def test_sqlite_allows_one_worker_per_database_file(sqlite_url: str, tmp_path: Path) -> None:
    db = Database(load_config({"database": {"url": sqlite_url}}).database)
    try:
        with worker_file_lock(db) as path:
            assert path is not None
            assert path.exists()
            with (
                pytest.raises(StorageError, match="another agentrt worker already runs"),
                worker_file_lock(db),
            ):
                pass
        with worker_file_lock(db):  # released: a new worker may start
            pass
    finally:
        await db.dispose()


def worker_process(config_file: Path, log: Path) -> subprocess.Popen[bytes]:
    code = (
        "import sys\n"
        "from agentrt.cli import app\n"
        "sys.argv = ['agentrt', 'worker', '--config', sys.argv[1]]\n"
        "app()\n"
    )
    with log.open("wb") as out:
        return subprocess.Popen(  # noqa: S603 (our own interpreter and module)
            [sys.executable, "-c", code, str(config_file)], stdout=out, stderr=subprocess.STDOUT
        )


@pytest.mark.postgres
@pytest.mark.slow
async def test_two_workers_share_postgresql_each_cycle_runs_once(
    pg_url: str, tmp_path: Path
) -> None:
    """Two `agentrt worker` processes and an application on one PostgreSQL database: every
    trigger is consumed by exactly one worker, and the application sees each new version
    (LISTEN/NOTIFY; its polling interval is an hour)."""
    config = tree(pg_url, tmp_path)
    config["agents"]["router"]["learner"] = "linear"
    config["runtime"]["trigger_check_interval"] = "50ms"
    config_file = tmp_path / "agentrt.yaml"
    config_file.write_text(yaml.safe_dump(config))
    app_config = load_config(config)
    workers = [worker_process(config_file, tmp_path / f"worker{i}.log") for i in range(2)]
    try:
        async with Runtime(app_config) as rt:
            rng = random.Random(6)
            seen = []
            for _ in range(3):
                before = rt.active_version("router")
                await play(rt, 60, rng)
                await rt.flush()
                with anyio.fail_after(120):
                    # Waiting on other processes (the polling interval is an hour: only a
                    # notification makes the version appear).
                    while rt.active_version("router") == before:  # noqa: ASYNC110
                        await anyio.sleep(0.02)
                seen.append(rt.active_version("router"))
            assert seen == [1, 2, 3]
    finally:
        for process in workers:
            process.send_signal(signal.SIGTERM)
        for process in workers:
            assert process.wait(timeout=60) == 0, (tmp_path / "worker0.log").read_text()
    cycles = await rows(pg_url, MetricRow, name="learning_cycle", agent_id="router")
    assert [c.details["status"] for c in cycles] == ["activated"] * 3
    assert {c.details["process"] for c in cycles} <= {
        f"{os.uname().nodename}:{p.pid}" for p in workers
    }


# -- shadow agents ---------------------------------------------------------------------------


async def shadow_round(rt: Runtime, rounds: int, rng: random.Random, app: str) -> list[Any]:
    """The application decides with its own logic (``random`` or ``best``), executes
    ``decision.action`` and reports the reward it earned."""
    decisions = []
    for i in range(rounds):
        topic = f"t{i % 3}"
        mine = rng.choice(ACTIONS) if app == "random" else BEST[topic]
        decision = await rt.decide("router", {"topic": topic}, app_action=mine)
        won = rng.random() < (0.8 if decision.action == BEST[topic] else 0.2)
        await rt.reward(decision, float(won))
        decisions.append(decision)
    return decisions


async def test_a_shadow_agent_goes_live_once_it_beats_the_application(
    sqlite_url: str, tmp_path: Path
) -> None:
    rng = random.Random(8)
    shadow = {"min_rows": 100, "margin": 0.05}
    async with runtime(sqlite_url, tmp_path, mode="shadow", shadow=shadow) as rt:
        before = await shadow_round(rt, 300, rng, "random")
        assert {d.mode for d in before} == {"shadow"}
        report = await rt.run_cycle("router")
        assert report["router"].status == "activated"
        after = await shadow_round(rt, 300, rng, "random")
        assert {d.mode for d in after} == {"live"}
        assert {d.policy_version for d in after} == {report["router"].active_version}
        assert all(d.policy_action is None for d in after)
    [switch] = await rows(sqlite_url, StrategyUpdateRow, agent_id="router", kind="mode")
    assert switch.previous["mode"] == "shadow"
    assert switch.updated["mode"] == "live"
    assert switch.details["difference_lower"] > 0.05
    assert switch.details["application_reward"] < 0.5 < switch.details["policy_estimate"]
    # A restarted runtime (another process) serves the agent live too.
    async with runtime(sqlite_url, tmp_path, mode="shadow", shadow=shadow) as rt:
        [decision] = await shadow_round(rt, 1, rng, "random")
        assert decision.mode == "live"


async def test_a_shadow_agent_stays_in_shadow_when_the_application_is_as_good(
    sqlite_url: str, tmp_path: Path
) -> None:
    rng = random.Random(9)
    shadow = {"min_rows": 100, "margin": 0.05}
    async with runtime(sqlite_url, tmp_path, mode="shadow", shadow=shadow) as rt:
        await shadow_round(rt, 300, rng, "best")
        assert (await rt.run_cycle("router"))["router"].status == "activated"
        later = await shadow_round(rt, 30, rng, "best")
        assert {d.mode for d in later} == {"shadow"}
    assert await rows(sqlite_url, StrategyUpdateRow, agent_id="router", kind="mode") == []


# -- learning-rate adaptation ----------------------------------------------------------------


async def test_a_stalled_training_run_adapts_the_next_runs_learning_rate(
    sqlite_url: str, tmp_path: Path
) -> None:
    """A learning rate of 1e-9 cannot move the network: the held-out loss stalls, and the next
    run uses `optimization_parameters...adaptation` (0.01, momentum 0.9), which learns."""
    config = tree(sqlite_url, tmp_path, learner=None, model="net")
    config["model_configuration"] = {
        "learning_models": {
            "net": {
                "type": "contextual_bandit",
                "architecture": "mlp",
                "parameters": {"learning_rate": 1e-9, "epochs": 8, "hidden_size": 16},
                "optimization": {"method": "sgd"},
            }
        }
    }
    rng = random.Random(10)
    async with Runtime(load_config(config), clock=TickingClock()) as rt:
        await play(rt, 600, rng)
        first = (await rt.run_cycle("router"))["router"]
        await play(rt, 60, rng)
        second = (await rt.run_cycle("router"))["router"]
    losses = [
        [point["holdout_loss"] for point in cycle.metrics["loss_curve"]]
        for cycle in (first, second)
    ]
    assert (losses[0][0] - min(losses[0])) / losses[0][0] < 0.01
    assert (losses[1][0] - min(losses[1])) / losses[1][0] > 0.05
    [update] = await rows(sqlite_url, StrategyUpdateRow, agent_id="router", kind="learning_rate")
    assert update.previous == {"optimizer": None}
    assert update.updated == {"optimizer": {"learning_rate": 0.01, "momentum": 0.9}}
    assert "stalled" in update.details["reason"]


def test_each_further_stall_halves_the_learning_rate(tmp_path: Path) -> None:
    flat = {"loss_curve": [{"holdout_loss": 0.25}, {"holdout_loss": 0.2499}]}
    improving = {"loss_curve": [{"holdout_loss": 0.25}, {"holdout_loss": 0.2}]}
    config = load_config(tree("sqlite+aiosqlite:///unused.db", tmp_path))
    adapter = StrategyAdapter(config, Database(config.database))
    assert adapter.adapt_learning_rate("router", flat, None)[0] == (0.01, 0.9)
    assert adapter.adapt_learning_rate("router", flat, (0.01, 0.9))[0] == (0.005, 0.9)
    assert adapter.adapt_learning_rate("router", improving, (0.01, 0.9)) == ((0.01, 0.9), None)
    assert adapter.adapt_learning_rate("router", {"rows": 10}, None) == (None, None)
    fixed = tree("sqlite+aiosqlite:///unused.db", tmp_path)
    fixed["optimization_parameters"] = {
        "strategy_optimization": {"adaptation": {"method": "fixed"}}
    }
    config = load_config(fixed)
    adapter = StrategyAdapter(config, Database(config.database))
    assert adapter.adapt_learning_rate("router", flat, None) == (None, None)


# -- incremental learning between cycles -----------------------------------------------------


@pytest.mark.parametrize("incremental", [True, False])
async def test_an_incremental_model_keeps_learning_between_cycles(
    sqlite_url: str, tmp_path: Path, incremental: bool
) -> None:
    """v1 is fitted on 12 rewards only; with `training.incremental` the active linear model
    then learns from every reward, without another cycle, and earns clearly more."""
    training = {"min_rows": 10, "incremental": incremental}
    rt = runtime(sqlite_url, tmp_path, learner="linear", training=training)
    rng = random.Random(11)
    async with rt:
        await play(rt, 12, rng)
        assert (await rt.run_cycle("router"))["router"].status == "activated"
        model = rt._policies["router"][0].model
        before = model.tensors()["rows"].sum().item()
        for _ in range(30):  # rewards trickle in; the model learns from each batch
            await play(rt, 10, rng)
            await rt.flush()
        learned = model.tensors()["rows"].sum().item() - before
        late = await play(rt, 300, rng)
        assert rt.active_version("router") == 1  # no other cycle ran
    if incremental:
        assert learned == 300
        assert late.mean_reward > 0.7
    else:
        assert learned == 0


async def test_the_loop_decides_a_canary_between_cycles_without_running_one(
    sqlite_url: str, tmp_path: Path
) -> None:
    rng = random.Random(12)
    rt = runtime(sqlite_url, tmp_path, rollout=CANARY, trigger={"rewards": 10_000})
    async with rt:
        await play(rt, 60, rng)
        [first] = (await rt.run_cycle("router")).agents
        assert first.status == "canary"
        await play(rt, 400, rng)
        assert (await rt.run_due_cycles()).agents == ()  # no cycle is due...
        assert rt.canaries == {}  # ...but the canary was judged and promoted
        assert rt.active_version("router") == first.candidate_version
    cycles = await rows(sqlite_url, MetricRow, name="learning_cycle", agent_id="router")
    assert len(cycles) == 1
    [promotion] = await rows(sqlite_url, StrategyUpdateRow, agent_id="router", kind="promote")
    assert promotion.details["canary_version"] == first.candidate_version


async def test_a_runtime_refuses_to_start_with_an_unknown_plugin_name(
    sqlite_url: str, tmp_path: Path
) -> None:
    for agent, message in (
        ({"learner": "linaer"}, "learner"),
        ({"rollout": {"strategy": "canery"}}, "rollout"),
        ({"features": {"ticket": "text_embeding"}}, "feature"),
    ):
        rt = runtime(sqlite_url, tmp_path, **agent)
        with pytest.raises(PluginNotFoundError, match=message):
            async with rt:
                pass


@pytest.mark.parametrize("incremental", [True, False])
async def test_an_incremental_candidate_learns_its_held_out_rows_once_validated(
    sqlite_url: str, tmp_path: Path, incremental: bool
) -> None:
    """Validation needs rows the candidate did not train on; once it passed, an incremental
    model learns them too, so it serves having seen every row (as the model it replaces)."""
    rt = runtime(sqlite_url, tmp_path, learner="linear", training={"incremental": incremental})
    async with rt:
        await play(rt, 100, random.Random(13))
        cycle = (await rt.run_cycle("router"))["router"]
        assert cycle.status == "activated"
        assert cycle.metrics["holdout_rows"] == 20
        served = rt._policies["router"][0].model.tensors()["rows"].sum().item()
    assert served == (100 if incremental else 80)
