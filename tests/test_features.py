"""FeatureEncoder and FeatureSpec: contexts become fixed-width, process-independent vectors."""

from __future__ import annotations

import enum
import json
import math
import os
import random
import re
import subprocess
import sys
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentrt.config import AgentRTConfig, load_config
from agentrt.errors import PluginNotFoundError, PolicyError
from agentrt.exploration import EpsilonGreedy
from agentrt.learning import features
from agentrt.learning.features import ExtractorRef, FeatureEncoder, FeatureSpec
from agentrt.pipeline.updater import load_policy
from agentrt.plugins import Plugin, PluginRegistry
from agentrt.policy import LearnedPolicy
from agentrt.runtime import Runtime
from agentrt.storage import repositories
from agentrt.types import FeatureExtractor

Vector = npt.NDArray[np.float32]

# Wide enough that the few tokens of one hand-written context never share a slot.
WIDE = FeatureSpec(dim=4096)

MIXED: dict[str, Any] = {
    "latency": 12.5,
    "retries": 3,
    "cached": True,
    "stale": False,
    "region": "eu-west",
    "query": "Find the Cheapest flight to Lisbon",
    "history": [0.5, -1.25, 2.0],
    "tags": ["vip", "mobile"],
    "missing": None,
}


def nonzero(vector: Vector) -> dict[int, float]:
    """The non-zero slots of a vector."""
    return {int(i): float(vector[i]) for i in np.flatnonzero(vector)}


def slot_of(encoder: FeatureEncoder, context: Mapping[str, Any]) -> int:
    """The only slot a one-token context touches."""
    (slot,) = np.flatnonzero(encoder.encode(context))
    return int(slot)


# -- shape, determinism and stability ----------------------------------------------------


@pytest.mark.parametrize("dim", [1, 7, 64, 1000])
def test_encode_gives_float32_vectors_of_the_spec_width(dim: int) -> None:
    vector = FeatureEncoder(FeatureSpec(dim=dim)).encode(MIXED)

    assert vector.dtype == np.float32
    assert vector.shape == (dim,)
    assert np.all(np.isfinite(vector))


def test_default_spec_is_64_wide() -> None:
    assert FeatureEncoder().encode(MIXED).shape == (64,)


def test_identical_contexts_give_identical_vectors() -> None:
    first = FeatureEncoder().encode(MIXED)
    again = FeatureEncoder().encode(json.loads(json.dumps(MIXED)))

    assert np.array_equal(first, again)
    assert np.array_equal(first, FeatureEncoder().encode(MIXED))


def test_key_order_does_not_matter() -> None:
    shuffled = list(MIXED.items())
    random.Random(3).shuffle(shuffled)
    encoder = FeatureEncoder()

    assert list(dict(shuffled)) != list(MIXED)
    assert np.array_equal(encoder.encode(MIXED), encoder.encode(dict(shuffled)))
    assert np.array_equal(encoder.encode(MIXED), encoder.encode(dict(reversed(MIXED.items()))))


def test_key_order_does_not_matter_even_when_keys_share_a_slot() -> None:
    # Summed in key order in float32, 1e-7 + 4 - 4 gives 0 one way and 1e-7 the other; a
    # database (PostgreSQL JSONB) may hand training the keys in another order than serving.
    encoder = FeatureEncoder(FeatureSpec(dim=1))  # every key lands in slot 0
    context = {"small": 1e-7, "big": 4.0, "minus": -4.0}

    assert np.array_equal(encoder.encode(context), encoder.encode(dict(reversed(context.items()))))


def test_different_contexts_give_different_vectors() -> None:
    encoder = FeatureEncoder(WIDE)

    assert not np.array_equal(encoder.encode({"region": "eu"}), encoder.encode({"region": "us"}))
    assert not np.array_equal(encoder.encode({"region": "eu"}), encoder.encode({"zone": "eu"}))


