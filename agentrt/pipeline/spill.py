"""The local spill file: where experience waits while the database is unreachable.

Append-only JSON lines, one record each, with a SHA-256 checksum of the record; written with
``fsync`` before the records count as acknowledged. After the database is back the collector
replays the files (idempotent inserts by id) and deletes each only after its rows committed.
A line whose checksum does not match (a torn write during a crash) is skipped and reported.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

from agentrt.log import get_logger
from agentrt.schemas import Decision, Episode, Feedback

__all__ = ["ExperienceRecord", "SpillDirectory", "SpillFile"]

log = get_logger(__name__)

ExperienceRecord = Decision | Feedback | Episode
_KINDS: dict[str, type[Decision] | type[Feedback] | type[Episode]] = {
    "decision": Decision,
    "feedback": Feedback,
    "episode": Episode,
}
_KIND_OF: dict[type, Literal["decision", "feedback", "episode"]] = {
    Decision: "decision",
    Feedback: "feedback",
    Episode: "episode",
}


def _encode(record: ExperienceRecord) -> bytes:
    data = record.model_dump_json()
    digest = hashlib.sha256(data.encode("utf-8")).hexdigest()
    line = json.dumps({"kind": _KIND_OF[type(record)], "data": data, "sha256": digest})
    return line.encode("utf-8") + b"\n"


@dataclass
class SpillFile:
    """One process's spill file, locked while that process owns it."""

    path: Path
    _handle: IO[bytes] | None = field(default=None, repr=False)
    records: int = 0

    def append(self, records: Sequence[ExperienceRecord]) -> None:
        """Append records and fsync them; they are safe on disk when this returns."""
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = self.path.open("ab")
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._handle.write(b"".join(_encode(record) for record in records))
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self.records += len(records)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def read_spill(path: Path) -> tuple[list[ExperienceRecord], int]:
    """The intact records of a spill file and the number of corrupt lines skipped."""
    records: list[ExperienceRecord] = []
    corrupt = 0
    with path.open("rb") as handle:
        for raw in handle:
            try:
                line = json.loads(raw)
                data = line["data"]
                if hashlib.sha256(data.encode("utf-8")).hexdigest() != line["sha256"]:
                    raise ValueError("checksum mismatch")
                records.append(_KINDS[line["kind"]].model_validate_json(data))
            except (ValueError, KeyError, TypeError, AttributeError):
                corrupt += 1
    return records, corrupt


class SpillDirectory:
    """The spill files of every process that shares one database.

    Args:
        directory: where spill files live.
        owner: a name unique to this process (used in its file name).
    """

    def __init__(self, directory: Path, owner: str) -> None:
        self.directory = directory
        self.current = SpillFile(directory / f"spill-{owner}.jsonl")

    def pending(self) -> list[Path]:
        """Spill files waiting for replay, oldest first (this process's own included)."""
        if not self.directory.is_dir():
            return []
        found = []
        for path in self.directory.glob("spill-*.jsonl"):
            try:
                found.append((path.stat().st_mtime, path))
            except FileNotFoundError:  # replayed and deleted by another process meanwhile
                continue
        return [path for _, path in sorted(found)]

    @contextlib.contextmanager
    def claim(self, path: Path) -> Iterator[list[ExperienceRecord] | None]:
        """Lock a spill file for replay and yield its records (None if another process holds it).

        The caller deletes the file with :meth:`remove` once the records committed.
        """
        if path == self.current.path:
            self.current.close()
        try:
            handle = path.open("rb+")
        except FileNotFoundError:
            yield None
            return
        with handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield None
                return
            records, corrupt = read_spill(path)
            if corrupt:
                log.error("spill_corrupt_lines", path=str(path), skipped=corrupt)
            yield records

    def remove(self, path: Path) -> None:
        """Delete a replayed spill file."""
        path.unlink(missing_ok=True)
        if path == self.current.path:
            self.current.records = 0
