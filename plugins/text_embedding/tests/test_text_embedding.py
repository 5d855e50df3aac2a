"""The text_embedding feature plugin: offline embeddings, its cache, and an agent that learns
what tickets *mean* rather than which words they use."""

from __future__ import annotations

import random
import re
import socket
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
from agentrt_text_embedding import (
    TextEmbedding,
    bundled_model_dir,
    read_model,
    text_embedding_plugin,
)

from agentrt import PluginError, Runtime, load_config
from agentrt.plugins import PluginRegistry

README = Path(__file__).resolve().parents[1] / "README.md"

# Support tickets of three kinds. The learner is trained on the first set and judged on the
# second, written in other words: a paraphrase shares (almost) no word with what it resembles.
TRAIN = {
    "billing": [
        "I was charged twice for the same order",
        "my invoice shows the wrong amount",
        "the refund still has not reached my bank",
        "why did my card get billed again this month",
        "the subscription price went up without notice",
        "payment failed at checkout",
        "please cancel the extra fee on my statement",
        "I need a receipt for my last purchase",
    ],
    "access": [
        "I can't sign in to my account",
        "the password reset email never arrives",
        "my account is locked after too many attempts",
        "the two-factor code is rejected",
        "I forgot my username",
        "the login page keeps saying invalid credentials",
        "I get logged out every few minutes",
        "the verification link has expired",
    ],
    "delivery": [
        "my package has not arrived yet",
        "the parcel was delivered to the wrong address",
        "the tracking number shows no updates",
        "the courier left the box in the rain",
        "my order is stuck in transit",
        "the shipment arrived damaged",
        "the driver never came",
        "the package was returned to sender",
    ],
}
PARAPHRASED = {
    "billing": [
        "I paid double, give me my money back",
        "there is an overcharge on the latest transaction",
        "the total I owe is higher than the quoted cost",
        "someone debited my visa without permission",
        "the renewal cost more than it should",
    ],
    "access": [
        "the website won't let me in even with the right passphrase",
        "I'm stuck outside my own dashboard",
        "the one-time PIN never shows up",
        "after several wrong tries I'm blocked from entering",
        "unable to get into the portal",
    ],
    "delivery": [
        "where is my stuff, it's been two weeks",
        "the postman dropped it at the neighbour's house",
        "the crate came broken and crushed",
        "the goods still haven't shown up at my door",
        "when will the truck bring my item",
    ],
}
TOPICS = tuple(TRAIN)
OPENINGS = ("", "Hi, ", "Hello team, ", "Urgent: ")
CLOSINGS = ("", " Thanks.", " Please help!", " Regards")


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, bool]]:
    # Here, not in a conftest.py: mypy checks plugins/ and tests/ together and would see two
    # modules named conftest. SQLAlchemy's async layer runs on asyncio only.
    return ("asyncio", {"debug": True})


@pytest.fixture(scope="module")
def embedding() -> TextEmbedding:
    return TextEmbedding()


def cosine(embedding: TextEmbedding, first: str, second: str) -> float:
    a, b = embedding.transform([first, second])
    return float(a @ b)


# -- the embeddings ------------------------------------------------------------------------


def test_the_entry_point_is_found_by_name() -> None:
    registry = PluginRegistry(enable=["text_embedding"])
    assert registry.names("feature") == ["text_embedding"]
    plugin = registry.create("feature", "text_embedding")
    assert isinstance(plugin, TextEmbedding)
    assert (plugin.name, plugin.dim, plugin.device) == ("text_embedding", 384, "cpu")


