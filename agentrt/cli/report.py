"""``agentrt report`` (being written)."""

from __future__ import annotations

__all__ = ["report"]


def report() -> None:
    """Not available yet."""
    raise NotImplementedError("agentrt report")
