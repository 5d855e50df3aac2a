"""``agentrt prune`` (being written)."""

from __future__ import annotations

__all__ = ["prune"]


def prune() -> None:
    """Not available yet."""
    raise NotImplementedError("agentrt prune")
