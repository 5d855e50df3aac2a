"""What every command shares: the --config option, loading, and one-line failures."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from agentrt.config import AgentRTConfig, load_config
from agentrt.errors import AgentRTError, ConfigError
from agentrt.log import configure_logging

__all__ = [
    "ConfigOption",
    "console",
    "err_console",
    "fail",
    "handle_errors",
    "load",
    "parse_time",
]

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_CONFIG = Path("config/agentrt.yaml")

ConfigOption = Annotated[
    Path,
    typer.Option(
        "--config",
        "-c",
        envvar="AGENTRT_CONFIG",
        help="Configuration file (default config/agentrt.yaml, or $AGENTRT_CONFIG).",
        show_default=False,
    ),
]

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print a one-line reason on stderr and return the exit to raise."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def handle_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn agentrt errors into a one-line reason (every line for configuration errors)."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            for line in str(exc).splitlines():
                err_console.print(line, highlight=False, soft_wrap=True, markup=False)
            raise typer.Exit(2) from None
        except AgentRTError as exc:
            raise fail(str(exc).splitlines()[0]) from None

    return wrapper


def load(path: Path, *, logging: bool = True) -> AgentRTConfig:
    """Load the configuration; a missing default file means "all defaults"."""
    if path == DEFAULT_CONFIG and not path.exists() and not os.environ.get("AGENTRT_CONFIG"):
        config = load_config(None)
    else:
        config = load_config(path)
    if logging:
        configure_logging(config.logging.level, config.logging.format)
    return config


def parse_time(value: str | None, option: str) -> datetime | None:
    """An ISO 8601 option value as an aware UTC time (naive means UTC); None stays None."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        message = f"{option}: must be an ISO 8601 time such as 2030-01-31 or 2030-01-31T12:00Z"
        raise fail(f"{message} (got {value!r})", code=2) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