# Loads features.py by path: the encoder needs only numpy, not the whole package.
_SUBPROCESS = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("features_copy", sys.argv[1])
module = importlib.util.module_from_spec(spec)
sys.modules["features_copy"] = module
spec.loader.exec_module(module)
encoder = module.FeatureEncoder(module.FeatureSpec(dim=int(sys.argv[2])))
vector = encoder.encode(json.loads(sys.argv[3])).tolist()
print(json.dumps({"vector": vector, "hash": hash("region")}))
"""


def encode_elsewhere(context: Mapping[str, Any], dim: int, hash_seed: str) -> tuple[Vector, int]:
    """The encoding computed by a fresh interpreter, and its hash() of a fixed string."""
    done = subprocess.run(  # noqa: S603 - our own interpreter running a fixed snippet
        [sys.executable, "-c", _SUBPROCESS, features.__file__, str(dim), json.dumps(context)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONHASHSEED": hash_seed},
        check=True,
        timeout=60,
    )
    answer = json.loads(done.stdout)
    return np.array(answer["vector"], dtype=np.float32), int(answer["hash"])


def test_hashing_is_stable_across_processes() -> None:
    ours = FeatureEncoder(FeatureSpec(dim=256)).encode(MIXED)

    first, first_hash = encode_elsewhere(MIXED, 256, hash_seed="1")
    second, second_hash = encode_elsewhere(MIXED, 256, hash_seed="2")

    assert first_hash != second_hash  # Python's own str hash is salted per process...
    assert np.count_nonzero(ours) > 5
    assert np.array_equal(first, ours)  # ...the encoder's CRC32 is not
    assert np.array_equal(second, ours)


# -- numbers ----------------------------------------------------------------------------


def test_numbers_pass_through_before_fitting_but_are_clipped() -> None:
    encoder = FeatureEncoder(FeatureSpec(dim=WIDE.dim, clip=5.0))
    slot = slot_of(encoder, {"x": 1.0})

    assert nonzero(encoder.encode({"x": 3.25})) == {slot: 3.25}
    assert nonzero(encoder.encode({"x": -2})) == {slot: -2.0}
    assert nonzero(encoder.encode({"x": 1e9})) == {slot: 5.0}
    assert nonzero(encoder.encode({"x": -1e9})) == {slot: -5.0}
    assert nonzero(encoder.encode({"x": 0.0})) == {}


def test_fit_scales_a_numeric_key_to_mean_zero_and_unit_std() -> None:
    rng = np.random.default_rng(11)
    data = rng.uniform(40.0, 60.0, size=500)  # |z| < sqrt(3): nothing is clipped
    encoder = FeatureEncoder(WIDE)
    slot = slot_of(encoder, {"x": 1.0})

    returned = encoder.fit({"x": float(v)} for v in data)
    column = encoder.encode_many([{"x": float(v)} for v in data])[:, slot]

    assert returned is encoder
    expected = (data - data.mean()) / data.std(ddof=1)
    np.testing.assert_allclose(column, expected, rtol=1e-5, atol=1e-5)
    assert abs(float(column.mean())) < 1e-5
    assert float(column.std(ddof=1)) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(encoder.mean[slot], data.mean(), rtol=1e-12)
    np.testing.assert_allclose(encoder.m2[slot] / (encoder.count[slot] - 1), data.var(ddof=1))
    assert encoder.count[slot] == len(data)


def test_fitted_numbers_are_clipped_to_clip() -> None:
    encoder = FeatureEncoder(FeatureSpec(dim=WIDE.dim, clip=2.5))
    encoder.fit({"x": float(v)} for v in (-1.0, 0.0, 1.0))  # mean 0, std 1
    slot = slot_of(encoder, {"x": 1.0})

    assert encoder.encode({"x": 2.0})[slot] == pytest.approx(2.0)
    assert encoder.encode({"x": 100.0})[slot] == 2.5
    assert encoder.encode({"x": -100.0})[slot] == -2.5


def test_a_constant_key_is_centred_not_divided_by_zero() -> None:
    encoder = FeatureEncoder(WIDE).fit([{"x": 7.0}] * 10)
    slot = slot_of(encoder, {"x": 1.0})

    assert encoder.encode({"x": 7.0})[slot] == 0.0
    assert encoder.encode({"x": 8.0})[slot] == pytest.approx(1.0)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_contribute_nothing(bad: float) -> None:
    fresh = FeatureEncoder(WIDE)
    fitted = FeatureEncoder(WIDE).fit([{"x": 1.0}, {"x": 3.0}, {"x": bad}])

    assert not np.any(fresh.encode({"x": bad}))
    assert not np.any(fitted.encode({"x": bad}))
    assert not np.any(fresh.encode({"v": [bad, bad]}))
    # fit() skipped the bad value: the statistics are those of 1.0 and 3.0.
    assert fitted.count.sum() == 2
    assert fitted.encode({"x": 3.0})[slot_of(fitted, {"x": 5.0})] == pytest.approx(1 / math.sqrt(2))


def test_update_adds_one_context_to_the_statistics() -> None:
    encoder = FeatureEncoder(WIDE)
    encoder.update({"x": 4.0, "flag": True, "name": "a"})
    slot = slot_of(encoder, {"x": 1.0})

    assert encoder.count.sum() == 1  # only numbers have statistics
    assert encoder.count[slot] == 1
    assert encoder.mean[slot] == 4.0


def test_lists_of_numbers_are_encoded_by_element() -> None:
    encoder = FeatureEncoder(WIDE)

    by_list = encoder.encode({"v": [1.5, -2.0, 3]})
    by_element = encoder.encode({"v[0]": 1.5, "v[1]": -2.0, "v[2]": 3})

    assert len(nonzero(by_list)) == 3
    assert np.array_equal(by_list, by_element)
    assert np.array_equal(by_list, encoder.encode({"v": (1.5, -2.0, 3)}))
    assert not np.array_equal(by_list, encoder.encode({"v": [-2.0, 1.5, 3]}))


def test_lists_are_cut_at_max_list() -> None:
    encoder = FeatureEncoder(FeatureSpec(dim=WIDE.dim, max_list=3))

    long = encoder.encode({"v": list(range(1, 101)), "tags": [f"t{i}" for i in range(100)]})
    short = encoder.encode({"v": [1, 2, 3], "tags": ["t0", "t1", "t2"]})

    assert len(nonzero(short)) == 6
    assert np.array_equal(long, short)


def test_list_statistics_are_per_element() -> None:
    encoder = FeatureEncoder(WIDE).fit([{"v": [0.0, 100.0]}, {"v": [2.0, 300.0]}])

    np.testing.assert_allclose(
        sorted(nonzero(encoder.encode({"v": [2.0, 300.0]})).values()),
        [1 / math.sqrt(2)] * 2,
        rtol=1e-6,
    )


# -- booleans, strings, lists of strings, None ---------------------------------------------


def test_booleans_are_plus_or_minus_one() -> None:
    encoder = FeatureEncoder(WIDE)

    yes = nonzero(encoder.encode({"cached": True}))
    no = nonzero(encoder.encode({"cached": False}))

    assert list(yes.values()) == [1.0]
    assert list(no.values()) == [-1.0]
    assert yes.keys() == no.keys()
    # Booleans are not numbers: no statistics, no scaling.
    encoder.fit([{"cached": True}, {"cached": False}] * 5)
    assert encoder.count.sum() == 0
    assert nonzero(encoder.encode({"cached": True})) == yes


def test_categorical_strings_are_plus_or_minus_one_in_one_slot() -> None:
    encoder = FeatureEncoder(WIDE)

    for value in ("eu-west", "us", "x", "A_B:c/d", "ünïcode"):
        (weight,) = nonzero(encoder.encode({"region": value})).values()
        assert abs(weight) == 1.0
    signs = {next(iter(nonzero(encoder.encode({"k": f"v{i}"})).values())) for i in range(40)}
    assert signs == {1.0, -1.0}  # the second hash bit gives both signs


def test_text_is_spread_over_word_slots_with_weight_one_over_sqrt_words() -> None:
    encoder = FeatureEncoder(WIDE)

    text = nonzero(encoder.encode({"query": "Find the cheapest flight"}))

    assert len(text) == 4
    for weight in text.values():
        assert abs(weight) == pytest.approx(0.5)
    assert sum(w * w for w in text.values()) == pytest.approx(1.0)
    # Words are lower-cased and split on anything but letters and digits.
    same = encoder.encode({"query": "  FIND the, cheapest\tflight!"})
    assert nonzero(same) == pytest.approx(text)
    # Each word is a token of its own: the slots of a one-word text are among them.
    three = nonzero(encoder.encode({"query": "find the flight"}))
    assert set(three) < set(text)
    assert all(abs(w) == pytest.approx(1 / math.sqrt(3)) for w in three.values())


def test_text_is_cut_at_max_words() -> None:
    encoder = FeatureEncoder(FeatureSpec(dim=WIDE.dim, max_words=4))
    words = [f"w{i}" for i in range(100)]

    long = encoder.encode({"q": " ".join(words)})

    assert len(nonzero(long)) == 4
    assert np.array_equal(long, encoder.encode({"q": " ".join(words[:4])}))
    assert all(abs(w) == pytest.approx(0.5) for w in nonzero(long).values())


def test_text_without_words_contributes_nothing() -> None:
    assert not np.any(FeatureEncoder(WIDE).encode({"q": " -- !! "}))


def test_lists_of_strings_are_bags_of_categories() -> None:
    encoder = FeatureEncoder(WIDE)

    bag = encoder.encode({"tags": ["vip", "mobile"]})

    assert np.array_equal(bag, encoder.encode({"tags": ["mobile", "vip"]}))
    assert np.array_equal(bag, encoder.encode({"tags": "vip"}) + encoder.encode({"tags": "mobile"}))
    assert sorted(abs(w) for w in nonzero(bag).values()) == [1.0, 1.0]
    twice = encoder.encode({"tags": ["vip", "vip"]})
    assert np.array_equal(twice, 2 * encoder.encode({"tags": ["vip"]}))


def test_mixed_lists_encode_numbers_by_element_and_strings_as_a_bag() -> None:
    encoder = FeatureEncoder(WIDE)

    mixed = encoder.encode({"m": [2.0, "red", True]})

    expected = encoder.encode({"m[0]": 2.0}) + encoder.encode({"m": ["red", True]})
    assert np.array_equal(mixed, expected)
    assert len(nonzero(mixed)) == 3


def test_none_is_ignored() -> None:
    encoder = FeatureEncoder(WIDE)

    assert not np.any(encoder.encode({"missing": None}))
    assert not np.any(encoder.encode({}))
    assert np.array_equal(encoder.encode({"a": 1.5, "b": None}), encoder.encode({"a": 1.5}))
    encoder.fit([{"missing": None}])
    assert encoder.count.sum() == 0


# -- persistence ------------------------------------------------------------------------


def test_state_round_trip_gives_identical_encodings() -> None:
    spec = FeatureSpec(dim=128, clip=3.0, max_list=4, max_words=8)
    rng = random.Random(5)
    contexts = [
        {"x": rng.gauss(10, 4), "v": [rng.random() for _ in range(6)], "tag": rng.choice("abc")}
        for _ in range(200)
    ]
    encoder = FeatureEncoder(spec).fit(contexts)

    state = encoder.state()
    restored = FeatureEncoder.from_state(FeatureSpec.from_dict(spec.to_dict()), state)

    assert set(state) == {"count", "mean", "m2"}
    assert all(array.dtype == np.float64 and array.shape == (128,) for array in state.values())
    assert np.array_equal(restored.encode_many(contexts), encoder.encode_many(contexts))


def test_state_is_a_copy() -> None:
    encoder = FeatureEncoder(WIDE).fit([{"x": 1.0}, {"x": 2.0}])
    before = encoder.encode({"x": 5.0})

    state = encoder.state()
    for array in state.values():
        array[:] = 0.0

    assert np.array_equal(encoder.encode({"x": 5.0}), before)


def test_state_survives_a_safetensors_round_trip() -> None:
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    encoder = FeatureEncoder().fit([{"x": float(i), "y": [i, -i]} for i in range(50)])

    blob = safetensors_numpy.save(encoder.state())
    restored = FeatureEncoder.from_state(encoder.spec, safetensors_numpy.load(blob))

    assert np.array_equal(restored.encode(MIXED), encoder.encode(MIXED))


def test_spec_dict_round_trip() -> None:
    spec = FeatureSpec(dim=300, clip=2.5, max_list=7, max_words=9)

    data = spec.to_dict()

    assert data == {"dim": 300, "clip": 2.5, "max_list": 7, "max_words": 9}
    assert FeatureSpec.from_dict(data) == spec
    assert FeatureSpec.from_dict(json.loads(json.dumps(data))) == spec
    assert FeatureSpec.from_dict(FeatureSpec().to_dict()) == FeatureSpec()


@pytest.mark.parametrize("dim", [0, -1])
def test_spec_refuses_a_non_positive_dim(dim: int) -> None:
    with pytest.raises(ValueError, match="dim must be > 0"):
        FeatureSpec(dim=dim)


@pytest.mark.parametrize("name", ["count", "mean", "m2"])
@pytest.mark.parametrize("shape", [(63,), (65,), (64, 1), ()])
def test_statistics_of_the_wrong_shape_are_refused(name: str, shape: tuple[int, ...]) -> None:
    good = FeatureEncoder().state()
    bad = {**good, name: np.zeros(shape)}

    with pytest.raises(ValueError, match=rf"FeatureEncoder\.{name} must have shape \(64,\)"):
        FeatureEncoder.from_state(FeatureSpec(), bad)
    arrays: dict[str, Any] = {name: np.zeros(shape)}
    with pytest.raises(ValueError, match=name):
        FeatureEncoder(FeatureSpec(), **arrays)


def test_state_of_another_width_is_refused() -> None:
    state = FeatureEncoder(FeatureSpec(dim=32)).state()

    with pytest.raises(ValueError, match=r"must have shape \(64,\)"):
        FeatureEncoder.from_state(FeatureSpec(dim=64), state)


# -- encode_many ------------------------------------------------------------------------


def test_encode_many_equals_stacking_encode() -> None:
    rng = random.Random(9)
    contexts: list[dict[str, Any]] = [
        {"x": rng.uniform(-50, 50), "ok": rng.random() < 0.5, "q": "some words here", "t": ["a"]}
        for _ in range(40)
    ]
    contexts += [MIXED, {}, {"x": None}]
    encoder = FeatureEncoder().fit(contexts)

    matrix = encoder.encode_many(contexts)

    assert matrix.dtype == np.float32
    assert matrix.shape == (len(contexts), 64)
    assert np.array_equal(matrix, np.stack([encoder.encode(c) for c in contexts]))


def test_encode_many_of_nothing_is_an_empty_matrix() -> None:
    matrix = FeatureEncoder(FeatureSpec(dim=16)).encode_many([])

    assert matrix.shape == (0, 16)
    assert matrix.dtype == np.float32


# -- any valid context ------------------------------------------------------------------

# Contexts as applications write them (None inside lists is ignored).
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)
contexts = st.dictionaries(
    st.text(max_size=12), st.one_of(scalars, st.lists(scalars, max_size=40)), max_size=12
)
specs = st.builds(
    FeatureSpec,
    dim=st.integers(1, 256),
    clip=st.floats(0.5, 10.0),
    max_list=st.integers(0, 40),
    max_words=st.integers(0, 70),
)


@settings(max_examples=300, deadline=None)
@given(context=contexts, spec=specs)
def test_any_valid_context_encodes_to_a_finite_vector(
    context: dict[str, Any], spec: FeatureSpec
) -> None:
    encoder = FeatureEncoder(spec)

    vector = encoder.encode(context)

    assert vector.dtype == np.float32
    assert vector.shape == (spec.dim,)
    assert np.all(np.isfinite(vector))
    assert np.array_equal(vector, encoder.encode(dict(reversed(context.items()))))


def largest_total(context: Mapping[str, Any], spec: FeatureSpec) -> float:
    """An upper bound of the summed magnitudes a context can put into its vector."""
    unit = max(spec.clip, 1.0)
    total = 0.0
    for value in context.values():
        if isinstance(value, str):
            total += max(1.0, math.sqrt(spec.max_words))
        elif isinstance(value, list):
            total += unit * min(len(value), spec.max_list)
        elif value is not None:
            total += unit
    return total


@settings(max_examples=200, deadline=None)
@given(data=st.lists(contexts, min_size=1, max_size=8), spec=specs)
def test_a_fitted_encoder_encodes_any_valid_contexts_to_finite_vectors(
    data: list[dict[str, Any]], spec: FeatureSpec
) -> None:
    encoder = FeatureEncoder(spec).fit(data)

    matrix = encoder.encode_many(data)

    assert matrix.shape == (len(data), spec.dim)
    assert np.all(np.isfinite(matrix))
    assert np.all(np.isfinite(encoder.mean))
    assert np.all(np.isfinite(encoder.m2))
    for row, context in zip(matrix, data, strict=True):
        assert float(np.abs(row).sum()) <= largest_total(context, spec) * (1 + 1e-5) + 1e-5


def test_an_integer_beyond_float_range_contributes_nothing() -> None:
    # Like NaN and inf: float(10**400) would raise OverflowError.
    encoder = FeatureEncoder(WIDE)

    assert not np.any(encoder.encode({"x": 10**400}))
    assert not np.any(encoder.encode({"v": [-(10**400)]}))
    assert encoder.fit([{"x": 10**400}]).count.sum() == 0


def test_fitting_extreme_finite_values_keeps_encodings_finite() -> None:
    # Welford's deviation 1.7e308 - (-1.7e308) overflows; it used to end in math.sqrt(-inf).
    encoder = FeatureEncoder(WIDE).fit([{"x": 1.7e308}, {"x": -1.7e308}, {"x": 0.0}])
    slot = slot_of(encoder, {"x": 1.0})

    assert np.all(np.isfinite(encoder.encode({"x": 1.0})))
    assert np.all(np.isfinite(encoder.state()["m2"]))
    assert encoder.encode({"x": 1.7e308})[slot] == WIDE.clip
    assert encoder.encode({"x": -1.7e308})[slot] == -WIDE.clip


# -- feature plugins --------------------------------------------------------------------


class CharCounts:
    """A deterministic feature plugin: a text's length, vowels and digits; counts its calls."""

    name = "char_counts"
    dim = 3

    def __init__(self) -> None:
        self.calls: list[list[object]] = []

    def transform(self, values: Sequence[object]) -> Vector:
        self.calls.append(list(values))
        texts = [str(value) for value in values]
        return np.array(
            [
                [len(t), sum(ch in "aeiou" for ch in t), sum(ch.isdigit() for ch in t)]
                for t in texts
            ],
            dtype=np.float32,
        ).reshape(len(texts), self.dim)


