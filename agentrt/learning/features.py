"""Context to features: the one encoder that decisions and training share.

A context is a mapping of numbers, booleans, strings and lists. Each value lands in a fixed-width
vector by the hashing trick, so contexts whose keys come and go need no schema:

- numbers (and each element of a list of numbers, as ``key[i]``) are scaled with running
  statistics (Welford's mean and variance, per slot) and clipped to ``[-clip, clip]``;
- booleans are ``+1``/``-1``;
- strings without whitespace are categorical: ``key=value`` is hashed to a slot holding ``±1``;
- strings with whitespace are text: each lower-cased word is hashed, weighted ``1/sqrt(words)``;
- lists of strings are bags of categories.

Hashing uses CRC32 (stable across processes, unlike ``hash()``), with a second hash bit as the
sign so that collisions cancel on average. The statistics are fitted on the training data and
stored in the policy artifact, so serving uses exactly the scaling that training used.

Feature plugins (:class:`~agentrt.types.FeatureExtractor`, configured per agent as
``features: {key: plugin}``) take over chosen keys: their values are not hashed but given to
the plugin's ``transform``, in one batch for many contexts, and its ``dim`` numbers fill a
block of columns of their own after the hashed ones (blocks in the order of their keys). The
numbers are used as the plugin returns them (non-finite ones become 0): the plugin knows its
scale, and its geometry matters. Standardising each column of a unit-length sentence
embedding, say, inflates its many low-variance directions to unit variance: on the ticket
task of the text_embedding plugin's tests, the linear learner then routed 84% of paraphrased
tickets right instead of 91%. Plugins should return numbers of order one. Raw outputs also
need no statistics, so fitting never calls a plugin and training runs it once per context.
A context without the key (or with ``None``) leaves its block at zero. The spec records each
plugin's name and width, so that a stored policy rebuilds its encoder with the same plugins.
"""

from __future__ import annotations

import math
import operator
import re
import struct
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from agentrt.types import FeatureExtractor

__all__ = ["ExtractorRef", "FeatureEncoder", "FeatureSpec"]

_WORD = re.compile(r"[a-z0-9]+")
_SPACE = re.compile(r"\s")  # exactly the characters for which str.isspace() is true
_MAX_CACHE = 65_536
_MAX_PLANS = 1_024
# Up to this width a context is summed in a list of every slot (cheapest to write into the
# vector); wider ones in a dict of the slots it touches, so that a wide spec costs per key.
_DENSE = 256
# From this many keys, a context whose values are all floats is scaled and summed by numpy
# (a handful of array operations) instead of key by key: fewer keys are cheaper in Python.
_VECTOR_KEYS = 16
# That path takes values and offsets below _HUGE in magnitude (others take the loop), so that
# no number overflows on the way (the smallest divisor is 1e-12) and numpy never warns.
_HUGE = 1e290

# Where an encoding sums its slots: a list of every slot, or a dict of the slots touched.
_Accumulator = list[float] | defaultdict[int, float]
_Floats = npt.NDArray[np.float64]


class _Numbers(NamedTuple):
    """A plan's keys as arrays, for a context whose every value is a float: the slots, their
    offsets and divisors, the value types that qualify (``float`` per key), and a packer of
    the values into float64 bytes."""

    slots: npt.NDArray[np.intp]
    offsets: _Floats
    divisors: _Floats
    types: tuple[type, ...]
    pack: Callable[..., bytes]


class _Plan(NamedTuple):
    """What encoding one set of context keys needs, computed once: the keys in sorted order
    (without the feature plugins' keys), where a number under each key goes (its slot, and
    the scaling of that slot, see :meth:`FeatureEncoder._scaling`), and a getter of the
    keys' values in that order; with many keys on a dense spec, the same as arrays."""

    keys: tuple[str, ...]
    slots: tuple[int, ...]
    offsets: tuple[float, ...]
    divisors: tuple[float, ...]
    values: Callable[[Mapping[str, Any]], tuple[Any, ...]]
    numbers: _Numbers | None


class ExtractorRef(NamedTuple):
    """A feature plugin that a spec depends on: the context key it encodes, its registered
    name and the number of columns it produces."""

    key: str
    name: str
    dim: int


