"""agentrt.pipeline.spill: the fsynced JSON-lines file where experience waits out an outage.

Plain files in ``tmp_path``; no database. Locks are real ``flock`` locks: two open file
descriptions in one process conflict exactly as two processes would.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from agentrt.pipeline.spill import ExperienceRecord, SpillDirectory, SpillFile, read_spill
from agentrt.schemas import Decision, Episode, Feedback

T0 = datetime(2025, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)


def decision(step: int = 0) -> Decision:
    return Decision(
        agent_id="router",
        action="cheap",
        action_index=1,
        actions=("fast", "cheap"),
        context={"load": 0.25, "tier": "gold ✓", "tags": ["a"], "none": None, "n": 2**70},
        propensity=0.4,
        probabilities=(0.6, 0.4),
        policy_version=2,
        exploration={"method": "softmax", "temperature": 0.5},
        mode="shadow",
        episode_id=uuid.uuid4(),
        step=step,
        policy_action="fast",
        created_at=T0.astimezone(timezone(timedelta(hours=-5))),
    )


def feedback(of: Decision) -> Feedback:
    return Feedback(
        decision_id=of.id,
        reward=-1.5,
        outcome={"latency_ms": 3.25, "ok": False, "error": "boom"},
        source="test",
        created_at=T0 + timedelta(seconds=1),
    )


def episode() -> Episode:
    return Episode(
        agent_id="router",
        started_at=T0,
        ended_at=T0 + timedelta(minutes=1),
        status="completed",
        episode_return=3.0,
        length=4,
    )


def mixed_records() -> list[ExperienceRecord]:
    first, second = decision(0), decision(1)
    activation = Feedback(decision_id=second.id, kind="activation", created_at=T0)
    return [first, feedback(first), episode(), second, activation]


def line_for(record: ExperienceRecord, kind: str) -> bytes:
    data = record.model_dump_json()
    digest = hashlib.sha256(data.encode("utf-8")).hexdigest()
    return json.dumps({"kind": kind, "data": data, "sha256": digest}).encode() + b"\n"


@pytest.fixture
def spill_dir(tmp_path: Path) -> SpillDirectory:
    return SpillDirectory(tmp_path / "spill", "me-1")


# -- append and read -----------------------------------------------------------------------


def test_records_of_every_kind_read_back_equal_and_typed(tmp_path: Path) -> None:
    records = mixed_records()
    spill = SpillFile(tmp_path / "nested" / "dir" / "spill-a.jsonl")  # parents are created
    try:
        spill.append(records[:2])
        spill.append(records[2:])
        assert spill.records == len(records)
    finally:
        spill.close()

    restored, corrupt = read_spill(spill.path)

    assert corrupt == 0
    assert restored == records
    assert [type(r) for r in restored] == [type(r) for r in records]
    first = restored[0]
    assert isinstance(first, Decision)
    assert first.created_at.utcoffset() == timedelta(hours=-5)
    assert first.created_at == T0
    assert len(spill.path.read_bytes().splitlines()) == len(records)


def test_appended_records_are_on_disk_before_close(tmp_path: Path) -> None:
    spill = SpillFile(tmp_path / "spill-a.jsonl")
    try:
        spill.append([decision()])
        # Another reader sees the line while the writer still holds the file open.
        restored, corrupt = read_spill(spill.path)
        assert (len(restored), corrupt) == (1, 0)
    finally:
        spill.close()


def test_close_is_idempotent_and_append_reopens(tmp_path: Path) -> None:
    spill = SpillFile(tmp_path / "spill-a.jsonl")
    spill.close()
    spill.append([decision(0)])
    spill.close()
    spill.close()
    spill.append([decision(1)])
    spill.close()
    restored, _ = read_spill(spill.path)
    assert [r.step for r in restored if isinstance(r, Decision)] == [0, 1]


# -- corrupt lines -------------------------------------------------------------------------


def test_a_line_with_a_bad_checksum_is_skipped_and_counted(tmp_path: Path) -> None:
    first, second, third = decision(0), decision(1), decision(2)
    tampered = json.loads(line_for(second, "decision"))
    tampered["data"] = tampered["data"].replace('"cheap"', '"fast"', 1)
    path = tmp_path / "spill-a.jsonl"
    path.write_bytes(
        line_for(first, "decision")
        + json.dumps(tampered).encode()
        + b"\n"
        + line_for(third, "decision")
    )

    restored, corrupt = read_spill(path)

    assert restored == [first, third]
    assert corrupt == 1


def test_a_truncated_last_line_is_skipped_and_counted(tmp_path: Path) -> None:
    records = mixed_records()
    spill = SpillFile(tmp_path / "spill-a.jsonl")
    try:
        spill.append(records)
    finally:
        spill.close()
    whole = spill.path.read_bytes()
    last_line_start = whole.rstrip(b"\n").rfind(b"\n") + 1
    # A torn write: the process died halfway through the last line.
    spill.path.write_bytes(whole[: last_line_start + (len(whole) - last_line_start) // 2])

    restored, corrupt = read_spill(spill.path)

    assert restored == records[:-1]
    assert corrupt == 1


@pytest.mark.parametrize(
    "garbage",
    [
        b"not json at all\n",
        b"\xff\xfe\n",  # not UTF-8
        b"[1, 2]\n",
        b"null\n",
        b'{"kind": "decision"}\n',
        b'{"kind": "verdict", "data": "{}", "sha256": "'
        + hashlib.sha256(b"{}").hexdigest().encode()
        + b'"}\n',
        # A valid checksum over data that is not a valid record.
        b'{"kind": "decision", "data": "{}", "sha256": "'
        + hashlib.sha256(b"{}").hexdigest().encode()
        + b'"}\n',
    ],
    ids=["text", "binary", "list", "null", "missing-keys", "unknown-kind", "invalid-record"],
)
def test_malformed_lines_are_skipped_and_counted(tmp_path: Path, garbage: bytes) -> None:
    good = decision()
    path = tmp_path / "spill-a.jsonl"
    path.write_bytes(garbage + line_for(good, "decision"))
    assert read_spill(path) == ([good], 1)


def test_a_line_whose_data_is_not_text_is_skipped(tmp_path: Path) -> None:
    good = decision()
    path = tmp_path / "spill-a.jsonl"
    path.write_bytes(
        b'{"kind": "decision", "data": 5, "sha256": "x"}\n' + line_for(good, "decision")
    )
    assert read_spill(path) == ([good], 1)


def test_claim_reports_corrupt_lines_in_the_log(spill_dir: SpillDirectory, tmp_path: Path) -> None:
    good = decision()
    path = spill_dir.directory / "spill-other.jsonl"
    path.parent.mkdir(parents=True)
    path.write_bytes(line_for(good, "decision") + b'{"kind": "decision", "da')
    with capture_logs() as logs, spill_dir.claim(path) as records:
        assert records == [good]
    assert [entry for entry in logs if entry["event"] == "spill_corrupt_lines"] == [
        {"event": "spill_corrupt_lines", "log_level": "error", "path": str(path), "skipped": 1}
    ]


# -- the directory: pending, claim, remove -------------------------------------------------


def test_pending_lists_spill_files_oldest_first(spill_dir: SpillDirectory) -> None:
    assert spill_dir.pending() == []  # the directory does not exist yet
    directory = spill_dir.directory
    directory.mkdir(parents=True)
    older, newer = directory / "spill-b.jsonl", directory / "spill-a.jsonl"
    older.write_bytes(b"")
    newer.write_bytes(b"")
    os.utime(older, (1_000_000, 1_000_000))
    os.utime(newer, (2_000_000, 2_000_000))
    (directory / "rejected-me-1.jsonl").write_bytes(b"")
    (directory / "notes.txt").write_bytes(b"")

    assert spill_dir.pending() == [older, newer]


def test_claim_yields_none_while_another_spill_file_holds_the_lock(
    spill_dir: SpillDirectory,
) -> None:
    other_process = SpillDirectory(spill_dir.directory, "other-2")
    records = [decision()]
    other_process.current.append(records)
    try:
        assert spill_dir.pending() == [other_process.current.path]
        with spill_dir.claim(other_process.current.path) as claimed:
            assert claimed is None
        assert other_process.current.path.exists()
    finally:
        other_process.current.close()

    # Once the owner has closed it (or died), the file can be claimed.
    with spill_dir.claim(other_process.current.path) as claimed:
        assert claimed == records


def test_a_claimed_file_is_locked_against_other_claims(spill_dir: SpillDirectory) -> None:
    writer = SpillFile(spill_dir.directory / "spill-dead.jsonl")
    writer.append([decision()])
    writer.close()
    rival = SpillDirectory(spill_dir.directory, "rival-3")
    with spill_dir.claim(writer.path) as mine:
        assert mine is not None
        with rival.claim(writer.path) as theirs:
            assert theirs is None


def test_claim_of_a_missing_file_yields_none(spill_dir: SpillDirectory) -> None:
    with spill_dir.claim(spill_dir.directory / "spill-gone.jsonl") as claimed:
        assert claimed is None


def test_claiming_the_own_file_releases_it_first(spill_dir: SpillDirectory) -> None:
    own = spill_dir.current
    own.append([decision(0)])
    with spill_dir.claim(own.path) as claimed:
        assert claimed is not None
        assert len(claimed) == 1
    spill_dir.remove(own.path)
    assert not own.path.exists()
    assert own.records == 0
    # Spilling again after the replay starts a new file.
    own.append([decision(1)])
    try:
        restored, _ = read_spill(own.path)
        assert [r.step for r in restored if isinstance(r, Decision)] == [1]
        assert own.records == 1
    finally:
        own.close()


def test_remove_deletes_the_file_and_tolerates_a_missing_one(spill_dir: SpillDirectory) -> None:
    other = SpillFile(spill_dir.directory / "spill-other.jsonl")
    other.append([decision()])
    other.close()
    spill_dir.remove(other.path)
    assert not other.path.exists()
    assert spill_dir.pending() == []
    spill_dir.remove(other.path)
