"""Policy artifacts: safetensors plus JSON metadata, verified by SHA-256 before anything is read."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import re
from typing import Any

import pytest
import safetensors.torch
import torch

import agentrt
from agentrt.errors import ArtifactIntegrityError, PolicyError
from agentrt.learning.artifacts import FORMAT, Artifact, dump_artifact, load_artifact, sha256

METADATA: dict[str, Any] = {
    "learner": "linear",
    "actions": ["a", "b", "c"],
    "features": {"dim": 8, "clip": 5.0, "max_list": 32, "max_words": 64},
    "model": {"actions": 3, "inputs": 8},
}


def tensors() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "model.theta": torch.randn(3, 9, dtype=torch.float64, generator=generator),
        "model.weight": torch.randn(4, 2, generator=generator),
        "model.half": torch.randn(5, generator=generator).to(torch.float16),
        "encoder.count": torch.arange(8, dtype=torch.int64),
    }


def artifact_bytes() -> bytes:
    return dump_artifact(tensors(), METADATA)


def document(**changes: Any) -> dict[str, Any]:
    """A complete metadata document, as :func:`dump_artifact` writes it, with changes."""
    return {
        "format": FORMAT,
        "agentrt_version": agentrt.__version__,
        "torch_version": torch.__version__,
        **METADATA,
        **changes,
    }


def raw_safetensors(metadata: dict[str, str] | None) -> bytes:
    """A file written by safetensors itself, with the given header metadata."""
    data: bytes = safetensors.torch.save({"w": torch.ones(2, 2)}, metadata=metadata)
    return data


# -- the round trip ------------------------------------------------------------------------


def test_round_trip_keeps_tensors_and_metadata() -> None:
    data = artifact_bytes()
    loaded = load_artifact(data, sha256(data), learner="linear")
    assert isinstance(loaded, Artifact)
    original = tensors()
    assert set(loaded.tensors) == set(original)
    for name, tensor in original.items():
        assert loaded.tensors[name].dtype == tensor.dtype
        assert torch.equal(loaded.tensors[name], tensor), name
    assert loaded.metadata == document()
    assert loaded.metadata["format"] == FORMAT == "agentrt.policy/1"
    assert loaded.metadata["agentrt_version"] == agentrt.__version__
    assert loaded.metadata["torch_version"] == torch.__version__


def test_learner_is_optional_when_loading() -> None:
    data = artifact_bytes()
    assert load_artifact(data, sha256(data)).metadata["learner"] == "linear"


def test_dump_is_deterministic_and_checksum_is_sha256() -> None:
    first, second = artifact_bytes(), artifact_bytes()
    assert first == second
    assert sha256(first) == hashlib.sha256(first).hexdigest()
    assert len(sha256(first)) == 64


def test_non_contiguous_tensors_round_trip() -> None:
    transposed = torch.arange(12, dtype=torch.float32).reshape(3, 4).T
    assert not transposed.is_contiguous()
    data = dump_artifact({"t": transposed}, METADATA)
    loaded = load_artifact(data, sha256(data))
    assert torch.equal(loaded.tensors["t"], transposed)


def test_tensors_with_gradients_are_stored_detached() -> None:
    weight = torch.nn.Linear(3, 2).weight
    assert weight.requires_grad
    data = dump_artifact({"weight": weight}, METADATA)
    loaded = load_artifact(data, sha256(data)).tensors["weight"]
    assert not loaded.requires_grad
    assert torch.equal(loaded, weight.detach())


# -- no pickle -----------------------------------------------------------------------------


def test_artifact_is_plain_safetensors_not_pickle() -> None:
    data = artifact_bytes()
    assert not data.startswith(b"\x80"), "pickle protocol header"
    assert not data.startswith(b"PK\x03\x04"), "torch.save zip archive"
    header_length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_length])
    assert json.loads(header["__metadata__"]["agentrt"]) == document()
    # safetensors alone reads it back.
    plain = safetensors.torch.load(data)
    assert torch.equal(plain["model.theta"], tensors()["model.theta"])


def test_a_file_written_by_safetensors_directly_loads() -> None:
    data = raw_safetensors({"agentrt": json.dumps(document(learner="neural"))})
    loaded = load_artifact(data, sha256(data), learner="neural")
    assert torch.equal(loaded.tensors["w"], torch.ones(2, 2))
    assert loaded.metadata["learner"] == "neural"


class _Bomb:
    """Unpickling this appends to ``EXPLODED``: proof that a loader ran pickle."""

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (EXPLODED.append, ("unpickled",))


EXPLODED: list[str] = []


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_pickles_with_a_matching_checksum_are_refused_unread(writer: str) -> None:
    EXPLODED.clear()
    if writer == "pickle":
        data = pickle.dumps({"model.theta": _Bomb()}, protocol=4)
        assert data.startswith(b"\x80\x04")
    else:
        buffer = io.BytesIO()
        torch.save({"model.theta": torch.ones(2), "bomb": _Bomb()}, buffer)
        data = buffer.getvalue()
    with pytest.raises(ArtifactIntegrityError, match="not a readable safetensors file"):
        load_artifact(data, sha256(data))
    assert EXPLODED == []


# -- what does not verify ------------------------------------------------------------------


@pytest.mark.parametrize("position", [0, 8, 100, -1], ids=["length", "header", "body", "last"])
def test_a_flipped_byte_fails_the_checksum(position: int) -> None:
    data = bytearray(artifact_bytes())
    expected = sha256(bytes(data))
    data[position] ^= 0x01
    with pytest.raises(ArtifactIntegrityError, match="checksum mismatch") as caught:
        load_artifact(bytes(data), expected)
    assert expected[:12] in str(caught.value)
    assert isinstance(caught.value, PolicyError)


def test_a_different_artifact_fails_the_checksum() -> None:
    data = artifact_bytes()
    other = dump_artifact({"w": torch.zeros(1)}, METADATA)
    with pytest.raises(ArtifactIntegrityError, match="checksum mismatch"):
        load_artifact(other, sha256(data))


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"definitely not a safetensors file",
        b"\xff" * 64,
        (8).to_bytes(8, "little") + b'{"a": 1}',
    ],
    ids=["empty", "text", "huge_header", "bad_header"],
)
def test_garbage_with_a_correct_checksum_is_refused(garbage: bytes) -> None:
    with pytest.raises(ArtifactIntegrityError, match="not a readable safetensors file"):
        load_artifact(garbage, sha256(garbage))


def test_a_truncated_artifact_with_its_own_checksum_is_refused() -> None:
    data = artifact_bytes()[:-16]
    with pytest.raises(ArtifactIntegrityError, match="not a readable safetensors file"):
        load_artifact(data, sha256(data))


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        (None, "not a readable safetensors file"),
        ({"other": "x"}, "not a readable safetensors file"),
        ({"agentrt": "{not json"}, "not a readable safetensors file"),
        ({"agentrt": "[1, 2]"}, "not a readable safetensors file"),
        ({"agentrt": json.dumps({"format": FORMAT, "learner": "linear"})}, "lacks"),
        ({"agentrt": json.dumps(document(format="agentrt.policy/0"))}, "format"),
    ],
    ids=["no_metadata", "foreign_metadata", "bad_json", "not_an_object", "missing", "format"],
)
def test_metadata_that_does_not_verify_is_refused(
    metadata: dict[str, str] | None, message: str
) -> None:
    data = raw_safetensors(metadata)
    with pytest.raises(ArtifactIntegrityError, match=message):
        load_artifact(data, sha256(data))


def test_missing_metadata_keys_are_named() -> None:
    partial = {k: v for k, v in document().items() if k not in ("actions", "torch_version")}
    data = raw_safetensors({"agentrt": json.dumps(partial)})
    with pytest.raises(ArtifactIntegrityError, match="lacks actions, torch_version"):
        load_artifact(data, sha256(data))


def test_an_artifact_of_another_learner_is_refused() -> None:
    data = artifact_bytes()
    with pytest.raises(ArtifactIntegrityError, match="belongs to learner 'linear', not 'neural'"):
        load_artifact(data, sha256(data), learner="neural")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_non_finite_tensors_are_refused(bad: float, dtype: torch.dtype) -> None:
    weights = torch.ones(3, 2, dtype=dtype)
    weights[1, 1] = bad
    data = dump_artifact({"model.ok": torch.zeros(2), "model.weight": weights}, METADATA)
    with pytest.raises(
        ArtifactIntegrityError, match=re.escape("'model.weight' holds NaN or infinite")
    ):
        load_artifact(data, sha256(data))


def test_integer_tensors_are_not_checked_for_finiteness() -> None:
    data = dump_artifact({"count": torch.tensor([0, -1, 2**40])}, METADATA)
    assert load_artifact(data, sha256(data)).tensors["count"].tolist() == [0, -1, 2**40]
