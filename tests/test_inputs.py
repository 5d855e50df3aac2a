"""Validation of what applications pass in: agentrt.inputs, and the Runtime calls that use it.

Every bad input must raise an InvalidInputError (or a subclass) that names the field and keeps
the value, and nothing else: no TypeError, no OverflowError, no crash of the runtime. The pure
validators are checked with many generated examples; the same kinds of bad input are then sent
through a real Runtime on SQLite, from a worker thread, while the runtime stays open.
"""

from __future__ import annotations

import functools
import math
import types
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import anyio
import anyio.from_thread
import anyio.to_thread
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentrt import load_config
from agentrt.errors import (
    AgentRTError,
    InvalidInputError,
    UnknownActionError,
    UnknownDecisionError,
)
from agentrt.inputs import (
    check_actions,
    check_context,
    check_decision_id,
    check_distribution,
    check_mask,
    check_outcome,
    check_propensity,
    check_reward,
)
from agentrt.runtime import Runtime
from agentrt.schemas import Decision

ACTIONS = ("a", "b", "c")
MAX_BYTES = 2048
EXAMPLES = settings(max_examples=150, deadline=None)


class Opaque:
    """An object that is not JSON."""

    def __repr__(self) -> str:
        return "Opaque()"


def rejected(
    call: Callable[[], object], field: str, value: object, error: type[InvalidInputError]
) -> InvalidInputError:
    """Run ``call``; it must raise exactly ``error`` naming ``field`` and keeping ``value``."""
    with pytest.raises(InvalidInputError) as info:
        call()
    exc = info.value
    assert type(exc) is error
    assert not isinstance(exc, UnknownDecisionError)
    assert isinstance(exc, ValueError)
    assert isinstance(exc, AgentRTError)
    assert exc.field == field
    assert exc.value is value or exc.value == value
    assert str(exc).startswith(f"{field}: {exc.problem} (got ")
    return exc


# -- strategies -------------------------------------------------------------------------

finite_floats = st.floats(allow_nan=False, allow_infinity=False)
non_finite = st.sampled_from([math.nan, -math.nan, math.inf, -math.inf])
safe_ints = st.integers(-(2**53), 2**53)
keys = st.text(max_size=10)
scalars = st.one_of(st.none(), st.booleans(), safe_ints, finite_floats, st.text(max_size=20))
list_items = st.one_of(st.booleans(), safe_ints, finite_floats, st.text(max_size=10))
context_values = st.one_of(
    scalars,
    st.lists(list_items, max_size=5),
    st.lists(list_items, max_size=5).map(tuple),
)
good_contexts = st.dictionaries(keys, context_values, max_size=6)
not_json = st.one_of(
    st.sets(safe_ints, max_size=3),
    st.frozensets(st.text(max_size=3), max_size=3),
    st.builds(Opaque),
    st.binary(max_size=5),
    st.complex_numbers(allow_nan=False, allow_infinity=False),
    st.decimals(allow_nan=False, allow_infinity=False),
)
non_str_keys = st.one_of(
    safe_ints,
    finite_floats,
    st.none(),
    st.booleans(),
    st.binary(max_size=4),
    st.tuples(st.text(max_size=3)),
    st.frozensets(safe_ints, max_size=2),
)
not_mappings = st.one_of(
    st.none(),
    st.text(max_size=8),
    safe_ints,
    finite_floats,
    st.lists(scalars, max_size=3),
    st.lists(st.tuples(keys, scalars), max_size=3),
    st.sets(st.text(max_size=3), max_size=3),
    st.builds(Opaque),
)
bad_context_values = st.one_of(
    non_finite,
    not_json,
    st.dictionaries(keys, scalars, max_size=3),
    st.lists(st.lists(list_items, max_size=2), min_size=1, max_size=3),
    st.tuples(
        st.lists(list_items, max_size=3),
        st.one_of(non_finite, st.none(), not_json, st.dictionaries(keys, scalars, max_size=2)),
        st.lists(list_items, max_size=3),
    ).map(lambda parts: [*parts[0], parts[1], *parts[2]]),
)
oversized_contexts = st.integers(MAX_BYTES, 3 * MAX_BYTES).map(lambda n: {"blob": "x" * n})


@st.composite
def bad_contexts(draw: st.DrawFn) -> tuple[object, str, object]:
    """A context with one bad part, the field it is reported under, and the bad value."""
    base = draw(good_contexts)
    kind = draw(st.sampled_from(["value", "key", "not_mapping"]))
    if kind == "not_mapping":
        context = draw(not_mappings)
        return context, "context", context
    items: list[tuple[object, object]] = list(base.items())
    position = draw(st.integers(0, len(items)))
    if kind == "value":
        key = draw(keys.filter(lambda k: k not in base))
        value = draw(bad_context_values)
        items.insert(position, (key, value))
        return dict(items), f"context[{key!r}]", value
    odd_key = draw(non_str_keys)
    items.insert(position, (odd_key, draw(scalars)))
    return dict(items), "context", odd_key


action_names = st.text(min_size=1, max_size=12)
unknown_names = action_names.filter(lambda name: name not in ACTIONS)
not_lists = st.one_of(
    st.text(max_size=5),
    safe_ints,
    finite_floats,
    st.dictionaries(action_names, safe_ints, max_size=2),
    st.sets(action_names, max_size=3),
    st.builds(Opaque),
)
bad_action_names = st.one_of(
    st.just(""),
    st.text(min_size=129, max_size=140),
    safe_ints,
    st.none(),
    st.binary(max_size=3),
    st.lists(action_names, max_size=2),
)


