"""Adaptation: seconds from the N-th reward to a validated new active version, and what a
learning cycle running in the same process does to ``decide()`` latency.

**Adaptation.** Per learner, N and device: a fresh SQLite file in a temporary directory, N
rewarded executions of a synthetic task recorded with ``rt.record(...)`` and their known
propensities (``buffered`` mode; ingestion is not what is measured), then ``await rt.flush()``:
the N-th reward is acknowledged and t0 is taken. ``await rt.run_cycle(agent)`` trains,
validates and activates; the figure is the seconds from t0 until the report says ``activated``
and ``rt.active_version()`` is the new candidate (a rejected or failed candidate is reported
with its reason). The embedded learning loop is off (``runtime.pipeline: external``), so no
triggered cycle runs besides the measured ones, and ``run_cycle`` trains in worker threads of
this process, as ``agentrt worker`` does (``runtime.training: auto``). The cycle reads at most
``training.window`` rows (50,000 by default, so N = 100k trains on the newest 50k;
``--window`` changes it).

Tasks: ``linear`` and ``neural`` learn a contextual bandit (8 numeric features and one of 4
segments, 4 actions logged uniformly at random, propensity 1/4, Bernoulli rewards from a hidden
per-action logistic model). ``dqn`` and ``behavior_cloning`` need episodes: a corridor of 6
cells, start in the first, reward 1 on reaching the last and -0.01 per other step, actions
``left``/``right`` logged with probabilities 0.4/0.6, at most 30 steps an episode, recorded with
``episode_id`` and ``step``. A learner whose module does not import is skipped with the reason.

Ceilings and breakdown, measured in the same run on the same database after the cycle: reading
the training window through agentrt (``repositories.fetch_experience``: query plus
``Experience`` objects) against a raw ``sqlite3`` query of the same view (the raw driver);
encoding (the feature encoder fitted and applied as a cycle does); and the bare fit: the
learner's ``fit`` on the in-memory arrays (no database), with the cycle's seed, split and
device. The report prints ``to active / bare fit``. Each learner is warmed up once per device
(imports, first torch calls) before anything is timed, as in a process that has been running.

**decide() under training.** Per learner, device and ``runtime.training`` mode (``--training``;
``process``, the embedded pipeline's default: the cycle's reading, analysis, fit and validation
run in the runtime's training process, the application's process stores and loads the result;
``thread``: all of it in worker threads of the application's process): a runtime with an
active policy (trained on ``--latency-rows`` rows) serves ``decide()`` paced at one call per
``--interval-us`` (an application serving about 1,000 decisions a second), each call timed alone
with ``perf_counter_ns``. Meanwhile a task of the same task group alternates idle windows and
``run_cycle`` calls, each idle window as long as the cycle before it, until both hold ``--calls``
samples (or ``--max-cycles`` cycles ran): idle and training samples are interleaved in time, so
other load on the machine weighs on both alike. A call counts for the window it started and
ended in. Printed: p50/p99 idle and during the cycle, and the ratio of the p99s (target: at most
1.5). Beside each ``decide()`` the same loop times a bare torch forward of the default ``mlp``
(64 inputs, 2 x 64 hidden, one output per action, single sample, ``inference_mode``): the
ceiling, idle and under the same contention. Also printed: the event-loop lag (how late the
paced wake-up came: work that a cycle does on the event loop delays every caller, though no
single ``decide()`` shows it) and the p99 of the calls made while the heavy work ran (in the
worker thread or the training process). The cyclic GC runs as usual (``--gc-off`` disables
it) and is collected before the idle windows.

    python bench/adaptation.py --quick                        # N = 1k, linear and neural (~1 min)
    python bench/adaptation.py                                # N = 1k, 10k, 100k; every learner
                                                              # (~15 min on 2 busy cores)
    python bench/adaptation.py --n 1000 10000 100000 --learners linear neural
    python bench/adaptation.py --threads 1 --gc-off           # one torch thread, no cyclic GC
    python bench/adaptation.py --switch-interval-us 500      # the GIL changes hands sooner

torch runs with its default intra-op thread count unless ``--threads`` says otherwise (the
runtime itself does not set it, so this is what an embedding application gets).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import anyio
import anyio.lowlevel
import numpy as np
import structlog
import torch

from agentrt import Runtime, load_config
from agentrt.config import AgentRTConfig, ModelParametersConfig
from agentrt.learning.data import BanditData, usable_for_learning
from agentrt.learning.features import FeatureEncoder, FeatureSpec
from agentrt.learning.nets import build_network
from agentrt.learning.settings import LearnerSettings
from agentrt.pipeline.updater import ModelUpdater
from agentrt.plugins import PluginRegistry
from agentrt.schemas import AgentCycle, Experience
from agentrt.storage import repositories

RESULTS = Path(__file__).resolve().parent / "results"
AGENT = "bench"
LEARNERS = ("linear", "neural", "dqn", "behavior_cloning")
EPISODIC = ("dqn", "behavior_cloning")
BANDIT_ACTIONS = ("a0", "a1", "a2", "a3")
CORRIDOR_ACTIONS = ("left", "right")
CORRIDOR_CELLS = 6
CORRIDOR_MAX_STEPS = 30
P_RIGHT = 0.6
TARGET_RATIO = 1.5
# The newest `limit` rows of the view, as repositories.fetch_experience asks for them.
RAW_QUERY = (
    "SELECT * FROM experience WHERE agent_id = ? AND feedback_count > 0 "
    "ORDER BY created_at DESC, decision_id DESC LIMIT ?"
)


class Logged(NamedTuple):
    """One execution as the application records it."""

    context: dict[str, Any]
    action: str
    reward: float
    propensity: float
    episode_id: uuid.UUID | None = None
    step: int | None = None


# -- tasks --------------------------------------------------------------------------------------


def bandit_rows(n: int, seed: int) -> list[Logged]:
    """A contextual bandit logged uniformly: 8 features, 4 segments, 4 actions."""
    rng = np.random.default_rng(seed)
    k = len(BANDIT_ACTIONS)
    hidden = np.random.default_rng(12345)  # the same task whatever the seed
    weights = hidden.standard_normal((k, 8)) / np.sqrt(8)
    bias = hidden.standard_normal((k, 4)) * 0.5
    x = rng.standard_normal((n, 8))
    segment = rng.integers(4, size=n)
    logged = rng.integers(k, size=n)
    logits = 2 * np.einsum("nd,nd->n", x, weights[logged]) + bias[logged, segment]
    rewards = (rng.random(n) < 1 / (1 + np.exp(-logits))).astype(float)
    return [
        Logged(
            {
                **{f"x{j}": round(float(v), 4) for j, v in enumerate(x[i])},
                "segment": f"s{segment[i]}",
            },
            BANDIT_ACTIONS[logged[i]],
            float(rewards[i]),
            1 / k,
        )
        for i in range(n)
    ]


def corridor_context(cell: int) -> dict[str, Any]:
    return {"cell": f"c{cell}", "position": cell, "to_goal": CORRIDOR_CELLS - 1 - cell}


def corridor_rows(n: int, seed: int) -> list[Logged]:
    """Episodes of the corridor under a behaviour policy going right with probability 0.6."""
    rng = np.random.default_rng(seed)
    rows: list[Logged] = []
    while len(rows) < n:
        episode, cell = uuid.UUID(int=int(rng.integers(2**62)) << 64 | len(rows)), 0
        for step in range(CORRIDOR_MAX_STEPS):
            right = bool(rng.random() < P_RIGHT)
            after = min(cell + 1, CORRIDOR_CELLS - 1) if right else max(cell - 1, 0)
            done = after == CORRIDOR_CELLS - 1
            rows.append(
                Logged(
                    corridor_context(cell),
                    CORRIDOR_ACTIONS[int(right)],
                    1.0 if done else -0.01,
                    P_RIGHT if right else 1 - P_RIGHT,
                    episode,
                    step,
                )
            )
            cell = after
            if done or len(rows) == n:
                break
    return rows


def task_rows(learner: str, n: int, seed: int) -> list[Logged]:
    return corridor_rows(n, seed) if learner in EPISODIC else bandit_rows(n, seed)


def task_actions(learner: str) -> tuple[str, ...]:
    return CORRIDOR_ACTIONS if learner in EPISODIC else BANDIT_ACTIONS


def agentrt_config(
    path: Path,
    learner: str,
    device: str,
    args: argparse.Namespace,
    rows: int,
    mode: str = "auto",
) -> AgentRTConfig:
    training: dict[str, Any] = {} if args.window is None else {"window": args.window}
    return load_config(
        None,
        {
            "database": {"url": f"sqlite+aiosqlite:///{path}"},
            "runtime": {
                "durability": "buffered",
                "buffer_size": max(10_000, rows),
                "seed": args.seed,
                "device": device,
                "auto_migrate": True,
                # No triggered cycle besides the ones measured: the embedded learning loop is
                # off. With it, `training: auto` trains in threads; the serving part names
                # the mode it measures.
                "pipeline": "external",
                "training": mode,
            },
            "agents": {
                AGENT: {
                    "actions": list(task_actions(learner)),
                    "learner": learner,
                    "training": training,
                }
            },
        },
    )


async def ingest(rt: Runtime, rows: list[Logged]) -> None:
    for i, row in enumerate(rows):
        await rt.record(
            AGENT,
            row.context,
            row.action,
            row.reward,
            propensity=row.propensity,
            episode_id=row.episode_id,
            step=row.step,
        )
        if i % 100 == 99:
            await anyio.lowlevel.checkpoint()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def importable(learner: str) -> str | None:
    """None when the learner's plugin loads, else why not."""
    try:
        PluginRegistry().get("learner", learner)
    except Exception as exc:  # a learner being written may fail in any way: skip it
        return f"{type(exc).__name__}: {exc}"
    return None


