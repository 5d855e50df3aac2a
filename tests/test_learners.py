"""Learners on the supervised-to-bandit protocol, with scikit-learn's bundled datasets.

Each labelled example is one round: the context is the (standardised) feature vector, the
actions are the classes, and the reward is 1 when the action is the label. The logging policy
is uniform (propensity ``1/k``, fixed seed), so the logged data shows one random action per
example. A learner that understood the task must then pick the label greedily on held-out
examples far more often than ``1/k``. Everything runs on CPU under fixed seeds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pytest
import torch
from sklearn.datasets import (  # type: ignore[import-untyped]
    load_breast_cancer,
    load_iris,
    load_wine,
)

from agentrt.config import ModelParametersConfig, TrainingConfig
from agentrt.errors import ArtifactIntegrityError, PolicyError
from agentrt.exploration import EpsilonGreedy, UpperConfidenceBound
from agentrt.learning.artifacts import sha256
from agentrt.learning.data import BanditData
from agentrt.learning.features import FeatureEncoder, FeatureSpec
from agentrt.learning.linear import PRIOR_ROWS, LinearLearner, LinearModel
from agentrt.learning.neural import NeuralLearner, NeuralModel
from agentrt.learning.settings import LearnerSettings
from agentrt.pipeline.updater import Trained, _artifact, load_policy
from agentrt.plugins import PluginRegistry
from agentrt.policy import LearnedPolicy
from agentrt.schemas import PolicyVersion
from agentrt.types import Learner, RewardModel

Floats = npt.NDArray[np.float32]
Labels = npt.NDArray[np.int64]

LOADERS: dict[str, Callable[..., Any]] = {
    "iris": load_iris,
    "wine": load_wine,
    "breast_cancer": load_breast_cancer,
}


@dataclass(frozen=True)
class Task:
    """Logged bandit feedback from a classification dataset, and its held-out part."""

    train: BanditData
    test_features: Floats
    test_labels: Labels

    @property
    def classes(self) -> int:
        return len(self.train.actions)


def bandit_task(name: str, seed: int = 0, train_share: float = 0.7) -> Task:
    """Standardise, split, and log one uniformly random action per training example."""
    features, labels = LOADERS[name](return_X_y=True)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    features, labels = features[order], labels[order].astype(np.int64)
    cut = int(train_share * len(labels))
    mean, std = features[:cut].mean(axis=0), features[:cut].std(axis=0)
    std[std == 0] = 1.0
    scaled = ((features - mean) / std).astype(np.float32)
    k = int(labels.max()) + 1
    logged = rng.integers(0, k, size=cut).astype(np.int64)
    train = BanditData(
        actions=tuple(f"class{i}" for i in range(k)),
        features=scaled[:cut],
        action_index=logged,
        rewards=(logged == labels[:cut]).astype(np.float32),
        propensities=np.full(cut, 1.0 / k, dtype=np.float32),
    )
    return Task(train, scaled[cut:], labels[cut:])


def greedy_accuracy(model: RewardModel, task: Task) -> float:
    means, _ = model.predict(task.test_features)
    return float(np.mean(np.argmax(means, axis=1) == task.test_labels))


def neural_settings(
    architecture: Literal["mlp", "transformer"] = "mlp",
    *,
    seed: int = 0,
    epochs: int = 30,
    dropout: float = 0.0,
) -> LearnerSettings:
    return LearnerSettings(
        architecture=architecture,
        parameters=ModelParametersConfig(
            learning_rate=1e-2,
            batch_size=32,
            epochs=epochs,
            hidden_size=16,
            num_layers=1,
            dropout=dropout,
        ),
        training=TrainingConfig(patience=30),
        seed=seed,
    )


# Small models on a shared machine: one intra-op thread (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- beating uniform random ----------------------------------------------------------------


@pytest.mark.parametrize("dataset", list(LOADERS))
def test_linear_learner_beats_uniform_random(dataset: str) -> None:
    task = bandit_task(dataset)
    model, metrics = LinearLearner(LearnerSettings()).fit(task.train)
    accuracy = greedy_accuracy(model, task)
    assert accuracy >= 1 / task.classes + 0.25, accuracy
    assert metrics["rows"] == len(task.train)
    assert sum(metrics["rows_per_action"]) == len(task.train)
    assert np.isfinite(metrics["train_mse"])


@pytest.mark.parametrize("dataset", list(LOADERS))
def test_neural_learner_beats_uniform_random(dataset: str) -> None:
    task = bandit_task(dataset)
    model, metrics = NeuralLearner(neural_settings()).fit(task.train)
    accuracy = greedy_accuracy(model, task)
    assert accuracy >= 1 / task.classes + 0.25, accuracy
    assert metrics["rows"] == len(task.train)
    assert metrics["train_rows"] + metrics["holdout_rows"] == len(task.train)
    assert metrics["holdout_rows"] > 0
    assert 1 <= metrics["best_epoch"] <= metrics["epochs"] <= 30
    assert len(metrics["loss_curve"]) == metrics["epochs"]
    assert metrics["device"] == "cpu"


def test_transformer_trains_and_beats_uniform_random_on_iris() -> None:
    task = bandit_task("iris")
    model, metrics = NeuralLearner(neural_settings("transformer")).fit(task.train)
    assert model.spec["architecture"] == "transformer"
    assert greedy_accuracy(model, task) >= 1 / 3 + 0.25
    curve = metrics["loss_curve"]
    assert curve[-1]["train_loss"] < curve[0]["train_loss"]


def test_linear_model_is_the_per_action_ridge_solution() -> None:
    task = bandit_task("iris")
    ridge = 0.5
    model, _ = LinearLearner(LearnerSettings(training=TrainingConfig(ridge=ridge))).fit(task.train)
    x = np.concatenate([task.train.features, np.ones((len(task.train), 1))], axis=1)
    x = x.astype(np.float64)
    for action in range(task.classes):
        rows = task.train.action_index == action
        gram = ridge * np.eye(x.shape[1]) + x[rows].T @ x[rows]
        theta = np.linalg.solve(gram, x[rows].T @ task.train.rewards[rows].astype(np.float64))
        assert model.theta[action].numpy() == pytest.approx(theta, abs=1e-9)
        assert model.a_inv[action].numpy() == pytest.approx(np.linalg.inv(gram), abs=1e-9)
        residuals = task.train.rewards[rows] - x[rows] @ theta
        penalised = float(residuals @ residuals + ridge * theta @ theta)
        assert float(model.sse[action]) == pytest.approx(penalised, abs=1e-9)
        assert float(model.rows[action]) == rows.sum()
    means, stds = model.predict(task.test_features)
    assert means.shape == stds.shape == (len(task.test_labels), task.classes)
    assert np.all(stds > 0)


def test_linear_uncertainty_is_scaled_by_the_residual_noise() -> None:
    task = bandit_task("iris")
    model, metrics = LinearLearner(LearnerSettings()).fit(task.train)
    noise = (model.sse.numpy() + PRIOR_ROWS) / (model.rows.numpy() + PRIOR_ROWS)
    assert metrics["noise_per_action"] == pytest.approx(list(noise), abs=1e-6)
    # 0/1 rewards: the residual variance is well below the unit noise LinUCB assumes.
    assert np.all(noise < 0.3)
    unit = LinearModel(model.theta, model.a_inv)
    assert np.array_equal(unit.noise(), np.ones(task.classes))
    _, stds = model.predict(task.test_features)
    _, unit_stds = unit.predict(task.test_features)
    np.testing.assert_allclose(stds, unit_stds * np.sqrt(noise), rtol=1e-12)


def test_linear_uncertainty_shrinks_with_more_data() -> None:
    task = bandit_task("breast_cancer")
    few, _ = LinearLearner(LearnerSettings()).fit(task.train.subset(np.arange(40)))
    many, _ = LinearLearner(LearnerSettings()).fit(task.train)
    _, std_few = few.predict(task.test_features)
    _, std_many = many.predict(task.test_features)
    assert float(std_many.mean()) < float(std_few.mean())


def test_linear_rank_one_updates_equal_the_closed_form_fit() -> None:
    task = bandit_task("wine")
    settings = LearnerSettings(training=TrainingConfig(ridge=2.0))
    whole, _ = LinearLearner(settings).fit(task.train)
    half = len(task.train) // 2
    model, _ = LinearLearner(settings).fit(task.train.subset(np.arange(half)))
    rest = task.train.subset(np.arange(half, len(task.train)))
    model.update(rest.features, rest.action_index, rest.rewards)
    for name, tensor in whole.tensors().items():
        np.testing.assert_allclose(model.tensors()[name].numpy(), tensor.numpy(), atol=1e-9)
    means, stds = model.predict(task.test_features)
    whole_means, whole_stds = whole.predict(task.test_features)
    np.testing.assert_allclose(means, whole_means, atol=1e-9)
    np.testing.assert_allclose(stds, whole_stds, atol=1e-9)


def test_linear_updates_from_the_empty_model_beat_uniform_random() -> None:
    # The per-reward path: start from the prior, explore by UCB, learn after every round.
    for dataset in LOADERS:
        features, labels = LOADERS[dataset](return_X_y=True)
        order = np.random.default_rng(0).permutation(len(labels))
        std = features.std(axis=0)
        scaled = ((features - features.mean(axis=0)) / np.where(std > 0, std, 1.0))[order]
        scaled = scaled.astype(np.float32)
        k = int(labels.max()) + 1
        model = LinearModel.prior(k, features.shape[1], ridge=10.0)
        strategy = UpperConfidenceBound(confidence=0.5)
        rng = np.random.default_rng(0)
        total = 0.0
        for x, label in zip(scaled, labels[order], strict=True):
            means, stds = model.predict(x[None, :])
            action = int(rng.choice(k, p=strategy.probabilities(means[0], None, stds[0])))
            reward = float(action == label)
            model.update(x[None, :], np.array([action]), np.array([reward], dtype=np.float32))
            total += reward
        assert total / len(labels) >= 1 / k + 0.4, (dataset, total / len(labels))


def test_a_linear_artifact_without_noise_statistics_loads_with_unit_noise() -> None:
    task = bandit_task("iris")
    model, _ = LinearLearner(LearnerSettings()).fit(task.train)
    older = LinearLearner.load({"theta": model.theta, "a_inv": model.a_inv}, model.describe())
    assert np.array_equal(older.noise(), np.ones(task.classes))
    assert np.array_equal(
        older.predict(task.test_features)[0], model.predict(task.test_features)[0]
    )


# -- reproducibility -----------------------------------------------------------------------


def test_neural_training_is_reproducible_under_a_seed() -> None:
    task = bandit_task("wine")
    first, _ = NeuralLearner(neural_settings(seed=3, epochs=8, dropout=0.1)).fit(task.train)
    second, _ = NeuralLearner(neural_settings(seed=3, epochs=8, dropout=0.1)).fit(task.train)
    other, _ = NeuralLearner(neural_settings(seed=4, epochs=8, dropout=0.1)).fit(task.train)
    a, b, c = first.tensors(), second.tensors(), other.tensors()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert not all(torch.equal(a[name], c[name]) for name in a)
    assert np.array_equal(
        first.predict(task.test_features)[0], second.predict(task.test_features)[0]
    )


def test_linear_training_is_reproducible() -> None:
    task = bandit_task("wine")
    first, _ = LinearLearner(LearnerSettings(seed=1)).fit(task.train)
    second, _ = LinearLearner(LearnerSettings(seed=2)).fit(task.train)
    assert torch.equal(first.theta, second.theta)
    assert np.array_equal(
        first.predict(task.test_features)[0], second.predict(task.test_features)[0]
    )


# -- save and load through the updater's artifact ------------------------------------------


def round_trip(
    name: str, model: RewardModel, actions: tuple[str, ...], inputs: int
) -> tuple[LearnedPolicy, FeatureEncoder]:
    """Store ``model`` as the updater does and load it back with :func:`load_policy`."""
    encoder = FeatureEncoder(FeatureSpec(dim=inputs)).fit([{"x": 1.0}, {"x": 3.0}])
    trained = Trained(model, encoder, actions, {}, [])
    artifact = _artifact(name, trained)
    row = PolicyVersion(
        agent_id="classifier", version=1, learner=name, artifact=artifact, sha256=sha256(artifact)
    )
    return load_policy(row, PluginRegistry(), EpsilonGreedy()), encoder


@pytest.mark.parametrize(
    ("name", "learner"),
    [
        ("linear", LinearLearner(LearnerSettings())),
        ("neural", NeuralLearner(neural_settings(epochs=3))),
        ("neural", NeuralLearner(neural_settings("transformer", epochs=3))),
    ],
    ids=["linear", "mlp", "transformer"],
)
def test_save_and_load_give_identical_predictions(name: str, learner: Learner) -> None:
    task = bandit_task("iris")
    model, _ = learner.fit(task.train)
    policy, encoder = round_trip(name, model, task.train.actions, task.train.features.shape[1])
    assert policy.version == 1
    assert policy.learner == name
    assert policy.actions == task.train.actions
    assert type(policy.model) is type(model)
    before_means, before_stds = model.predict(task.test_features)
    after_means, after_stds = policy.model.predict(task.test_features)
    assert np.array_equal(before_means, after_means)
    if before_stds is None:
        assert after_stds is None
    else:
        # Equal up to rounding; bitwise equality is the xfail test below.
        assert after_stds is not None
        np.testing.assert_allclose(after_stds, before_stds, rtol=1e-12, atol=0)
    for key, value in encoder.state().items():
        assert np.array_equal(policy.encoder.state()[key], value), key
    assert policy.encoder.spec == encoder.spec


def test_linear_uncertainty_is_bitwise_identical_after_save_and_load() -> None:
    task = bandit_task("iris")
    model, _ = LinearLearner(LearnerSettings()).fit(task.train)
    policy, _ = round_trip("linear", model, task.train.actions, task.train.features.shape[1])
    _, before = model.predict(task.test_features)
    _, after = policy.model.predict(task.test_features)
    assert after is not None
    assert np.array_equal(before, after)


def test_a_neural_model_loaded_with_wrong_shapes_is_a_policy_error() -> None:
    task = bandit_task("iris")
    model, _ = NeuralLearner(neural_settings(epochs=1)).fit(task.train)
    assert isinstance(model, NeuralModel)
    model.spec = {**model.spec, "hidden_size": 8}  # the metadata no longer matches the weights
    with pytest.raises(PolicyError, match="cannot rebuild its model") as caught:
        round_trip("neural", model, task.train.actions, 4)
    assert not isinstance(caught.value, ArtifactIntegrityError)


def test_an_artifact_stored_under_another_learner_is_refused() -> None:
    task = bandit_task("iris")
    model, _ = LinearLearner(LearnerSettings()).fit(task.train)
    assert isinstance(model, LinearModel)
    trained = Trained(model, FeatureEncoder(FeatureSpec(dim=4)), task.train.actions, {}, [])
    artifact = _artifact("linear", trained)
    row = PolicyVersion(
        agent_id="classifier",
        version=1,
        learner="neural",
        artifact=artifact,
        sha256=sha256(artifact),
    )
    with pytest.raises(ArtifactIntegrityError, match="belongs to learner 'linear'"):
        load_policy(row, PluginRegistry(), EpsilonGreedy())


# -- importance weights --------------------------------------------------------------------


def bandit_data(propensities: list[float]) -> BanditData:
    n = len(propensities)
    return BanditData(
        actions=("a", "b"),
        features=np.zeros((n, 2), dtype=np.float32),
        action_index=np.zeros(n, dtype=np.int64),
        rewards=np.zeros(n, dtype=np.float32),
        propensities=np.array(propensities, dtype=np.float32),
    )


def test_importance_weights_are_inverse_propensities_normalised_to_mean_one() -> None:
    weights = bandit_data([0.5, 0.25, 0.1]).importance_weights(clip=20.0)
    raw = np.array([2.0, 4.0, 10.0])
    assert weights.dtype == np.float32
    assert list(weights) == pytest.approx(list(raw / raw.mean()), rel=1e-6)
    assert float(weights.mean()) == pytest.approx(1.0)


def test_importance_weights_are_clipped_before_normalising() -> None:
    weights = bandit_data([0.5, 0.01, 0.001]).importance_weights(clip=5.0)
    raw = np.array([2.0, 5.0, 5.0])
    assert list(weights) == pytest.approx(list(raw / raw.mean()), rel=1e-6)


def test_uniform_logging_gives_equal_weights() -> None:
    weights = bandit_task("iris").train.importance_weights(clip=20.0)
    assert np.allclose(weights, 1.0)


def test_unknown_propensities_weigh_one() -> None:
    unknown = bandit_data([float("nan")] * 3).importance_weights(clip=20.0)
    assert list(unknown) == [1.0, 1.0, 1.0]
    # Mixed: an unknown row counts as raw weight 1 beside the known inverse propensities.
    mixed = bandit_data([float("nan"), 0.25, 0.0]).importance_weights(clip=20.0)
    raw = np.array([1.0, 4.0, 1.0])
    assert list(mixed) == pytest.approx(list(raw / raw.mean()), rel=1e-6)


def test_importance_weights_of_no_rows() -> None:
    assert bandit_data([]).importance_weights(clip=20.0).shape == (0,)


def test_split_holds_out_a_seeded_share_and_nothing_when_tiny() -> None:
    data = bandit_task("iris").train
    train, held_out = data.split(0.2, seed=4)
    assert len(held_out) == int(len(data) * 0.2)
    assert len(train) + len(held_out) == len(data)
    again_train, _ = data.split(0.2, seed=4)
    assert np.array_equal(train.features, again_train.features)
    small_train, small_held_out = data.subset(np.arange(19)).split(0.2, seed=4)
    assert (len(small_train), len(small_held_out)) == (19, 0)
