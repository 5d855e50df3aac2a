"""Alembic migrations, driven programmatically on the runtime's own async engine.

The scripts live in the repository's top-level ``migrations/`` (wheels carry them as
``agentrt/_migrations``). ``ensure_schema`` is what the runtime calls at start: it upgrades an
empty or old database when ``auto_migrate`` allows it and otherwise refuses to start with a
:class:`SchemaOutdatedError` that names the command to run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

from agentrt.errors import SchemaOutdatedError, StorageError
from agentrt.log import get_logger
from agentrt.storage.engine import Database

__all__ = [
    "alembic_config",
    "current_revision",
    "downgrade",
    "ensure_schema",
    "head_revision",
    "migrations_dir",
    "upgrade",
]

log = get_logger(__name__)

_PACKAGE = Path(__file__).resolve().parent.parent


def migrations_dir() -> Path:
    """The directory holding ``env.py`` and ``versions/``."""
    for candidate in (_PACKAGE.parent / "migrations", _PACKAGE / "_migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise StorageError(
        "agentrt's migration scripts are missing from the installation; reinstall agentrt"
    )


def alembic_config(url: str | None = None) -> Config:
    """An Alembic configuration for agentrt's migrations, optionally bound to a database URL."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def head_revision() -> str:
    """The newest revision this version of agentrt knows."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise StorageError("agentrt's migration scripts have no head revision; reinstall agentrt")
    return head


def _known_revisions() -> set[str]:
    return {rev.revision for rev in ScriptDirectory.from_config(alembic_config()).walk_revisions()}


async def current_revision(db: Database) -> str | None:
    """The revision stored in the database, or None when agentrt has never migrated it."""

    def read(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    async with db.connect() as connection:
        return await connection.run_sync(read)


async def _run(db: Database, direction: Literal["upgrade", "downgrade"], revision: str) -> None:
    config = alembic_config(db.url)

    def run(connection: Connection) -> None:
        config.attributes["connection"] = connection
        if direction == "upgrade":
            command.upgrade(config, revision)
        else:
            command.downgrade(config, revision)

    async with db.connect() as connection:
        await connection.run_sync(run)


async def upgrade(db: Database, revision: str = "head") -> None:
    """Apply migrations up to ``revision`` (default: the newest)."""
    before = await current_revision(db)
    await _run(db, "upgrade", revision)
    after = await current_revision(db)
    log.info("schema_upgraded", database=db.masked_url, before=before, after=after)


async def downgrade(db: Database, revision: str) -> None:
    """Revert migrations down to ``revision`` (``base`` removes every agentrt table)."""
    before = await current_revision(db)
    await _run(db, "downgrade", revision)
    after = await current_revision(db)
    log.info("schema_downgraded", database=db.masked_url, before=before, after=after)


async def ensure_schema(db: Database, auto_migrate: bool | None) -> str:
    """Make sure the database schema is at the head revision before the runtime uses it.

    Args:
        db: the database.
        auto_migrate: upgrade when behind; None means "yes for SQLite files, no otherwise".

    Returns:
        The head revision.

    Raises:
        SchemaOutdatedError: the schema is behind and may not be upgraded automatically.
        StorageError: the database holds a revision this version of agentrt does not know.
    """
    head = head_revision()
    current = await current_revision(db)
    if current == head:
        return head
    if current is not None and current not in _known_revisions():
        raise StorageError(
            f"database {db.masked_url} is at revision {current}, newer than this agentrt "
            f"(head {head}): upgrade agentrt, or run `agentrt db downgrade` with the newer version"
        )
    allowed = auto_migrate if auto_migrate is not None else db.sqlite_path is not None
    if not allowed:
        raise SchemaOutdatedError(current, head, db.masked_url)
    await upgrade(db)
    return head
