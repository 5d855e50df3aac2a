"""agentrt.schemas: payloads built with ``trusted()`` equal validated ones."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from agentrt.schemas import Decision, Feedback

NOW = datetime(2025, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)


def test_a_trusted_decision_equals_the_validated_one() -> None:
    fields = {
        "id": uuid.uuid4(),
        "agent_id": "router",
        "action": "sql",
        "action_index": 1,
        "actions": ("search", "sql"),
        "context": {"topic": "billing", "len": 812},
        "propensity": 0.5,
        "probabilities": (0.5, 0.5),
        "policy_version": None,
        "exploration": {"method": "recorded"},
        "mode": "live",
        "episode_id": None,
        "step": None,
        "policy_action": None,
        "created_at": NOW,
    }
    trusted = Decision.trusted(**fields)
    validated = Decision.model_validate(fields)
    assert trusted == validated
    assert trusted.model_dump() == validated.model_dump()
    assert trusted.model_dump_json() == validated.model_dump_json()
    assert trusted.model_fields_set == set(Decision.model_fields)
    assert trusted.model_copy(update={"action": "search"}).action == "search"
    assert repr(trusted) == repr(validated)


def test_a_trusted_payload_is_frozen_and_has_no_extras() -> None:
    feedback = Feedback.trusted(
        id=uuid.uuid4(),
        decision_id=uuid.uuid4(),
        kind="reward",
        reward=1.0,
        outcome=None,
        source=None,
        created_at=NOW,
    )
    assert feedback.model_extra is None
    assert Feedback.model_validate(feedback.model_dump()) == feedback
    with pytest.raises(ValidationError):
        feedback.reward = 2.0  # type: ignore[misc]