@dataclass(frozen=True)
class FeatureSpec:
    """How contexts become vectors; stored with every policy artifact.

    Attributes:
        dim: width of the hashed feature vector.
        clip: scaled numbers are clipped to ``[-clip, clip]``.
        max_list: at most this many elements of a list are used.
        max_words: at most this many words of a text are used.
        extractors: the feature plugins that encode some keys instead of hashing (sorted by
            key); their columns follow the hashed ones.
    """

    dim: int = 64
    clip: float = 5.0
    max_list: int = 32
    max_words: int = 64
    extractors: tuple[ExtractorRef, ...] = ()

    def __post_init__(self) -> None:
        if self.dim <= 0:
            raise ValueError(f"FeatureSpec.dim must be > 0 (got {self.dim})")
        refs = tuple(sorted(ExtractorRef(*ref) for ref in self.extractors))
        keys = [ref.key for ref in refs]
        if len(set(keys)) != len(keys):
            raise ValueError(f"FeatureSpec.extractors: one plugin per key (got {keys})")
        for ref in refs:
            if ref.dim <= 0:
                raise ValueError(
                    f"feature plugin {ref.name!r} for key {ref.key!r}: dim must be > 0 "
                    f"(got {ref.dim})"
                )
        object.__setattr__(self, "extractors", refs)

    @property
    def width(self) -> int:
        """Columns of an encoded context: the hashed ones and every plugin's block."""
        return self.dim + sum(ref.dim for ref in self.extractors)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "dim": self.dim,
            "clip": self.clip,
            "max_list": self.max_list,
            "max_words": self.max_words,
        }
        # Only when there are some: a spec without plugins keeps the form it always had.
        if self.extractors:
            data["extractors"] = {
                ref.key: {"name": ref.name, "dim": ref.dim} for ref in self.extractors
            }
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSpec:
        extractors = data.get("extractors", {})
        return cls(
            dim=int(data["dim"]),
            clip=float(data["clip"]),
            max_list=int(data["max_list"]),
            max_words=int(data["max_words"]),
            extractors=tuple(
                ExtractorRef(str(key), str(ref["name"]), int(ref["dim"]))
                for key, ref in extractors.items()
            ),
        )


def _bind(spec: FeatureSpec, extractors: Mapping[str, FeatureExtractor]) -> FeatureSpec:
    """The spec with the plugins' names and widths; a spec that already records plugins (a
    stored policy's) must be given exactly those plugins again."""
    if not spec.extractors:
        return replace(
            spec,
            extractors=tuple(ExtractorRef(k, e.name, e.dim) for k, e in extractors.items()),
        )
    recorded = {ref.key: ref for ref in spec.extractors}
    if set(recorded) != set(extractors):
        raise ValueError(
            f"the features were built with feature plugins for context keys "
            f"{sorted(recorded)}, but plugins were given for {sorted(extractors)}"
        )
    for key, ref in recorded.items():
        given = extractors[key]
        if (given.name, given.dim) != (ref.name, ref.dim):
            raise ValueError(
                f"context key {key!r} was encoded by feature plugin {ref.name!r} with "
                f"{ref.dim} columns; the plugin given is {given.name!r} with {given.dim}"
            )
    return spec


def _getter(keys: tuple[str, ...]) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    """The values of ``keys`` in a context, in order."""
    if len(keys) > 1:
        return operator.itemgetter(*keys)  # one call for every value
    return lambda context: tuple(context[key] for key in keys)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _as_float(value: float) -> float:
    """``float(value)``; integers beyond the float range become NaN (they contribute 0)."""
    try:
        return float(value)
    except OverflowError:
        return math.nan