def warm_up(learner: str, device: str, seed: int) -> None:
    """First torch calls, lazy imports and allocator warm-up, outside every timed region."""
    data = encode(task_rows(learner, 600, seed + 99), task_actions(learner), FeatureSpec())
    settings = LearnerSettings(seed=seed, device=torch.device(device))
    PluginRegistry().create("learner", learner, settings).fit(data)


def encode(rows: list[Logged], actions: tuple[str, ...], spec: FeatureSpec) -> BanditData:
    encoder = FeatureEncoder(spec).fit(row.context for row in rows)
    index = {a: i for i, a in enumerate(actions)}
    codes: dict[uuid.UUID | None, int] = {}
    return BanditData(
        actions=actions,
        features=encoder.encode_many([row.context for row in rows]),
        action_index=np.array([index[row.action] for row in rows], dtype=np.int64),
        rewards=np.array([row.reward for row in rows], dtype=np.float32),
        propensities=np.array([row.propensity for row in rows], dtype=np.float32),
        episodes=np.array(
            [
                -1 if r.episode_id is None else codes.setdefault(r.episode_id, len(codes))
                for r in rows
            ],
            dtype=np.int64,
        ),
        steps=np.array([-1 if r.step is None else r.step for r in rows], dtype=np.int64),
    )


