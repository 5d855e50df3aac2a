"""The typed objects that stages exchange and that the database stores.

Field names match the column names of the tables and of the ``experience`` view, so a row
read with SQL and an object read through the API say the same thing.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from agentrt.clock import utcnow
from agentrt.ids import new_id

__all__ = [
    "AgentCycle",
    "ContextValue",
    "CycleReport",
    "Decision",
    "DecisionMode",
    "Episode",
    "Experience",
    "Feedback",
    "Knowledge",
    "PolicyStatus",
    "PolicyVersion",
    "StrategyUpdate",
]

ContextValue = float | int | str | bool | None | list[float | int | str | bool]
DecisionMode = Literal["live", "shadow", "deferred"]
PolicyStatus = Literal["candidate", "canary", "active", "retired", "rejected", "failed"]


class _Payload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    @classmethod
    def trusted(cls, **fields: Any) -> Self:
        """Build an instance from values agentrt has already validated, skipping validation.

        The hot path validates its inputs itself (agentrt.inputs) and then needs the object in
        well under a microsecond; ``model_construct`` costs several. Every field must be given.
        """
        instance = _new_object(cls)
        _set_dict(instance, fields)
        _set_fields_set(instance, _ALL_FIELDS[cls])
        _set_extra(instance, None)
        _set_private(instance, None)
        return instance


# The descriptors of BaseModel's slots, called directly: ``object.__setattr__`` would look each
# name up again on every call, and ``trusted()`` runs twice per ``record()``.
_new_object = object.__new__
_set_dict = BaseModel.__dict__["__dict__"].__set__
_set_fields_set = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_set_extra = BaseModel.__dict__["__pydantic_extra__"].__set__
_set_private = BaseModel.__dict__["__pydantic_private__"].__set__


class Decision(_Payload):
    """One decision: what was chosen, with which probability, by which policy.

    ``propensity`` is the probability with which ``action`` was chosen and ``probabilities``
    the whole distribution over ``actions``; both are None for executions recorded without a
    known propensity. In shadow mode ``action`` is what the application did and
    ``policy_action`` what the policy would have done.
    """

    id: uuid.UUID = Field(default_factory=new_id)
    agent_id: str
    action: str
    action_index: int
    actions: tuple[str, ...]
    context: dict[str, ContextValue] = {}
    propensity: float | None = None
    probabilities: tuple[float, ...] | None = None
    policy_version: int | None = None
    exploration: dict[str, Any] | None = None
    mode: DecisionMode = "live"
    episode_id: uuid.UUID | None = None
    step: int | None = None
    policy_action: str | None = None
    created_at: AwareDatetime = Field(default_factory=utcnow)


class Feedback(_Payload):
    """A reward for a decision (``kind="reward"``) or the activation of a deferred one."""

    id: uuid.UUID = Field(default_factory=new_id)
    decision_id: uuid.UUID
    kind: Literal["reward", "activation"] = "reward"
    reward: float | None = None
    outcome: dict[str, Any] | None = None
    source: str | None = None
    created_at: AwareDatetime = Field(default_factory=utcnow)


class Episode(_Payload):
    """A multi-step task: its return, length and how it ended."""

    id: uuid.UUID = Field(default_factory=new_id)
    agent_id: str
    started_at: AwareDatetime
    ended_at: AwareDatetime | None = None
    status: Literal["running", "completed", "failed"] = "completed"
    episode_return: float | None = None
    length: int = 0
    error: str | None = None


class Experience(_Payload):
    """One row of the ``experience`` view: a decision with its combined reward."""

    decision_id: uuid.UUID
    agent_id: str
    episode_id: uuid.UUID | None
    step: int | None
    created_at: datetime
    mode: DecisionMode
    context: dict[str, ContextValue]
    actions: tuple[str, ...]
    action: str
    action_index: int
    propensity: float | None
    probabilities: tuple[float, ...] | None
    policy_version: int | None
    exploration: dict[str, Any] | None
    policy_action: str | None
    reward: float | None
    outcome: dict[str, Any] | None
    feedback_count: int
    rewarded_at: datetime | None
    activated_at: datetime | None


class Knowledge(_Payload):
    """One finding of the KnowledgeExtractor about a window of experience."""

    agent_id: str
    kind: str
    payload: dict[str, Any]
    window_start: AwareDatetime | None = None
    window_end: AwareDatetime | None = None
    created_at: AwareDatetime = Field(default_factory=utcnow)


class PolicyVersion(_Payload):
    """A versioned policy with its artifact (safetensors bytes) and checksum."""

    agent_id: str
    version: int
    learner: str
    artifact: bytes
    sha256: str
    parent_version: int | None = None
    status: PolicyStatus = "candidate"
    status_reason: str | None = None
    metrics: dict[str, Any] = {}
    validation: dict[str, Any] | None = None
    artifact_metadata: dict[str, Any] = {}
    created_at: AwareDatetime = Field(default_factory=utcnow)
    activated_at: AwareDatetime | None = None


class AgentCycle(_Payload):
    """What one learning cycle did for one agent.

    ``status`` is ``activated`` (a new version serves), ``canary`` (the validated candidate
    serves a fraction of decisions until live rewards decide), ``rejected`` (the candidate
    failed its checks; the active version keeps serving), ``skipped`` (too little usable
    experience, or a canary is still being compared) or ``failed`` (the cycle raised; the
    error is logged and recorded in ``metrics``). ``trigger`` says what started the cycle
    (``run_cycle`` or the loop's trigger), ``canary`` the numbers of a canary comparison.
    """

    agent_id: str
    status: Literal["activated", "canary", "rejected", "skipped", "failed"]
    reason: str | None = None
    rows: int = 0
    learner: str | None = None
    candidate_version: int | None = None
    active_version: int | None = None
    metrics: dict[str, Any] = {}
    validation: dict[str, Any] | None = None
    knowledge: dict[str, Any] = {}
    canary: dict[str, Any] | None = None
    trigger: str | None = None
    seconds: float = 0.0


class CycleReport(_Payload):
    """What ``Runtime.run_cycle()`` did, per agent."""

    agents: tuple[AgentCycle, ...]

    def __getitem__(self, agent_id: str) -> AgentCycle:
        for cycle in self.agents:
            if cycle.agent_id == agent_id:
                return cycle
        raise KeyError(agent_id)


class StrategyUpdate(_Payload):
    """A change of an agent's strategy: the strategy before, after, and why."""

    agent_id: str
    kind: str
    previous: dict[str, Any]
    updated: dict[str, Any]
    details: dict[str, Any] = {}
    created_at: AwareDatetime = Field(default_factory=utcnow)


# `trusted()` instances have every field set; one shared set per class saves an allocation.
_ALL_FIELDS: dict[type[BaseModel], set[str]] = {
    cls: set(cls.model_fields)
    for cls in (Decision, Feedback, Episode, Experience, Knowledge, PolicyVersion)
}
