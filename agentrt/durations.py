"""Human durations (``100ms``, ``30s``, ``5m``, ``2h``, ``30d``, ``1w``) for the configuration."""

from __future__ import annotations

import math
import re
from datetime import timedelta
from decimal import Decimal

__all__ = ["format_duration", "parse_duration"]

_UNITS: dict[str, float] = {
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 604800.0,
}
_MICROS = {unit: round(factor * 1_000_000) for unit, factor in _UNITS.items()}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(us|µs|ms|s|min|m|h|d|w)?\s*$")
_HINT = "must be a duration such as 100ms, 30s, 5m, 2h or 30d"


def parse_duration(value: object) -> timedelta:
    """Parse a duration given as a string with a unit, a number of seconds, or a timedelta.

    Raises:
        ValueError: the value is not a non-negative duration; the message says what is accepted.
    """
    if isinstance(value, timedelta):
        if value < timedelta(0):
            raise ValueError(_HINT + " (not negative)")
        return value
    if isinstance(value, bool):
        raise ValueError(_HINT)
    elif isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        match = _PATTERN.match(value)
        if match is None:
            raise ValueError(_HINT)
        micros = Decimal(match.group(1)) * Decimal(_MICROS[match.group(2) or "s"])
        try:
            return timedelta(microseconds=int(micros.to_integral_value()))
        except OverflowError:
            raise ValueError(_HINT + " (at most 999999999 days)") from None
    else:
        raise ValueError(_HINT)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(_HINT + " (not negative)")
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise ValueError(_HINT + " (at most 999999999 days)") from None


def format_duration(value: timedelta) -> str:
    """Render a duration in the largest unit that divides it exactly (``30d``, ``100ms``)."""
    micros = value // timedelta(microseconds=1)
    if micros == 0:
        return "0s"
    for unit, factor in (
        ("w", 604_800_000_000),
        ("d", 86_400_000_000),
        ("h", 3_600_000_000),
        ("m", 60_000_000),
        ("s", 1_000_000),
        ("ms", 1_000),
    ):
        if micros % factor == 0:
            return f"{micros // factor}{unit}"
    return f"{micros}us"
