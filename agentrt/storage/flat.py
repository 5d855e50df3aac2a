"""Records as the collector buffers them for ``record()`` and ``reward()``: plain tuples.

Both calls return a pydantic model, but what they leave in the buffer is a tuple of the model's
values in the column order of its table, after a kind tag: ids as integers, and the JSON columns
(context, exploration, outcome) as their JSON text, which the calls' input checks compute
anyway to measure the size. The model the application drops is freed at once. A buffered model
is four objects that the cyclic garbage collector tracks (the model, its ``__dict__``, its UUID
and the wrapper that carries the reward) and walks at every collection until the batch is
written; under load they reach the oldest generation and trigger full collections of the whole
heap: the tail latency of these calls was the garbage collector's. A flat record holds only
numbers, strings, datetimes and tuples of those, so the collector stops tracking it at its
first collection: it never reaches the old generations.

The collector encodes these tuples for the driver directly
(:func:`agentrt.storage.bulk.encode_batch`) and turns them back into models only where models
are needed: processors, the spill file and a record-by-record write.
"""

from __future__ import annotations

from typing import Any

import orjson

from agentrt.ids import new_id_int, uuid_from_int
from agentrt.schemas import Decision, Feedback

__all__ = [
    "DECISION_COLUMNS",
    "EXECUTION",
    "FEEDBACK",
    "FEEDBACK_COLUMNS",
    "FlatRecord",
    "decision_values",
    "execution",
    "feedback",
    "feedback_values",
    "is_flat",
    "records_of",
    "size",
]

DECISION_COLUMNS = (
    "id", "agent_id", "episode_id", "step", "created_at", "context", "actions", "action",
    "action_index", "propensity", "probabilities", "policy_version", "exploration", "mode",
    "policy_action",
)  # fmt: skip
FEEDBACK_COLUMNS = ("id", "decision_id", "kind", "reward", "outcome", "source", "created_at")

EXECUTION = "execution"  # the decision's 15 values, then its reward's 7
FEEDBACK = "feedback"  # a reward's (or an activation's) 7 values

_RECORDED = {"method": "recorded"}
_RECORDED_JSON = '{"method":"recorded"}'
_JSON_FIELDS = ("context", "exploration", "outcome")

FlatRecord = tuple[Any, ...]
"""A kind tag (:data:`EXECUTION` or :data:`FEEDBACK`) and the values that follow it."""


def decision_values(d: Decision) -> tuple[Any, ...]:
    """A decision's values in the order of :data:`DECISION_COLUMNS` (ids as integers)."""
    return (
        d.id.int, d.agent_id, None if d.episode_id is None else d.episode_id.int, d.step,
        d.created_at, d.context, d.actions, d.action, d.action_index, d.propensity,
        d.probabilities, d.policy_version, d.exploration, d.mode, d.policy_action,
    )  # fmt: skip


def feedback_values(f: Feedback) -> tuple[Any, ...]:
    """A feedback's values in the order of :data:`FEEDBACK_COLUMNS` (ids as integers)."""
    return (f.id.int, f.decision_id.int, f.kind, f.reward, f.outcome, f.source, f.created_at)


def execution(
    decision: Decision,
    reward: float,
    outcome: dict[str, Any] | None,
    source: str | None,
    *,
    context_json: str | None = None,
    outcome_json: str | None = None,
) -> FlatRecord:
    """A recorded execution: the decision and its reward (a new id, the decision's time).

    ``context_json`` and ``outcome_json``: the JSON text of the decision's context and of the
    outcome when the caller has it already (the input checks compute it).
    """
    d = decision
    exploration = d.exploration
    return (
        EXECUTION,
        d.id.int, d.agent_id, None if d.episode_id is None else d.episode_id.int, d.step,
        d.created_at, context_json if context_json is not None else _json(d.context),
        d.actions, d.action, d.action_index, d.propensity, d.probabilities, d.policy_version,
        _RECORDED_JSON if exploration == _RECORDED else _json(exploration), d.mode,
        d.policy_action,
        new_id_int(), d.id.int, "reward", reward,
        outcome_json if outcome_json is not None else _json(outcome), source, d.created_at,
    )  # fmt: skip


def feedback(f: Feedback, *, outcome_json: str | None = None) -> FlatRecord:
    """A reported reward (or activation); ``outcome_json`` as for :func:`execution`."""
    return (
        FEEDBACK, f.id.int, f.decision_id.int, f.kind, f.reward,
        outcome_json if outcome_json is not None else _json(f.outcome), f.source, f.created_at,
    )  # fmt: skip


def _json(value: object) -> str | None:
    """JSON text of a validated value (the models' JSON fields hold finite numbers only)."""
    return None if value is None else orjson.dumps(value).decode()


def is_flat(entry: object) -> bool:
    """Whether a buffered entry is a flat record (a tuple of records starts with a model)."""
    return type(entry) is tuple and bool(entry) and type(entry[0]) is str


def size(entry: FlatRecord) -> int:
    """How many records a flat entry holds."""
    return 2 if entry[0] is EXECUTION else 1


def records_of(entry: FlatRecord) -> list[Decision | Feedback]:
    """The models a flat entry stands for (the same ids every time)."""
    if entry[0] is EXECUTION:
        return [_decision(entry[1:16]), _feedback(entry[16:23])]
    return [_feedback(entry[1:8])]


def _decision(values: tuple[Any, ...]) -> Decision:
    return Decision.trusted(**_fields(DECISION_COLUMNS, values, ("id", "episode_id")))


def _feedback(values: tuple[Any, ...]) -> Feedback:
    return Feedback.trusted(**_fields(FEEDBACK_COLUMNS, values, ("id", "decision_id")))


def _fields(
    names: tuple[str, ...], values: tuple[Any, ...], ids: tuple[str, ...]
) -> dict[str, Any]:
    fields = dict(zip(names, values, strict=True))
    for name in ids:
        if fields[name] is not None:
            fields[name] = uuid_from_int(fields[name])
    for name in _JSON_FIELDS:
        if type(fields.get(name)) is str:
            fields[name] = orjson.loads(fields[name])
    return fields