class Broken:
    """A feature plugin whose output has the wrong shape, or non-finite values."""

    name = "broken"
    dim = 2

    def __init__(self, output: Vector) -> None:
        self.output = output

    def transform(self, values: Sequence[object]) -> Vector:
        return np.repeat(self.output[None, :], len(values), axis=0)


PLUGIN_SPEC = FeatureSpec(dim=WIDE.dim)


def counts(text: str) -> list[float]:
    return [float(x) for x in CharCounts().transform([text])[0]]


def test_a_feature_plugin_is_a_feature_extractor() -> None:
    assert isinstance(CharCounts(), FeatureExtractor)


def test_a_plugin_key_fills_its_own_block_instead_of_being_hashed() -> None:
    plugin = CharCounts()
    encoder = FeatureEncoder(PLUGIN_SPEC, extractors={"query": plugin})

    vector = encoder.encode({"query": "route 66 please", "region": "eu"})

    assert encoder.spec.extractors == (ExtractorRef("query", "char_counts", 3),)
    assert encoder.spec.width == WIDE.dim + 3
    assert vector.shape == (WIDE.dim + 3,)
    assert vector.dtype == np.float32
    # The plugin's numbers as it returned them: not scaled, not clipped (clip is 5).
    assert vector[WIDE.dim :].tolist() == counts("route 66 please") == [15.0, 6.0, 2.0]
    # The hashed columns hold the other keys only.
    assert np.array_equal(vector[: WIDE.dim], FeatureEncoder(WIDE).encode({"region": "eu"}))
    assert plugin.calls == [["route 66 please"]]


