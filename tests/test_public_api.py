"""The public surface: ``agentrt.__all__``, ``agentrt.plugins`` and every module's ``__all__``."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType

import pytest

import agentrt
import agentrt.errors
import agentrt.plugins
import agentrt.schemas
import agentrt.types

ERRORS = {
    "AgentRTError",
    "ArtifactIntegrityError",
    "BackpressureError",
    "ConfigError",
    "InvalidInputError",
    "PluginError",
    "PluginNotFoundError",
    "PolicyError",
    "SchemaOutdatedError",
    "StorageError",
    "TrainingProcessError",
    "UnknownActionError",
    "UnknownDecisionError",
}
PROTOCOLS = {
    "Analyzer",
    "ExplorationStrategy",
    "FeatureExtractor",
    "IncrementalModel",
    "Learner",
    "Processor",
    "RewardModel",
    "Rollout",
    "SequenceModel",
    "Validator",
}
SCHEMAS = {
    "Decision",
    "Episode",
    "Experience",
    "Feedback",
    "Knowledge",
    "PolicyVersion",
    "StrategyUpdate",
}
PUBLIC = {
    *ERRORS,
    *PROTOCOLS,
    *SCHEMAS,
    "ActiveEpisode",
    "AgentCycle",
    "AgentRTConfig",
    "CycleReport",
    "ExperienceBatch",
    "Runtime",
    "__version__",
    "load_config",
}


def _public_module_names() -> list[str]:
    names = ["agentrt"]
    for info in pkgutil.walk_packages(agentrt.__path__, "agentrt."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return sorted(names)


def _modules_with_all() -> list[str]:
    return [
        name for name in _public_module_names() if hasattr(importlib.import_module(name), "__all__")
    ]


def test_all_lists_exactly_the_public_names() -> None:
    assert set(agentrt.__all__) == PUBLIC
    assert len(agentrt.__all__) == len(set(agentrt.__all__))


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_each_public_name_is_importable(name: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"from agentrt import {name}", namespace)  # noqa: S102 - the import statement itself
    assert namespace[name] is getattr(agentrt, name)


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from agentrt import *", namespace)  # noqa: S102 - what users will type
    assert set(namespace) - {"__builtins__"} == set(agentrt.__all__)


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_errors_are_the_ones_in_agentrt_errors(name: str) -> None:
    error = getattr(agentrt, name)
    assert error is getattr(agentrt.errors, name)
    assert issubclass(error, agentrt.AgentRTError)


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_protocols_are_runtime_checkable_protocols(name: str) -> None:
    protocol = getattr(agentrt, name)
    assert protocol is getattr(agentrt.types, name)
    assert getattr(protocol, "_is_protocol", False)
    assert getattr(protocol, "_is_runtime_protocol", False)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_schemas_are_the_ones_in_agentrt_schemas(name: str) -> None:
    assert getattr(agentrt, name) is getattr(agentrt.schemas, name)


def test_version_is_a_string() -> None:
    assert isinstance(agentrt.__version__, str)
    assert agentrt.__version__


def test_load_config_is_the_config_loader() -> None:
    config = agentrt.load_config({"agents": {"router": {"actions": ["a", "b"]}}})
    assert isinstance(config, agentrt.AgentRTConfig)
    assert list(config.agents) == ["router"]


def test_plugin_authors_find_what_they_need_in_agentrt_plugins() -> None:
    needed = {
        *PROTOCOLS,
        "ExperienceBatch",
        "Plugin",
        "PluginKind",
        "PLUGIN_KINDS",
        "PluginRegistry",
        "ENTRY_POINT_GROUP",
    }
    assert needed <= set(agentrt.plugins.__all__)
    for name in PROTOCOLS | {"ExperienceBatch"}:
        # The same objects everywhere, so isinstance checks agree whichever path was imported.
        assert getattr(agentrt.plugins, name) is getattr(agentrt, name)
        assert getattr(agentrt.plugins, name) is getattr(agentrt.types, name)
    assert agentrt.plugins.ENTRY_POINT_GROUP == "agentrt.plugins"
    assert agentrt.plugins.PLUGIN_KINDS == (
        "processor",
        "analyzer",
        "learner",
        "validator",
        "exploration",
        "rollout",
        "feature",
    )


def test_a_plugin_written_against_the_public_api_satisfies_its_protocol() -> None:
    from agentrt import ExperienceBatch, Processor
    from agentrt.plugins import Plugin, PluginRegistry

    class Identity:
        def process(self, batch: ExperienceBatch) -> ExperienceBatch:
            return batch

    registry = PluginRegistry(builtins=())
    registry.register(Plugin(kind="processor", name="identity", factory=Identity))
    created = registry.create("processor", "identity")
    assert isinstance(created, Processor)
    batch = ExperienceBatch(decisions=[], feedback=[], episodes=[])
    assert created.process(batch) is batch


def test_public_modules_are_found() -> None:
    names = _public_module_names()
    for expected in ("agentrt", "agentrt.errors", "agentrt.plugins", "agentrt.cli"):
        assert expected in names
    assert "agentrt.errors" in _modules_with_all()


@pytest.mark.parametrize("module_name", _modules_with_all())
def test_module_all_lists_only_names_it_defines(module_name: str) -> None:
    module: ModuleType = importlib.import_module(module_name)
    exported = list(module.__all__)
    assert len(exported) == len(set(exported)), f"{module_name}.__all__ has duplicates"
    for name in exported:
        assert isinstance(name, str)
        assert hasattr(module, name), f"{module_name}.__all__ names missing {name!r}"
        obj = getattr(module, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            # Classes and functions come from agentrt itself, never re-exported from a library.
            assert obj.__module__.split(".")[0] == "agentrt", (
                f"{module_name}.{name} is {obj.__module__}.{obj.__qualname__}"
            )


@pytest.mark.parametrize("module_name", _modules_with_all())
def test_module_all_does_not_list_submodules(module_name: str) -> None:
    module = importlib.import_module(module_name)
    for name in module.__all__:
        assert not isinstance(getattr(module, name), ModuleType), f"{module_name}.{name}"
