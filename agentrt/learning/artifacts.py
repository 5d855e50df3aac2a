"""Policy artifacts: safetensors weights plus JSON metadata, checked by SHA-256 on every load.

An artifact never contains code: tensors and a JSON document describing how to rebuild the
model (learner, architecture, hyperparameters, feature specification, action set, library
versions). Loading verifies the checksum stored beside the artifact first, then the metadata,
and only then builds the model from it; anything that does not verify raises
:class:`ArtifactIntegrityError`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from agentrt.errors import ArtifactIntegrityError

__all__ = ["FORMAT", "Artifact", "dump_artifact", "load_artifact", "sha256"]

FORMAT = "agentrt.policy/1"
_REQUIRED = ("format", "learner", "actions", "features", "agentrt_version", "torch_version")


@dataclass(frozen=True)
class Artifact:
    """The verified content of a policy artifact."""

    tensors: dict[str, torch.Tensor]
    metadata: dict[str, Any]


def sha256(data: bytes) -> str:
    """The hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def dump_artifact(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any]) -> bytes:
    """Serialise tensors and metadata to safetensors bytes (tensors moved to CPU)."""
    from agentrt import __version__

    document = {
        "format": FORMAT,
        "agentrt_version": __version__,
        "torch_version": torch.__version__,
        **metadata,
    }
    cpu = {name: tensor.detach().to("cpu").contiguous() for name, tensor in tensors.items()}
    return save_tensors(cpu, metadata={"agentrt": json.dumps(document, sort_keys=True)})


def load_artifact(data: bytes, expected_sha256: str, *, learner: str | None = None) -> Artifact:
    """Verify and read an artifact.

    Args:
        data: the artifact bytes.
        expected_sha256: the checksum recorded when the artifact was stored.
        learner: when given, the learner the artifact must belong to.

    Raises:
        ArtifactIntegrityError: checksum mismatch, unreadable safetensors, missing or wrong
            metadata.
    """
    actual = sha256(data)
    if actual != expected_sha256:
        raise ArtifactIntegrityError(
            f"artifact checksum mismatch (stored {expected_sha256[:12]}..., computed "
            f"{actual[:12]}...): the artifact was altered; roll back to another version"
        )
    try:
        tensors = load_tensors(data)
        header = _read_metadata(data)
    except (SafetensorError, ValueError, KeyError) as exc:
        raise ArtifactIntegrityError(f"artifact is not a readable safetensors file: {exc}") from exc
    missing = [key for key in _REQUIRED if key not in header]
    if missing:
        raise ArtifactIntegrityError(f"artifact metadata lacks {', '.join(missing)}")
    if header["format"] != FORMAT:
        raise ArtifactIntegrityError(f"artifact format {header['format']!r} is not {FORMAT!r}")
    if learner is not None and header["learner"] != learner:
        raise ArtifactIntegrityError(
            f"artifact belongs to learner {header['learner']!r}, not {learner!r}"
        )
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ArtifactIntegrityError(f"artifact tensor {name!r} holds NaN or infinite values")
    return Artifact(tensors=tensors, metadata=header)


def _read_metadata(data: bytes) -> dict[str, Any]:
    # safetensors: 8-byte little-endian header length, then the JSON header.
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    document = json.loads(header["__metadata__"]["agentrt"])
    if not isinstance(document, dict):
        raise ValueError("metadata is not a JSON object")
    return document
