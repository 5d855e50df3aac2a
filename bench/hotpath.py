"""Hot-path latency on the caller's side: ``record()``, ``reward()`` and ``decide()``.

Each call is timed individually with ``perf_counter_ns`` in ``buffered`` mode on an SQLite file;
every 100 calls the benchmark yields to the event loop (outside the timed region) so that the
collector keeps draining, as it would in an application. The reference measured in the same
run is a bare torch forward of a small MLP (the network a learned policy evaluates), single
sample, under ``torch.inference_mode``.

Targets: ``record()``/``reward()`` p99 <= 25 us; ``decide()`` with the baseline p99 <= 50 us.

    python bench/hotpath.py [--calls 50000] [--gc-off]

``--gc-off`` disables Python's cyclic garbage collector for the run, to show how much of the
p99 its collections account for. Without it, each line also says in how many calls a
collection ran (watched through ``gc.callbacks``, which changes nothing) and the p99 of the
other calls. ``--gc-freeze`` calls ``gc.freeze()`` once the runtime has started, as an
application may opt to (agentrt never does it itself).
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import anyio.lowlevel

from agentrt import Decision, Runtime, load_config

RESULTS = Path(__file__).resolve().parent / "results"
ACTIONS = ("search", "sql", "ask_human")


def percentiles(samples_ns: list[int]) -> tuple[float, float]:
    ordered = sorted(samples_ns)
    return ordered[len(ordered) // 2] / 1000, ordered[int(len(ordered) * 0.99)] / 1000


class Collections:
    """Counts the cyclic collector's collections (a ``gc.callbacks`` entry: observes only)."""

    def __init__(self) -> None:
        self.started = 0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.started += 1


async def timed(
    calls: int, call: Callable[[int], Awaitable[object]], collections: Collections
) -> dict[str, float]:
    samples = []
    quiet = []  # the calls during which no collection ran
    for i in range(calls):
        before = collections.started
        started = time.perf_counter_ns()
        await call(i)
        elapsed = time.perf_counter_ns() - started
        samples.append(elapsed)
        if collections.started == before:
            quiet.append(elapsed)
        if i % 100 == 99:
            await anyio.lowlevel.checkpoint()
    p50, p99 = percentiles(samples)
    return {
        "p50_us": p50,
        "p99_us": p99,
        "calls_with_gc_pct": 100 * (calls - len(quiet)) / calls,
        "p99_without_gc_us": percentiles(quiet)[1] if quiet else 0.0,
    }


def torch_forward(calls: int) -> tuple[float, float]:
    import torch

    torch.set_num_threads(1)
    net = torch.nn.Sequential(
        torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(),
        torch.nn.Linear(64, len(ACTIONS)),
    ).eval()  # fmt: skip
    x = torch.zeros(1, 64)
    samples = []
    with torch.inference_mode():
        for _ in range(1000):
            net(x)
        for _ in range(calls):
            started = time.perf_counter_ns()
            net(x)
            samples.append(time.perf_counter_ns() - started)
    return percentiles(samples)


async def main(args: argparse.Namespace) -> None:
    calls = args.calls
    report: dict[str, dict[str, float]] = {}
    collections = Collections()
    gc.callbacks.append(collections)
    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(
            None,
            {
                "database": {"url": f"sqlite+aiosqlite:///{tmp}/hotpath.db"},
                "runtime": {
                    "durability": "buffered",
                    "buffer_size": 4 * calls,
                    "seed": 1,
                    # Only the hot path is measured: no learning loop in the background.
                    "pipeline": "external",
                },
                "agents": {"router": {"actions": list(ACTIONS)}},
            },
        )
        async with Runtime(config) as rt:
            if args.gc_freeze:
                gc.collect()
                gc.freeze()
            contexts = [
                {"topic": ("billing", "outage")[i % 2], "len": i % 900} for i in range(calls)
            ]
            decisions: list[Decision] = []

            async def record(i: int) -> None:
                await rt.record("router", contexts[i], ACTIONS[i % 3], 1.0, propensity=1 / 3)

            async def decide(i: int) -> None:
                decisions.append(await rt.decide("router", contexts[i]))

            async def reward(i: int) -> None:
                await rt.reward(decisions[i], 1.0, outcome={"latency_ms": 12})

            await timed(1000, record, collections)  # warm-up
            for name, call in (("record", record), ("decide", decide), ("reward", reward)):
                report[name] = await timed(calls, call, collections)
            await rt.flush()
    p50, p99 = torch_forward(calls)
    report["torch_forward_mlp"] = {"p50_us": p50, "p99_us": p99}
    targets = {"record": 25.0, "reward": 25.0, "decide": 50.0}
    for name, figures in report.items():
        target = targets.get(name)
        verdict = (
            ""
            if target is None
            else (
                f"  target p99 <= {target:.0f} us: "
                + ("ok" if figures["p99_us"] <= target else "MISSED")
            )
        )
        ratio = figures["p99_us"] / report["torch_forward_mlp"]["p99_us"]
        collected = (
            f"   gc in {figures['calls_with_gc_pct']:.2f}% of calls, p99 of the others "
            f"{figures['p99_without_gc_us']:.1f} us"
            if "calls_with_gc_pct" in figures and not args.gc_off
            else ""
        )
        print(
            f"{name:<18} p50 {figures['p50_us']:7.1f} us   p99 {figures['p99_us']:7.1f} us   "
            f"p99 / bare torch forward p99 {ratio:4.2f}{verdict}{collected}"
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "hotpath.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=50_000, help="timed calls per operation")
    parser.add_argument("--gc-off", action="store_true", help="disable the cyclic GC")
    parser.add_argument(
        "--gc-freeze",
        action="store_true",
        help="gc.freeze() once the runtime has started, as an application may opt to",
    )
    arguments = parser.parse_args()
    if arguments.gc_off:
        gc.disable()
    anyio.run(main, arguments)