@st.composite
def bad_actions(
    draw: st.DrawFn,
) -> tuple[tuple[str, ...], object, type[InvalidInputError], object]:
    """(configured actions, offered actions, the error, the value it keeps)."""
    kind = draw(st.sampled_from(["not_list", "none", "empty", "bad_name", "duplicate", "unknown"]))
    if kind == "not_list":
        actions = draw(not_lists)
        return draw(st.sampled_from([(), ACTIONS])), actions, InvalidInputError, actions
    if kind == "none":
        return (), None, InvalidInputError, None
    if kind == "empty":
        empty: object = draw(st.sampled_from([[], ()]))
        return draw(st.sampled_from([(), ACTIONS])), empty, InvalidInputError, empty
    names = draw(st.lists(action_names, unique=True, max_size=4))
    position = draw(st.integers(0, len(names)))
    if kind == "bad_name":
        bad = draw(bad_action_names)
        listed: list[object] = [*names]
        listed.insert(position, bad)
        return (), listed, InvalidInputError, bad
    if kind == "duplicate":
        names = names or ["x"]
        names.insert(position, draw(st.sampled_from(names)))
        return (), names, InvalidInputError, names
    offered = list(draw(st.lists(st.sampled_from(ACTIONS), unique=True)))
    unknown = draw(unknown_names)
    offered.insert(draw(st.integers(0, len(offered))), unknown)
    return ACTIONS, offered, UnknownActionError, unknown


@st.composite
def bad_masks(draw: st.DrawFn) -> tuple[object, type[InvalidInputError], object]:
    """A mask over ACTIONS with one problem, the error, and the value it keeps."""
    kind = draw(st.sampled_from(["unknown", "none_allowed", "empty", "length", "not_list"]))
    if kind == "unknown":
        names: list[object] = list(draw(st.lists(st.sampled_from(ACTIONS), max_size=3)))
        odd = draw(st.one_of(unknown_names, safe_ints, finite_floats, st.none()))
        names.insert(draw(st.integers(0, len(names))), odd)
        return names, UnknownActionError, odd
    if kind == "none_allowed":
        mask = [False] * len(ACTIONS)
        return mask, InvalidInputError, mask
    if kind == "empty":
        empty: object = draw(st.sampled_from([[], ()]))
        return empty, InvalidInputError, empty
    if kind == "length":
        flags = draw(st.lists(st.booleans(), min_size=1, max_size=8).filter(lambda f: len(f) != 3))
        return flags, InvalidInputError, flags
    mask_value = draw(st.one_of(st.text(max_size=3), safe_ints, st.sets(action_names, max_size=2)))
    return mask_value, InvalidInputError, mask_value


bad_rewards = st.one_of(
    non_finite,
    st.text(max_size=8),
    st.none(),
    st.lists(finite_floats, max_size=2),
    st.dictionaries(keys, finite_floats, max_size=2),
    st.complex_numbers(allow_nan=False, allow_infinity=False),
    st.decimals(allow_nan=False, allow_infinity=False),
    st.binary(max_size=3),
    st.builds(Opaque),
)
bad_leaves = st.one_of(non_finite, not_json)
_EMPTY_LOG = '{"log":""}'


@st.composite
def bad_outcomes(draw: st.DrawFn) -> tuple[object, object]:
    """An outcome that is not a mapping of JSON values within MAX_BYTES, and the value kept."""
    kind = draw(st.sampled_from(["not_mapping", "key", "nested", "nested_key", "large"]))
    if kind == "not_mapping":
        outcome = draw(not_mappings.filter(lambda o: o is not None))
        return outcome, outcome
    if kind == "large":
        size = draw(st.integers(MAX_BYTES, 2 * MAX_BYTES))
        return {"log": "x" * size}, f"<{size + len(_EMPTY_LOG)} bytes>"
    base: dict[object, object] = dict(draw(st.dictionaries(keys, scalars, max_size=3)))
    if kind == "key":
        base[draw(non_str_keys)] = draw(scalars)
        return base, base
    if kind == "nested_key":
        base["inner"] = {draw(st.tuples(safe_ints)): 1}
        return base, base
    leaf = draw(bad_leaves)
    wrap: Callable[[object], object] = draw(
        st.sampled_from(
            [
                lambda x: x,
                lambda x: [1, x],
                lambda x: {"deeper": x},
                lambda x: {"list": [{"item": x}]},
            ]
        )
    )
    base["measure"] = wrap(leaf)
    return base, base


bad_propensities = st.one_of(
    st.floats(max_value=0.0, allow_nan=False),
    st.floats(min_value=1.0, exclude_min=True, allow_nan=False),
    non_finite,
    st.integers(-1000, 0),
    st.integers(2, 1000),
    st.booleans(),
    st.text(max_size=5),
    st.lists(finite_floats, max_size=2),
    st.decimals(allow_nan=False, allow_infinity=False),
)


class BadDistribution(NamedTuple):
    probabilities: object
    actions: tuple[str, ...]
    chosen: int
    propensity: float | None
    field: str
    value: object


