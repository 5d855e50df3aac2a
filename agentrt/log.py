"""Logging: modules call ``get_logger``; only the CLI and the worker call ``configure_logging``.

An application that embeds agentrt keeps its own structlog configuration; agentrt never
configures logging on import.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

__all__ = ["configure_logging", "get_logger"]


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """Return a lazy structlog logger for a module (safe before any configuration)."""
    return structlog.get_logger(name)  # type: ignore[no-any-return]


def configure_logging(
    level: Literal["debug", "info", "warning", "error"] = "info",
    fmt: Literal["auto", "console", "json"] = "auto",
) -> None:
    """Configure structlog for the CLI and the worker: console in a terminal, JSON otherwise."""
    numeric = logging.getLevelNamesMapping()[level.upper()]
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
