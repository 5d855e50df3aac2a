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
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["FeatureEncoder", "FeatureSpec"]

_WORD = re.compile(r"[a-z0-9]+")
_MAX_CACHE = 65_536


@dataclass(frozen=True)
class FeatureSpec:
    """How contexts become vectors; stored with every policy artifact.

    Attributes:
        dim: width of the hashed feature vector.
        clip: scaled numbers are clipped to ``[-clip, clip]``.
        max_list: at most this many elements of a list are used.
        max_words: at most this many words of a text are used.
    """

    dim: int = 64
    clip: float = 5.0
    max_list: int = 32
    max_words: int = 64

    def __post_init__(self) -> None:
        if self.dim <= 0:
            raise ValueError(f"FeatureSpec.dim must be > 0 (got {self.dim})")

    def to_dict(self) -> dict[str, float | int]:
        return {
            "dim": self.dim,
            "clip": self.clip,
            "max_list": self.max_list,
            "max_words": self.max_words,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSpec:
        return cls(
            dim=int(data["dim"]),
            clip=float(data["clip"]),
            max_list=int(data["max_list"]),
            max_words=int(data["max_words"]),
        )


def _as_float(value: float) -> float:
    """``float(value)``; integers beyond the float range become NaN (they contribute 0)."""
    try:
        return float(value)
    except OverflowError:
        return math.nan


class FeatureEncoder:
    """Encodes contexts into ``float32`` vectors of width ``spec.dim``.

    Args:
        spec: the hashing specification.
        count, mean, m2: running statistics per slot (Welford); fresh when omitted.
    """

    def __init__(
        self,
        spec: FeatureSpec | None = None,
        *,
        count: npt.NDArray[np.float64] | None = None,
        mean: npt.NDArray[np.float64] | None = None,
        m2: npt.NDArray[np.float64] | None = None,
    ) -> None:
        self.spec = spec or FeatureSpec()
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

    # -- hashing ---------------------------------------------------------------------------

    def _slot(self, token: str) -> tuple[int, float]:
        found = self._slots.get(token)
        if found is None:
            digest = zlib.crc32(token.encode("utf-8"))
            found = (digest % self.spec.dim, 1.0 if (digest >> 31) & 1 == 0 else -1.0)
            if len(self._slots) < _MAX_CACHE:
                self._slots[token] = found
        return found

    def _numbers(self, context: Mapping[str, Any]) -> Iterable[tuple[int, float]]:
        for key, value in sorted(context.items()):
            if isinstance(value, bool) or value is None:
                continue
            if isinstance(value, int | float):
                yield self._slot(f"n:{key}")[0], _as_float(value)
            elif isinstance(value, list | tuple):
                for i, item in enumerate(value[: self.spec.max_list]):
                    if isinstance(item, int | float) and not isinstance(item, bool):
                        yield self._slot(f"n:{key}[{i}]")[0], _as_float(item)

    # -- statistics ------------------------------------------------------------------------

    def update(self, context: Mapping[str, Any]) -> None:
        """Add one context's numbers to the running statistics."""
        for slot, value in self._numbers(context):
            # Beyond 1e150 the squared deviations would overflow float64: such values are
            # clipped at encoding anyway, so they do not move the statistics.
            if not math.isfinite(value) or abs(value) > 1e150:
                continue
            self.count[slot] += 1
            delta = value - self.mean[slot]
            self.mean[slot] += delta / self.count[slot]
            self.m2[slot] += delta * (value - self.mean[slot])

    def fit(self, contexts: Iterable[Mapping[str, Any]]) -> FeatureEncoder:
        """Update the statistics with every context; returns self."""
        for context in contexts:
            self.update(context)
        return self

    def _scale(self, slot: int, value: float) -> float:
        if not math.isfinite(value):
            return 0.0
        n = self.count[slot]
        if n < 2:
            scaled = value - self.mean[slot] if n else value
        else:
            std = math.sqrt(self.m2[slot] / (n - 1))
            scaled = (value - self.mean[slot]) / std if std > 1e-12 else value - self.mean[slot]
        return max(-self.spec.clip, min(self.spec.clip, scaled))

    # -- encoding --------------------------------------------------------------------------

    def encode(self, context: Mapping[str, Any]) -> npt.NDArray[np.float32]:
        """One context as a vector of width ``spec.dim``."""
        out = np.zeros(self.spec.dim, dtype=np.float32)
        self._encode_into(context, out)
        return out

    def encode_many(self, contexts: Sequence[Mapping[str, Any]]) -> npt.NDArray[np.float32]:
        """Contexts as a ``(len(contexts), spec.dim)`` matrix."""
        out = np.zeros((len(contexts), self.spec.dim), dtype=np.float32)
        for row, context in zip(out, contexts, strict=True):
            self._encode_into(context, row)
        return out

    def _encode_into(self, context: Mapping[str, Any], out: npt.NDArray[np.float32]) -> None:
        # Sums per slot in float64, keys in sorted order: the vector does not depend on the
        # order of the context's keys (a database may return JSON objects reordered).
        acc = np.zeros(self.spec.dim, dtype=np.float64)
        for slot, value in self._numbers(context):
            acc[slot] += self._scale(slot, value)
        for key, value in sorted(context.items()):
            if isinstance(value, bool):
                slot, _sign = self._slot(f"b:{key}")
                acc[slot] += 1.0 if value else -1.0
            elif isinstance(value, str):
                self._encode_string(key, value, acc)
            elif isinstance(value, list | tuple):
                for item in value[: self.spec.max_list]:
                    if isinstance(item, str | bool):
                        slot, sign = self._slot(f"c:{key}={item}")
                        acc[slot] += sign
        out[:] = acc

    def _encode_string(self, key: str, value: str, acc: npt.NDArray[np.float64]) -> None:
        if not any(ch.isspace() for ch in value):
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
        cls, spec: FeatureSpec, state: Mapping[str, npt.NDArray[np.float64]]
    ) -> FeatureEncoder:
        """Rebuild an encoder saved with :meth:`state`."""
        return cls(spec, count=state["count"], mean=state["mean"], m2=state["m2"])