def test_a_context_without_the_key_leaves_the_block_at_zero() -> None:
    plugin = CharCounts()
    encoder = FeatureEncoder(PLUGIN_SPEC, extractors={"query": plugin})

    assert not np.any(encoder.encode({"query": None})[WIDE.dim :])
    assert not np.any(encoder.encode({"other": "text here"})[WIDE.dim :])
    assert plugin.calls == []  # None is never handed to the plugin


def test_encode_many_calls_each_plugin_once_with_every_present_value() -> None:
    query, title = CharCounts(), CharCounts()
    encoder = FeatureEncoder(PLUGIN_SPEC, extractors={"title": title, "query": query})
    contexts: list[dict[str, Any]] = [
        {"query": "a1", "title": "hello"},
        {"x": 2.0},
        {"query": "bb22 cc", "title": None},
    ]

    matrix = encoder.encode_many(contexts)

    assert matrix.shape == (3, WIDE.dim + 6)
    assert query.calls == [["a1", "bb22 cc"]]
    assert title.calls == [["hello"]]
    # Blocks follow the hashed columns in key order: query, then title.
    assert [ref.key for ref in encoder.spec.extractors] == ["query", "title"]
    assert matrix[0, WIDE.dim : WIDE.dim + 3].tolist() == counts("a1")
    assert matrix[0, WIDE.dim + 3 :].tolist() == counts("hello")
    assert not np.any(matrix[1, WIDE.dim :])
    assert not np.any(matrix[2, WIDE.dim + 3 :])
    assert np.array_equal(matrix, np.stack([encoder.encode(c) for c in contexts]))


