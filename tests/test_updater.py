"""Learning cycles end to end: a simulated contextual task, real databases, hot swaps.

The task: each decision's context names one of three topics, each with its own best action
(Bernoulli reward 0.8 for it, 0.2 for the others). The baseline is uniform; after one cycle the
learned policy must earn clearly more. Everything is seeded (the runtime's draws, the rewards,
training) and the clock ticks one millisecond per call, so the stored order of rows, and with
it every cycle, is deterministic. Learners that raise, predict NaN or crash at decision time are
plugins registered on the runtime's registry; nothing is mocked.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pytest
import torch
from helpers.steered import TickingClock
from sqlalchemy import select, update
from structlog.testing import capture_logs

from agentrt.config import AgentRTConfig, DatabaseConfig, load_config
from agentrt.learning.artifacts import sha256
from agentrt.learning.data import BanditData
from agentrt.learning.linear import LinearLearner, LinearModel
from agentrt.learning.settings import LearnerSettings
from agentrt.plugins import Plugin, PluginRegistry
from agentrt.runtime import Runtime
from agentrt.schemas import AgentCycle, PolicyVersion
from agentrt.storage import repositories
from agentrt.storage.engine import Database
from agentrt.storage.tables import MetricRow, PolicyVersionRow

ACTIONS = ("a", "b", "c")
BEST = {"t0": "a", "t1": "b", "t2": "c"}
P_BEST, P_OTHER = 0.8, 0.2
# Epsilon-greedy's defaults (0.1, decay 0.995, floor 0.01); the linear learner's default is UCB.
EPSILON = 0.1
DECAY = 0.995

Matrix = npt.NDArray[np.float64]


def make_config(
    url: str,
    spill: Path,
    *,
    learner: str = "linear",
    min_rows: int = 50,
    models: Mapping[str, Any] | None = None,
    model: str | None = None,
    exploration: Mapping[str, Any] | None = None,
) -> AgentRTConfig:
    agent: dict[str, Any] = {
        "actions": list(ACTIONS),
        "training": {"min_rows": min_rows},
    }
    if exploration is not None:
        agent["exploration"] = dict(exploration)
    if model is None:
        agent["learner"] = learner
    else:
        agent["model"] = model
    return load_config(
        {
            "database": {"url": url},
            "runtime": {
                "auto_migrate": True,
                # Cycles run only when a test calls run_cycle(): no background learning loop.
                "pipeline": "external",
                "seed": 7,
                "device": "cpu",
                "spill_dir": str(spill),
            },
            "agents": {"router": agent},
            "model_configuration": {"learning_models": dict(models or {})},
        }
    )


@dataclass
class Played:
    """What a run of decisions earned and which policy versions served it."""

    mean_reward: float
    versions: set[int | None]
    probabilities: dict[str, tuple[float, ...]] = field(default_factory=dict)
    exploration: dict[str, Any] = field(default_factory=dict)


async def play(rt: Runtime, rounds: int, rng: random.Random, *, reward: bool = True) -> Played:
    """Decide ``rounds`` times over the three topics, rewarding from the simulated task."""
    total = 0.0
    played = Played(0.0, set())
    for i in range(rounds):
        topic = f"t{i % 3}"
        decision = await rt.decide("router", {"topic": topic})
        won = rng.random() < (P_BEST if decision.action == BEST[topic] else P_OTHER)
        total += float(won)
        played.versions.add(decision.policy_version)
        assert decision.probabilities is not None
        played.probabilities[topic] = decision.probabilities
        played.exploration = decision.exploration or {}
        if reward:
            await rt.reward(decision, float(won))
    played.mean_reward = total / max(rounds, 1)
    return played


def favourite(probabilities: tuple[float, ...]) -> str:
    return ACTIONS[int(np.argmax(probabilities))]


async def stored_versions(db: Database) -> list[PolicyVersion]:
    async with db.session() as session:
        return await repositories.list_policy_versions(session, "router")


@asynccontextmanager
async def database_at(url: str) -> AsyncIterator[Database]:
    """A handle on a test's database, for reading back after its runtimes have closed."""
    db = Database(DatabaseConfig(url=url))
    try:
        yield db
    finally:
        await db.dispose()