@st.composite
def bad_distributions(draw: st.DrawFn) -> BadDistribution:
    """A probability vector (or propensity) that record() must refuse."""
    count = draw(st.integers(1, 6))
    actions = tuple(f"x{i}" for i in range(count))
    index = draw(st.integers(0, count - 1))
    weights = draw(st.lists(st.floats(0.01, 1.0), min_size=count, max_size=count))
    probabilities: list[object] = [w / sum(weights) for w in weights]
    kinds = ["length", "item", "negative", "above_one", "sum", "inconsistent", "not_list"]
    kind = draw(st.sampled_from([*kinds, "chosen_zero"] if count > 1 else kinds))
    position = draw(st.integers(0, count - 1))
    propensity: float | None = None
    field = "probabilities"
    if kind == "length":
        if draw(st.booleans()):
            probabilities.append(0.0)
        else:
            probabilities.pop()
    elif kind == "item":
        probabilities[position] = draw(
            st.one_of(
                st.text(max_size=3), st.none(), st.booleans(), st.lists(safe_ints), non_finite
            )
        )
    elif kind == "negative":
        probabilities[position] = -draw(st.floats(1e-6, 1e6))
    elif kind == "above_one":
        probabilities[position] = draw(st.floats(1.0, 1e6, exclude_min=True))
    elif kind == "sum":
        factor = draw(st.one_of(st.floats(0.0, 0.99), st.floats(1.01, 3.0)))
        probabilities = [w / sum(weights) * factor for w in weights]
    elif kind == "chosen_zero":
        others = sum(w for i, w in enumerate(weights) if i != index)
        probabilities = [0.0 if i == index else w / others for i, w in enumerate(weights)]
    elif kind == "inconsistent":
        chosen = weights[index] / sum(weights)
        propensity = draw(
            st.sampled_from([p for p in (chosen - 0.01, chosen + 0.01) if 0.0 < p <= 1.0])
        )
        field = "propensity"
    else:
        value = draw(st.one_of(st.text(max_size=4), safe_ints, st.sets(finite_floats)))
        return BadDistribution(value, actions, index, None, field, value)
    kept: object = propensity if field == "propensity" else probabilities
    return BadDistribution(probabilities, actions, index, propensity, field, kept)


def _not_a_uuid_text(text: str) -> bool:
    # uuid.UUID() accepts exactly 32 characters once these decorations are removed.
    core = text.replace("urn:", "").replace("uuid:", "").strip("{}").replace("-", "")
    return len(core) != 32


@st.composite
def near_miss_uuids(draw: st.DrawFn) -> str:
    """A UUID string with one hex digit removed, added, or replaced by a non-hex letter."""
    text = str(draw(st.uuids()))
    hex_positions = [i for i, ch in enumerate(text) if ch != "-"]
    position = draw(st.sampled_from(hex_positions))
    kind = draw(st.sampled_from(["drop", "add", "replace"]))
    if kind == "drop":
        return text[:position] + text[position + 1 :]
    if kind == "add":
        return text[:position] + draw(st.sampled_from("0123456789abcdef")) + text[position:]
    # Not "x": "0x" is a prefix int(..., 16) accepts.
    return text[:position] + draw(st.sampled_from("ghijklmnopqrstuvwyz")) + text[position + 1 :]


bad_decision_ids = st.one_of(
    near_miss_uuids(),
    st.text(max_size=40).filter(_not_a_uuid_text),
    st.none(),
    safe_ints,
    finite_floats,
    st.binary(min_size=16, max_size=16),
    st.lists(st.uuids(), max_size=2),
    st.uuids().map(lambda u: u.int),
    st.builds(Opaque),
)


# -- the pure validators: bad inputs ----------------------------------------------------


@EXAMPLES
@given(case=bad_contexts())
def test_bad_contexts_are_refused(case: tuple[object, str, object]) -> None:
    context, field, value = case

    rejected(lambda: check_context(context, MAX_BYTES), field, value, InvalidInputError)


@EXAMPLES
@given(context=oversized_contexts)
def test_contexts_over_the_size_limit_are_refused(context: dict[str, str]) -> None:
    size = len('{"blob":""}') + len(context["blob"])

    exc = rejected(
        lambda: check_context(context, MAX_BYTES), "context", f"<{size} bytes>", InvalidInputError
    )

    assert "runtime.max_context_bytes (2048)" in str(exc)
    assert "send less or raise it" in str(exc)
    assert len(str(exc)) < 300  # the huge value is not echoed


@EXAMPLES
@given(case=bad_actions())
def test_bad_actions_are_refused(
    case: tuple[tuple[str, ...], object, type[InvalidInputError], object],
) -> None:
    configured, actions, error, value = case

    rejected(lambda: check_actions("router", configured, actions), "actions", value, error)


@EXAMPLES
@given(case=bad_masks())
def test_bad_masks_are_refused(case: tuple[object, type[InvalidInputError], object]) -> None:
    mask, error, value = case

    rejected(lambda: check_mask(mask, ACTIONS), "mask", value, error)


@EXAMPLES
@given(reward=bad_rewards, field=st.sampled_from(["reward", "failure_reward"]))
def test_bad_rewards_are_refused(reward: object, field: str) -> None:
    rejected(lambda: check_reward(reward, field), field, reward, InvalidInputError)


@EXAMPLES
@given(case=bad_outcomes())
def test_bad_outcomes_are_refused(case: tuple[object, object]) -> None:
    outcome, value = case

    rejected(lambda: check_outcome(outcome, MAX_BYTES), "outcome", value, InvalidInputError)


