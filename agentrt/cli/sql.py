"""``agentrt sql``: one read-only SQL statement against the experience database.

Read-only is enforced by the database, not by parsing: an SQLite file is opened read-only
(``mode=ro``) with an authorizer that refuses every action but reading, and PostgreSQL runs the
statement in a ``READ ONLY`` transaction that is always rolled back. Splitting the text into
statements only gives a clearer message; both drivers refuse a second statement as well.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import sqlite3
from collections.abc import Sequence
from datetime import date, datetime, time
from decimal import Decimal
from functools import partial
from typing import Annotated, Any, Literal, NamedTuple
from urllib.parse import quote

import aiosqlite
import anyio
import typer
from rich.table import Table
from rich.text import Text

from agentrt.cli.common import (
    DEFAULT_CONFIG,
    ConfigOption,
    console,
    err_console,
    fail,
    handle_errors,
    load,
)
from agentrt.cli.inspection import sqlite_file
from agentrt.config import DatabaseConfig, mask_url
from agentrt.errors import StorageError
from agentrt.storage.engine import Database, storage_errors

__all__ = ["Answer", "run_query", "split_statements", "sql"]

Format = Literal["table", "csv", "json"]

ONE_STATEMENT = "agentrt sql runs one statement at a time"

# Authorizer actions that only read; everything else (writes, DDL, ATTACH, transactions,
# VACUUM INTO) is refused while the statement is prepared.
_SQLITE_READS = frozenset(
    {
        sqlite3.SQLITE_SELECT,
        sqlite3.SQLITE_READ,
        sqlite3.SQLITE_FUNCTION,
        sqlite3.SQLITE_PRAGMA,  # a PRAGMA that writes still fails: the file is opened read-only
        sqlite3.SQLITE_RECURSIVE,
    }
)
_SQLITE_ACTIONS = {
    getattr(sqlite3, f"SQLITE_{name}"): name.replace("_", " ")
    for name in (
        "INSERT", "UPDATE", "DELETE", "CREATE_INDEX", "CREATE_TABLE", "CREATE_TEMP_INDEX",
        "CREATE_TEMP_TABLE", "CREATE_TEMP_TRIGGER", "CREATE_TEMP_VIEW", "CREATE_TRIGGER",
        "CREATE_VIEW", "CREATE_VTABLE", "DROP_INDEX", "DROP_TABLE", "DROP_TEMP_INDEX",
        "DROP_TEMP_TABLE", "DROP_TEMP_TRIGGER", "DROP_TEMP_VIEW", "DROP_TRIGGER", "DROP_VIEW",
        "DROP_VTABLE", "ALTER_TABLE", "ANALYZE", "REINDEX", "ATTACH", "DETACH", "TRANSACTION",
        "SAVEPOINT",
    )
}  # fmt: skip
_PG_READ_ONLY = "25006"  # read_only_sql_transaction

QueryArgument = Annotated[
    str, typer.Argument(help="One SQL statement, e.g. a SELECT on the experience view.")
]
LimitOption = Annotated[int, typer.Option(min=1, help="Print at most this many rows.")]
FormatOption = Annotated[Format, typer.Option("--format", "-f", help="Output format.")]


class Answer(NamedTuple):
    """The rows of a statement: column names, at most ``limit`` rows, and whether more exist."""

    columns: list[str]
    rows: list[tuple[Any, ...]]
    truncated: bool


@handle_errors
def sql(
    query: QueryArgument,
    limit: LimitOption = 1000,
    output: FormatOption = "table",
    config: ConfigOption = DEFAULT_CONFIG,
) -> None:
    """Run one SQL statement read-only and print its rows (at most --limit).

    The database refuses writes: SQLite opens the file read-only, PostgreSQL rolls back.

    Example: agentrt sql "SELECT action, COUNT(*), AVG(reward) FROM experience GROUP BY action"
    """
    statements = split_statements(query)
    if not statements:
        raise fail('agentrt sql needs a statement, e.g. "SELECT * FROM experience LIMIT 10"')
    if len(statements) > 1:
        raise fail(f"{ONE_STATEMENT}; got {len(statements)} (run them one by one)")
    loaded = load(config)
    answer = anyio.run(partial(run_query, loaded.database, statements[0], limit))
    if answer.truncated:
        err_console.print(
            f"note: only the first {limit} rows are shown; raise --limit to see more",
            highlight=False,
            soft_wrap=True,
            markup=False,
        )
    if output == "csv":
        typer.echo(_csv(answer), nl=False)
    elif output == "json":
        typer.echo(_json(answer))
    else:
        console.print(_table(answer))


async def run_query(config: DatabaseConfig, statement: str, limit: int) -> Answer:
    """Run one statement read-only and return at most ``limit`` of its rows.

    Raises:
        StorageError: the database refused the statement; a write is refused with a message
            that starts with "agentrt sql is read-only".
    """
    if config.is_sqlite:
        return await _sqlite(config, statement, limit)
    return await _postgresql(config, statement, limit)


def _read_only(detail: str) -> StorageError:
    return StorageError(f"agentrt sql is read-only: {detail}")


def _answer(columns: list[str], rows: Sequence[Sequence[Any]], limit: int) -> Answer:
    return Answer(columns, [tuple(row) for row in rows[:limit]], len(rows) > limit)


async def _sqlite(config: DatabaseConfig, statement: str, limit: int) -> Answer:
    path = sqlite_file(config)
    masked = mask_url(config.url)
    if path is None:
        raise StorageError(f"agentrt sql needs an SQLite file; {masked} is in memory")
    if not path.is_file():
        raise StorageError(f"database file {path} does not exist: check database.url")
    denied: list[str] = []

    def authorize(action: int, arg1: str | None, *_: str | None) -> int:
        if action in _SQLITE_READS:
            return sqlite3.SQLITE_OK
        name = _SQLITE_ACTIONS.get(action, f"action {action}")
        target = arg1 if arg1 and action != sqlite3.SQLITE_TRANSACTION else None
        denied.append(f"{name} on {target}" if target else name)
        return sqlite3.SQLITE_DENY

    uri = f"file:{quote(str(path.resolve()))}?mode=ro"
    timeout = config.sqlite_pragmas.busy_timeout.total_seconds()
    with storage_errors(masked):
        try:
            async with aiosqlite.connect(uri, uri=True, timeout=timeout) as connection:
                await connection.set_authorizer(authorize)
                cursor = await connection.execute(statement)
                columns = [str(column[0]) for column in cursor.description or ()]
                rows = list(await cursor.fetchmany(limit + 1)) if columns else []
        except sqlite3.ProgrammingError as exc:
            # The sqlite3 module refuses a second statement before SQLite sees it.
            if "one statement" in str(exc):
                raise StorageError(f"{ONE_STATEMENT}: {exc}") from exc
            raise
        except sqlite3.DatabaseError as exc:
            code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
            if denied or code in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_AUTH):
                detail = f"the database refused {denied[0]}" if denied else str(exc)
                raise _read_only(detail) from exc
            raise
    return _answer(columns, rows, limit)


async def _postgresql(config: DatabaseConfig, statement: str, limit: int) -> Answer:
    import asyncpg  # the postgres extra; a PostgreSQL URL cannot be configured without it

    db = Database(config)
    try:
        with storage_errors(db.masked_url):
            async with db.engine.connect() as connection:
                raw = await connection.get_raw_connection()
                driver: Any = raw.driver_connection
                transaction = driver.transaction(readonly=True)
                await transaction.start()
                try:
                    prepared = await driver.prepare(statement)
                    columns = [str(attribute.name) for attribute in prepared.get_attributes()]
                    cursor = await prepared.cursor()
                    rows = await cursor.fetch(limit + 1)
                except asyncpg.PostgresError as exc:
                    if exc.sqlstate == _PG_READ_ONLY:
                        raise _read_only(str(exc)) from exc
                    if "multiple commands" in str(exc):
                        raise StorageError(f"{ONE_STATEMENT}: {exc}") from exc
                    raise
                finally:
                    await transaction.rollback()
    finally:
        await db.dispose()
    return _answer(columns, rows, limit)


# --- splitting -------------------------------------------------------------------------------

_DOLLAR_QUOTE = re.compile(r"\$(?:[A-Za-z_][A-Za-z_0-9]*)?\$")


def _word_before(text: str, index: int) -> bool:
    return index > 0 and (text[index - 1].isalnum() or text[index - 1] == "_")


def _after_quoted(text: str, start: int) -> int:
    """The index after the string or quoted identifier that starts at ``start``."""
    quote_char = text[start]
    # PostgreSQL's E'...' strings escape with backslashes.
    backslashes = quote_char == "'" and text[start - 1 : start] in ("e", "E")
    backslashes = backslashes and not _word_before(text, start - 1)
    index = start + 1
    while index < len(text):
        char = text[index]
        if backslashes and char == "\\":
            index += 2
            continue
        if char == quote_char:
            if text.startswith(quote_char, index + 1):  # a doubled quote is the quote itself
                index += 2
                continue
            return index + 1
        index += 1
    return len(text)


def split_statements(text: str) -> list[str]:
    """The statements in ``text``, split at semicolons outside strings and comments.

    Knows SQL strings and quoted identifiers, ``--`` and ``/* */`` comments, PostgreSQL's
    ``E'...'`` strings and dollar quoting. Statements that are empty or only comments are
    dropped; each statement is returned without its semicolon.
    """
    statements: list[str] = []
    start = index = 0
    has_code = False
    while index < len(text):
        char = text[index]
        if char in "'\"`":
            index, has_code = _after_quoted(text, index), True
        elif text.startswith("--", index):
            end = text.find("\n", index)
            index = len(text) if end < 0 else end + 1
        elif text.startswith("/*", index):
            end = text.find("*/", index + 2)
            index = len(text) if end < 0 else end + 2
        elif (
            char == "$"
            and not _word_before(text, index)
            and (tag := _DOLLAR_QUOTE.match(text, index))
        ):
            end = text.find(tag.group(), tag.end())
            index, has_code = (len(text) if end < 0 else end + len(tag.group())), True
        elif char == ";":
            if has_code:
                statements.append(text[start:index].strip())
            start, index, has_code = index + 1, index + 1, False
        else:
            has_code = has_code or not char.isspace()
            index += 1
    if has_code:
        statements.append(text[start:].strip())
    return statements


# --- rendering -------------------------------------------------------------------------------


def _text(value: object) -> str:
    """A value as CSV and the table show it."""
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    return str(value)


def _cell(value: object) -> Text:
    if value is None:
        return Text("NULL", style="dim")
    if isinstance(value, bytes | bytearray | memoryview):
        return Text(f"<{len(bytes(value))} bytes>", style="dim")
    return Text(_text(value))


def _table(answer: Answer) -> Table | Text:
    if not answer.columns:
        return Text("the statement returned no result set")
    count = len(answer.rows)
    caption = f"{count} row{'s' if count != 1 else ''}" + (
        " (more not shown)" if answer.truncated else ""
    )
    table = Table(caption=caption)
    for column in answer.columns:
        table.add_column(Text(column), overflow="fold")
    for row in answer.rows:
        table.add_row(*(_cell(value) for value in row))
    return table


def _csv(answer: Answer) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if answer.columns:
        writer.writerow(answer.columns)
    for row in answer.rows:
        writer.writerow("" if value is None else _text(value) for value in row)
    return buffer.getvalue()


def _json_value(value: object) -> object:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float | Decimal):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, dict):
        return {str(key): _json_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_value(item) for item in value]
    return _text(value)


def _unique(columns: list[str]) -> list[str]:
    """Column names made unique for JSON keys: ``a, a`` becomes ``a, a_2``."""
    seen: dict[str, int] = {}
    names = []
    for column in columns:
        seen[column] = seen.get(column, 0) + 1
        names.append(column if seen[column] == 1 else f"{column}_{seen[column]}")
    return names


def _json(answer: Answer) -> str:
    keys = _unique(answer.columns)
    objects = [{k: _json_value(v) for k, v in zip(keys, row, strict=True)} for row in answer.rows]
    return json.dumps(objects, ensure_ascii=False, indent=2)
