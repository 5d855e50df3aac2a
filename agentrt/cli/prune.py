"""``agentrt prune``: apply the retention policy now (archive, then delete old experience)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import anyio
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from agentrt.cli.common import (
    DEFAULT_CONFIG,
    ConfigOption,
    console,
    err_console,
    handle_errors,
    load,
    parse_time,
)
from agentrt.cli.inspection import existing_database, format_time
from agentrt.clock import utcnow
from agentrt.durations import format_duration
from agentrt.pipeline.retention import (
    BATCH_ROWS,
    TABLES,
    RetentionProgress,
    RetentionReport,
    apply_retention,
    count_expired,
)
from agentrt.storage import migrate

__all__ = ["prune"]


@handle_errors
def prune(
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Count what would be archived and deleted; change nothing."),
    ] = False,
    now: Annotated[
        str | None,
        typer.Option(
            help="Prune as if it were this ISO 8601 time (UTC without a zone; default: now).",
            show_default=False,
        ),
    ] = None,
    config: ConfigOption = DEFAULT_CONFIG,
) -> None:
    """Delete the experience that experience_configuration.retention expires, now.

    With policy time_based, decisions older than the retention duration go with their feedback,
    and so do episodes, knowledge and metrics older than it; policy versions and strategy
    updates are kept. With collection.storage_format: parquet each batch is first archived to
    archive_dir/agent_id=<agent>/ (relative to the current directory) and deleted only once its
    file is on disk.

    Example: agentrt prune --dry-run --config config/agentrt.yaml
    """
    at = parse_time(now, "--now") or utcnow()
    loaded = load(config)
    retention = loaded.experience_configuration.retention
    if retention.policy == "none":
        console.print(
            "retention policy is none: nothing to prune "
            "(set experience_configuration.retention.policy: time_based)",
            highlight=False,
            soft_wrap=True,
            markup=False,
        )
        return
    db = existing_database(loaded.database)

    async def run() -> RetentionReport:
        try:
            await migrate.ensure_schema(db, auto_migrate=False)
            expected = await count_expired(db, loaded, at)
            if dry_run:
                return expected
            with _progress(expected.total_deleted) as advance:
                return await apply_retention(db, loaded, at, progress=advance)
        finally:
            await db.dispose()

    report = anyio.run(run)
    cutoff = format_time(report.cutoff)
    console.print(
        _table(report, f"older than {cutoff} UTC ({format_duration(retention.duration)})")
    )
    if report.dry_run:
        message = "dry run: nothing was changed"
        if report.archive_dir is not None:
            message += f" (the archive goes to {report.archive_dir})"
    elif report.archive_dir is not None:
        count = len(report.files)
        message = (
            f"{count} archive file{'s' if count != 1 else ''} written under {report.archive_dir}"
            f" in {report.seconds:.1f}s"
        )
    else:
        message = f"done in {report.seconds:.1f}s (storage_format is database: no archive)"
    console.print(message, highlight=False, soft_wrap=True, markup=False)


@contextmanager
def _progress(total: int) -> Iterator[RetentionProgress]:
    """A progress bar on stderr for prunes of more than one batch."""
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=total <= BATCH_ROWS,
    ) as progress:
        task = progress.add_task("pruning", total=total)

        def advance(table: str, rows: int) -> None:
            # Decisions and their feedback go batch by batch together.
            what = "decisions" if table == "feedback" else table
            progress.update(task, advance=rows, description=f"pruning {what}")

        yield advance


def _table(report: RetentionReport, title: str) -> Table:
    verb = "would " if report.dry_run else ""
    table = Table(title=title)
    table.add_column("table")
    table.add_column(f"{verb}archive" if report.dry_run else "archived", justify="right")
    table.add_column(f"{verb}delete" if report.dry_run else "deleted", justify="right")
    for name in TABLES:
        archived = report.archived.get(name)
        table.add_row(name, "-" if archived is None else str(archived), str(report.deleted[name]))
    return table