def test_embeddings_are_unit_length_float32_rows(embedding: TextEmbedding) -> None:
    vectors = embedding.transform(["my invoice is wrong", "", "my invoice is wrong", 42])

    assert vectors.shape == (4, 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(vectors[0], vectors[2])
    assert embedding.transform([]).shape == (0, 384)


def test_paraphrases_are_closer_than_unrelated_texts(embedding: TextEmbedding) -> None:
    pairs = [
        ("I was billed twice this month", "I paid double, give me my money back"),
        ("I can't sign in to my account", "the website won't let me log in"),
        ("my package has not arrived yet", "the courier hasn't brought my parcel"),
    ]
    for text, paraphrase in pairs:
        close = cosine(embedding, text, paraphrase)
        for other in [t for pair in pairs if text not in pair for t in pair]:
            assert close > cosine(embedding, text, other) + 0.15, (text, paraphrase, other)


def test_lists_are_embedded_as_their_joined_words(embedding: TextEmbedding) -> None:
    joined, listed = embedding.transform(["refund my order", ["refund", "my", "order"]])
    assert np.array_equal(joined, listed)


# -- cache, threads, offline ----------------------------------------------------------------


class Counting(TextEmbedding):
    """Counts the texts that reach the model."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.embedded: list[str] = []

    def embed(self, texts: list[str]) -> np.ndarray[Any, np.dtype[np.float32]]:
        self.embedded += texts
        return super().embed(texts)


def test_recent_texts_come_from_the_cache() -> None:
    plugin = Counting(cache_size=2)

    first = plugin.transform(["alpha", "beta", "alpha"])
    again = plugin.transform(["beta", "alpha"])
    assert plugin.embedded == ["alpha", "beta"]  # each distinct text once, then cached
    assert np.array_equal(again, first[[1, 0]])

    plugin.transform(["gamma"])  # evicts the least recently used: beta
    plugin.transform(["alpha", "beta"])
    assert plugin.embedded == ["alpha", "beta", "gamma", "beta"]


def test_no_cache_embeds_every_call() -> None:
    plugin = Counting(cache_size=0)
    plugin.transform(["alpha"])
    plugin.transform(["alpha"])
    assert plugin.embedded == ["alpha", "alpha"]


async def test_threads_may_embed_at_once(embedding: TextEmbedding) -> None:
    texts = [f"ticket number {i} about {topic}" for i in range(12) for topic in TOPICS]
    expected = TextEmbedding(cache_size=0).transform(texts)
    plugin = TextEmbedding()
    results: dict[int, np.ndarray[Any, np.dtype[np.float32]]] = {}

    async def worker(part: int) -> None:
        chunk = texts[part::4]
        results[part] = await anyio.to_thread.run_sync(plugin.transform, chunk)

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for part in range(4):
                tg.start_soon(worker, part)
    for part in range(4):
        np.testing.assert_allclose(results[part], expected[part::4], atol=1e-5)


def test_the_model_loads_with_the_network_blocked(monkeypatch: pytest.MonkeyPatch) -> None:
    attempts: list[object] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(args)
        raise OSError("network access in a test of an offline model")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)

    model = read_model(bundled_model_dir(), "cpu")  # a fresh load, not the shared copy
    vectors = model.encode(
        ["offline"],
        batch_size=1,
        convert_to_numpy=True,
        normalize_embeddings=True,
        show_progress_bar=False,
    )

    assert vectors.shape == (1, 384)
    assert attempts == []


def test_a_directory_without_a_model_is_a_plugin_error(tmp_path: Path) -> None:
    with pytest.raises(PluginError, match="not a sentence-transformers model directory"):
        TextEmbedding(model_dir=tmp_path)
    with pytest.raises(PluginError, match="cache_size must be >= 0"):
        TextEmbedding(cache_size=-1)


def test_a_plugin_under_another_name_carries_its_options() -> None:
    plugin = text_embedding_plugin("ticket_embedding", cache_size=10, batch_size=8)
    registry = PluginRegistry()
    registry.register(plugin)

    built = registry.create("feature", "ticket_embedding")

    assert isinstance(built, TextEmbedding)
    assert (built.name, built.cache_size, built.batch_size) == ("ticket_embedding", 10, 8)


# -- an agent that learns what tickets mean -------------------------------------------------


def readme_config() -> dict[str, Any]:
    """The YAML example of the README, as a mapping."""
    yaml = pytest.importorskip("yaml")
    block = re.search(r"```yaml\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL)
    assert block is not None
    parsed: dict[str, Any] = yaml.safe_load(block.group(1))
    return parsed


def test_the_readme_example_is_a_valid_configuration() -> None:
    config = load_config(readme_config())
    assert config.plugins.enable == ["text_embedding"]
    assert config.agents["support"].features == {"ticket": "text_embedding"}
    assert tuple(config.agents["support"].actions) == TOPICS


def ticket_config(url: str, spill: Path, *, embed: bool) -> Any:
    """The README's configuration, with or without its ``features`` line."""
    raw = readme_config()
    if not embed:
        del raw["agents"]["support"]["features"]
    overrides = {"database.url": url, "runtime.seed": 1, "runtime.spill_dir": str(spill)}
    return load_config(raw, {**overrides, "runtime.device": "cpu"})


async def route(
    rt: Runtime, tickets: dict[str, list[str]], rounds: int, rng: random.Random
) -> float:
    """Route ``rounds`` random tickets; the reward is 1 when the team matches the topic."""
    total = 0.0
    for i in range(rounds):
        topic = TOPICS[i % len(TOPICS)]
        text = rng.choice(OPENINGS) + rng.choice(tickets[topic]) + rng.choice(CLOSINGS)
        decision = await rt.decide("support", {"ticket": text, "channel": "email"})
        reward = float(decision.action == topic)
        await rt.reward(decision, reward)
        total += reward
    return total / rounds


async def learn_and_judge(tmp_path: Path, *, embed: bool) -> tuple[float, float, str]:
    """(reward on the training tickets before learning, on paraphrases after, cycle status)."""
    name = "embedded" if embed else "hashed"
    config = ticket_config(
        f"sqlite+aiosqlite:///{tmp_path / name}.db", tmp_path / name, embed=embed
    )
    rng = random.Random(7)
    async with Runtime(config) as rt:
        before = await route(rt, TRAIN, 300, rng)
        status = (await rt.run_cycle("support"))["support"].status
        after = await route(rt, PARAPHRASED, 90, rng)
    return before, after, status


async def test_embeddings_let_an_agent_route_paraphrased_tickets(tmp_path: Path) -> None:
    before, embedded, status = await learn_and_judge(tmp_path, embed=True)
    _, hashed, _ = await learn_and_judge(tmp_path, embed=False)

    assert status == "activated"
    assert before == pytest.approx(1 / 3, abs=0.1)  # the uniform baseline
    assert embedded >= 0.75, (embedded, hashed)
    assert embedded > hashed + 0.25, (embedded, hashed)


async def test_a_restarted_runtime_serves_the_embedding_policy(tmp_path: Path) -> None:
    config = ticket_config(f"sqlite+aiosqlite:///{tmp_path / 'restart'}.db", tmp_path, embed=True)
    rng = random.Random(3)
    async with Runtime(config) as rt:
        await route(rt, TRAIN, 120, rng)
        assert (await rt.run_cycle("support"))["support"].status == "activated"

    async with Runtime(config) as restarted:  # the policy is rebuilt from its artifact
        assert restarted.active_version("support") == 1
        decision = await restarted.decide("support", {"ticket": "I paid double, refund me"})
    assert decision.policy_version == 1