def test_plugin_outputs_are_used_as_they_are_even_after_fitting() -> None:
    rng = random.Random(4)
    texts = ["".join(rng.choice("ab1 ") for _ in range(rng.randint(1, 30))) for _ in range(50)]
    contexts = [{"q": text, "n": float(i)} for i, text in enumerate(texts)]
    plugin = CharCounts()
    encoder = FeatureEncoder(FeatureSpec(dim=8), extractors={"q": plugin})

    encoder.fit(contexts)
    block = encoder.encode_many(contexts)[:, 8:]

    assert plugin.calls == [texts]  # only by encode_many: fitting needs no plugin output
    assert block.tolist() == [counts(text) for text in texts]
    assert encoder.count.sum() == 50  # the number, not the plugin key
    assert encoder.state()["count"].shape == (8,)


def test_non_finite_plugin_outputs_become_zero() -> None:
    plugin = Broken(np.array([math.nan, math.inf], dtype=np.float32))
    encoder = FeatureEncoder(FeatureSpec(dim=4), extractors={"q": plugin})

    assert not np.any(encoder.encode({"q": "a"}))
    huge = Broken(np.array([1e300, -2.5]))  # float64 beyond float32's range
    encoder = FeatureEncoder(FeatureSpec(dim=4), extractors={"q": huge})
    assert encoder.encode({"q": "a"})[4:].tolist() == [0.0, -2.5]


def test_a_plugin_output_of_the_wrong_shape_is_an_error() -> None:
    plugin = Broken(np.zeros(5, dtype=np.float32))  # says dim 2, returns 5 columns
    encoder = FeatureEncoder(PLUGIN_SPEC, extractors={"q": plugin})

    with pytest.raises(ValueError, match=r"'broken' returned shape \(1, 5\) .* expected \(1, 2\)"):
        encoder.encode({"q": "a"})


def test_plugin_state_round_trip_gives_identical_encodings() -> None:
    rng = random.Random(8)
    contexts = [
        {"q": "".join(rng.choice("ae1x ") for _ in range(rng.randint(0, 20))), "x": rng.random()}
        for _ in range(100)
    ]
    encoder = FeatureEncoder(FeatureSpec(dim=32), extractors={"q": CharCounts()}).fit(contexts)

    data = json.loads(json.dumps(encoder.spec.to_dict()))
    restored = FeatureEncoder.from_state(
        FeatureSpec.from_dict(data), encoder.state(), {"q": CharCounts()}
    )

    assert data["extractors"] == {"q": {"name": "char_counts", "dim": 3}}
    assert restored.spec == encoder.spec
    assert all(array.shape == (32,) for array in encoder.state().values())
    assert np.array_equal(restored.encode_many(contexts), encoder.encode_many(contexts))


