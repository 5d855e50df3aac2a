"""``agentrt export``: an agent's experience (the ``experience`` view) as CSV or Parquet.

Rows are streamed from one server-side query in chunks, so an export of millions of rows
holds one chunk in memory. JSON columns are written as JSON text, timestamps in UTC. The file
appears only when it is complete: rows go to a hidden ``.partial`` file that replaces ``--out``
at the end.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import IO, Annotated, Literal, Protocol

import anyio
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy import JSON, Text, cast, func, select
from sqlalchemy.engine import RowMapping

from agentrt.cli.common import (
    DEFAULT_CONFIG,
    ConfigOption,
    console,
    err_console,
    fail,
    handle_errors,
    load,
    parse_time,
)
from agentrt.cli.inspection import existing_database
from agentrt.errors import AgentRTError
from agentrt.pipeline.retention import EXPERIENCE_COLUMNS, arrow_columns, arrow_schema
from agentrt.storage import migrate
from agentrt.storage.engine import Database
from agentrt.storage.tables import DecisionRow, experience_view

__all__ = ["CHUNK_ROWS", "export"]

CHUNK_ROWS = 10_000
Format = Literal["parquet", "csv"]
_SUFFIXES: dict[str, Format] = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}
COLUMNS = list(EXPERIENCE_COLUMNS)
_JSON_COLUMNS = {column.name for column in experience_view.columns if isinstance(column.type, JSON)}


class Sink(Protocol):
    """Where exported rows go, one chunk at a time."""

    def write(self, rows: Sequence[RowMapping]) -> None: ...

    def close(self) -> None: ...


@handle_errors
def export(
    agent: Annotated[
        str, typer.Option("--agent", "-a", help="The agent to export.", show_default=False)
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="The file to write (replaced if it exists).")
    ],
    since: Annotated[
        str | None,
        typer.Option(help="Decisions at or after this ISO 8601 time (UTC without a zone)."),
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Decisions before this ISO 8601 time (UTC without a zone).")
    ] = None,
    output: Annotated[
        Format | None,
        typer.Option("--format", "-f", help="File format (default: from the --out suffix)."),
    ] = None,
    config: ConfigOption = DEFAULT_CONFIG,
) -> None:
    """Write an agent's experience rows (the experience view) to a CSV or Parquet file.

    Example: agentrt export --agent router --since 2030-01-01 --format parquet --out router.parquet
    """
    start, end = parse_time(since, "--since"), parse_time(until, "--until")
    if start is not None and end is not None and start >= end:
        raise fail(f"--since ({since}) must be before --until ({until})", code=2)
    kind = output or _SUFFIXES.get(out.suffix.lower())
    if kind is None:
        raise fail(f"cannot tell the format from {out.name!r}: pass --format parquet or csv", 2)
    loaded = load(config)
    db = existing_database(loaded.database)
    staging = out.with_name(f".{out.name}.partial")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        sink: Sink = _ParquetSink(staging) if kind == "parquet" else _CsvSink(staging)
    except OSError as exc:
        raise fail(f"cannot write {out}: {exc.strerror or exc}") from None

    async def run() -> int:
        try:
            await migrate.ensure_schema(db, auto_migrate=False)
            return await _stream(db, agent, start, end, sink)
        finally:
            await db.dispose()

    try:
        try:
            written = anyio.run(run)
        finally:
            sink.close()
        staging.replace(out)
    finally:
        staging.unlink(missing_ok=True)
    console.print(
        f"{written} row{'s' if written != 1 else ''} of {agent} written to {out} ({kind})",
        highlight=False,
        soft_wrap=True,
        markup=False,
    )


async def _stream(
    db: Database, agent: str, since: datetime | None, until: datetime | None, sink: Sink
) -> int:
    view, decision = experience_view, DecisionRow
    # JSON columns come back as the database's JSON text: parsing and dumping them again
    # would cost more than the rest of the export.
    columns = [
        cast(column, Text).label(column.name) if column.name in _JSON_COLUMNS else column
        for column in view.columns
    ]
    query = select(*columns).where(view.c.agent_id == agent)
    count = select(func.count()).where(decision.agent_id == agent)
    if since is not None:
        query = query.where(view.c.created_at >= since)
        count = count.where(decision.created_at >= since)
    if until is not None:
        query = query.where(view.c.created_at < until)
        count = count.where(decision.created_at < until)
    query = query.order_by(view.c.created_at, view.c.decision_id)
    written = 0
    async with db.connect() as connection:
        # The view has one row per decision: counting decisions is cheap and gives the total.
        total = int((await connection.execute(count)).scalar_one())
        result = (await connection.stream(query)).mappings()
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err_console,
            transient=True,
            disable=total <= CHUNK_ROWS,
        ) as progress:
            task = progress.add_task(f"exporting {agent}", total=total)
            async for rows in result.partitions(CHUNK_ROWS):
                await anyio.to_thread.run_sync(sink.write, rows)
                written += len(rows)
                progress.advance(task, len(rows))
    return written


class _CsvSink:
    """CSV with a header; NULL is an empty field, JSON columns JSON text, times ISO 8601."""

    def __init__(self, path: Path) -> None:
        self._file: IO[str] = path.open("w", newline="", encoding="utf-8")
        self._writer = csv.writer(self._file)
        self._writer.writerow(COLUMNS)

    def write(self, rows: Sequence[RowMapping]) -> None:
        self._writer.writerows([self._field(row[name]) for name in COLUMNS] for row in rows)

    @staticmethod
    def _field(value: object) -> str:
        if value is None:
            return ""
        return value.isoformat() if isinstance(value, datetime) else str(value)

    def close(self) -> None:
        self._file.close()


class _ParquetSink:
    """Parquet, one row group per chunk; JSON columns as JSON text, times as UTC timestamps."""

    def __init__(self, path: Path) -> None:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise AgentRTError(
                "Parquet export needs pyarrow: pip install 'agentrt[parquet]' (or use --format csv)"
            ) from None
        self._table = pa.Table
        self._schema = arrow_schema()
        self._writer = pq.ParquetWriter(str(path), self._schema)

    def write(self, rows: Sequence[RowMapping]) -> None:
        table = self._table.from_pydict(arrow_columns(rows), schema=self._schema)
        self._writer.write_table(table)

    def close(self) -> None:
        self._writer.close()
