"""Validation of what the application passes in, on the hot path.

Every check raises :class:`InvalidInputError` (or a subclass) naming the argument, the value and
the rule, so that a bad call fails loudly at its source and never reaches the database.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, cast

import orjson

from agentrt.errors import InvalidInputError, UnknownActionError
from agentrt.schemas import ContextValue, Decision

__all__ = [
    "check_actions",
    "check_context",
    "check_decision_id",
    "check_distribution",
    "check_mask",
    "check_outcome",
    "check_propensity",
    "check_reward",
    "checked_context",
    "checked_outcome",
]

_MISSING = object()
# Integers are stored in JSON and encoded as floats: they must fit in 64 bits.
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1
_UUID_TEXT = re.compile(r"[0-9a-fA-F]{32}|[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")


def _number(value: object) -> float:
    """``float(value)`` for an int or float; NaN when it does not fit (huge integers)."""
    try:
        return float(value)  # type: ignore[arg-type]
    except OverflowError:
        return math.nan


def _is_plain(value: object) -> bool:
    """Whether ``value`` is already a plain JSON scalar: the common case, checked by exact type
    (``value - value == 0.0`` is False for NaN and the infinities)."""
    kind = type(value)
    return (
        kind is str
        or (kind is float and value - value == 0.0)  # type: ignore[operator]
        or (kind is int and _INT_MIN <= value <= _INT_MAX)  # type: ignore[operator]
        or kind is bool
        or value is None
    )


def _plain_scalar(value: object) -> object:
    """``value`` as a plain JSON scalar (subclasses such as numpy.float64 converted), or
    ``_MISSING`` when it is not a finite number, boolean, string or None."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value) if _INT_MIN <= value <= _INT_MAX else _MISSING
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else _MISSING
    if isinstance(value, str):
        return str(value)
    return _MISSING


def check_context(context: object, max_bytes: int) -> dict[str, ContextValue]:
    """A context as a plain dict of JSON values, or InvalidInputError naming the bad entry."""
    return checked_context(context, max_bytes)[0]


def checked_context(context: object, max_bytes: int) -> tuple[dict[str, ContextValue], str]:
    """:func:`check_context`, and the context's JSON text (computed for the size limit)."""
    if type(context) is not dict and not isinstance(context, Mapping):
        raise InvalidInputError(
            "context", context, "must be a mapping of names to numbers, booleans, strings or lists"
        )
    out: dict[str, ContextValue] = {}
    for key, value in context.items():
        if type(key) is not str:
            raise InvalidInputError("context", key, "keys must be strings")
        kind = type(value)
        # _is_plain() inline: this loop runs for every key of every decision.
        if (
            kind is str
            or (kind is float and value - value == 0.0)
            or (kind is int and _INT_MIN <= value <= _INT_MAX)
            or kind is bool
            or value is None
        ):
            out[key] = value
        elif (plain := _plain_scalar(value)) is not _MISSING:
            out[key] = plain  # type: ignore[assignment]
        elif (
            isinstance(value, list | tuple)
            and (items := [_plain_scalar(item) for item in value]).count(_MISSING) == 0
            and None not in items
        ):
            out[key] = items  # type: ignore[assignment]
        else:
            raise InvalidInputError(
                f"context[{key!r}]",
                value,
                "must be a finite number, a boolean, a string, None, or a list of those "
                "(integers within 64 bits)",
            )
    text = orjson.dumps(out)
    if len(text) > max_bytes:
        raise InvalidInputError(
            "context",
            f"<{len(text)} bytes>",
            f"is larger than runtime.max_context_bytes ({max_bytes}); send less or raise it",
        )
    return out, text.decode()


def check_outcome(outcome: object, max_bytes: int, field: str = "outcome") -> dict[str, Any] | None:
    """An outcome mapping as plain JSON data (nested mappings become dicts) within the limit."""
    return checked_outcome(outcome, max_bytes, field)[0]


def checked_outcome(
    outcome: object, max_bytes: int, field: str = "outcome"
) -> tuple[dict[str, Any] | None, str | None]:
    """:func:`check_outcome`, and the outcome's JSON text (computed for the size limit)."""
    if outcome is None:
        return None, None
    plain: object = _flat_plain(outcome)
    if plain is None:
        if not isinstance(outcome, Mapping):
            raise InvalidInputError(field, outcome, "must be a mapping with string keys")
        try:
            plain = _plain_json(outcome, 0)
        except _NotJSON as exc:
            raise InvalidInputError(
                field,
                outcome,
                f"must hold only JSON values (finite numbers, strings, lists...): {exc}",
            ) from None
    text = orjson.dumps(plain)
    if len(text) > max_bytes:
        raise InvalidInputError(
            field, f"<{len(text)} bytes>", f"is larger than runtime.max_context_bytes ({max_bytes})"
        )
    return cast("dict[str, Any]", plain), text.decode()


def _flat_plain(outcome: object) -> dict[str, object] | None:
    """A copy of a dict whose keys are strings and whose values are plain scalars (the usual
    outcome, such as ``{"latency_ms": 12}``), or None when it is anything else."""
    if type(outcome) is not dict:
        return None
    out: dict[str, object] = {}
    for key, value in outcome.items():
        if type(key) is not str or not _is_plain(value):
            return None
        out[key] = value
    return out


class _NotJSON(Exception):
    """Raised inside _plain_json; turned into InvalidInputError by its caller."""