class FeatureEncoder:
    """Encodes contexts into ``float32`` vectors of width ``spec.width``.

    Args:
        spec: the hashing specification.
        extractors: feature plugins by the context key they encode; a spec that records
            plugins (a stored policy's) needs the same ones, by name and width.
        count, mean, m2: running statistics per hashed slot (Welford); fresh when omitted.

    Raises:
        ValueError: the plugins do not match the spec, or the statistics have the wrong shape.

    Encoding caches, per set of context keys, the sorted keys with their slots and scalings
    (a context's keys mostly come in the same few sets): change the statistics only through
    :meth:`update` and :meth:`fit`, which drop what the change makes stale.
    """

    def __init__(
        self,
        spec: FeatureSpec | None = None,
        *,
        extractors: Mapping[str, FeatureExtractor] | None = None,
        count: npt.NDArray[np.float64] | None = None,
        mean: npt.NDArray[np.float64] | None = None,
        m2: npt.NDArray[np.float64] | None = None,
    ) -> None:
        self.extractors: dict[str, FeatureExtractor] = dict(extractors or {})
        self.spec = _bind(spec or FeatureSpec(), self.extractors)
        dim = self.spec.dim
        self.count = np.zeros(dim) if count is None else np.asarray(count, dtype=np.float64)
        self.mean = np.zeros(dim) if mean is None else np.asarray(mean, dtype=np.float64)
        self.m2 = np.zeros(dim) if m2 is None else np.asarray(m2, dtype=np.float64)
        for name, array in (("count", self.count), ("mean", self.mean), ("m2", self.m2)):
            if array.shape != (dim,):
                raise ValueError(
                    f"FeatureEncoder.{name} must have shape ({dim},), got {array.shape}"
                )
        self._slots: dict[str, tuple[int, float]] = {}
        # Caches of encoding, filled on demand; update() drops the scalings it changes.
        self._scales: list[tuple[float, float] | None] = [None] * dim
        self._plans: dict[tuple[Any, ...], _Plan] = {}
        self._items: dict[str, tuple[int, ...]] = {}
        # (key, plugin, first column, end column) per plugin, in the spec's (key) order.
        blocks: list[tuple[str, FeatureExtractor, int, int]] = []
        start = self.spec.dim
        for ref in self.spec.extractors:
            blocks.append((ref.key, self.extractors[ref.key], start, start + ref.dim))
            start += ref.dim
        self._blocks = tuple(blocks)
        self._width = start
        # The clip as 0-d arrays: numpy takes them faster than Python floats.
        self._high = np.array(self.spec.clip, dtype=np.float64)
        self._low = np.array(-self.spec.clip, dtype=np.float64)

    # -- hashing ---------------------------------------------------------------------------

    def _hash(self, token: str) -> tuple[int, float]:
        digest = zlib.crc32(token.encode("utf-8"))
        return digest % self.spec.dim, 1.0 if (digest >> 31) & 1 == 0 else -1.0

    def _slot(self, token: str) -> tuple[int, float]:
        found = self._slots.get(token)
        if found is None:
            found = self._hash(token)
            if len(self._slots) < _MAX_CACHE:
                self._slots[token] = found
        return found

    def _plan(self, key_order: tuple[Any, ...]) -> _Plan:
        keys = tuple(sorted(key for key in key_order if key not in self.extractors))
        slots = tuple(self._hash(f"n:{key}")[0] for key in keys)
        scalings = [self._scales[slot] or self._scaling(slot) for slot in slots]
        offsets = tuple(offset for offset, _ in scalings)
        divisors = tuple(divisor for _, divisor in scalings)
        numbers = None
        if (
            len(keys) >= _VECTOR_KEYS
            and self.spec.dim <= _DENSE
            and all(abs(offset) < _HUGE for offset in offsets)
        ):
            numbers = _Numbers(
                np.array(slots, dtype=np.intp),
                np.array(offsets, dtype=np.float64),
                np.array(divisors, dtype=np.float64),
                (float,) * len(keys),
                struct.Struct(f"={len(keys)}d").pack,
            )
        plan = _Plan(keys, slots, offsets, divisors, _getter(keys), numbers)
        # Plain string keys only: a key that merely equals a string could format otherwise.
        if all(type(key) is str for key in keys):
            if len(self._plans) >= _MAX_PLANS:
                self._plans.clear()  # one call, so threads encoding at once stay consistent
            self._plans[key_order] = plan
        return plan

    def _item_slots(self, key: str, count: int) -> tuple[int, ...]:
        """The number slots of a list's first ``count`` elements (``n:key[i]``)."""
        found = self._items.get(key)
        if found is None or len(found) < count:
            found = tuple(self._hash(f"n:{key}[{i}]")[0] for i in range(count))
            if len(self._items) >= _MAX_PLANS:
                self._items.clear()
            self._items[key] = found  # replaced whole, never extended: safe across threads
        return found

    def _numbers(self, context: Mapping[str, Any]) -> Iterable[tuple[int, float]]:
        for key, value in sorted(context.items()):
            if isinstance(value, bool) or value is None or key in self.extractors:
                continue
            if isinstance(value, int | float):
                yield self._slot(f"n:{key}")[0], _as_float(value)
            elif isinstance(value, list | tuple):
                for i, item in enumerate(value[: self.spec.max_list]):
                    if isinstance(item, int | float) and not isinstance(item, bool):
                        yield self._slot(f"n:{key}[{i}]")[0], _as_float(item)

    # -- statistics ------------------------------------------------------------------------

    def update(self, context: Mapping[str, Any]) -> None:
        """Add one context's numbers to the running statistics (feature plugins have none)."""
        for slot, value in self._numbers(context):
            # Beyond 1e150 the squared deviations would overflow float64: such values are
            # clipped at encoding anyway, so they do not move the statistics.
            if not math.isfinite(value) or abs(value) > 1e150:
                continue
            self.count[slot] += 1
            delta = value - self.mean[slot]
            self.mean[slot] += delta / self.count[slot]
            self.m2[slot] += delta * (value - self.mean[slot])
            self._scales[slot] = None
            self._plans.clear()

    def fit(self, contexts: Iterable[Mapping[str, Any]]) -> FeatureEncoder:
        """Update the statistics with every context; returns self."""
        for context in contexts:
            self.update(context)
        return self

    def _scaling(self, slot: int) -> tuple[float, float]:
        """``(offset, divisor)`` of a slot: a finite number scales to ``(value - offset) /
        divisor`` before clipping (dividing by 1.0 and subtracting 0.0 change no bits)."""
        # Python floats: a huge value over a tiny deviation is inf (then clipped) without the
        # RuntimeWarning that numpy scalars raise.
        n, mean = float(self.count[slot]), float(self.mean[slot])
        if n < 2:
            scaling = (mean if n else 0.0, 1.0)
        else:
            std = math.sqrt(float(self.m2[slot]) / (n - 1))
            scaling = (mean, std if std > 1e-12 else 1.0)
        self._scales[slot] = scaling
        return scaling

    # -- encoding --------------------------------------------------------------------------

    def encode(self, context: Mapping[str, Any]) -> npt.NDArray[np.float32]:
        """One context as a vector of width ``spec.width``."""
        out = np.zeros(self._width, dtype=np.float32)
        if not self._blocks:
            self._encode_into(context, out)
            return out
        self._encode_into(context, out[: self.spec.dim])
        self._encode_blocks([context], out[None, :])
        return out

    def encode_many(self, contexts: Sequence[Mapping[str, Any]]) -> npt.NDArray[np.float32]:
        """Contexts as a ``(len(contexts), spec.width)`` matrix; each feature plugin is
        called once, with the values of every context that has its key."""
        out = np.zeros((len(contexts), self.spec.width), dtype=np.float32)
        for row, context in zip(out[:, : self.spec.dim], contexts, strict=True):
            self._encode_into(context, row)
        if self._blocks:
            self._encode_blocks(contexts, out)
        return out

    def _encode_blocks(
        self, contexts: Sequence[Mapping[str, Any]], out: npt.NDArray[np.float32]
    ) -> None:
        for key, extractor, start, end in self._blocks:
            rows = [i for i, context in enumerate(contexts) if context.get(key) is not None]
            if not rows:
                continue
            raw = np.asarray(extractor.transform([contexts[i][key] for i in rows]))
            if raw.shape != (len(rows), end - start):
                raise ValueError(
                    f"feature plugin {extractor.name!r} returned shape {raw.shape} for "
                    f"{len(rows)} values of {key!r}; expected ({len(rows)}, {end - start})"
                )
            with np.errstate(over="ignore"):  # float64 beyond float32's range: inf, then 0
                block = raw.astype(np.float32)
            out[rows, start:end] = np.where(np.isfinite(block), block, 0.0)

    def _encode_into(self, context: Mapping[str, Any], out: npt.NDArray[np.float32]) -> None:
        """Add one context's hashed features into ``out`` (zeros, ``spec.dim`` wide)."""
        # Sums per slot in float64, keys in sorted order and every number before the other
        # values: the vector does not depend on the order of the context's keys (a database
        # may return JSON objects reordered), and each slot adds its terms in one fixed order.
        key_order = tuple(context)
        plan = self._plans.get(key_order) or self._plan(key_order)
        numbers = plan.numbers
        if numbers is not None:
            values = plan.values(context)
            if tuple(map(type, values)) == numbers.types:
                summed = self._sum_floats(numbers, values)
                if summed is not None:
                    out[:] = summed
                    return
        dim = self.spec.dim
        acc: _Accumulator = [0.0] * dim if dim <= _DENSE else defaultdict(float)
        high = self.spec.clip
        low = -high
        later: list[tuple[str, Any]] = []
        keys, slots, offsets, divisors, values_of, _ = plan
        for key, slot, offset, divisor, value in zip(
            keys, slots, offsets, divisors, values_of(context), strict=True
        ):
            if type(value) is not float:
                if type(value) is int or _is_number(value):
                    value = _as_float(value)
                else:
                    if value is not None:
                        self._collect(key, value, acc, later)
                    continue
            if value - value == 0.0:  # finite; NaN and inf contribute nothing
                scaled = (value - offset) / divisor
                # As max(low, min(high, scaled)) clips, NaN included.
                scaled = scaled if scaled < high else high
                acc[slot] += scaled if scaled > low else low
        for key, value in later:
            if isinstance(value, bool):
                acc[self._slot(f"b:{key}")[0]] += 1.0 if value else -1.0
            elif isinstance(value, str):
                self._encode_string(key, value, acc)
            else:  # a list or tuple: its strings and booleans are a bag of categories
                for item in value[: self.spec.max_list]:
                    if isinstance(item, str | bool):
                        slot, sign = self._slot(f"c:{key}={item}")
                        acc[slot] += sign
        if isinstance(acc, list):
            out[:] = acc
        elif acc:
            count = len(acc)
            out[np.fromiter(acc, np.intp, count)] = np.fromiter(acc.values(), np.float64, count)

    def _sum_floats(self, numbers: _Numbers, values: tuple[float, ...]) -> _Floats | None:
        """The loop of :meth:`_encode_into` for floats, in numpy: the same float64 operations,
        each slot summing its terms in the same (sorted key) order. None when a value is NaN,
        infinite or huge (the loop skips the first two)."""
        # The norm, computed without overflow: NaN or inf when a value is.
        if not math.hypot(*values) < _HUGE:
            return None
        x = np.frombuffer(numbers.pack(*values)) - numbers.offsets
        x /= numbers.divisors
        np.minimum(x, self._high, out=x)
        np.maximum(x, self._low, out=x)
        return np.bincount(numbers.slots, x, self.spec.dim).astype(np.float64, copy=False)

    def _collect(
        self, key: str, value: object, acc: _Accumulator, later: list[tuple[str, Any]]
    ) -> None:
        """A value other than a number: the numbers of a list are added now; booleans,
        strings and lists are kept for the second pass (anything else is ignored)."""
        if isinstance(value, bool | str):
            later.append((key, value))
        elif isinstance(value, list | tuple):
            numbers = [
                (i, _as_float(item))
                for i, item in enumerate(value[: self.spec.max_list])
                if _is_number(item)
            ]
            if numbers:
                slots = self._item_slots(key, numbers[-1][0] + 1)
                high = self.spec.clip
                low = -high
                for i, number in numbers:
                    if number - number == 0.0:
                        slot = slots[i]
                        offset, divisor = self._scales[slot] or self._scaling(slot)
                        scaled = (number - offset) / divisor
                        scaled = scaled if scaled < high else high
                        acc[slot] += scaled if scaled > low else low
            later.append((key, value))

    def _encode_string(self, key: str, value: str, acc: _Accumulator) -> None:
        if _SPACE.search(value) is None:
            slot, sign = self._slot(f"c:{key}={value}")
            acc[slot] += sign
            return
        words = _WORD.findall(value.lower())[: self.spec.max_words]
        if not words:
            return
        weight = 1.0 / math.sqrt(len(words))
        for word in words:
            slot, sign = self._slot(f"t:{key}:{word}")
            acc[slot] += sign * weight

    # -- persistence -----------------------------------------------------------------------

    def state(self) -> dict[str, npt.NDArray[np.float64]]:
        """The statistics as arrays, for a safetensors artifact."""
        return {"count": self.count.copy(), "mean": self.mean.copy(), "m2": self.m2.copy()}

    @classmethod
    def from_state(
        cls,
        spec: FeatureSpec,
        state: Mapping[str, npt.NDArray[np.float64]],
        extractors: Mapping[str, FeatureExtractor] | None = None,
    ) -> FeatureEncoder:
        """Rebuild an encoder saved with :meth:`state`; a spec that records feature plugins
        needs them again in ``extractors``."""
        return cls(
            spec, extractors=extractors, count=state["count"], mean=state["mean"], m2=state["m2"]
        )
