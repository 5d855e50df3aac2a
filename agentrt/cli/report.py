"""``agentrt report``: an HTML report that opens offline, and PNG charts, per agent."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import anyio
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from agentrt.cli.common import (
    DEFAULT_CONFIG,
    ConfigOption,
    console,
    err_console,
    fail,
    handle_errors,
    load,
)
from agentrt.cli.inspection import existing_database
from agentrt.report import ReportPaths, write_report
from agentrt.storage import migrate

__all__ = ["report"]


@handle_errors
def report(
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            metavar="DIR",
            help="Folder for report.html and the PNGs (files there are replaced).",
        ),
    ] = Path("agentrt-report"),
    agent: Annotated[
        list[str] | None,
        typer.Option(
            "--agent",
            "-a",
            metavar="NAME",
            help="An agent to report on; repeat for several (default: every agent).",
            show_default=False,
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            metavar="TIME",
            help="Only decisions at or after this ISO 8601 time (UTC without a zone).",
        ),
    ] = None,
    config: ConfigOption = DEFAULT_CONFIG,
) -> None:
    """Write a report per agent: one HTML file that opens offline, and PNG charts.

    Per agent: reward over time, with the baseline's level and version changes
    marked; action shares over time; exploration health; the patterns and
    anomalies found; the version history with validation results.
    The database is only read.

    Example: agentrt report --agent router --since 2030-01-01 --out report
    """
    start = _when(since)
    loaded = load(config)
    db = existing_database(loaded.database)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as progress:
        task = progress.add_task("reading", total=None)

        def advance(description: str, done: int, total: int) -> None:
            progress.update(task, description=description, completed=done, total=total)

        async def run() -> ReportPaths:
            try:
                await migrate.ensure_schema(db, auto_migrate=False)
                return await write_report(db, loaded, out, agent, since=start, progress=advance)
            finally:
                await db.dispose()

        written = anyio.run(run)
    console.print(
        f"report written to {written.html}", highlight=False, soft_wrap=True, markup=False
    )
    for agent_id, paths in written.images.items():
        if not paths:
            console.print(
                f"  {agent_id}: no decisions, no charts",
                highlight=False,
                soft_wrap=True,
                markup=False,
            )
        for path in paths:
            console.print(f"  {path}", highlight=False, soft_wrap=True, markup=False)


def _when(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        message = "--since: must be an ISO 8601 time such as 2030-01-31 or 2030-01-31T12:00Z"
        raise fail(f"{message} (got {value!r})", code=2) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