@EXAMPLES
@given(propensity=bad_propensities)
def test_bad_propensities_are_refused(propensity: object) -> None:
    rejected(lambda: check_propensity(propensity), "propensity", propensity, InvalidInputError)


@EXAMPLES
@given(case=bad_distributions())
def test_bad_distributions_are_refused(case: BadDistribution) -> None:
    def call() -> object:
        return check_distribution(case.probabilities, case.actions, case.chosen, case.propensity)

    rejected(call, case.field, case.value, InvalidInputError)


@EXAMPLES
@given(decision=bad_decision_ids)
def test_bad_decision_ids_are_refused(decision: object) -> None:
    exc = rejected(lambda: check_decision_id(decision), "decision", decision, InvalidInputError)

    assert "must be a Decision, a UUID or a UUID string" in str(exc)


# -- the pure validators: good inputs ---------------------------------------------------


@EXAMPLES
@given(
    context=good_contexts,
    wrap=st.sampled_from([dict, OrderedDict, types.MappingProxyType]),
)
def test_check_context_returns_a_plain_dict_of_json_values(
    context: dict[str, Any], wrap: Callable[[dict[str, Any]], Mapping[str, Any]]
) -> None:
    checked = check_context(wrap(context), MAX_BYTES * 100)

    assert type(checked) is dict
    assert checked is not context
    assert list(checked) == list(context)
    for key, value in context.items():
        if isinstance(value, tuple | list):
            assert type(checked[key]) is list
            assert checked[key] == list(value)
            assert checked[key] is not value
        else:
            assert checked[key] is value


def test_check_context_converts_tuples_and_keeps_everything_else() -> None:
    context = {"n": 1, "x": 2.5, "ok": True, "s": "eu west", "none": None, "v": (1, "a", False)}

    checked = check_context(context, MAX_BYTES)

    assert checked == {
        "n": 1,
        "x": 2.5,
        "ok": True,
        "s": "eu west",
        "none": None,
        "v": [1, "a", False],
    }
    assert check_context({}, MAX_BYTES) == {}


def test_the_context_size_limit_is_inclusive() -> None:
    overhead = len('{"blob":""}')

    assert check_context({"blob": "x" * (100 - overhead)}, 100)
    with pytest.raises(InvalidInputError, match=r"\(got '<101 bytes>'\)"):
        check_context({"blob": "x" * (101 - overhead)}, 100)


@EXAMPLES
@given(reward=st.one_of(safe_ints, finite_floats))
def test_finite_rewards_are_floats(reward: float) -> None:
    value = check_reward(reward)

    assert type(value) is float
    assert value == reward


def test_boolean_rewards_count_as_one_and_zero() -> None:
    assert check_reward(True) == 1.0
    assert check_reward(False) == 0.0


@EXAMPLES
@given(propensity=st.floats(0.0, 1.0, exclude_min=True))
def test_propensities_in_the_open_closed_unit_interval_are_accepted(propensity: float) -> None:
    assert check_propensity(propensity) == propensity
    assert check_propensity(None) is None
    assert check_propensity(1) == 1.0


@EXAMPLES
@given(data=st.data(), count=st.integers(1, 6))
def test_consistent_distributions_are_accepted(data: st.DataObject, count: int) -> None:
    weights = data.draw(st.lists(st.floats(0.01, 1.0), min_size=count, max_size=count))
    probabilities = [w / sum(weights) for w in weights]
    index = data.draw(st.integers(0, count - 1))
    actions = tuple(f"x{i}" for i in range(count))

    assert check_distribution(None, actions, index, None) is None
    for propensity in (None, probabilities[index]):
        values = check_distribution(probabilities, actions, index, propensity)
        assert values == tuple(probabilities)


@EXAMPLES
@given(decision_id=st.uuids())
def test_decision_ids_in_every_accepted_form(decision_id: uuid.UUID) -> None:
    decision = Decision(agent_id="router", action="a", action_index=0, actions=ACTIONS)

    assert check_decision_id(decision_id) == decision_id
    assert check_decision_id(str(decision_id)) == decision_id
    assert check_decision_id(decision_id.hex) == decision_id
    assert check_decision_id(str(decision_id).upper()) == decision_id
    assert check_decision_id(decision) == decision.id


def test_check_actions_defaults_to_the_configured_actions() -> None:
    assert check_actions("router", ["a", "b"], None) == ("a", "b")
    assert check_actions("router", ["a", "b"], ["b"]) == ("b",)
    assert check_actions("free", [], ("p", "q")) == ("p", "q")
    assert check_actions("free", [], ["x" * 128]) == ("x" * 128,)


def test_check_mask_takes_names_or_one_boolean_per_action() -> None:
    assert check_mask(None, ACTIONS) is None
    assert check_mask(["c", "a"], ACTIONS) == (True, False, True)
    assert check_mask(("b", "b"), ACTIONS) == (False, True, False)
    assert check_mask([False, True, True], ACTIONS) == (False, True, True)


def test_check_outcome_accepts_json_and_copies_the_mapping() -> None:
    outcome = {"latency_ms": 12.5, "ok": True, "tags": ["a"], "nested": {"n": None}}

    checked = check_outcome(outcome, MAX_BYTES)

    assert checked == outcome
    assert checked is not outcome
    assert check_outcome(None, MAX_BYTES) is None
    assert check_outcome(OrderedDict(a=1), MAX_BYTES) == {"a": 1}