# -- adaptation -----------------------------------------------------------------------------------


def raw_read(path: Path, limit: int) -> tuple[float, int]:
    """Seconds and rows of the training window's query through the bare sqlite3 driver."""
    connection = sqlite3.connect(path)
    try:
        started = time.perf_counter()
        rows = connection.execute(RAW_QUERY, (AGENT, limit)).fetchall()
        return time.perf_counter() - started, len(rows)
    finally:
        connection.close()


async def ceilings(rt: Runtime, path: Path, learner: str, cycle: int) -> dict[str, Any]:
    """The cycle's steps done by hand on the same data: read, raw read, encode, bare fit."""
    config = rt.config
    window = config.agents[AGENT].training.window
    started = time.perf_counter()
    async with rt.database.session() as session:
        rows = await repositories.fetch_experience(session, AGENT, limit=window, rewarded_only=True)
    read = time.perf_counter() - started
    raw, raw_rows = await anyio.to_thread.run_sync(raw_read, path, window)
    updater = ModelUpdater(config, rt.database, rt.registry)
    settings = updater.settings(AGENT, cycle)
    actions = tuple(config.agents[AGENT].actions)
    # The split (whole episodes; a row outside any episode is one on its own) and the
    # encoding of agentrt.pipeline.updater, timed apart from the fit.
    started = time.perf_counter()
    groups: dict[object, list[Experience]] = {}
    for i, row in enumerate(r for r in rows if usable_for_learning(r) and r.action in actions):
        groups.setdefault(i if row.episode_id is None else row.episode_id, []).append(row)
    members = list(groups.values())
    order = np.random.default_rng(settings.seed).permutation(len(members))
    cut = int(len(members) * settings.training.holdout) if len(rows) >= 20 else 0
    train_rows = [row for i in order[cut:] for row in members[i]]
    encoder = FeatureEncoder(FeatureSpec(dim=settings.training.feature_dim))
    encoder.fit(row.context for row in train_rows)
    data = BanditData.from_experience(train_rows, encoder, actions)
    encoding = time.perf_counter() - started
    model = rt.registry.create("learner", learner, settings)
    sync(settings.device)
    started = time.perf_counter()
    model.fit(data)
    sync(settings.device)
    fit = time.perf_counter() - started
    return {
        "read_seconds": read,
        "raw_read_seconds": raw,
        "raw_read_rows": raw_rows,
        "encode_seconds": encoding,
        "bare_fit_seconds": fit,
        "bare_fit_rows": len(data),
    }


