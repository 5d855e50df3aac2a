"""Several processes, one database: who runs an agent's cycle, and who hears about it.

- PostgreSQL: each agent's learning cycle runs under a session-level advisory lock
  (``pg_try_advisory_lock``), so among all the workers and embedded pipelines sharing the
  database only one trains a given agent at a time. A change of an agent's serving versions
  is announced with ``NOTIFY agentrt_policies, '<agent_id>'`` in the same transaction
  (delivered at commit); runtimes ``LISTEN`` and reload at once, and still poll every
  ``runtime.policy_refresh_interval`` in case a notification is missed.
- SQLite: one worker per database file. ``agentrt worker`` holds an exclusive lock on
  ``<database>.worker.lock`` for its lifetime and refuses to start when another holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
from sqlalchemy import text

from agentrt.errors import StorageError
from agentrt.log import get_logger
from agentrt.storage import repositories
from agentrt.storage.engine import Database, storage_errors

__all__ = [
    "agent_lock",
    "listen_for_policy_changes",
    "lock_key",
    "worker_file_lock",
]

log = get_logger(__name__)


def lock_key(agent_id: str) -> int:
    """The advisory-lock key of an agent's cycle: a stable signed 64-bit number."""
    digest = hashlib.sha256(f"agentrt.cycle:{agent_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextlib.asynccontextmanager
async def agent_lock(db: Database, agent_id: str, *, wait: bool) -> AsyncIterator[bool]:
    """Hold the agent's cross-process cycle lock; yields whether it was obtained.

    On PostgreSQL the lock lives on a connection held for the block (``wait`` blocks until
    it is free, otherwise the attempt fails at once). SQLite has one worker per file and
    always yields True.
    """
    if db.dialect != "postgresql":
        yield True
        return
    key = lock_key(agent_id)
    with storage_errors(db.masked_url):
        conn = await db.engine.connect()
    try:
        with storage_errors(db.masked_url):
            if wait:
                await conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
                got = True
            else:
                query = text("SELECT pg_try_advisory_lock(:key)")
                got = bool((await conn.execute(query, {"key": key})).scalar_one())
            # Session-level locks outlive transactions: commit so the connection is not left
            # idle in a transaction while the cycle runs on other connections.
            await conn.commit()
        try:
            yield got
        finally:
            if got:
                with anyio.CancelScope(shield=True), storage_errors(db.masked_url):
                    await conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                    await conn.commit()
    finally:
        with anyio.CancelScope(shield=True):
            await conn.close()


@contextlib.asynccontextmanager
async def listen_for_policy_changes(
    db: Database, on_change: Callable[[str], None]
) -> AsyncIterator[bool]:
    """``LISTEN`` for policy changes while the block runs (PostgreSQL); yields whether a
    listener is active. ``on_change`` gets the agent id from the notification."""
    if db.dialect != "postgresql":
        yield False
        return
    with storage_errors(db.masked_url):
        conn = await db.engine.connect()
    try:
        raw = await conn.get_raw_connection()
        driver: Any = raw.driver_connection

        def deliver(_connection: object, _pid: int, _channel: str, payload: str) -> None:
            on_change(payload)

        await driver.add_listener(repositories.POLICY_CHANNEL, deliver)
        try:
            yield True
        finally:
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                # The connection may already be gone; closing it ends the LISTEN anyway.
                await driver.remove_listener(repositories.POLICY_CHANNEL, deliver)
    finally:
        with anyio.CancelScope(shield=True):
            await conn.close()


@contextlib.contextmanager
def worker_file_lock(db: Database) -> Iterator[Path | None]:
    """For SQLite, an exclusive lock on ``<database>.worker.lock`` held while the block
    runs; PostgreSQL needs none (yields None).

    Raises:
        StorageError: another worker holds the lock on this database file.
    """
    path = db.sqlite_path
    if path is None:
        yield None
        return
    lock_path = path.with_name(path.name + ".worker.lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise StorageError(
                f"database.url: another agentrt worker already runs on {path} (SQLite allows "
                "one worker per database file); stop it, or use PostgreSQL for several workers"
            ) from exc
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield lock_path
    finally:
        os.close(fd)