def _plain_json(value: object, depth: int) -> object:
    """``value`` as plain JSON data, or _NotJSON saying why it is not (NaN, sets, objects,
    non-string keys, integers beyond 64 bits, nesting deeper than 32)."""
    if depth > 32:
        raise _NotJSON("nested more than 32 levels deep")
    if isinstance(value, Mapping):
        out: dict[str, object] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise _NotJSON(f"key {key!r:.40} is not a string")
            out[key] = _plain_json(item, depth + 1)
        return out
    if isinstance(value, list | tuple):
        return [_plain_json(item, depth + 1) for item in value]
    plain = _plain_scalar(value)
    if plain is _MISSING:
        if isinstance(value, int | float):
            raise _NotJSON(f"{value!r:.40} is not a finite number within 64-bit range")
        raise _NotJSON(f"{type(value).__name__} is not a JSON type")
    return plain


def check_reward(reward: object, field: str = "reward") -> float:
    """A finite reward as a float (booleans count as 1.0 and 0.0)."""
    if type(reward) is float and reward - reward == 0.0:
        return reward
    if isinstance(reward, bool):
        return 1.0 if reward else 0.0
    if not isinstance(reward, int | float):
        raise InvalidInputError(field, reward, "must be a finite number")
    value = _number(reward)
    if not math.isfinite(value):
        raise InvalidInputError(field, reward, "must be a finite number (not NaN or infinite)")
    return value


def check_decision_id(decision: object) -> uuid.UUID:
    """The id of a Decision, a UUID, or a UUID string."""
    if isinstance(decision, Decision):
        return decision.id
    if isinstance(decision, uuid.UUID):
        return decision
    if isinstance(decision, str) and _UUID_TEXT.fullmatch(decision):
        return uuid.UUID(decision)
    raise InvalidInputError("decision", decision, "must be a Decision, a UUID or a UUID string")


def check_actions(agent_id: str, configured: Sequence[str], actions: object) -> tuple[str, ...]:
    """The actions offered in this call: the per-call list, or the agent's configured ones."""
    if actions is None:
        if not configured:
            raise InvalidInputError(
                "actions",
                None,
                f"agent {agent_id!r} has no configured actions: pass actions=[...] to this call",
            )
        return tuple(configured)
    if isinstance(actions, str) or not isinstance(actions, Sequence):
        raise InvalidInputError("actions", actions, "must be a list of action names")
    offered = tuple(actions)
    if not offered:
        raise InvalidInputError("actions", actions, "must offer at least one action")
    for action in offered:
        if not isinstance(action, str) or not action or len(action) > 128:
            raise InvalidInputError(
                "actions", action, "action names must be strings of 1-128 characters"
            )
    if len(set(offered)) != len(offered):
        raise InvalidInputError("actions", actions, "action names must be unique")
    if configured:
        unknown = [a for a in offered if a not in configured]
        if unknown:
            raise UnknownActionError(
                "actions",
                unknown[0],
                f"is not one of agent {agent_id!r}'s configured actions ({', '.join(configured)})",
            )
    return offered


def check_mask(mask: object, actions: tuple[str, ...]) -> tuple[bool, ...] | None:
    """The allowed actions of this call, as one flag per offered action (None: all allowed).

    ``mask`` is either the names of the allowed actions or one boolean per offered action.
    """
    if mask is None:
        return None
    if isinstance(mask, str) or not isinstance(mask, Sequence):
        raise InvalidInputError(
            "mask", mask, "must be a list of allowed action names or of booleans"
        )
    items = list(mask)
    if items and all(isinstance(item, bool) for item in items):
        if len(items) != len(actions):
            raise InvalidInputError(
                "mask", mask, f"must have one boolean per offered action ({len(actions)})"
            )
        flags = tuple(items)
    else:
        for item in items:
            if item not in actions:
                raise UnknownActionError(
                    "mask", item, f"is not an offered action ({', '.join(actions)})"
                )
        allowed = set(items)
        flags = tuple(action in allowed for action in actions)
    if not any(flags):
        raise InvalidInputError("mask", mask, "must allow at least one action")
    return flags


def check_propensity(propensity: object) -> float | None:
    """A propensity in (0, 1], or None when unknown."""
    if propensity is None:
        return None
    if type(propensity) is float and 0.0 < propensity <= 1.0:  # False for NaN
        return propensity
    if isinstance(propensity, bool) or not isinstance(propensity, int | float):
        raise InvalidInputError("propensity", propensity, "must be a number in (0, 1] or None")
    value = _number(propensity)
    if not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise InvalidInputError(
            "propensity", propensity, "must be in (0, 1] (or None when unknown)"
        )
    return value


def check_distribution(
    probabilities: object, actions: tuple[str, ...], action_index: int, propensity: float | None
) -> tuple[float, ...] | None:
    """A probability vector over the offered actions, consistent with the propensity."""
    if probabilities is None:
        return None
    if isinstance(probabilities, str) or not isinstance(probabilities, Sequence):
        raise InvalidInputError("probabilities", probabilities, "must be a list of numbers")
    values = tuple(
        _number(p) if isinstance(p, int | float) and not isinstance(p, bool) else math.nan
        for p in probabilities
    )
    if len(values) != len(actions):
        raise InvalidInputError(
            "probabilities", probabilities, f"must have one entry per action ({len(actions)})"
        )
    if (
        not all(math.isfinite(p) and 0.0 <= p <= 1.0 for p in values)
        or abs(sum(values) - 1.0) > 1e-6
    ):
        raise InvalidInputError(
            "probabilities", probabilities, "must be numbers in [0, 1] that sum to 1"
        )
    if values[action_index] <= 0.0:
        raise InvalidInputError(
            "probabilities", probabilities, "give the chosen action a probability of zero"
        )
    if propensity is not None and abs(values[action_index] - propensity) > 1e-6:
        raise InvalidInputError(
            "propensity",
            propensity,
            f"differs from probabilities[{action_index}] ({values[action_index]})",
        )
    return values
