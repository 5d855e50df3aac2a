"""``agentrt worker`` (being written)."""

from __future__ import annotations

__all__ = ["worker"]


def worker() -> None:
    """Not available yet."""
    raise NotImplementedError("agentrt worker")