class _Ratio(float):
    """A float subclass, as numpy.float64 is."""


_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)


@given(st.dictionaries(st.text(max_size=10), _SCALARS, max_size=8))
def test_flat_outcomes_come_back_as_equal_copies_with_their_types(
    outcome: dict[str, object],
) -> None:
    checked = check_outcome(outcome, MAX_BYTES)
    assert checked == outcome
    assert checked is not outcome
    assert checked is not None
    assert [type(value) for value in checked.values()] == [
        type(value) for value in outcome.values()
    ]


def test_number_subclasses_become_plain_numbers_in_outcomes_and_contexts() -> None:
    outcome = check_outcome({"ratio": _Ratio(0.5), "flag": True}, MAX_BYTES)
    context = check_context({"ratio": _Ratio(0.5)}, MAX_BYTES)
    assert outcome is not None
    assert type(outcome["ratio"]) is float
    assert outcome["flag"] is True
    assert type(context["ratio"]) is float
    assert type(check_reward(_Ratio(0.5))) is float
    assert type(check_propensity(_Ratio(0.5))) is float


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 2**63, -(2**63) - 1])
def test_non_finite_or_huge_numbers_are_refused_in_flat_outcomes(value: float) -> None:
    with pytest.raises(InvalidInputError) as caught:
        check_outcome({"ok": 1, "bad": value}, MAX_BYTES)
    assert caught.value.field == "outcome"


@pytest.mark.parametrize("value", [math.nan, math.inf, 0.0, -0.5, 1.0000001])
def test_plain_float_propensities_outside_the_interval_are_refused(value: float) -> None:
    with pytest.raises(InvalidInputError):
        check_propensity(value)


# -- what the errors say ----------------------------------------------------------------


def test_errors_name_the_field_keep_the_value_and_say_what_to_do() -> None:
    no_actions = rejected(
        lambda: check_actions("free", [], None), "actions", None, InvalidInputError
    )
    assert "agent 'free' has no configured actions: pass actions=[...]" in str(no_actions)

    unknown = rejected(
        lambda: check_actions("router", ACTIONS, ["a", "zz"]), "actions", "zz", UnknownActionError
    )
    assert "configured actions (a, b, c)" in str(unknown)

    masked = rejected(lambda: check_mask(["a", "zz"], ACTIONS), "mask", "zz", UnknownActionError)
    assert "is not an offered action (a, b, c)" in str(masked)

    nan = math.nan
    bad = rejected(lambda: check_reward(nan), "reward", nan, InvalidInputError)
    assert "not NaN or infinite" in str(bad)

    inconsistent = rejected(
        lambda: check_distribution([0.5, 0.5], ("a", "b"), 0, 0.25),
        "propensity",
        0.25,
        InvalidInputError,
    )
    assert "differs from probabilities[0] (0.5)" in str(inconsistent)


def test_long_values_are_cut_in_the_message_but_kept_whole() -> None:
    value = "y" * 5000

    exc = rejected(lambda: check_reward(value), "reward", value, InvalidInputError)

    assert exc.value is value
    assert len(str(exc)) < 250


def test_the_pure_validators_never_raise_unknown_decision() -> None:
    # Whether a decision exists is for the runtime to say; an unknown but valid id passes here.
    fresh = uuid.uuid4()

    assert check_decision_id(fresh) == fresh
    assert check_decision_id(str(fresh)) == fresh


# -- edges: huge integers, deep nesting, other mappings, lenient UUID parsing ----------------

_HUGE = 10**400  # an int no float can hold


@pytest.mark.parametrize(
    ("call", "field"),
    [
        pytest.param(lambda: check_reward(_HUGE), "reward", id="reward"),
        pytest.param(lambda: check_propensity(_HUGE), "propensity", id="propensity"),
        pytest.param(
            lambda: check_distribution([_HUGE, 0], ("a", "b"), 0, None),
            "probabilities",
            id="probabilities",
        ),
    ],
)
def test_integers_beyond_float_range_are_invalid_input(
    call: Callable[[], object], field: str
) -> None:
    # float() of such an int raises OverflowError, which must not escape.
    with pytest.raises(InvalidInputError) as info:
        call()
    assert info.value.field == field


@pytest.mark.parametrize(
    ("context", "field"),
    [
        ({"x": _HUGE}, "context['x']"),  # FeatureEncoder could not encode it
        ({"x": 2**63}, "context['x']"),  # stored as JSON: integers must fit in 64 bits
        ({"v": [1, -(2**63) - 1]}, "context['v']"),
    ],
)
def test_contexts_with_integers_beyond_64_bits_are_refused(
    context: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidInputError) as info:
        check_context(context, MAX_BYTES)
    assert info.value.field == field
    assert len(str(info.value)) < 400


def test_integers_within_64_bits_are_accepted() -> None:
    limits = {"high": 2**63 - 1, "low": -(2**63), "v": [2**63 - 1, -(2**63)]}

    assert check_context(limits, MAX_BYTES) == limits
    assert check_outcome(limits, MAX_BYTES) == limits


@pytest.mark.parametrize("outcome", [{"n": 2**64}, {"nested": [{"n": _HUGE}]}])
def test_outcomes_with_integers_beyond_64_bits_are_refused(outcome: dict[str, object]) -> None:
    rejected(lambda: check_outcome(outcome, MAX_BYTES), "outcome", outcome, InvalidInputError)


