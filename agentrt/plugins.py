"""The plugin registry: processors, analyzers, learners, validators, exploration, rollouts,
feature extractors.

A plugin is a :class:`Plugin` record naming its kind, its name and a factory. agentrt's own
plugins are declared exactly as third-party ones are, by ``module:attr`` reference, and are
imported only when something asks for them. Third-party plugins come from the entry point
group ``agentrt.plugins`` or from a ``module:attr`` path, and only when the configuration
names them under ``plugins.enable``: nothing is imported otherwise.

A plugin module exposes one :class:`Plugin` or a sequence of them::

    # mypackage/plugins.py
    from agentrt.plugins import Plugin

    plugin = Plugin(kind="processor", name="reward_shaping", factory=RewardShaping)

and is enabled with ``plugins: {enable: ["mypackage.plugins:plugin"]}``, or, when the package
declares ``[project.entry-points."agentrt.plugins"] reward_shaping = "mypackage.plugins:plugin"``,
with ``plugins: {enable: [reward_shaping]}``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from agentrt.errors import PluginError, PluginNotFoundError
from agentrt.types import (
    PLUGIN_KINDS,
    Analyzer,
    ExperienceBatch,
    ExplorationStrategy,
    FeatureExtractor,
    IncrementalModel,
    Learner,
    PluginKind,
    Processor,
    RewardModel,
    Rollout,
    SequenceModel,
    Validator,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "PLUGIN_KINDS",
    "Analyzer",
    "ExperienceBatch",
    "ExplorationStrategy",
    "FeatureExtractor",
    "IncrementalModel",
    "Learner",
    "Plugin",
    "PluginKind",
    "PluginRegistry",
    "Processor",
    "RewardModel",
    "Rollout",
    "SequenceModel",
    "Validator",
]

ENTRY_POINT_GROUP = "agentrt.plugins"


@dataclass(frozen=True)
class Plugin:
    """A named factory of one plugin kind.

    Attributes:
        kind: what the plugin is (``processor``, ``analyzer``, ``learner``, ``validator``,
            ``exploration``, ``rollout`` or ``feature``).
        name: the name the configuration uses.
        factory: builds the plugin object (usually a class).
        description: one line for listings.
    """

    kind: PluginKind
    name: str
    factory: Callable[..., Any]
    description: str = ""

    def __post_init__(self) -> None:
        if self.kind not in PLUGIN_KINDS:
            raise PluginError(
                f"plugin {self.name!r}: kind must be one of {', '.join(PLUGIN_KINDS)} "
                f"(got {self.kind!r})"
            )
        if not callable(self.factory):
            raise PluginError(f"plugin {self.kind}/{self.name}: factory must be callable")


# agentrt's own plugins: (kind, name, "module:attr" of the Plugin record). Imported lazily.
BUILTINS: tuple[tuple[PluginKind, str, str], ...] = (
    ("processor", "normalization", "agentrt.pipeline.processors:plugins"),
    ("processor", "feature_extraction", "agentrt.pipeline.processors:plugins"),
    ("processor", "temporal_aggregation", "agentrt.pipeline.processors:plugins"),
    ("exploration", "epsilon_greedy", "agentrt.exploration:plugins"),
    ("exploration", "softmax", "agentrt.exploration:plugins"),
    ("exploration", "ucb", "agentrt.exploration:plugins"),
    ("exploration", "thompson", "agentrt.exploration:plugins"),
    ("learner", "linear", "agentrt.learning.linear:plugin"),
    ("learner", "neural", "agentrt.learning.neural:plugin"),
    ("learner", "dqn", "agentrt.learning.dqn:plugin"),
    ("learner", "behavior_cloning", "agentrt.learning.behavior_cloning:plugin"),
    ("analyzer", "action_statistics", "agentrt.analysis:plugins"),
    ("analyzer", "exploration_health", "agentrt.analysis:plugins"),
    ("analyzer", "trend_analysis", "agentrt.analysis:plugins"),
    ("analyzer", "anomaly_detection", "agentrt.analysis:plugins"),
    ("analyzer", "pattern_recognition", "agentrt.analysis:plugins"),
    ("analyzer", "temporal_aggregation", "agentrt.analysis:plugins"),
    ("validator", "sanity", "agentrt.validation:plugins"),
    ("validator", "ope", "agentrt.validation:plugins"),
    ("validator", "latency", "agentrt.validation:plugins"),
    ("validator", "thresholds", "agentrt.validation:plugins"),
    ("rollout", "direct", "agentrt.pipeline.rollout:plugins"),
    ("rollout", "canary", "agentrt.pipeline.rollout:plugins"),
)


def _import_target(reference: str) -> object:
    module_name, _, attribute = reference.partition(":")
    try:
        target: object = importlib.import_module(module_name)
    except (ImportError, SyntaxError) as exc:
        raise PluginError(
            f"cannot import plugin module {module_name!r} ({reference}): {exc}"
        ) from exc
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError as exc:
            raise PluginError(
                f"plugin reference {reference!r}: {module_name} has no {attribute!r}"
            ) from exc
    return target


def _as_plugins(target: object, reference: str) -> list[Plugin]:
    if isinstance(target, Plugin):
        return [target]
    if isinstance(target, Sequence) and not isinstance(target, str | bytes):
        items = list(target)
        if items and all(isinstance(item, Plugin) for item in items):
            return items
    raise PluginError(
        f"plugin reference {reference!r} must point to an agentrt.plugins.Plugin or a list of "
        f"them (got {type(target).__name__})"
    )


class PluginRegistry:
    """The plugins available to one runtime: the built-ins plus those the configuration enables.

    Args:
        enable: entry point names (group ``agentrt.plugins``) or ``module:attr`` references,
            usually ``config.plugins.enable``.
        builtins: the built-in table; tests may pass a smaller one.
    """

    def __init__(
        self,
        enable: Iterable[str] = (),
        builtins: Sequence[tuple[PluginKind, str, str]] = BUILTINS,
    ) -> None:
        self._lazy: dict[tuple[str, str], str] = {(kind, name): ref for kind, name, ref in builtins}
        self._loaded: dict[tuple[str, str], Plugin] = {}
        # Plugins registered by code: another process that builds its registry from the same
        # configuration would not have them (see `runtime.training`).
        self.registered_in_code: list[str] = []
        for reference in enable:
            for plugin in self._load_reference(reference):
                self._add(plugin)

    @classmethod
    def from_config(cls, enable: Iterable[str]) -> PluginRegistry:
        """The registry for ``config.plugins.enable``."""
        return cls(enable)

    def register(self, plugin: Plugin) -> None:
        """Add a plugin; a third-party plugin may not silently replace another one."""
        self._add(plugin)
        self.registered_in_code.append(f"{plugin.kind}/{plugin.name}")

    def _add(self, plugin: Plugin) -> None:
        key = (plugin.kind, plugin.name)
        existing = self._loaded.get(key)
        if existing is not None and existing.factory is not plugin.factory:
            raise PluginError(
                f"two {plugin.kind} plugins are named {plugin.name!r}: rename one of them"
            )
        if key in self._lazy and existing is None:
            raise PluginError(
                f"{plugin.kind} plugin {plugin.name!r} would replace agentrt's built-in of that "
                "name: choose another name"
            )
        self._loaded[key] = plugin

    def names(self, kind: PluginKind) -> list[str]:
        """Every available name of a kind, sorted."""
        found = {name for k, name in self._lazy if k == kind}
        found.update(name for k, name in self._loaded if k == kind)
        return sorted(found)

    def get(self, kind: PluginKind, name: str) -> Plugin:
        """The plugin of ``kind`` named ``name``.

        Raises:
            PluginNotFoundError: no such plugin; the message lists the available names.
            PluginError: the plugin's module could not be imported.
        """
        key = (kind, name)
        plugin = self._loaded.get(key)
        if plugin is not None:
            return plugin
        reference = self._lazy.get(key)
        if reference is None:
            raise PluginNotFoundError(kind, name, self.names(kind))
        for loaded in _as_plugins(_import_target(reference), reference):
            loaded_key = (loaded.kind, loaded.name)
            # Only what the built-in table declares for this reference, never over another plugin.
            if self._lazy.get(loaded_key) == reference and loaded_key not in self._loaded:
                self._loaded[loaded_key] = loaded
        if key not in self._loaded:
            raise PluginError(f"built-in reference {reference!r} does not define {kind}/{name}")
        return self._loaded[key]

    def require(self, kind: PluginKind, name: str) -> None:
        """Check that a plugin of ``kind`` named ``name`` is known, without importing it.

        Raises:
            PluginNotFoundError: no such plugin; the message lists the available names.
        """
        if (kind, name) not in self._loaded and (kind, name) not in self._lazy:
            raise PluginNotFoundError(kind, name, self.names(kind))

    def create(self, kind: PluginKind, name: str, *args: Any, **kwargs: Any) -> Any:
        """Build the plugin object: ``get(kind, name).factory(*args, **kwargs)``."""
        return self.get(kind, name).factory(*args, **kwargs)

    def _load_reference(self, reference: str) -> list[Plugin]:
        if ":" in reference:
            return _as_plugins(_import_target(reference), reference)
        matches = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == reference]
        if not matches:
            installed = sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
            listing = ", ".join(installed) if installed else "none"
            raise PluginError(
                f"plugins.enable: no installed package provides the entry point {reference!r} "
                f"in group {ENTRY_POINT_GROUP} (installed: {listing}); install the plugin "
                "package or give a module:attr path"
            )
        try:
            target = matches[0].load()
        except (ImportError, AttributeError) as exc:
            raise PluginError(f"entry point {reference!r} failed to load: {exc}") from exc
        return _as_plugins(target, reference)