async def read_metrics(url: str, name: str) -> list[MetricRow]:
    """The ``metrics`` rows named ``name``, oldest first."""
    query = select(MetricRow).where(MetricRow.name == name).order_by(MetricRow.id)
    async with database_at(url) as db, db.session() as session:
        return list((await session.scalars(query)).all())


# -- learners under test's control ---------------------------------------------------------


@dataclass
class Switch:
    """What the ``switched`` learner does next, and which of its models crash when asked."""

    mode: Literal["ok", "raise", "nan"] = "ok"
    crashing: set[int] = field(default_factory=set)
    trained: int = 0


class SwitchedModel:
    """A linear model that predicts NaN, or raises, when its switch says so."""

    def __init__(self, inner: LinearModel, switch: Switch, generation: int, nan: bool) -> None:
        self.inner = inner
        self.switch = switch
        self.generation = generation
        self.nan = nan

    def predict(self, features: npt.NDArray[np.float32]) -> tuple[Matrix, Matrix | None]:
        if self.generation in self.switch.crashing:
            raise RuntimeError(f"model {self.generation} crashed")
        means, stds = self.inner.predict(features)
        return (np.full_like(means, np.nan), stds) if self.nan else (means, stds)

    def tensors(self) -> dict[str, torch.Tensor]:
        return self.inner.tensors()

    def describe(self) -> dict[str, Any]:
        # What serves is rebuilt from the artifact: it carries the generation and the mode.
        return {**self.inner.describe(), "generation": self.generation, "nan": self.nan}


class SwitchedLearner:
    name = "switched"

    def __init__(self, settings: LearnerSettings, switch: Switch) -> None:
        self.settings = settings
        self.switch = switch

    def fit(self, data: BanditData) -> tuple[SwitchedModel, dict[str, Any]]:
        if self.switch.mode == "raise":
            raise RuntimeError("learner exploded")
        model, metrics = LinearLearner(self.settings).fit(data)
        self.switch.trained += 1
        nan = self.switch.mode == "nan"
        return SwitchedModel(model, self.switch, self.switch.trained, nan), metrics