def test_deeply_nested_outcomes_are_invalid_input() -> None:
    # Used to raise RecursionError: from json.dumps, then from repr() in the error message.
    deep: list[object] = []
    for _ in range(5000):
        deep = [deep]
    outcome = {"trace": deep}

    exc = rejected(lambda: check_outcome(outcome, 10**9), "outcome", outcome, InvalidInputError)

    assert len(str(exc)) < 400


def test_any_mapping_is_accepted_as_an_outcome() -> None:
    nested = types.MappingProxyType({"inner": types.MappingProxyType({"ok": True})})

    checked = check_outcome(nested, MAX_BYTES)

    assert checked == {"inner": {"ok": True}}
    assert type(checked) is dict


@pytest.mark.parametrize("text", ["0x" + "1" * 30, " " + "1" * 31, "\u0663" * 32, "1_" * 16])
def test_strings_that_only_int_would_parse_are_not_uuids(text: str) -> None:
    # uuid.UUID() parses with int(..., 16), which takes all of these.
    rejected(lambda: check_decision_id(text), "decision", text, InvalidInputError)


@pytest.mark.parametrize("form", [str, lambda u: u.hex], ids=["canonical", "hex"])
def test_a_uuid_with_a_trailing_newline_is_invalid_input(form: Callable[[uuid.UUID], str]) -> None:
    text = form(uuid.UUID(int=12345)) + "\n"

    rejected(lambda: check_decision_id(text), "decision", text, InvalidInputError)


# -- the same bad inputs through a real Runtime ---------------------------------------------


def make_runtime(url: str, durability: str = "sync") -> Runtime:
    config = load_config(
        {
            "database": {"url": url},
            "runtime": {"durability": durability, "seed": 7, "max_context_bytes": MAX_BYTES},
            "agents": {
                "router": {"actions": list(ACTIONS)},
                "free": {},
                "shadowed": {"actions": list(ACTIONS), "mode": "shadow"},
            },
        },
        environ={},
    )
    return Runtime(config)


class BadCall(NamedTuple):
    method: str
    args: tuple[object, ...]
    kwargs: dict[str, object]
    field: str
    error: type[InvalidInputError]


@st.composite
def bad_decide_calls(draw: st.DrawFn) -> BadCall:
    kind = draw(
        st.sampled_from(
            ["context", "size", "actions", "mask", "mode", "step", "episode", "app", "agent"]
        )
    )
    if kind == "context":
        context, field, _ = draw(bad_contexts())
        return BadCall("decide", ("router", context), {}, field, InvalidInputError)
    if kind == "size":
        return BadCall(
            "decide", ("router", draw(oversized_contexts)), {}, "context", InvalidInputError
        )
    if kind == "actions":
        configured, actions, error, _ = draw(bad_actions())
        agent = "router" if configured else "free"
        return BadCall("decide", (agent, {}, actions), {}, "actions", error)
    if kind == "mask":
        mask, error, _ = draw(bad_masks())
        return BadCall("decide", ("router", {"x": 1}), {"mask": mask}, "mask", error)
    if kind == "mode":
        mode = draw(st.one_of(st.text(max_size=8), safe_ints).filter(lambda m: m != "live"))
        if mode in ("shadow", "deferred"):
            mode = "Live"
        return BadCall("decide", ("router", {}), {"mode": mode}, "mode", InvalidInputError)
    if kind == "step":
        step = draw(st.one_of(st.integers(max_value=-1), st.booleans(), finite_floats, st.text()))
        return BadCall("decide", ("router", {}), {"step": step}, "step", InvalidInputError)
    if kind == "episode":
        episode = draw(st.one_of(st.uuids().map(str), safe_ints, st.text(max_size=5)))
        return BadCall(
            "decide", ("router", {}), {"episode_id": episode}, "episode_id", InvalidInputError
        )
    if kind == "app":
        which = draw(st.sampled_from(["live", "missing", "unknown"]))
        if which == "live":
            kwargs: dict[str, object] = {"app_action": draw(st.sampled_from(ACTIONS))}
            return BadCall("decide", ("router", {}), kwargs, "app_action", InvalidInputError)
        if which == "missing":
            return BadCall("decide", ("shadowed", {}), {}, "app_action", InvalidInputError)
        kwargs = {"app_action": draw(unknown_names)}
        return BadCall("decide", ("shadowed", {}), kwargs, "app_action", UnknownActionError)
    stranger: object = draw(st.one_of(st.text(max_size=8), safe_ints, st.none()))
    if stranger in ("router", "free", "shadowed"):
        stranger = "nobody"
    return BadCall("decide", (stranger, {}), {}, "agent_id", InvalidInputError)


bad_sources = st.one_of(st.text(min_size=129, max_size=140), safe_ints, st.binary(max_size=3))


@st.composite
def bad_reward_calls(draw: st.DrawFn) -> BadCall:
    kind = draw(st.sampled_from(["decision", "reward", "outcome", "source"]))
    decision = draw(st.uuids())
    if kind == "decision":
        return BadCall("reward", (draw(bad_decision_ids), 1.0), {}, "decision", InvalidInputError)
    if kind == "reward":
        return BadCall("reward", (decision, draw(bad_rewards)), {}, "reward", InvalidInputError)
    if kind == "outcome":
        outcome, _ = draw(bad_outcomes())
        kwargs: dict[str, object] = {"outcome": outcome}
        return BadCall("reward", (decision, 1.0), kwargs, "outcome", InvalidInputError)
    kwargs = {"source": draw(bad_sources)}
    return BadCall("reward", (decision, 1.0), kwargs, "source", InvalidInputError)