def cycle_summary(report: AgentCycle) -> dict[str, Any]:
    metrics = report.metrics or {}
    return {
        "status": report.status,
        "reason": report.reason,
        "rows": report.rows,
        "candidate_version": report.candidate_version,
        "active_version": report.active_version,
        "cycle_seconds": report.seconds,
        "fit_seconds": metrics.get("fit_seconds"),
        "train_rows": metrics.get("train_rows"),
        "epochs": metrics.get("epochs"),
    }


async def adaptation(learner: str, n: int, device: str, args: argparse.Namespace) -> dict[str, Any]:
    rows = task_rows(learner, n, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "adaptation.db"
        config = agentrt_config(path, learner, device, args, n)
        async with Runtime(config) as rt:
            started = time.perf_counter()
            await ingest(rt, rows)
            acknowledged = time.perf_counter()
            await rt.flush()
            before = rt.active_version(AGENT)
            t0 = time.perf_counter()
            report = (await rt.run_cycle(AGENT))[AGENT]
            t1 = time.perf_counter()
            active = rt.active_version(AGENT)
            entry: dict[str, Any] = {
                "learner": learner,
                "device": device,
                "n": n,
                "window": config.agents[AGENT].training.window,
                "ingest_seconds": acknowledged - started,
                "flush_seconds": t0 - acknowledged,
                "seconds_to_active": t1 - t0,
                "active_before": before,
                "activated": report.status == "activated" and active == report.candidate_version,
                **cycle_summary(report),
            }
            if report.status in ("activated", "rejected"):
                entry.update(await ceilings(rt, path, learner, cycle=1))
                entry["to_active_over_bare_fit"] = entry["seconds_to_active"] / max(
                    entry["bare_fit_seconds"], 1e-9
                )
    return entry


# -- decide() while a cycle runs -----------------------------------------------------------------


@dataclass
class Samples:
    """Per paced call: decide() ns, bare forward ns, wake-up lag ns, worker thread busy."""

    decide: list[int] = field(default_factory=list)
    bare: list[int] = field(default_factory=list)
    lag: list[int] = field(default_factory=list)
    thread_busy: list[bool] = field(default_factory=list)


@dataclass
class Phases:
    """Which window the paced calls fall in: ``idle``, ``cycle`` or ``between`` (not kept)."""

    now: str = "between"
    done: bool = False
    kept: dict[str, Samples] = field(
        default_factory=lambda: {"idle": Samples(), "cycle": Samples()}
    )
    reports: list[AgentCycle] = field(default_factory=list)


def bare_forward(actions: int) -> Callable[[], object]:
    network = build_network("mlp", 64, actions, ModelParametersConfig()).eval()
    x = torch.zeros(1, 64)

    def forward() -> object:
        with torch.inference_mode():
            return network(x)

    for _ in range(1000):
        forward()
    return forward


def percentiles(samples_ns: list[int]) -> tuple[float, float]:
    if not samples_ns:
        return float("nan"), float("nan")
    ordered = sorted(samples_ns)
    return ordered[len(ordered) // 2] / 1000, ordered[int(len(ordered) * 0.99)] / 1000


async def paced(
    rt: Runtime,
    contexts: list[dict[str, Any]],
    forward: Callable[[], object],
    interval_s: float,
    phases: Phases,
) -> None:
    """decide() once per interval until the phases are done; a call counts for the window
    it started and ended in."""
    # The slot that the cycle's heavy work holds (analysis, fit, validation) in a worker
    # thread or in the training process; agentrt exposes no public signal of it.
    limiter = rt._process_limiter if rt.config.runtime.training == "process" else rt._limiter
    i = 0
    while not phases.done:
        asked = time.perf_counter_ns()
        if interval_s > 0:
            await anyio.sleep(interval_s)
        else:
            await anyio.lowlevel.checkpoint()
        woke = time.perf_counter_ns()
        window = phases.now
        busy = limiter is not None and limiter.borrowed_tokens > 0
        started = time.perf_counter_ns()
        await rt.decide(AGENT, contexts[i % len(contexts)])
        decided = time.perf_counter_ns()
        forward()
        ended = time.perf_counter_ns()
        i += 1
        if window in phases.kept and phases.now == window:
            kept = phases.kept[window]
            kept.decide.append(decided - started)
            kept.bare.append(ended - decided)
            kept.lag.append(max(0, woke - asked - int(interval_s * 1e9)))
            kept.thread_busy.append(busy)


async def alternate(rt: Runtime, phases: Phases, args: argparse.Namespace) -> None:
    """Idle windows and learning cycles in turn, each idle window as long as the cycle before
    it, so that idle and cycle samples share whatever else the machine is doing."""
    idle, cycle = phases.kept["idle"], phases.kept["cycle"]
    try:
        phases.now = "idle"
        await anyio.sleep(min(1.0, args.calls * args.interval_us / 1e6))
        for _ in range(args.max_cycles):
            phases.now = "cycle"
            started = time.perf_counter()
            report = (await rt.run_cycle(AGENT))[AGENT]
            phases.now = "between"
            phases.reports.append(report)
            if len(cycle.decide) >= args.calls and len(idle.decide) >= args.calls:
                break
            gc.collect()  # the cycle's garbage is not the idle window's
            phases.now = "idle"
            await anyio.sleep(time.perf_counter() - started)
    finally:
        phases.now, phases.done = "between", True


def summarise(samples: Samples) -> dict[str, Any]:
    d50, d99 = percentiles(samples.decide)
    b50, b99 = percentiles(samples.bare)
    l50, l99 = percentiles(samples.lag)
    busy = [ns for ns, flag in zip(samples.decide, samples.thread_busy, strict=True) if flag]
    return {
        "samples": len(samples.decide),
        "decide_p50_us": d50,
        "decide_p99_us": d99,
        "bare_forward_p50_us": b50,
        "bare_forward_p99_us": b99,
        "loop_lag_p50_us": l50,
        "loop_lag_p99_us": l99,
        "loop_lag_max_us": max(samples.lag, default=0) / 1000,
        "thread_busy_samples": len(busy),
        "thread_busy_decide_p99_us": percentiles(busy)[1],
    }


async def serving(
    learner: str, device: str, training: str, args: argparse.Namespace
) -> dict[str, Any]:
    rows = task_rows(learner, args.latency_rows, args.seed)
    contexts = [row.context for row in task_rows(learner, 1000, args.seed + 1)]
    forward = bare_forward(len(task_actions(learner)))
    phases = Phases()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "serving.db"
        config = agentrt_config(path, learner, device, args, len(rows), training)
        async with Runtime(config) as rt:
            await ingest(rt, rows)
            first = (await rt.run_cycle(AGENT))[AGENT]
            if first.status != "activated":
                return {"skipped": f"no active policy to serve: {first.status}: {first.reason}"}
            gc.collect()
            async with anyio.create_task_group() as tg:
                tg.start_soon(alternate, rt, phases, args)
                await paced(rt, contexts, forward, args.interval_us / 1e6, phases)
    idle, cycle = summarise(phases.kept["idle"]), summarise(phases.kept["cycle"])
    ratio = cycle["decide_p99_us"] / idle["decide_p99_us"]
    return {
        "idle": idle,
        "during_cycle": cycle,
        "cycles": [cycle_summary(r) for r in phases.reports],
        "p99_ratio": ratio,
        "bare_p99_ratio": cycle["bare_forward_p99_us"] / idle["bare_forward_p99_us"],
        "target_met": ratio <= TARGET_RATIO,
    }


# -- report ---------------------------------------------------------------------------------------


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def print_adaptation(entry: dict[str, Any]) -> None:
    status = entry["status"] if entry["activated"] or entry["status"] != "activated" else "stale"
    print(
        f"  {entry['learner']:<17} {entry['device']:<4} {entry['n']:>7,} {entry['rows']:>7,} "
        f"{status:<9} {entry['seconds_to_active']:>8.2f} {fmt(entry['fit_seconds']):>7} "
        f"{fmt(entry.get('bare_fit_seconds')):>8} "
        f"{fmt(entry.get('to_active_over_bare_fit'), '.1f'):>7} "
        f"{fmt(entry.get('read_seconds')):>7} {fmt(entry.get('raw_read_seconds')):>7} "
        f"{fmt(entry.get('encode_seconds')):>7} {entry['ingest_seconds']:>7.1f}",
        flush=True,
    )
    if entry["status"] != "activated" and entry["reason"]:
        print(f"      {entry['status']}: {entry['reason']}", flush=True)


def print_serving(name: str, result: dict[str, Any]) -> None:
    if "skipped" in result:
        print(f"  {name:<22} skipped: {result['skipped']}", flush=True)
        return
    idle, busy = result["idle"], result["during_cycle"]
    verdict = "ok" if result["target_met"] else "MISSED"
    print(
        f"  {name:<22} decide p50/p99 idle "
        f"{idle['decide_p50_us']:6.1f}/{idle['decide_p99_us']:7.1f} us"
        f"   during cycle {busy['decide_p50_us']:6.1f}/{busy['decide_p99_us']:8.1f} us"
        f"   p99 ratio {result['p99_ratio']:6.2f} (<= {TARGET_RATIO}: {verdict})"
    )
    print(
        f"  {'':<22} bare forward p99 idle {idle['bare_forward_p99_us']:6.1f} us, during cycle "
        f"{busy['bare_forward_p99_us']:7.1f} us (ratio {result['bare_p99_ratio']:.2f});"
        f" loop lag p99 idle {idle['loop_lag_p99_us']:.0f} us, during cycle "
        f"{busy['loop_lag_p99_us']:.0f} us (max {busy['loop_lag_max_us'] / 1000:.0f} ms)"
    )
    cycles = result["cycles"]
    statuses = ", ".join(sorted({c["status"] for c in cycles}))
    print(
        f"  {'':<22} {busy['samples']:,} calls inside {len(cycles)} cycle(s) ({statuses}, "
        f"{sum(c['cycle_seconds'] for c in cycles):.1f} s), {idle['samples']:,} idle; "
        f"{busy['thread_busy_samples']:,} while the cycle's heavy work ran, p99 "
        f"{busy['thread_busy_decide_p99_us']:.1f} us",
        flush=True,
    )


async def main(args: argparse.Namespace) -> None:
    # The benchmark is the application here: it keeps agentrt's info lines off the table.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    if args.quick:
        args.n, args.calls, args.latency_rows = [1000], 1000, 2000
        args.learners = args.learners or ["linear", "neural"]
    learners = args.learners or list(LEARNERS)
    default_threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    began = time.perf_counter()
    report: dict[str, Any] = {
        "n": args.n,
        "window": args.window,
        "seed": args.seed,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_default_threads": default_threads,
        "gc": not args.gc_off,
        "switch_interval_us": sys.getswitchinterval() * 1e6,
        "devices": devices,
        "skipped": {},
        "adaptation": [],
        "serving": {},
    }
    available = []
    for learner in learners:
        why = importable(learner)
        if why is None:
            available.append(learner)
        else:
            print(f"skipping {learner}: its plugin does not load ({why})")
            report["skipped"][learner] = why
    print(
        f"adaptation: seconds from the N-th reward's acknowledgement (after flush) to a validated "
        f"active version; devices {', '.join(devices)}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} intra-op threads (default here {default_threads})"
    )
    print(
        f"  {'learner':<17} {'dev':<4} {'N':>7} {'rows':>7} {'status':<9} {'active s':>8} "
        f"{'fit s':>7} {'bare fit':>8} {'/ bare':>7} {'read s':>7} {'raw rd':>7} "
        f"{'encode':>7} {'ingest':>7}"
    )
    for learner in available:
        for device in devices:
            warm_up(learner, device, args.seed)
            for n in args.n:
                entry = await adaptation(learner, n, device, args)
                report["adaptation"].append(entry)
                print_adaptation(entry)
    print(
        "  (active s: t0 to activation; fit s: the fit inside the cycle; bare fit: the learner's "
        "fit on in-memory arrays; / bare: active s / bare fit; read s: the window through "
        "agentrt; raw rd: the same query through sqlite3; ingest: recording N rows, not counted)"
    )
    if not args.no_serving:
        print(
            f"\ndecide() p50/p99 idle and while run_cycle runs in the same runtime, its heavy work "
            f"in the training process or in worker threads (runtime.training) "
            f"({args.calls:,} paced calls each, one per {args.interval_us} us; policy trained on "
            f"{args.latency_rows:,} rows; GIL switch interval "
            f"{sys.getswitchinterval() * 1e6:.0f} us; target: p99 during / idle <= {TARGET_RATIO})"
        )
        for learner in available:
            for device in devices:
                for training in args.training:
                    name = f"{learner}/{device}/{training}"
                    result = await serving(learner, device, training, args)
                    report["serving"][name] = result
                    print_serving(name, result)
    report["total_seconds"] = time.perf_counter() - began
    print(f"\ntotal {report['total_seconds']:.0f} s")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "adaptation.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--n", type=int, nargs="+", default=[1000, 10_000, 100_000], help="rewards before a cycle"
    )
    parser.add_argument("--learners", nargs="+", choices=LEARNERS, help="default: all")
    parser.add_argument("--quick", action="store_true", help="N = 1k, 1k calls, linear and neural")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--window", type=int, help="training.window (agentrt's default: 50k)")
    parser.add_argument("--calls", type=int, default=5000, help="decide() samples per condition")
    parser.add_argument("--interval-us", type=int, default=1000, help="pacing of decide() calls")
    parser.add_argument("--latency-rows", type=int, default=10_000, help="rows behind the policy")
    parser.add_argument("--max-cycles", type=int, default=30, help="cycles while sampling, at most")
    parser.add_argument("--no-serving", action="store_true", help="adaptation figures only")
    parser.add_argument(
        "--training",
        nargs="+",
        choices=["process", "thread"],
        default=["process", "thread"],
        help="runtime.training for the decide() measurements (process: the embedded default)",
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)"
    )
    parser.add_argument("--gc-off", action="store_true", help="disable the cyclic GC")
    parser.add_argument(
        "--switch-interval-us",
        type=int,
        help="sys.setswitchinterval: how long a thread may hold the GIL while another waits "
        "(Python's default: 5000)",
    )
    arguments = parser.parse_args()
    if arguments.gc_off:
        gc.disable()
    if arguments.switch_interval_us:
        sys.setswitchinterval(arguments.switch_interval_us / 1e6)
    anyio.run(main, arguments)