class SwitchedFactory:
    """The plugin factory: builds a learner bound to the test's switch; loads linear models."""

    def __init__(self, switch: Switch) -> None:
        self.switch = switch

    def __call__(self, settings: LearnerSettings) -> SwitchedLearner:
        return SwitchedLearner(settings, self.switch)

    def load(self, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> SwitchedModel:
        inner = LinearLearner.load(tensors, metadata)
        return SwitchedModel(inner, self.switch, metadata["generation"], metadata["nan"])


def switched_runtime(url: str, spill: Path, switch: Switch) -> Runtime:
    registry = PluginRegistry()
    registry.register(Plugin("learner", "switched", SwitchedFactory(switch), "test learner"))
    config = make_config(url, spill, learner="switched")
    return Runtime(config, registry=registry, clock=TickingClock())


def check_activated(cycle: AgentCycle, version: int, rows: int) -> None:
    assert cycle.status == "activated", cycle.reason
    assert cycle.reason is None
    assert cycle.candidate_version == cycle.active_version == version
    assert cycle.rows == rows
    assert cycle.metrics["holdout_rows"] > 0
    assert cycle.validation is not None
    assert cycle.validation["validators"]["sanity"]["passed"] is True


# -- the whole loop ------------------------------------------------------------------------


async def test_cycle_learns_hot_swaps_and_beats_the_baseline(db_url: str, tmp_path: Path) -> None:
    rng = random.Random(3)
    # Epsilon-greedy, configured: its epsilon decays with every promotion.
    config = make_config(db_url, tmp_path / "spill", exploration={"method": "epsilon_greedy"})
    async with Runtime(config, clock=TickingClock()) as rt:
        baseline = await play(rt, 600, rng)
        assert baseline.versions == {None}
        assert baseline.exploration == {"method": "uniform"}

        report = await rt.run_cycle("router")
        assert [cycle.agent_id for cycle in report.agents] == ["router"]
        first = report["router"]
        check_activated(first, version=1, rows=600)
        assert first.learner == "linear"
        assert first.metrics["rows"] + first.metrics["holdout_rows"] == 600
        assert np.isfinite(first.metrics["holdout_mse"])
        assert first.seconds > 0
        assert rt.active_version("router") == 1

        stored = await stored_versions(rt.database)
        assert len(stored) == 1
        v1 = stored[0]
        assert (v1.version, v1.status, v1.parent_version, v1.learner) == (
            1,
            "active",
            None,
            "linear",
        )
        assert v1.activated_at is not None
        assert v1.sha256 == hashlib.sha256(v1.artifact).hexdigest()
        assert v1.metrics["holdout_mse"] == pytest.approx(first.metrics["holdout_mse"])
        assert v1.metrics["rows"] == first.metrics["rows"]
        assert v1.validation is not None
        assert v1.validation["validators"]["sanity"]["passed"] is True
        assert v1.validation["validators"]["sanity"]["details"]["estimates_finite"] is True
        assert v1.artifact_metadata == {"actions": list(ACTIONS), "learner": "linear"}

        learned = await play(rt, 600, rng)
        assert learned.versions == {1}
        assert learned.exploration == {"method": "epsilon_greedy", "epsilon": EPSILON * DECAY}
        assert learned.mean_reward > baseline.mean_reward + 0.2, (baseline, learned)
        for topic, best in BEST.items():
            assert favourite(learned.probabilities[topic]) == best
            assert max(learned.probabilities[topic]) == pytest.approx(
                1 - EPSILON * DECAY + EPSILON * DECAY / 3
            )

        second = (await rt.run_cycle("router"))["router"]
        check_activated(second, version=2, rows=1200)
        assert rt.active_version("router") == 2
        v1, v2 = await stored_versions(rt.database)
        assert (v1.status, v1.status_reason) == ("retired", "superseded by v2")
        assert (v2.status, v2.parent_version) == ("active", 1)
        assert v2.sha256 == sha256(v2.artifact)
        after = await play(rt, 30, rng)
        assert after.versions == {2}
        assert after.exploration["epsilon"] == pytest.approx(EPSILON * DECAY**2)

    cycles = await read_metrics(db_url, "learning_cycle")
    assert [row.details["status"] for row in cycles] == ["activated", "activated"]
    assert [row.details["candidate_version"] for row in cycles] == [1, 2]
    assert all(row.agent_id == "router" and row.stage == "updater" for row in cycles)
    assert await read_metrics(db_url, "policy_refused") == []


async def test_run_cycle_for_every_agent(sqlite_url: str, tmp_path: Path) -> None:
    config = make_config(sqlite_url, tmp_path / "spill")
    async with Runtime(config, clock=TickingClock()) as rt:
        await play(rt, 90, random.Random(1))
        report = await rt.run_cycle()
    assert [cycle.agent_id for cycle in report.agents] == ["router"]
    check_activated(report["router"], version=1, rows=90)


async def test_too_few_usable_rows_skip_the_cycle(sqlite_url: str, tmp_path: Path) -> None:
    config = make_config(sqlite_url, tmp_path / "spill", min_rows=50)
    rng = random.Random(5)
    async with Runtime(config, clock=TickingClock()) as rt:
        await play(rt, 49, rng)  # rewarded
        await play(rt, 40, rng, reward=False)  # no reward: not usable
        for i in range(5):  # deferred and never activated: not usable, even when rewarded
            decision = await rt.decide("router", {"topic": f"t{i % 3}"}, mode="deferred")
            await rt.reward(decision, 1.0)
        cycle = (await rt.run_cycle("router"))["router"]
        assert cycle.status == "skipped"
        assert cycle.rows == 49
        assert cycle.reason == "49 usable rows, fewer than training.min_rows (50)"
        assert cycle.candidate_version is None
        assert cycle.active_version is None
        assert await stored_versions(rt.database) == []
        assert (await play(rt, 3, rng)).versions == {None}

        await play(rt, 1, rng)
        assert (await rt.run_cycle("router"))["router"].status == "activated"

    cycles = await read_metrics(sqlite_url, "learning_cycle")
    assert [row.details["status"] for row in cycles] == ["skipped", "activated"]
    assert cycles[0].details["rows"] == 49


# -- restarts and integrity ----------------------------------------------------------------


async def test_a_restarted_runtime_serves_the_active_version(db_url: str, tmp_path: Path) -> None:
    config = make_config(db_url, tmp_path / "spill")
    rng = random.Random(9)
    async with Runtime(config, clock=TickingClock()) as rt:
        await play(rt, 300, rng)
        assert (await rt.run_cycle("router"))["router"].status == "activated"
        before = await play(rt, 30, rng)

    async with Runtime(config, clock=TickingClock()) as restarted:
        assert restarted.active_version("router") == 1
        after = await play(restarted, 30, rng)
    assert after.versions == before.versions == {1}
    for topic, best in BEST.items():
        assert favourite(after.probabilities[topic]) == best
        assert favourite(before.probabilities[topic]) == best
    assert await read_metrics(db_url, "policy_refused") == []


async def corrupt(url: str, version: int) -> None:
    """Flip one byte of a stored artifact in place, keeping its recorded checksum."""
    async with database_at(url) as db, db.session() as session:
        row = await repositories.load_policy_version(session, "router", version)
        assert row is not None
        damaged = bytearray(row.artifact)
        damaged[len(damaged) // 2] ^= 0xFF
        await session.execute(
            update(PolicyVersionRow)
            .where(PolicyVersionRow.agent_id == "router", PolicyVersionRow.version == version)
            .values(artifact=bytes(damaged))
        )


@pytest.mark.parametrize(("cycles", "served"), [(1, None), (2, 1)], ids=["baseline", "previous"])
async def test_a_corrupted_active_artifact_is_refused_at_load(
    db_url: str, tmp_path: Path, cycles: int, served: int | None
) -> None:
    config = make_config(db_url, tmp_path / "spill")
    rng = random.Random(11)
    async with Runtime(config, clock=TickingClock()) as rt:
        for _ in range(cycles):
            await play(rt, 150, rng)
            assert (await rt.run_cycle("router"))["router"].status == "activated"
    await corrupt(db_url, cycles)

    with capture_logs() as logs:
        async with Runtime(config, clock=TickingClock()) as restarted:
            assert restarted.active_version("router") == served
            played = await play(restarted, 30, rng)
    assert played.versions == {served}
    if served is None:
        assert played.exploration == {"method": "uniform"}
        assert set(played.probabilities.values()) == {(1 / 3, 1 / 3, 1 / 3)}

    refused = await read_metrics(db_url, "policy_refused")
    assert len(refused) >= 1
    assert {row.value for row in refused} == {float(cycles)}
    assert all(row.agent_id == "router" and row.stage == "serving" for row in refused)
    assert "checksum mismatch" in refused[0].details["error"]
    events = [e for e in logs if e["event"] == "policy_refused"]
    assert events
    assert events[0]["policy_version"] == cycles
    assert events[0]["log_level"] == "error"


async def test_a_refused_version_is_recorded_once(sqlite_url: str, tmp_path: Path) -> None:
    config = make_config(sqlite_url, tmp_path / "spill")
    async with Runtime(config, clock=TickingClock()) as rt:
        await play(rt, 90, random.Random(2))
        assert (await rt.run_cycle("router"))["router"].status == "activated"
    await corrupt(sqlite_url, 1)
    async with Runtime(config, clock=TickingClock()) as restarted:
        await restarted.refresh_policies()
        await restarted.refresh_policies()
    assert len(await read_metrics(sqlite_url, "policy_refused")) == 1


async def test_after_a_refused_version_a_new_cycle_leaves_one_active_version(
    sqlite_url: str, tmp_path: Path
) -> None:
    config = make_config(sqlite_url, tmp_path / "spill")
    rng = random.Random(4)
    async with Runtime(config, clock=TickingClock()) as rt:
        await play(rt, 90, rng)
        assert (await rt.run_cycle("router"))["router"].status == "activated"
    await corrupt(sqlite_url, 1)
    async with Runtime(config, clock=TickingClock()) as restarted:
        assert restarted.active_version("router") is None
        await play(restarted, 30, rng)
        cycle = (await restarted.run_cycle("router"))["router"]
        assert cycle.status == "activated"
        assert cycle.candidate_version == 2
    async with database_at(sqlite_url) as db:
        statuses = {row.version: row.status for row in await stored_versions(db)}
    assert statuses == {1: "retired", 2: "active"}


# -- failures while learning ---------------------------------------------------------------


@pytest.mark.parametrize("with_active", [False, True], ids=["baseline", "active"])
async def test_a_learner_that_raises_fails_the_cycle_and_serving_goes_on(
    sqlite_url: str, tmp_path: Path, with_active: bool
) -> None:
    switch = Switch()
    rng = random.Random(6)
    async with switched_runtime(sqlite_url, tmp_path / "spill", switch) as rt:
        await play(rt, 90, rng)
        if with_active:
            check_activated((await rt.run_cycle("router"))["router"], version=1, rows=90)
        switch.mode = "raise"
        with capture_logs() as logs:
            cycle = (await rt.run_cycle("router"))["router"]
        expected = 1 if with_active else None
        assert cycle.status == "failed"
        assert cycle.reason == "RuntimeError: learner exploded"
        assert cycle.candidate_version is None
        assert cycle.active_version == expected
        assert rt.active_version("router") == expected
        assert (await play(rt, 30, rng)).versions == {expected}
        assert any(e["event"] == "stage_failed" and e["stage"] == "updater" for e in logs)
        assert len(await stored_versions(rt.database)) == (1 if with_active else 0)

        switch.mode = "ok"
        recovered = (await rt.run_cycle("router"))["router"]
        check_activated(recovered, version=2 if with_active else 1, rows=120)

    cycles = await read_metrics(sqlite_url, "learning_cycle")
    statuses = [row.details["status"] for row in cycles]
    assert statuses == (["activated"] if with_active else []) + ["failed", "activated"]
    failed = cycles[-2]
    assert failed.details["reason"] == "RuntimeError: learner exploded"
    assert failed.details["candidate_version"] is None
    assert failed.agent_id == "router"


async def test_a_model_that_predicts_nan_is_rejected(sqlite_url: str, tmp_path: Path) -> None:
    switch = Switch()
    rng = random.Random(8)
    async with switched_runtime(sqlite_url, tmp_path / "spill", switch) as rt:
        await play(rt, 90, rng)
        check_activated((await rt.run_cycle("router"))["router"], version=1, rows=90)
        switch.mode = "nan"
        cycle = (await rt.run_cycle("router"))["router"]
        assert cycle.status == "rejected"
        assert cycle.reason is not None
        assert cycle.reason.startswith("sanity: failed: estimates_finite")
        assert cycle.candidate_version == 2
        assert cycle.active_version == 1
        assert cycle.validation is not None
        sanity = cycle.validation["validators"]["sanity"]
        assert sanity["passed"] is False
        assert sanity["details"]["estimates_finite"] is False
        assert sanity["details"]["weights_finite"] is True
        assert rt.active_version("router") == 1
        served = await play(rt, 30, rng)
        assert served.versions == {1}
        # A rejected candidate does not count as a learning step: epsilon decayed once only.
        assert served.exploration["epsilon"] == pytest.approx(EPSILON * DECAY)

        v1, v2 = await stored_versions(rt.database)
        assert (v1.status, v1.status_reason) == ("active", None)
        assert (v2.status, v2.parent_version) == ("rejected", 1)
        assert v2.status_reason == cycle.reason
        assert v2.activated_at is None
        assert v2.sha256 == sha256(v2.artifact)
        assert v2.validation == cycle.validation

    async with switched_runtime(sqlite_url, tmp_path / "spill", switch) as restarted:
        assert restarted.active_version("router") == 1
    cycles = await read_metrics(sqlite_url, "learning_cycle")
    assert [row.details["status"] for row in cycles] == ["activated", "rejected"]


# -- failures while serving ----------------------------------------------------------------


async def test_a_policy_that_raises_at_decision_time_falls_back(
    sqlite_url: str, tmp_path: Path
) -> None:
    switch = Switch()
    rng = random.Random(10)
    async with switched_runtime(sqlite_url, tmp_path / "spill", switch) as rt:
        await play(rt, 90, rng)
        check_activated((await rt.run_cycle("router"))["router"], version=1, rows=90)
        await play(rt, 30, rng)
        check_activated((await rt.run_cycle("router"))["router"], version=2, rows=120)
        assert rt.fallbacks["router"] == 0

        switch.crashing = {2}
        with capture_logs() as logs:
            predecessor = await play(rt, 20, rng)
        assert predecessor.versions == {1}
        assert rt.fallbacks["router"] == 20
        warnings = [e for e in logs if e["event"] == "policy_fallback"]
        assert len(warnings) == 20
        assert warnings[0]["policy_version"] == 2
        assert warnings[0]["error"] == "RuntimeError: model 2 crashed"
        assert warnings[0]["log_level"] == "warning"

        switch.crashing = {1, 2}
        baseline = await play(rt, 20, rng)
        assert baseline.versions == {None}
        assert baseline.exploration == {"method": "uniform"}
        assert rt.fallbacks["router"] == 20 + 2 * 20
        assert rt.active_version("router") == 2  # still the version in charge

        switch.crashing = set()
        assert (await play(rt, 10, rng)).versions == {2}
        assert rt.fallbacks["router"] == 60

    recorded = await read_metrics(sqlite_url, "policy_fallbacks")
    assert sum(row.value or 0.0 for row in recorded) == 60.0
    assert all(row.agent_id == "router" and row.stage == "serving" for row in recorded)


# -- the neural learner through the runtime ------------------------------------------------


async def test_neural_model_cycle_and_restart(sqlite_url: str, tmp_path: Path) -> None:
    models = {
        "small": {
            "type": "contextual_bandit",
            "architecture": "mlp",
            "parameters": {
                "hidden_size": 16,
                "num_layers": 1,
                "epochs": 15,
                "learning_rate": 0.02,
                "batch_size": 64,
            },
        }
    }
    config = make_config(sqlite_url, tmp_path / "spill", models=models, model="small")
    rng = random.Random(12)
    async with Runtime(config, clock=TickingClock()) as rt:
        baseline = await play(rt, 450, rng)
        cycle = (await rt.run_cycle("router"))["router"]
        check_activated(cycle, version=1, rows=450)
        assert cycle.learner == "neural"
        assert cycle.metrics["epochs"] <= 15
        learned = await play(rt, 300, rng)
        assert learned.versions == {1}
        assert learned.mean_reward > baseline.mean_reward + 0.2, (baseline, learned)

    async with Runtime(config, clock=TickingClock()) as restarted:
        assert restarted.active_version("router") == 1
        again = await play(restarted, 30, rng)
    for topic, best in BEST.items():
        assert favourite(learned.probabilities[topic]) == best
        assert favourite(again.probabilities[topic]) == best
