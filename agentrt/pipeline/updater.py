"""ModelUpdater: trains an agent's learner on its stored experience and versions the result.

One update reads the agent's newest rewarded experience (``agents.<id>.training.window``
rows), fits the feature encoder and the learner in a worker thread (a capacity limiter keeps
training off the event loop and one at a time), checks the candidate (finite weights, finite
estimates and valid probabilities on real contexts), and stores it as a ``policy_versions`` row:
safetensors weights with JSON metadata, its SHA-256, training metrics and the validation report.
Loading a stored version verifies all of that again before anything serves from it.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import anyio
import numpy as np
import torch

from agentrt.config import AgentRTConfig
from agentrt.errors import PluginError, PolicyError
from agentrt.exploration import Strategy
from agentrt.learning.artifacts import dump_artifact, load_artifact, sha256
from agentrt.learning.data import BanditData, usable_for_learning
from agentrt.learning.features import FeatureEncoder, FeatureSpec
from agentrt.learning.nets import pick_device
from agentrt.learning.settings import LearnerSettings
from agentrt.log import get_logger
from agentrt.plugins import PluginRegistry
from agentrt.policy import BaselinePolicy, LearnedPolicy
from agentrt.schemas import Experience, PolicyStatus, PolicyVersion
from agentrt.storage import repositories
from agentrt.storage.engine import Database
from agentrt.types import FeatureExtractor, IncrementalModel, Learner, RewardModel
from agentrt.validation import ValidationContext, run_validators

__all__ = [
    "Candidate",
    "ModelUpdater",
    "Trained",
    "artifact_bytes",
    "load_policy",
    "policy_from_artifact",
    "serving_artifact",
]

log = get_logger(__name__)


@dataclass
class Trained:
    """A trained candidate with the held-out experience it was not trained on."""

    model: RewardModel
    encoder: FeatureEncoder
    actions: tuple[str, ...]
    metrics: dict[str, Any]
    held_out: list[Experience]

    def policy(self, version: int, learner: str, exploration: Strategy) -> LearnedPolicy:
        return LearnedPolicy(version, learner, self.model, self.encoder, self.actions, exploration)

    def learn_held_out(self) -> int:
        """Teach an incremental model the held-out rows, once they have served validation, so
        the version that goes live has learned from every row, as the incrementally updated
        model it replaces had. Returns the rows learned (0 for other models: they serve as
        trained). The stored artifact stays the validated model; the next refit reconciles."""
        if not self.held_out or not isinstance(self.model, IncrementalModel):
            return 0
        held = BanditData.from_experience(self.held_out, self.encoder, self.actions)
        self.model.update(held.features, held.action_index, held.rewards)
        return len(held)


def _train(
    learner: Learner,
    rows: Sequence[Experience],
    actions: tuple[str, ...],
    settings: LearnerSettings,
    extractors: Mapping[str, FeatureExtractor],
) -> Trained:
    """Runs in a worker thread: split, fit features and learner, measure held-out error."""
    torch.manual_seed(settings.seed)
    known = set(actions)
    kept = [row for row in rows if row.action in known]
    train_rows, held_rows = _split(kept, settings.training.holdout, settings.seed)
    encoder = FeatureEncoder(FeatureSpec(dim=settings.training.feature_dim), extractors=extractors)
    encoder.fit(row.context for row in train_rows)
    train = BanditData.from_experience(train_rows, encoder, actions)
    started = time.perf_counter()
    model, metrics = learner.fit(train)
    metrics["fit_seconds"] = time.perf_counter() - started
    metrics["train_rows"] = len(train_rows)
    metrics["process"] = f"{socket.gethostname()}:{os.getpid()}"
    rewarded = [row.rewarded_at for row in kept if row.rewarded_at is not None]
    if rewarded:  # the newest reward it learned (incremental updates after it still count)
        metrics["newest_reward_at"] = max(rewarded).isoformat()
    if held_rows:
        held = BanditData.from_experience(held_rows, encoder, actions)
        means, _ = model.predict(held.features)
        predicted = means[np.arange(len(held)), held.action_index]
        metrics["holdout_mse"] = float(np.mean((predicted - held.rewards) ** 2))
        metrics["holdout_rows"] = len(held)
    return Trained(model, encoder, actions, metrics, held_rows)


def _split(
    rows: Sequence[Experience], holdout: float, seed: int
) -> tuple[list[Experience], list[Experience]]:
    """(train, held-out) by a seeded shuffle of whole episodes; a row outside any episode is
    one on its own, so data without episodes splits exactly as a shuffle of rows would.
    Splitting rows would cut episodes apart, and an episodic learner would take every cut for
    the end of an episode."""
    groups: dict[object, list[Experience]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(i if row.episode_id is None else row.episode_id, []).append(row)
    members = list(groups.values())
    order = np.random.default_rng(seed).permutation(len(members))
    cut = int(len(members) * holdout) if len(rows) >= 20 else 0
    held = [row for i in order[:cut] for row in members[i]]
    train = [row for i in order[cut:] for row in members[i]]
    return train, held


def _artifact(name: str, trained: Trained) -> bytes:
    return artifact_bytes(name, trained.model, trained.encoder, trained.actions)


def artifact_bytes(
    learner: str, model: RewardModel, encoder: FeatureEncoder, actions: tuple[str, ...]
) -> bytes:
    """A model, its feature encoder and its action set as one safetensors artifact."""
    tensors = {f"model.{key}": value for key, value in model.tensors().items()}
    tensors.update({f"encoder.{key}": torch.from_numpy(v) for key, v in encoder.state().items()})
    metadata = {
        "learner": learner,
        "actions": list(actions),
        "features": encoder.spec.to_dict(),
        "model": model.describe(),
    }
    return dump_artifact(tensors, metadata)


def load_policy(
    row: PolicyVersion, registry: PluginRegistry, exploration: Strategy
) -> LearnedPolicy:
    """Verify a stored version's artifact and rebuild its policy.

    Raises:
        ArtifactIntegrityError: checksum, format or metadata does not verify.
        PolicyError: the learner cannot rebuild its model from the artifact.
    """
    return policy_from_artifact(
        row.agent_id, row.version, row.learner, row.artifact, row.sha256, registry, exploration
    )


def policy_from_artifact(
    agent_id: str,
    version: int,
    learner_name: str,
    data: bytes,
    digest: str,
    registry: PluginRegistry,
    exploration: Strategy,
) -> LearnedPolicy:
    """Verify an artifact against its SHA-256 and rebuild the policy it holds (see
    :func:`load_policy`)."""
    artifact = load_artifact(data, digest, learner=learner_name)
    meta = artifact.metadata
    model_tensors = {k[6:]: v for k, v in artifact.tensors.items() if k.startswith("model.")}
    encoder_state = {
        k[8:]: v.numpy().astype(np.float64)
        for k, v in artifact.tensors.items()
        if k.startswith("encoder.")
    }
    learner: Any = registry.get("learner", learner_name).factory
    try:
        model = learner.load(model_tensors, meta["model"])
    except (KeyError, RuntimeError, ValueError) as exc:
        raise PolicyError(
            f"{agent_id} v{version}: the {learner_name} learner cannot rebuild its model "
            f"from the artifact: {exc}"
        ) from exc
    try:
        spec = FeatureSpec.from_dict(meta["features"])
    except (KeyError, TypeError, ValueError) as exc:
        raise PolicyError(
            f"{agent_id} v{version}: the artifact's feature spec is invalid: {exc}"
        ) from exc
    extractors: dict[str, FeatureExtractor] = {}
    for ref in spec.extractors:
        try:
            extractors[ref.key] = registry.create("feature", ref.name)
        except PluginError as exc:
            raise PolicyError(
                f"{agent_id} v{version} encodes context key {ref.key!r} with the "
                f"feature plugin {ref.name!r}, which is not available: {exc}"
            ) from exc
    try:
        encoder = FeatureEncoder.from_state(spec, encoder_state, extractors)
    except (KeyError, ValueError) as exc:
        raise PolicyError(
            f"{agent_id} v{version}: cannot rebuild its feature encoder: {exc}"
        ) from exc
    return LearnedPolicy(version, learner_name, model, encoder, tuple(meta["actions"]), exploration)


def serving_artifact(policy: LearnedPolicy) -> bytes:
    """The artifact of a policy as it serves now (with any incremental updates)."""
    return artifact_bytes(policy.learner, policy.model, policy.encoder, policy.actions)


@dataclass(frozen=True)
class Candidate:
    """What one training run produced, as plain data (it may come from another process).

    ``artifact`` is the validated model (None when there were too few usable rows);
    ``serving`` is what serves once it passes: the same, or for an incremental model that also
    learned its held-out rows after validation, that model.
    """

    learner: str
    rows: int
    actions: tuple[str, ...] = ()
    artifact: bytes | None = None
    serving: bytes | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.artifact is not None and bool(self.validation.get("passed"))


class ModelUpdater:
    """Trains, checks and stores candidate policies.

    Args:
        config: the whole configuration.
        db: the database.
        registry: where learners are looked up.
        limiter: training slots (one by default) shared by every agent.
    """

    def __init__(
        self,
        config: AgentRTConfig,
        db: Database,
        registry: PluginRegistry,
        limiter: anyio.CapacityLimiter | None = None,
    ) -> None:
        self.config = config
        self.db = db
        self.registry = registry
        self.limiter = limiter or anyio.CapacityLimiter(1)
        self.device = pick_device(config.runtime.device)

    def settings(
        self, agent_id: str, cycle: int, optimizer: tuple[float, float] | None = None
    ) -> LearnerSettings:
        """The learner's settings for a cycle; ``optimizer`` = (learning rate, momentum)
        replaces the configured ones (the StrategyAdapter's learning-rate adaptation)."""
        agent = self.config.agents[agent_id]
        model = self.config.model_configuration.learning_models.get(agent.model or "")
        seed = (self.config.runtime.seed or 0) + cycle
        settings = LearnerSettings.from_model(model, agent.training, seed, self.device)
        if optimizer is None:
            return settings
        learning_rate, momentum = optimizer
        optimization = settings.optimization
        tuned = optimization.parameters.model_copy(update={"momentum": momentum, "beta1": momentum})
        return replace(
            settings,
            parameters=settings.parameters.model_copy(update={"learning_rate": learning_rate}),
            optimization=optimization.model_copy(update={"parameters": tuned}),
        )

    async def train(
        self, agent_id: str, cycle: int = 0, optimizer: tuple[float, float] | None = None
    ) -> tuple[Trained | None, int, str]:
        """Train a candidate; returns (candidate or None, usable rows, learner name)."""
        agent = self.config.agents[agent_id]
        name = self.config.learner_for(agent_id)
        async with self.db.session() as session:
            rows = await repositories.fetch_experience(
                session, agent_id, limit=agent.training.window, rewarded_only=True
            )
        usable = [row for row in rows if usable_for_learning(row)]
        if len(usable) < agent.training.min_rows:
            return None, len(usable), name
        actions = tuple(agent.actions) or tuple(sorted({row.action for row in usable}))
        settings = self.settings(agent_id, cycle, optimizer)
        learner: Learner = self.registry.create("learner", name, settings)
        extractors = {
            key: self.registry.create("feature", plugin) for key, plugin in agent.features.items()
        }
        work = partial(_train, learner, usable, actions, settings, extractors)
        trained = await anyio.to_thread.run_sync(work, limiter=self.limiter)
        return trained, len(usable), name

    async def candidate(
        self,
        agent_id: str,
        *,
        cycle: int,
        optimizer: tuple[float, float] | None,
        exploration: Strategy,
        active: LearnedPolicy | None,
        baseline: BaselinePolicy,
    ) -> Candidate:
        """Train a candidate and run the agent's validators on it (against ``active`` and
        ``baseline``, on the held-out rows); the result is plain data, ready to store."""
        trained, rows, learner = await self.train(agent_id, cycle, optimizer)
        if trained is None:
            return Candidate(learner, rows)
        agent = self.config.agents[agent_id]
        validators = [
            self.registry.create("validator", name, self.config)
            for name in agent.validation.validators
        ]
        context = ValidationContext(
            agent_id=agent_id,
            config=self.config,
            candidate=trained.policy(0, learner, exploration),
            active=active,
            baseline=baseline,
            held_out=trained.held_out,
            metrics=trained.metrics,
        )
        validation = await anyio.to_thread.run_sync(
            run_validators, validators, context, limiter=self.limiter
        )
        artifact = _artifact(learner, trained)
        serving = artifact
        # The incumbent learned every reward; the candidate must not serve with 20% less.
        if validation.get("passed") and agent.training.incremental and trained.learn_held_out():
            serving = _artifact(learner, trained)
        return Candidate(
            learner, rows, trained.actions, artifact, serving, trained.metrics, validation
        )

    async def store(
        self,
        agent_id: str,
        candidate: Candidate,
        parent: int | None,
        passed_status: PolicyStatus = "active",
    ) -> PolicyVersion:
        """Store a candidate with its validation report. One that passed gets
        ``passed_status``: ``active`` (every other active version is retired) or ``canary``
        (it serves beside the active version); one that failed is rejected with the reasons."""
        if candidate.artifact is None:
            raise PolicyError(f"{agent_id}: a candidate without an artifact cannot be stored")
        validation = candidate.validation
        passed = candidate.passed
        activate = passed and passed_status == "active"
        async with self.db.session() as session:
            version = await repositories.next_policy_version(session, agent_id)
            status: PolicyStatus = passed_status if passed else "rejected"
            reason = None if passed else "; ".join(validation.get("reasons", []))[:2000]
            policy = PolicyVersion(
                agent_id=agent_id,
                version=version,
                parent_version=parent,
                learner=candidate.learner,
                status="candidate",
                metrics=_jsonable(candidate.metrics),
                validation=_jsonable(validation),
                artifact_metadata={
                    "actions": list(candidate.actions),
                    "learner": candidate.learner,
                },
                artifact=candidate.artifact,
                sha256=sha256(candidate.artifact),
            )
            await repositories.store_policy_version(session, policy)
            if activate:
                # Every active version, not only the one serving here: one that was refused at
                # load, or that another process activated, must not stay active beside this one.
                await repositories.retire_active_versions(session, agent_id, superseded_by=version)
            await repositories.set_policy_status(session, agent_id, version, status, reason)
        return policy.model_copy(update={"status": status, "status_reason": reason})


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value
