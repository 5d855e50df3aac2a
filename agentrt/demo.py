"""The demo: simulated agent applications that embed agentrt through its public API only.

- ``router``: a support-ticket router choosing among tools (``search``, ``sql``, ``ask_human``)
  whose success, latency and cost depend on the ticket (topic, length, VIP). Midway through,
  the ``sql`` tool degrades for billing tickets (a planted drift) and the agent must adapt.
- ``prompt``: a second agent in the same runtime picking one of three prompt templates, whose
  quality depends on the ticket's language.
- ``navigator``: an episodic agent walking a corridor (``left``/``right``, a 10% chance of
  slipping) whose only reward is reaching the far end; it learns from whole episodes with the
  ``dqn`` learner (``rt.episode()``), so it must learn to walk towards a reward many steps away.

Each round the applications make decisions and report rewards; then ``run_cycle()`` trains and
hot-swaps a new version. Everything is seeded, so a run is reproducible.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from agentrt.config import load_config
from agentrt.runtime import Runtime

__all__ = ["DemoResult", "RoundResult", "demo_config", "run_demo"]

TOOLS = ("search", "sql", "ask_human")
TOPICS = ("billing", "outage", "account", "refund")
PROMPTS = ("concise", "friendly", "formal")
LANGUAGES = ("en", "de", "fr")

# Probability that a tool resolves a ticket of a topic (before the drift).
SUCCESS = {
    "billing": {"search": 0.30, "sql": 0.88, "ask_human": 0.60},
    "outage": {"search": 0.82, "sql": 0.20, "ask_human": 0.55},
    "account": {"search": 0.40, "sql": 0.45, "ask_human": 0.90},
    "refund": {"search": 0.35, "sql": 0.75, "ask_human": 0.70},
}
DRIFTED = {**SUCCESS, "billing": {"search": 0.30, "sql": 0.15, "ask_human": 0.60}}
MOVES = ("left", "right")
CORRIDOR = 7  # cells; the walk starts in the middle and ends at the right end (reward 1)
HORIZON = 20  # steps before an episode gives up
SLIP = 0.1  # chance that a move goes the other way
PROMPT_QUALITY = {
    "en": {"concise": 0.8, "friendly": 0.6, "formal": 0.4},
    "de": {"concise": 0.5, "friendly": 0.4, "formal": 0.85},
    "fr": {"concise": 0.45, "friendly": 0.8, "formal": 0.5},
}


def demo_config(database: Path, seed: int, window: int = 1000) -> dict[str, Any]:
    """The demo's configuration: the embedded SQLite default with two agents.

    ``window`` is the training window in rows: learning from recent experience only is what
    lets the router recover from the drift.
    """
    return {
        "database": {"url": f"sqlite+aiosqlite:///{database}"},
        # The demo drives learning with run_cycle() after each round, so that every run with
        # the same seed is the same; applications usually let the embedded pipeline do it.
        "runtime": {"durability": "buffered", "seed": seed, "pipeline": "external"},
        "agents": {
            "router": {
                "actions": list(TOOLS),
                "baseline": "uniform",
                "model": "router_model",
                "exploration": {"method": "epsilon_greedy", "epsilon": 0.1, "floor": 0.05},
                "training": {"window": window, "min_rows": 100},
            },
            "prompt": {
                "actions": list(PROMPTS),
                "learner": "linear",
                "exploration": {"method": "thompson", "floor": 0.05},
                "training": {"window": window, "min_rows": 100},
            },
            "navigator": {
                "actions": list(MOVES),
                "model": "navigator_model",
                "exploration": {"method": "epsilon_greedy", "epsilon": 0.2, "floor": 0.05},
                "training": {"window": 4 * window, "min_rows": 100, "feature_dim": 16},
                # Episodic returns are not comparable per decision: sanity and latency checks.
                "validation": {"validators": ["sanity", "latency"]},
            },
        },
        "experience_configuration": {
            # More sensitive than the default (fewer false alarms matter less in a demo): a
            # 0.3-standard-deviation drop of the reward is caught within about a hundred rewards.
            "analysis": {"change_detection": {"delta": 0.1, "threshold": 10.0}},
        },
        "model_configuration": {
            "learning_models": {
                "router_model": {
                    "type": "contextual_bandit",
                    "architecture": "mlp",
                    "parameters": {
                        "learning_rate": 0.01,
                        "batch_size": 128,
                        "epochs": 15,
                        "hidden_size": 32,
                        "num_layers": 1,
                    },
                },
                "navigator_model": {
                    "type": "reinforcement_learning",
                    "architecture": "mlp",
                    "parameters": {
                        "learning_rate": 3e-3,
                        "epochs": 60,
                        "hidden_size": 32,
                        "num_layers": 1,
                        "gamma": 0.9,
                        "target_sync": 50,
                        # The demo's logs come from its own exploring policy, not from a
                        # fixed old one: a light conservative penalty is enough.
                        "conservative_weight": 0.1,
                    },
                },
            }
        },
    }


@dataclass
class RoundResult:
    """One round of the demo: mean reward per agent and the versions that served it."""

    index: int
    drifted: bool
    rewards: dict[str, float]
    versions: dict[str, int | None]
    cycle: dict[str, str] = field(default_factory=dict)


@dataclass
class DemoResult:
    """The whole run."""

    database: Path
    rounds: list[RoundResult]
    decisions: int

    def baseline_reward(self, agent: str) -> float:
        """Mean reward of round 0, served by the baseline."""
        return self.rounds[0].rewards[agent]

    def learned_reward(self, agent: str) -> float:
        """Mean reward of the learned versions before the drift (rounds 1 .. drift-1)."""
        learned = [r.rewards[agent] for r in self.rounds[1:] if not r.drifted]
        return sum(learned) / len(learned) if learned else math.nan

    def after_drift_reward(self, agent: str, last: int = 2) -> float:
        """Mean reward of the last rounds, after the drift."""
        tail = [r.rewards[agent] for r in self.rounds if r.drifted][-last:]
        return sum(tail) / len(tail) if tail else math.nan


async def walk(rt: Runtime, rng: random.Random) -> float:
    """One navigator episode through ``rt.episode()``; 1.0 when it reached the end."""
    async with rt.episode("navigator") as ep:
        cell = CORRIDOR // 2
        for _ in range(HORIZON):
            decision = await ep.decide({"cell": f"c{cell}", "position": cell})
            step = 1 if decision.action == "right" else -1
            cell = min(max(cell + (-step if rng.random() < SLIP else step), 0), CORRIDOR - 1)
            reached = cell == CORRIDOR - 1
            await ep.reward(1.0 if reached else 0.0, decision)
            if reached:
                return 1.0
    return 0.0


async def run_demo(
    out: Path,
    *,
    seed: int = 7,
    rounds: int = 8,
    decisions_per_round: int = 400,
    episodes_per_round: int = 40,
    on_round: Callable[[RoundResult], None] | None = None,
) -> DemoResult:
    """Run the simulated applications against a fresh SQLite file in ``out``."""
    directory = anyio.Path(out)
    await directory.mkdir(parents=True, exist_ok=True)
    database = out / "demo.db"
    async for stale in directory.glob("demo.db*"):
        await stale.unlink()
    rng = random.Random(seed)
    config = load_config(demo_config(database, seed, window=2 * decisions_per_round))
    results: list[RoundResult] = []
    async with Runtime(config) as rt:
        for index in range(rounds):
            drifted = index >= rounds // 2
            table = DRIFTED if drifted else SUCCESS
            totals = {"router": 0.0, "prompt": 0.0}
            versions: dict[str, int | None] = {}
            for _ in range(decisions_per_round):
                topic = rng.choice(TOPICS)
                language = rng.choice(LANGUAGES)
                length = rng.randint(20, 2000)
                vip = rng.random() < 0.2
                ticket = {"topic": topic, "len": length, "vip": vip, "language": language}
                tool = await rt.decide("router", ticket)
                solved = rng.random() < table[topic][tool.action]
                latency = {"search": 120, "sql": 60, "ask_human": 900}[tool.action]
                cost = {"search": 0.01, "sql": 0.002, "ask_human": 0.5}[tool.action]
                await rt.reward(
                    tool,
                    1.0 if solved else 0.0,
                    outcome={"latency_ms": latency * (1.5 if vip else 1.0), "cost": cost},
                )
                prompt = await rt.decide("prompt", {"language": language, "vip": vip})
                liked = rng.random() < PROMPT_QUALITY[language][prompt.action]
                await rt.reward(prompt, 1.0 if liked else 0.0)
                totals["router"] += 1.0 if solved else 0.0
                totals["prompt"] += 1.0 if liked else 0.0
                versions = {"router": tool.policy_version, "prompt": prompt.policy_version}
            versions["navigator"] = rt.active_version("navigator")
            walked = [await walk(rt, rng) for _ in range(episodes_per_round)]
            report = await rt.run_cycle()
            result = RoundResult(
                index=index,
                drifted=drifted,
                rewards={
                    **{k: v / decisions_per_round for k, v in totals.items()},
                    "navigator": sum(walked) / len(walked),
                },
                versions=versions,
                cycle={cycle.agent_id: cycle.status for cycle in report.agents},
            )
            results.append(result)
            if on_round is not None:
                on_round(result)
    return DemoResult(database, results, rounds * decisions_per_round * 2)
