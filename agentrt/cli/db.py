"""``agentrt db upgrade|downgrade|current``: the schema, through Alembic."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated

import anyio
import typer

from agentrt.cli.common import DEFAULT_CONFIG, ConfigOption, console, handle_errors, load
from agentrt.storage import migrate
from agentrt.storage.engine import Database

app = typer.Typer(
    help="Create, upgrade and inspect the database schema.\n\n"
    "Example: agentrt db upgrade --config config/postgres.yaml",
    no_args_is_help=True,
)


def _migrate(config: Path, step: Callable[[Database], Awaitable[None]]) -> str:
    db = Database(load(config).database)

    async def run() -> tuple[str | None, str | None]:
        try:
            before = await migrate.current_revision(db)
            await step(db)
            return before, await migrate.current_revision(db)
        finally:
            await db.dispose()

    before, after = anyio.run(run)
    return f"{db.masked_url}: {before or 'base'} -> {after or 'base'}"


@app.command()
@handle_errors
def upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
    config: ConfigOption = DEFAULT_CONFIG,
) -> None:
    """Apply migrations up to REVISION (default: the newest).

    Example: agentrt db upgrade --config config/postgres.yaml
    """
    summary = _migrate(config, lambda db: migrate.upgrade(db, revision))
    console.print(summary, highlight=False, soft_wrap=True, markup=False)


@app.command(context_settings={"ignore_unknown_options": True})
@handle_errors
def downgrade(
    revision: Annotated[str, typer.Argument(help="Target revision: an id, -1, or base.")],
    config: ConfigOption = DEFAULT_CONFIG,
) -> None:
    """Revert migrations down to REVISION (`base` drops every agentrt table).

    Example: agentrt db downgrade base
    """
    summary = _migrate(config, lambda db: migrate.downgrade(db, revision))
    console.print(summary, highlight=False, soft_wrap=True, markup=False)


@app.command()
@handle_errors
def current(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Print the database's revision and whether it is up to date (exit 1 when behind).

    Example: agentrt db current
    """
    db = Database(load(config).database)

    async def run() -> str | None:
        try:
            return await migrate.current_revision(db)
        finally:
            await db.dispose()

    revision = anyio.run(run)
    head = migrate.head_revision()
    state = "up to date" if revision == head else "behind: run `agentrt db upgrade`"
    console.print(
        f"{db.masked_url}: revision {revision or 'none'} (head {head}, {state})",
        highlight=False,
        soft_wrap=True,
        markup=False,
    )
    if revision != head:
        raise typer.Exit(1)
