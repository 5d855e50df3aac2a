"""``dqn``: Q-learning from logged episodes (double DQN with a conservative penalty).

Where a bandit learner predicts the reward of one decision, ``dqn`` estimates what an action is
worth to the rest of the episode: ``Q(s, a)``, the reward now plus the discounted rewards of the
steps that follow when the agent keeps acting well. A delayed reward (a task that pays only at
its end) reaches the early steps through the Bellman backup ``Q(s, a) = r + gamma * max Q(s', .)``.
The model scores every action; serving applies the agent's exploration to those scores.

**Transitions.** Rows are sorted by (episode, step). A row's next state is the next row of the
same episode when that row's step number is exactly one more. Otherwise the row is *terminal*
(its target is its own reward): the last step of an episode, a row outside any episode, a row
whose step is unknown, and a row whose successor is missing. A successor goes missing when the
training window (``agents.<id>.training.window``, the newest rows) cuts an episode, when the
next step has no reward yet, or when the updater held it out for validation; such gaps shorten
what the backup can see, and the ``broken_links`` metric counts them. An episode that stopped
at a time limit is treated as ending there.

**Training** (each step on a mini-batch of transitions):

- the TD target is ``r + gamma * Q_target(s', argmax_a Q_online(s', a))`` for a non-terminal
  transition and ``r`` for a terminal one (double DQN: the online network picks the next
  action, the target network values it, which curbs the over-estimation of a plain max);
- the target network is a copy of the online network, refreshed every ``target_sync`` gradient
  steps, so the online network regresses towards targets that hold still in between;
- the loss is the Huber (smooth L1) distance between ``Q_online(s, a)`` and the target, which
  keeps rare large rewards from dominating the gradient;
- plus the conservative penalty of CQL(H), ``conservative_weight * mean(logsumexp Q(s, .) -
  Q(s, a))``: it lowers every action's value and raises the logged one's. Purely offline data
  never shows what an untried action leads to, so a network left alone may believe it is
  excellent and the greedy policy would chase that error; the penalty keeps the policy close
  to what the logs support. Set ``conservative_weight: 0`` for plain double DQN.

Propensities are not used: Q-learning evaluates the greedy policy through the max in its
target, whatever policy logged the data (as long as it tried the actions that matter).

The network and optimiser come from ``model_configuration`` (``mlp``, or ``transformer``; any
other architecture trains an ``mlp``), with ``gamma``, ``target_sync`` and
``conservative_weight`` in its ``parameters``. Training runs on the configured device and is
deterministic on CPU under the seed.

**Early stopping.** Whole episodes are held out (``training.holdout``); training stops when
their TD loss has not improved for ``training.patience`` epochs, and the weights of the best
epoch are kept. That held-out loss uses the online network as its own target, so it does not
jump whenever the target network is refreshed, and it is watched only from the first refresh
on: before it, the network has merely regressed towards its own random initial copy.

**How long to train.** Rewards travel back about one step per target refresh, so the gradient
steps (``epochs * ceil(transitions / batch_size)``) should span several ``target_sync``
periods; the ``target_syncs`` metric says how many there were, and a run that never refreshed
its target logs ``dqn_target_never_synced``.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import torch
from torch.nn import functional

from agentrt.errors import InvalidInputError
from agentrt.learning.data import BanditData
from agentrt.learning.nets import (
    EarlyStopping,
    build_network,
    build_optimizer,
    network_from_spec,
    network_spec,
)
from agentrt.learning.neural import NeuralModel
from agentrt.learning.settings import LearnerSettings
from agentrt.log import get_logger
from agentrt.plugins import Plugin

__all__ = ["DQNLearner", "DQNModel", "Transitions", "link_transitions", "plugin", "split_episodes"]

log = get_logger(__name__)

Matrix = npt.NDArray[np.float64]
Indices = npt.NDArray[np.int64]


class Transitions(NamedTuple):
    """Logged transitions as tensors on the training device.

    Attributes:
        states: features of each row, (n, d).
        actions: the logged action index, (n,).
        rewards: the row's reward, (n,).
        next_states: features of the following row, (n, d); the row's own for terminal ones.
        not_done: 1.0 where a next state exists, 0.0 for terminal transitions, (n,).
    """

    states: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_states: torch.Tensor
    not_done: torch.Tensor

    def take(self, rows: torch.Tensor) -> Transitions:
        return Transitions(*(t[rows] for t in self))

    @property
    def size(self) -> int:
        return int(self.rewards.shape[0])


def link_transitions(episodes: Indices, steps: Indices) -> Indices:
    """For each row, the index of the row after it in its episode, or -1 where it is terminal.

    Rows link when they share an episode (code >= 0) and the second's step is the first's + 1;
    rows are found by sorting on (episode, step), so their order in the data does not matter.
    """
    following = np.full(episodes.shape[0], -1, dtype=np.int64)
    order = np.lexsort((steps, episodes))
    here, there = order[:-1], order[1:]
    linked = (
        (episodes[here] >= 0)
        & (episodes[here] == episodes[there])
        & (steps[here] >= 0)
        & (steps[there] == steps[here] + 1)
    )
    following[here[linked]] = there[linked]
    return following


def split_episodes(episodes: Indices, holdout: float, seed: int) -> tuple[Indices, Indices]:
    """Row indices (train, held-out) with whole episodes on one side; a row outside any episode
    counts as an episode of its own. Nothing is held out below 20 rows, as in ``BanditData``."""
    n = episodes.shape[0]
    groups = np.where(episodes >= 0, episodes, -1 - np.arange(n, dtype=np.int64))
    unique = np.unique(groups)
    cut = int(unique.shape[0] * holdout) if n >= 20 else 0
    held = np.isin(groups, np.random.default_rng(seed).permutation(unique)[:cut])
    return np.flatnonzero(~held).astype(np.int64), np.flatnonzero(held).astype(np.int64)


class DQNModel(NeuralModel):
    """A trained Q-network: ``predict`` gives each action's estimated discounted return,
    shape (n, K), with no uncertainty estimate; evaluated on CPU with its parameters frozen."""


class DQNLearner:
    """Trains :class:`DQNModel` on logged episodes."""

    name = "dqn"

    def __init__(self, settings: LearnerSettings) -> None:
        self.settings = settings

    def fit(self, data: BanditData) -> tuple[DQNModel, dict[str, Any]]:
        """Train with early stopping on held-out episodes; returns the model and metrics.

        Raises:
            InvalidInputError: ``data`` has no rows, no actions, or non-finite values.
        """
        _check(data)
        settings, p = self.settings, self.settings.parameters
        device = settings.device
        torch.manual_seed(settings.seed)
        generator = torch.Generator().manual_seed(settings.seed)
        following = link_transitions(data.episodes, data.steps)
        train_rows, held_rows = split_episodes(
            data.episodes, settings.training.holdout, settings.seed
        )
        train = _transitions(data, following, train_rows, device)
        check = _transitions(data, following, held_rows, device)

        spec = network_spec(settings.architecture, p, data.features.shape[1], len(data.actions))
        online = build_network(spec["architecture"], spec["inputs"], spec["outputs"], p)
        online.to(device)
        target = copy.deepcopy(online).requires_grad_(False).eval()
        optimiser = build_optimizer(
            list(online.parameters()), settings.optimization, p.learning_rate
        )

        stopping = EarlyStopping(online, settings.training.patience)
        gradient_steps = syncs = epochs_run = 0
        will_sync = p.epochs * math.ceil(train.size / p.batch_size) >= p.target_sync
        started = time.perf_counter()
        for epoch in range(1, p.epochs + 1):
            epochs_run = epoch
            online.train()
            order = torch.randperm(train.size, generator=generator).to(device)
            td_total = conservative_total = 0.0
            for start in range(0, train.size, p.batch_size):
                batch = train.take(order[start : start + p.batch_size])
                td, conservative = _losses(online, target, batch, p.gamma)
                loss = td + p.conservative_weight * conservative
                optimiser.zero_grad()
                loss.backward()  # type: ignore[no-untyped-call]
                optimiser.step()
                gradient_steps += 1
                if gradient_steps % p.target_sync == 0:
                    target.load_state_dict(online.state_dict())
                    syncs += 1
                td_total += td.item() * batch.size
                conservative_total += conservative.item() * batch.size
            train_td = td_total / train.size
            held_td = _evaluate(online, check if check.size else train, p.gamma)
            stopping.record(
                epoch,
                held_td,
                train_loss=train_td,
                conservative_loss=conservative_total / train.size,
            )
            if p.gamma > 0 and syncs == 0 and will_sync:
                continue  # so far the network only chased its random initial copy
            if stopping.judge(epoch, held_td):
                break
        stopping.restore()
        seconds = time.perf_counter() - started
        if p.gamma > 0 and syncs == 0:
            log.warning(
                "dqn_target_never_synced",
                gradient_steps=gradient_steps,
                target_sync=p.target_sync,
                hint="rewards did not propagate beyond one step: raise model parameters.epochs "
                "or lower target_sync",
            )

        model = DQNModel(online, spec)
        q_values, _ = model.predict(data.features[train_rows])
        terminal = following < 0
        metrics = {
            "rows": len(data),
            "episodes": int(np.unique(data.episodes[data.episodes >= 0]).shape[0]),
            "transitions": int(np.count_nonzero(~terminal)),
            "terminal_share": float(terminal.mean()),
            "broken_links": _broken_links(data.episodes, data.steps, following),
            "train_rows": train.size,
            "holdout_rows": check.size,
            "epochs": epochs_run,
            **stopping.metrics(),
            "gradient_steps": gradient_steps,
            "target_syncs": syncs,
            "gamma": p.gamma,
            "conservative_weight": p.conservative_weight,
            "mean_max_q": float(q_values.max(axis=1).mean()),
            "seconds": seconds,
            "samples_per_second": train.size * epochs_run / seconds if seconds > 0 else None,
            "device": str(device),
        }
        return model, metrics

    @staticmethod
    def load(tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> DQNModel:
        """Rebuild a Q-network from its spec and weights (strict: every tensor must match)."""
        spec = metadata["network"]
        return DQNModel(network_from_spec(spec, tensors), spec)


def _check(data: BanditData) -> None:
    if len(data) == 0:
        raise InvalidInputError(
            "data",
            0,
            "dqn has no rows to learn from: record rewarded decisions (each step of an "
            "episode rewarded with ep.reward) before training",
        )
    if not data.actions:
        raise InvalidInputError("data.actions", data.actions, "the action set is empty")
    outside = data.action_index[(data.action_index < 0) | (data.action_index >= len(data.actions))]
    if outside.size:
        raise InvalidInputError(
            "data.action_index",
            sorted(set(outside.tolist())),
            f"must index data.actions (0 to {len(data.actions) - 1})",
        )
    if data.features.shape[0] != len(data):
        raise InvalidInputError(
            "data.features", data.features.shape, f"must have one row per reward ({len(data)})"
        )
    for name, values in (("data.rewards", data.rewards), ("data.features", data.features)):
        bad = ~np.isfinite(values)
        if bad.any():
            rows = np.flatnonzero(bad.reshape(len(data), -1).any(axis=1))
            raise InvalidInputError(
                name, rows[:10].tolist(), "must be finite: drop or fix these rows before training"
            )


def _transitions(
    data: BanditData, following: Indices, rows: Indices, device: torch.device
) -> Transitions:
    after = following[rows]
    successor = np.where(after >= 0, after, rows)
    return Transitions(
        states=torch.as_tensor(data.features[rows], device=device),
        actions=torch.as_tensor(data.action_index[rows], device=device),
        rewards=torch.as_tensor(data.rewards[rows], device=device),
        next_states=torch.as_tensor(data.features[successor], device=device),
        not_done=torch.as_tensor((after >= 0).astype(np.float32), device=device),
    )


def _losses(
    online: torch.nn.Module, target: torch.nn.Module, batch: Transitions, gamma: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Huber TD loss, CQL(H) penalty) of a batch; only the online network gets gradients."""
    q_all = online(batch.states)
    q_taken = q_all.gather(1, batch.actions.unsqueeze(1)).squeeze(1)
    with torch.no_grad():
        chosen = online(batch.next_states).argmax(dim=1, keepdim=True)
        next_value = target(batch.next_states).gather(1, chosen).squeeze(1)
        td_target = batch.rewards + gamma * batch.not_done * next_value
    td = functional.smooth_l1_loss(q_taken, td_target)
    conservative = (torch.logsumexp(q_all, dim=1) - q_taken).mean()
    return td, conservative


def _evaluate(network: torch.nn.Module, check: Transitions, gamma: float) -> float:
    """The network's own Bellman error on held-out transitions (it is its own target here, so
    the figure does not depend on when the target network was last refreshed)."""
    network.eval()
    with torch.no_grad():
        td, _ = _losses(network, network, check, gamma)
    return float(td)


def _broken_links(episodes: Indices, steps: Indices, following: Indices) -> int:
    """Rows of an episode left terminal although a later step of that episode is present."""
    inside = episodes >= 0
    if not inside.any():
        return 0
    last = np.full(int(episodes.max()) + 1, -1, dtype=np.int64)
    np.maximum.at(last, episodes[inside], steps[inside])
    broken = inside & (following < 0) & (steps >= 0) & (steps < last[np.maximum(episodes, 0)])
    return int(np.count_nonzero(broken))


plugin = Plugin("learner", "dqn", DQNLearner, "offline double DQN with a conservative penalty")