@st.composite
def bad_record_calls(draw: st.DrawFn) -> BadCall:
    kinds = ["agent", "action", "actions", "propensity", "probabilities", "context", "size"]
    kind = draw(st.sampled_from([*kinds, "reward", "outcome", "source"]))
    if kind == "agent":
        agent = draw(st.one_of(st.text(max_size=8), st.none()).filter(lambda a: a != "router"))
        if agent in ("free", "shadowed"):
            agent = "nobody"
        return BadCall("record", (agent, {}, "a", 1.0), {}, "agent_id", InvalidInputError)
    if kind == "action":
        if draw(st.booleans()):
            action = draw(st.one_of(unknown_names, safe_ints, st.none()))
            return BadCall("record", ("router", {}, action, 1.0), {}, "action", UnknownActionError)
        offered = draw(st.lists(action_names, unique=True, min_size=1, max_size=4))
        action = draw(action_names.filter(lambda a: a not in offered))
        kwargs: dict[str, object] = {"actions": offered}
        return BadCall("record", ("free", {}, action, 1.0), kwargs, "action", UnknownActionError)
    if kind == "actions":
        configured, actions, error, _ = draw(bad_actions().filter(lambda case: case[1] is not None))
        agent = "router" if configured else "free"
        kwargs = {"actions": actions}
        return BadCall("record", (agent, {}, "a", 1.0), kwargs, "actions", error)
    if kind == "propensity":
        kwargs = {"propensity": draw(bad_propensities)}
        return BadCall("record", ("router", {}, "b", 1.0), kwargs, "propensity", InvalidInputError)
    if kind == "probabilities":
        case = draw(bad_distributions())
        kwargs = {
            "actions": list(case.actions),
            "probabilities": case.probabilities,
            "propensity": case.propensity,
        }
        args: tuple[object, ...] = ("free", {}, case.actions[case.chosen], 1.0)
        return BadCall("record", args, kwargs, case.field, InvalidInputError)
    if kind == "context":
        context, field, _ = draw(bad_contexts())
        return BadCall("record", ("router", context, "a", 1.0), {}, field, InvalidInputError)
    if kind == "size":
        args = ("router", draw(oversized_contexts), "a", 1.0)
        return BadCall("record", args, {}, "context", InvalidInputError)
    if kind == "reward":
        args = ("router", {}, "a", draw(bad_rewards))
        return BadCall("record", args, {}, "reward", InvalidInputError)
    if kind == "outcome":
        outcome, _ = draw(bad_outcomes())
        kwargs = {"outcome": outcome}
        return BadCall("record", ("router", {}, "a", 1.0), kwargs, "outcome", InvalidInputError)
    kwargs = {"source": draw(bad_sources)}
    return BadCall("record", ("router", {}, "a", 1.0), kwargs, "source", InvalidInputError)


bad_activate_calls = bad_decision_ids.map(
    lambda decision: BadCall("activate", (decision,), {}, "decision", InvalidInputError)
)

BAD_CALLS: dict[str, st.SearchStrategy[BadCall]] = {
    "decide": bad_decide_calls(),
    "reward": bad_reward_calls(),
    "record": bad_record_calls(),
    "activate": bad_activate_calls,
}


def send_bad_calls(rt: Runtime, calls: st.SearchStrategy[BadCall]) -> None:
    """Runs in a worker thread: each generated call goes to the runtime's event loop."""

    @settings(max_examples=150, deadline=None)
    @given(call=calls)
    def check(call: BadCall) -> None:
        method = getattr(rt, call.method)
        with pytest.raises(InvalidInputError) as info:
            anyio.from_thread.run(functools.partial(method, *call.args, **call.kwargs))
        assert type(info.value) is call.error
        assert info.value.field == call.field

    check()


async def serve_one(rt: Runtime) -> None:
    """A valid decide() and reward() still work and reach the database."""
    decision = await rt.decide("router", {"x": 1.5, "tags": ("u", "v")})
    assert decision.action in ACTIONS
    assert decision.propensity == pytest.approx(1 / 3)
    assert decision.context == {"x": 1.5, "tags": ["u", "v"]}
    feedback = await rt.reward(decision, 1.0, outcome={"ok": True})
    assert feedback.decision_id == decision.id
    await rt.flush()


@pytest.mark.parametrize("method", list(BAD_CALLS))
async def test_bad_calls_through_the_runtime_raise_only_invalid_input(
    sqlite_url: str, method: str
) -> None:
    with anyio.fail_after(60):
        async with make_runtime(sqlite_url) as rt:
            await anyio.to_thread.run_sync(send_bad_calls, rt, BAD_CALLS[method])

            assert rt.stats.enqueued == 0  # nothing bad reached the collector
            await serve_one(rt)
            assert rt.stats.written == 2
            assert rt.stats.rejected == 0