def test_a_spec_without_plugins_has_no_extractors_entry() -> None:
    assert "extractors" not in FeatureSpec().to_dict()
    assert FeatureSpec.from_dict(FeatureSpec().to_dict()).extractors == ()


def test_a_stored_spec_needs_the_same_plugins_again() -> None:
    encoder = FeatureEncoder(FeatureSpec(dim=8), extractors={"q": CharCounts()})
    spec, state = encoder.spec, encoder.state()

    with pytest.raises(ValueError, match=r"context keys \['q'\], but plugins were given for \[\]"):
        FeatureEncoder.from_state(spec, state)
    with pytest.raises(ValueError, match=r"\['q'\], but plugins were given for \['other'\]"):
        FeatureEncoder.from_state(spec, state, {"other": CharCounts()})
    with pytest.raises(
        ValueError, match="'char_counts' with 3 columns; the plugin given is 'broken'"
    ):
        FeatureEncoder.from_state(spec, state, {"q": Broken(np.zeros(2, dtype=np.float32))})
    wider = CharCounts()
    wider.dim = 4
    with pytest.raises(
        ValueError, match="with 3 columns; the plugin given is 'char_counts' with 4"
    ):
        FeatureEncoder.from_state(spec, state, {"q": wider})


def test_a_plugin_must_have_a_positive_dim() -> None:
    empty = CharCounts()
    empty.dim = 0
    with pytest.raises(ValueError, match="'char_counts' for key 'q': dim must be > 0"):
        FeatureEncoder(extractors={"q": empty})


# -- the serving fast path is the reference encoding, bit for bit --------------------------


def reference_encode(encoder: FeatureEncoder, context: Mapping[str, Any]) -> Vector:
    """The hashed columns as the encoder first computed them, value by value into a float64
    array: numbers first, then the other values, each pass in sorted key order. The encoder's
    cached plans, scalings and accumulators must give exactly these bits."""
    spec = encoder.spec
    acc = np.zeros(spec.dim)

    def slot(token: str) -> tuple[int, float]:
        digest = zlib.crc32(token.encode("utf-8"))
        return digest % spec.dim, 1.0 if (digest >> 31) & 1 == 0 else -1.0

    def as_float(value: float) -> float:
        try:
            return float(value)
        except OverflowError:
            return math.nan

    def scale(index: int, value: float) -> float:
        if not math.isfinite(value):
            return 0.0
        n, mean = float(encoder.count[index]), float(encoder.mean[index])
        if n < 2:
            scaled = value - mean if n else value
        else:
            std = math.sqrt(float(encoder.m2[index]) / (n - 1))
            scaled = (value - mean) / std if std > 1e-12 else value - mean
        return max(-spec.clip, min(spec.clip, scaled))

    items = sorted((k, v) for k, v in context.items() if k not in encoder.extractors)
    for key, value in items:
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int | float):
            index = slot(f"n:{key}")[0]
            acc[index] += scale(index, as_float(value))
        elif isinstance(value, list | tuple):
            for i, item in enumerate(value[: spec.max_list]):
                if isinstance(item, int | float) and not isinstance(item, bool):
                    index = slot(f"n:{key}[{i}]")[0]
                    acc[index] += scale(index, as_float(item))
    for key, value in items:
        if isinstance(value, bool):
            acc[slot(f"b:{key}")[0]] += 1.0 if value else -1.0
        elif isinstance(value, str):
            if not any(ch.isspace() for ch in value):
                index, sign = slot(f"c:{key}={value}")
                acc[index] += sign
                continue
            words = re.findall(r"[a-z0-9]+", value.lower())[: spec.max_words]
            for word in words:
                index, sign = slot(f"t:{key}:{word}")
                acc[index] += sign * (1.0 / math.sqrt(len(words)))
        elif isinstance(value, list | tuple):
            for item in value[: spec.max_list]:
                if isinstance(item, str | bool):
                    index, sign = slot(f"c:{key}={item}")
                    acc[index] += sign
    return acc.astype(np.float32)


def assert_same_bits(actual: Vector, expected: Vector) -> None:
    """Equal as bit patterns: 0.0 and -0.0 differ, NaN equals itself."""
    assert actual.dtype == expected.dtype == np.float32
    assert actual.shape == expected.shape
    assert np.array_equal(actual.view(np.uint32), expected.view(np.uint32)), (actual, expected)


class Level(enum.IntEnum):
    """An int subclass, as applications pass enums."""

    LOW = 1
    HIGH = 7


# A small pool of keys makes contexts share key sets (and so cached plans), and collide.
pooled_keys = st.one_of(st.sampled_from([f"k{i}" for i in range(8)]), st.text(max_size=6))
odd_numbers = st.sampled_from(
    [math.nan, math.inf, -math.inf, -0.0, 0.0, 1e308, -1e308, 10**400, -(10**400), 2**64]
)
numbers = st.one_of(
    st.floats(),
    st.integers(min_value=-(2**70), max_value=2**70),
    odd_numbers,
    st.floats(allow_nan=False).map(np.float64),
    st.sampled_from(list(Level)),
    st.integers(-3, 3).map(np.int64),  # not a Python number: ignored
)
texts = st.one_of(
    st.text(max_size=24),
    st.text(alphabet=" \t\n\u00a0\u2003\u3000aAbZ9é-", max_size=24),  # unicode whitespace
)
rich_scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
rich_values = st.one_of(
    rich_scalars,
    st.lists(rich_scalars, max_size=40),
    st.lists(st.floats(-5, 5), max_size=40),  # lists of numbers, as embeddings come
    st.tuples(rich_scalars, rich_scalars),
    st.dictionaries(st.text(max_size=2), rich_scalars, max_size=2),  # not encoded
)
rich_contexts = st.dictionaries(pooled_keys, rich_values, max_size=12)
fast_specs = st.builds(
    FeatureSpec,
    dim=st.one_of(st.integers(1, 300), st.sampled_from([features._DENSE + 1, 1000, 4096])),
    clip=st.floats(0.5, 10.0),
    max_list=st.integers(0, 40),
    max_words=st.integers(0, 70),
)


