"""agentrt.ids: the hot path's ids are ordinary version-4 UUIDs."""

from __future__ import annotations

import copy
import pickle
import uuid

from agentrt.ids import new_id


def test_new_ids_are_random_rfc_4122_version_4_uuids() -> None:
    ids = [new_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    for value in ids:
        assert type(value) is uuid.UUID
        assert value.version == 4
        assert value.variant == uuid.RFC_4122
        assert value.is_safe is uuid.SafeUUID.unknown
    # Every one of the 122 random bits varies across ten thousand ids.
    varying = 0
    for value in ids:
        varying |= value.int ^ ids[0].int
    assert bin(varying).count("1") == 122


def test_a_new_id_behaves_like_the_uuid_it_prints_as() -> None:
    value = new_id()
    parsed = uuid.UUID(str(value))
    assert value == parsed
    assert hash(value) == hash(parsed)
    assert value.hex == parsed.hex
    assert value.bytes == parsed.bytes
    assert uuid.UUID(int=value.int, version=4) == value
    assert pickle.loads(pickle.dumps(value)) == value  # noqa: S301 (our own bytes)
    assert copy.deepcopy(value) == value
    assert {value: 1}[parsed] == 1
