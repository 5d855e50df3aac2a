"""The learner template: beats uniform random, round-trips, is deterministic, and runs in a
real runtime enabled from its README's YAML."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
from agentrt_learner_template import TemplateLearner, TemplateModel
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from agentrt import Learner, RewardModel, Runtime, load_config
from agentrt.config import ModelParametersConfig
from agentrt.learning.data import BanditData
from agentrt.learning.settings import LearnerSettings
from agentrt.plugins import PluginRegistry

README = Path(__file__).resolve().parents[1] / "README.md"
Floats = npt.NDArray[np.float32]


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, bool]]:
    # Here, not in a conftest.py: mypy checks plugins/ and tests/ together and would see two
    # modules named conftest. SQLAlchemy's async layer runs on asyncio only.
    return ("asyncio", {"debug": True})


def settings(seed: int = 0) -> LearnerSettings:
    parameters = ModelParametersConfig(learning_rate=1e-2, epochs=40, hidden_size=16, batch_size=32)
    return LearnerSettings(parameters=parameters, seed=seed)


def bandit_task(name: str, seed: int = 0) -> tuple[BanditData, Floats, npt.NDArray[np.int64]]:
    """A labelled dataset as logged bandit feedback: the classes are the actions, one uniformly
    random action is logged per training example, and its reward is 1 when it is the label.
    Returns the training data and the held-out features and labels."""
    datasets = pytest.importorskip("sklearn.datasets")
    features, labels = getattr(datasets, f"load_{name}")(return_X_y=True)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    features, labels = features[order], labels[order].astype(np.int64)
    cut = int(0.7 * len(labels))
    mean, std = features[:cut].mean(axis=0), features[:cut].std(axis=0)
    scaled = ((features - mean) / np.where(std > 0, std, 1.0)).astype(np.float32)
    k = int(labels.max()) + 1
    logged = rng.integers(0, k, size=cut).astype(np.int64)
    train = BanditData(
        actions=tuple(f"class{i}" for i in range(k)),
        features=scaled[:cut],
        action_index=logged,
        rewards=(logged == labels[:cut]).astype(np.float32),
        propensities=np.full(cut, 1.0 / k, dtype=np.float32),
    )
    return train, scaled[cut:], labels[cut:]


# -- the protocols -----------------------------------------------------------------------


def test_the_entry_point_is_found_by_name() -> None:
    registry = PluginRegistry(enable=["template_learner"])
    assert "template_learner" in registry.names("learner")
    learner = registry.create("learner", "template_learner", settings())
    assert isinstance(learner, TemplateLearner)


def test_it_implements_the_learner_and_reward_model_protocols() -> None:
    train, _, _ = bandit_task("iris")
    learner = TemplateLearner(settings())
    model, metrics = learner.fit(train)

    assert isinstance(learner, Learner)
    assert isinstance(model, RewardModel)
    assert metrics["rows"] == len(train)
    assert metrics["epochs"] == 40
    assert np.isfinite(metrics["train_loss"])
    json.dumps(metrics)
    json.dumps(model.describe())


# -- learning ---------------------------------------------------------------------------


@pytest.mark.parametrize("dataset", ["iris", "wine", "breast_cancer"])
def test_it_beats_uniform_random(dataset: str) -> None:
    train, features, labels = bandit_task(dataset)
    model, _ = TemplateLearner(settings()).fit(train)

    means, stds = model.predict(features)

    accuracy = float(np.mean(np.argmax(means, axis=1) == labels))
    assert accuracy >= 1 / len(train.actions) + 0.25, accuracy
    assert means.shape == (len(labels), len(train.actions))
    assert stds is None


def test_the_same_seed_gives_the_same_model() -> None:
    train, features, _ = bandit_task("wine")

    first, _ = TemplateLearner(settings(seed=3)).fit(train)
    again, _ = TemplateLearner(settings(seed=3)).fit(train)
    other, _ = TemplateLearner(settings(seed=4)).fit(train)

    assert np.array_equal(first.predict(features)[0], again.predict(features)[0])
    assert not np.array_equal(first.predict(features)[0], other.predict(features)[0])


def test_save_and_load_give_identical_predictions() -> None:
    train, features, _ = bandit_task("wine")
    model, _ = TemplateLearner(settings()).fit(train)

    # What agentrt stores: safetensors bytes and JSON metadata.
    blob = save_tensors(model.tensors())
    metadata = json.loads(json.dumps(model.describe()))
    loaded = TemplateLearner.load(load_tensors(blob), metadata)

    assert isinstance(loaded, TemplateModel)
    assert np.array_equal(loaded.predict(features)[0], model.predict(features)[0])


def test_weights_that_do_not_fit_the_description_are_refused() -> None:
    train, _, _ = bandit_task("iris")
    model, _ = TemplateLearner(settings()).fit(train)

    with pytest.raises(RuntimeError, match="size mismatch"):
        TemplateLearner.load(model.tensors(), {**model.describe(), "hidden": 8})


# -- in a runtime, enabled from the README ------------------------------------------------

ACTIONS = ("search", "sql", "ask_human")
BEST = {"billing": "sql", "outage": "search", "legal": "ask_human"}


def readme_config(tmp_path: Path) -> Any:
    """The README's YAML example with a database in ``tmp_path``."""
    yaml = pytest.importorskip("yaml")
    block = re.search(r"```yaml\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL)
    assert block is not None
    return load_config(
        yaml.safe_load(block.group(1)),
        {
            "database.url": f"sqlite+aiosqlite:///{tmp_path / 'template.db'}",
            "runtime.seed": 5,
            "runtime.device": "cpu",
            "runtime.spill_dir": str(tmp_path / "spill"),
        },
    )


async def play(rt: Runtime, rounds: int, rng: random.Random) -> tuple[float, set[int | None]]:
    """Each topic has one best action (reward 1 with probability 0.8, else 0.2)."""
    total, versions = 0.0, set()
    for i in range(rounds):
        topic = list(BEST)[i % len(BEST)]
        decision = await rt.decide("router", {"topic": topic})
        won = rng.random() < (0.8 if decision.action == BEST[topic] else 0.2)
        await rt.reward(decision, float(won))
        total += float(won)
        versions.add(decision.policy_version)
    return total / rounds, versions


async def test_a_runtime_trains_serves_and_reloads_the_template(tmp_path: Path) -> None:
    config = readme_config(tmp_path)
    assert config.agents["router"].learner == "template_learner"
    rng = random.Random(2)
    async with Runtime(config) as rt:
        baseline, _ = await play(rt, 300, rng)
        cycle = (await rt.run_cycle("router"))["router"]
        learned, versions = await play(rt, 150, rng)

    assert cycle.status == "activated", cycle.reason
    assert cycle.learner == "template_learner"
    assert cycle.metrics["epochs"] == 20  # from the README's model_configuration
    assert versions == {1}
    assert learned > baseline + 0.2, (baseline, learned)

    async with Runtime(config) as restarted:  # the stored version is rebuilt by load()
        assert restarted.active_version("router") == 1
        decision = await restarted.decide("router", {"topic": "legal"})
    assert decision.policy_version == 1


@pytest.fixture(autouse=True)
def one_torch_thread() -> Any:
    """Small models on a shared machine: one intra-op thread, restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