@settings(max_examples=200, deadline=None)
@given(fitted=st.lists(rich_contexts, max_size=6), data=st.lists(rich_contexts, max_size=6))
@pytest.mark.parametrize("spec", [FeatureSpec(dim=64), FeatureSpec(dim=1), FeatureSpec(dim=1000)])
def test_encode_is_the_reference_encoding(
    spec: FeatureSpec, fitted: list[dict[str, Any]], data: list[dict[str, Any]]
) -> None:
    encoder = FeatureEncoder(spec).fit(fitted)

    for context in data + fitted:
        expected = reference_encode(encoder, context)
        assert_same_bits(encoder.encode(context), expected)
        assert_same_bits(encoder.encode(context), expected)  # again, from the cached plan
        assert_same_bits(encoder.encode(dict(reversed(context.items()))), expected)


@settings(max_examples=200, deadline=None)
@given(
    spec=fast_specs,
    fitted=st.lists(rich_contexts, max_size=6),
    data=st.lists(rich_contexts, max_size=6),
)
def test_encode_many_and_encode_agree_bit_for_bit(
    spec: FeatureSpec, fitted: list[dict[str, Any]], data: list[dict[str, Any]]
) -> None:
    encoder = FeatureEncoder(spec).fit(fitted)

    matrix = encoder.encode_many(data)

    assert matrix.shape == (len(data), spec.dim)
    for row, context in zip(matrix, data, strict=True):
        assert_same_bits(row, reference_encode(encoder, context))
        assert_same_bits(encoder.encode(context), row)


@settings(max_examples=100, deadline=None)
@given(
    first=st.lists(rich_contexts, min_size=1, max_size=4), more=st.lists(rich_contexts, max_size=4)
)
def test_statistics_updated_after_encoding_are_used(
    first: list[dict[str, Any]], more: list[dict[str, Any]]
) -> None:
    encoder = FeatureEncoder(FeatureSpec(dim=16)).fit(first)
    for context in first:
        encoder.encode(context)  # caches the plans and scalings of these statistics

    encoder.fit(more + first)

    for context in first + more:
        assert_same_bits(encoder.encode(context), reference_encode(encoder, context))


finite_floats = st.one_of(st.floats(-10, 10), st.floats(allow_nan=False, allow_infinity=False))
wide_values = st.one_of(finite_floats, st.integers(-3, 3), st.booleans(), st.none(), st.just("x"))


@settings(max_examples=100, deadline=None)
@given(
    dim=st.sampled_from([8, 64, features._DENSE, features._DENSE + 1]),
    count=st.integers(features._VECTOR_KEYS - 2, 80),
    data=st.data(),
)
def test_wide_contexts_of_floats_encode_as_the_reference(
    dim: int, count: int, data: st.DataObject
) -> None:
    """Contexts of many floats take numpy's path; NaN, inf, huge values and other types the
    loop's. Either gives the reference's bits."""
    keys = [f"f{i}" for i in range(count)]

    def floats(odd: bool) -> list[float]:
        drawn = data.draw(st.lists(finite_floats, min_size=count, max_size=count))
        if odd:
            drawn[data.draw(st.integers(0, count - 1))] = data.draw(odd_numbers)
        return drawn

    fitted = [
        dict(zip(keys, floats(i == 1), strict=True)) for i in range(data.draw(st.integers(0, 3)))
    ]
    encoder = FeatureEncoder(FeatureSpec(dim=dim)).fit(fitted)
    mixed = data.draw(st.lists(wide_values, min_size=count, max_size=count))
    contexts = [
        dict(zip(keys, values, strict=True)) for values in (floats(False), floats(True), mixed)
    ]

    for context in contexts + fitted:
        expected = reference_encode(encoder, context)
        assert_same_bits(encoder.encode(context), expected)
        assert_same_bits(encoder.encode(dict(reversed(context.items()))), expected)
        assert_same_bits(encoder.encode_many([context])[0], expected)


def test_a_numeric_key_scales_with_the_current_statistics() -> None:
    encoder = FeatureEncoder(WIDE).fit([{"x": 0.0}, {"x": 2.0}])
    slot = slot_of(FeatureEncoder(WIDE), {"x": 1.0})
    assert encoder.encode({"x": 2.0})[slot] == pytest.approx(1 / math.sqrt(2))

    encoder.update({"x": 4.0})  # mean 2, std 2

    assert encoder.encode({"x": 4.0})[slot] == pytest.approx(1.0)
    assert encoder.encode({"v": 4.0, "x": 4.0})[slot] == pytest.approx(1.0)


def test_longer_lists_of_numbers_after_shorter_ones_use_every_element() -> None:
    encoder = FeatureEncoder(WIDE)

    short = encoder.encode({"v": [1.0]})
    long = encoder.encode({"v": [1.0, 2.0, 3.0]})

    assert len(nonzero(short)) == 1
    assert len(nonzero(long)) == 3
    assert_same_bits(long, reference_encode(encoder, {"v": [1.0, 2.0, 3.0]}))


def test_many_key_sets_keep_the_plan_cache_bounded() -> None:
    encoder = FeatureEncoder(FeatureSpec(dim=32))
    contexts = [{f"key{i}": float(i), "shared": "yes"} for i in range(features._MAX_PLANS + 50)]

    for context in contexts:
        assert_same_bits(encoder.encode(context), reference_encode(encoder, context))

    assert 0 < len(encoder._plans) <= features._MAX_PLANS
    assert_same_bits(encoder.encode(contexts[0]), reference_encode(encoder, contexts[0]))