def explicit_bad_calls(known: Decision) -> list[BadCall]:
    """One readable example of each kind of bad call; ``known`` is a live decision."""
    nan, bad, unknown = math.nan, InvalidInputError, UnknownActionError
    record: tuple[object, ...] = ("router", {}, "a", 1.0)
    return [
        BadCall("decide", ("router", [("x", 1)]), {}, "context", bad),
        BadCall("decide", ("router", {1: "x"}), {}, "context", bad),
        BadCall("decide", ("router", {"x": nan}), {}, "context['x']", bad),
        BadCall("decide", ("router", {"d": {"e": 1}}), {}, "context['d']", bad),
        BadCall("decide", ("router", {"v": [1, [2]]}), {}, "context['v']", bad),
        BadCall("decide", ("router", {"s": "x" * 5000}), {}, "context", bad),
        BadCall("decide", ("free", {}, "ab"), {}, "actions", bad),
        BadCall("decide", ("free", {}, ["a", "a"]), {}, "actions", bad),
        BadCall("decide", ("free", {}, []), {}, "actions", bad),
        BadCall("decide", ("free", {}, ["a", 2]), {}, "actions", bad),
        BadCall("decide", ("free", {}), {}, "actions", bad),
        BadCall("decide", ("router", {}, ["a", "q"]), {}, "actions", unknown),
        BadCall("decide", ("router", {}), {"mask": ["q"]}, "mask", unknown),
        BadCall("decide", ("router", {}), {"mask": [False] * 3}, "mask", bad),
        BadCall("decide", ("router", {}), {"mask": [True, False]}, "mask", bad),
        BadCall("reward", (known, nan), {}, "reward", bad),
        BadCall("reward", (known, -math.inf), {}, "reward", bad),
        BadCall("reward", (known, "1.0"), {}, "reward", bad),
        BadCall("reward", (known, None), {}, "reward", bad),
        BadCall("reward", (known, 1), {"outcome": {"s": {1}}}, "outcome", bad),
        BadCall("reward", (known, 1), {"outcome": {"o": Opaque()}}, "outcome", bad),
        BadCall("reward", (known, 1), {"outcome": {"v": [nan]}}, "outcome", bad),
        BadCall("reward", ("not-a-uuid", 1.0), {}, "decision", bad),
        BadCall("reward", (str(known.id)[:-1], 1.0), {}, "decision", bad),
        BadCall("activate", (known,), {}, "decision", bad),  # live, not deferred
        BadCall("record", ("router", {}, "q", 1.0), {}, "action", unknown),
        BadCall("record", record, {"propensity": 0.0}, "propensity", bad),
        BadCall("record", record, {"propensity": 1.5}, "propensity", bad),
        BadCall("record", record, {"probabilities": [0.5, 0.4, 0.0]}, "probabilities", bad),
        BadCall(
            "record",
            record,
            {"probabilities": [0.5, 0.5, 0.0], "propensity": 0.4},
            "propensity",
            bad,
        ),
        BadCall("record", ("nobody", {}, "a", 1.0), {}, "agent_id", bad),
    ]


async def test_explicit_bad_calls_leave_the_runtime_serving(sqlite_url: str) -> None:
    async with make_runtime(sqlite_url) as rt:
        known = await rt.decide("router", {"x": 1})
        for call in explicit_bad_calls(known):
            with pytest.raises(InvalidInputError) as info:
                await getattr(rt, call.method)(*call.args, **call.kwargs)
            assert type(info.value) is call.error, call
            assert info.value.field == call.field, call

        assert rt.stats.enqueued == 1  # only the first, valid decision
        await serve_one(rt)
        recorded = await rt.record("router", {"x": 2}, "b", 0.5, probabilities=[0.25, 0.5, 0.25])
        assert recorded.propensity == 0.5
        assert rt.stats.written == 5


async def test_rewards_for_unknown_decisions_are_unknown_decision_errors(sqlite_url: str) -> None:
    unknown = uuid.uuid4()

    async with make_runtime(sqlite_url) as rt:
        with pytest.raises(UnknownDecisionError) as info:
            await rt.reward(unknown, 1.0)
        with pytest.raises(UnknownDecisionError):
            await rt.activate(str(unknown))
        await serve_one(rt)

    assert isinstance(info.value, InvalidInputError)
    assert info.value.field == "decision"
    assert info.value.value == str(unknown)
    assert "reward decisions after they are made" in str(info.value)


async def test_unknown_agents_are_named_with_the_configured_ones(sqlite_url: str) -> None:
    async with make_runtime(sqlite_url) as rt:
        with pytest.raises(InvalidInputError) as info:
            await rt.decide("nobody", {})

    assert info.value.field == "agent_id"
    assert info.value.value == "nobody"
    assert "configured: router, free, shadowed" in str(info.value)
    assert "add it under `agents`" in str(info.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [("step", -1), ("step", "3"), ("step", True), ("episode_id", "not-a-uuid")],
)
async def test_record_validates_step_and_episode_id(
    sqlite_url: str, field: str, value: object
) -> None:
    # A non-UUID episode_id used to reach the collector and crash the runtime.
    refused: InvalidInputError | None = None
    with anyio.fail_after(30):
        async with make_runtime(sqlite_url) as rt:
            app: Any = rt
            try:
                await app.record("router", {}, "a", 1.0, **{field: value})
            except InvalidInputError as exc:
                refused = exc
            await serve_one(rt)

    # Asserted outside the runtime: a pytest failure inside its task group is a BaseException.
    assert refused is not None
    assert refused.field == field