def test_whitespace_is_what_str_isspace_says() -> None:
    # Categorical strings and texts are told apart by whitespace, as str.isspace() defines it.
    every = [chr(code) for code in range(sys.maxunicode + 1)]
    spaces = [ch for ch in every if ch.isspace()]

    assert [ch for ch in every if features._SPACE.search(ch)] == spaces
    encoder = FeatureEncoder(WIDE)
    for space in spaces:
        value = f"a{space}b"
        assert_same_bits(encoder.encode({"q": value}), reference_encode(encoder, {"q": value}))


def test_plugin_keys_are_left_to_the_plugin_whatever_their_values() -> None:
    encoder = FeatureEncoder(FeatureSpec(dim=16), extractors={"q": CharCounts()})
    contexts: list[dict[str, Any]] = [{"q": "a b", "x": 1.0}, {"x": 1.0}, {"q": None, "x": 1.0}]

    hashed = [encoder.encode(context)[:16] for context in contexts]

    for vector, context in zip(hashed, contexts, strict=True):
        assert_same_bits(vector, reference_encode(encoder, context))
    assert_same_bits(hashed[0], hashed[1])


# -- feature plugins end to end: trained, stored, reloaded --------------------------------

ACTIONS = ("short", "long")


def plugin_config(url: str, tmp_path: Path) -> AgentRTConfig:
    return load_config(
        {
            "database": {"url": url},
            "runtime": {"seed": 3, "device": "cpu", "spill_dir": str(tmp_path / "spill")},
            "agents": {
                "router": {
                    "actions": list(ACTIONS),
                    "learner": "linear",
                    "features": {"query": "char_counts"},
                }
            },
        }
    )


def plugin_registry(factory: Callable[[], object] = CharCounts) -> PluginRegistry:
    registry = PluginRegistry()
    registry.register(Plugin("feature", "char_counts", factory))
    return registry


async def play_lengths(rt: Runtime, rounds: int, rng: random.Random) -> float:
    """Queries of random words; ``long`` pays for queries over 40 characters, ``short`` for
    the others. Word hashing cannot see the length; the plugin can."""
    total = 0.0
    for _ in range(rounds):
        words = [
            "".join(rng.choice("bcdfg") for _ in range(rng.randint(2, 6)))
            for _ in range(rng.randint(1, 14))
        ]
        query = " ".join(words)
        decision = await rt.decide("router", {"query": query})
        best = "long" if len(query) > 40 else "short"
        reward = float(decision.action == best)
        total += reward
        await rt.reward(decision, reward)
    return total / rounds


async def test_a_policy_with_a_feature_plugin_learns_and_reloads_with_it(
    sqlite_url: str, tmp_path: Path
) -> None:
    config = plugin_config(sqlite_url, tmp_path)
    rng = random.Random(5)
    async with Runtime(config, registry=plugin_registry()) as rt:
        baseline = await play_lengths(rt, 300, rng)
        cycle = (await rt.run_cycle("router"))["router"]
        assert cycle.status == "activated", cycle.reason
        learned = await play_lengths(rt, 200, rng)
        async with rt.database.session() as session:
            row = await repositories.load_policy_version(session, "router", 1)
    assert learned > baseline + 0.25, (baseline, learned)
    assert row is not None

    policy = load_policy(row, plugin_registry(), EpsilonGreedy())

    assert isinstance(policy.encoder.extractors["query"], CharCounts)
    assert policy.encoder.spec.extractors == (ExtractorRef("query", "char_counts", 3),)
    assert policy.encoder.spec.width == config.agents["router"].training.feature_dim + 3
    assert policy.encoder.count.sum() == 0  # the query was never hashed
    short, long = {"query": "ab cd"}, {"query": " ".join(["bcdfg"] * 10)}
    assert favourite_action(policy, short) == "short"
    assert favourite_action(policy, long) == "long"

    async with Runtime(config, registry=plugin_registry()) as restarted:
        assert restarted.active_version("router") == 1
        decision = await restarted.decide("router", long)
        assert decision.policy_version == 1


def favourite_action(policy: LearnedPolicy, context: dict[str, Any]) -> str:
    means, _ = policy.model.predict(policy.encoder.encode(context)[None, :])
    return policy.actions[int(np.argmax(means[0]))]


async def test_a_policy_whose_feature_plugin_is_missing_or_changed_is_refused(
    sqlite_url: str, tmp_path: Path
) -> None:
    config = plugin_config(sqlite_url, tmp_path)
    async with Runtime(config, registry=plugin_registry()) as rt:
        await play_lengths(rt, 60, random.Random(6))
        assert (await rt.run_cycle("router"))["router"].status == "activated"
        async with rt.database.session() as session:
            row = await repositories.load_policy_version(session, "router", 1)
    assert row is not None

    with pytest.raises(
        PolicyError, match="'query' with the feature plugin 'char_counts', which is"
    ):
        load_policy(row, PluginRegistry(), EpsilonGreedy())

    def wider() -> CharCounts:
        plugin = CharCounts()
        plugin.dim = 5
        return plugin

    with pytest.raises(PolicyError, match=r"cannot rebuild its feature encoder: .* with 5"):
        load_policy(row, plugin_registry(wider), EpsilonGreedy())

    # A runtime whose configuration names a missing plugin does not start at all; one whose
    # configuration dropped the plugin refuses the stored version that needs it.
    with pytest.raises(PluginNotFoundError, match="char_counts"):
        async with Runtime(config, registry=PluginRegistry()):
            pass
    agent = config.agents["router"].model_copy(update={"features": {}})
    without = config.model_copy(update={"agents": {"router": agent}})
    async with Runtime(without, registry=PluginRegistry()) as restarted:
        assert restarted.active_version("router") is None  # refused: the baseline serves
        assert (await restarted.decide("router", {"query": "a b"})).policy_version is None
