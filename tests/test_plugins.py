"""agentrt.plugins: lazy built-ins, module:attr references, entry points and name clashes."""

from __future__ import annotations

import dataclasses
import importlib
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

import pytest

from agentrt.config import load_config
from agentrt.errors import PluginError, PluginNotFoundError
from agentrt.plugins import (
    BUILTINS,
    ENTRY_POINT_GROUP,
    PLUGIN_KINDS,
    Plugin,
    PluginKind,
    PluginRegistry,
)

# The body of every plugin module the tests write; each gets a fresh, unique module name.
PLUGIN_SOURCE = """
from agentrt.plugins import Plugin

calls = []


class Shaper:
    def __init__(self, *args, **kwargs):
        calls.append((args, kwargs))
        self.args = args
        self.kwargs = kwargs


def make_trends():
    return "trends"


plugin = Plugin(kind="processor", name="shaper", factory=Shaper, description="shapes rewards")
several = [
    Plugin(kind="analyzer", name="trends", factory=make_trends),
    Plugin(kind="learner", name="tiny", factory=Shaper),
    Plugin(kind="processor", name="scaler", factory=Shaper),
]
as_tuple = (Plugin(kind="rollout", name="blue_green", factory=Shaper),)


class Namespace:
    plugin = plugin


not_a_plugin = 42
empty = []
mixed = [plugin, "oops"]
text = "processor"
"""

MakeModule = Callable[..., str]
Install = Callable[[dict[str, str]], None]


@pytest.fixture
def site_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory on sys.path, like site-packages, for plugin modules and distributions."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    return site


@pytest.fixture
def make_module(site_dir: Path) -> Iterator[MakeModule]:
    """Writes a plugin module with a unique name and forgets it from sys.modules afterwards."""
    created: list[str] = []

    def make(source: str = PLUGIN_SOURCE) -> str:
        name = f"agentrt_test_plugin_{uuid.uuid4().hex[:12]}"
        (site_dir / f"{name}.py").write_text(textwrap.dedent(source), encoding="utf-8")
        importlib.invalidate_caches()
        created.append(name)
        return name

    yield make
    for name in created:
        sys.modules.pop(name, None)


@pytest.fixture
def install(site_dir: Path) -> Install:
    """Installs a distribution (dist-info metadata only) declaring entry points."""

    def install_distribution(entry_points: dict[str, str]) -> None:
        dist = f"agentrt_test_dist_{uuid.uuid4().hex[:12]}"
        info = site_dir / f"{dist}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n", encoding="utf-8"
        )
        lines = [f"{name} = {target}" for name, target in entry_points.items()]
        (info / "entry_points.txt").write_text(
            "\n".join([f"[{ENTRY_POINT_GROUP}]", *lines, ""]), encoding="utf-8"
        )
        importlib.invalidate_caches()

    return install_distribution


# --- Plugin records --------------------------------------------------------------------------


def test_plugin_record() -> None:
    plugin = Plugin(kind="learner", name="linear", factory=dict, description="a line")
    assert (plugin.kind, plugin.name, plugin.factory, plugin.description) == (
        "learner",
        "linear",
        dict,
        "a line",
    )
    assert Plugin(kind="learner", name="linear", factory=dict).description == ""
    with pytest.raises(dataclasses.FrozenInstanceError):
        plugin.name = "other"  # type: ignore[misc]


def test_plugin_kind_must_be_known() -> None:
    with pytest.raises(PluginError, match="kind must be one of") as info:
        Plugin(kind=cast("PluginKind", "optimizer"), name="adam", factory=dict)
    message = str(info.value)
    assert "'adam'" in message
    assert "'optimizer'" in message
    for kind in PLUGIN_KINDS:
        assert kind in message


def test_plugin_factory_must_be_callable() -> None:
    with pytest.raises(PluginError, match=r"plugin learner/linear: factory must be callable"):
        Plugin(kind="learner", name="linear", factory=cast("Callable[..., object]", 42))


# --- built-ins -------------------------------------------------------------------------------


def test_shipped_builtins_resolve() -> None:
    assert len({(kind, name) for kind, name, _ in BUILTINS}) == len(BUILTINS)
    registry = PluginRegistry()
    for kind, name, reference in BUILTINS:
        assert kind in PLUGIN_KINDS
        assert ":" in reference
        plugin = registry.get(kind, name)
        assert (plugin.kind, plugin.name) == (kind, name)


def test_builtin_module_is_imported_only_when_asked_for(make_module: MakeModule) -> None:
    module = make_module()
    registry = PluginRegistry(builtins=[("processor", "shaper", f"{module}:plugin")])

    assert registry.names("processor") == ["shaper"]
    assert module not in sys.modules

    plugin = registry.get("processor", "shaper")
    assert module in sys.modules
    assert (plugin.kind, plugin.name, plugin.description) == (
        "processor",
        "shaper",
        "shapes rewards",
    )
    assert plugin.factory is sys.modules[module].Shaper
    assert registry.get("processor", "shaper") is plugin


def test_builtin_list_yields_only_the_requested_kind(make_module: MakeModule) -> None:
    module = make_module()
    registry = PluginRegistry(
        builtins=[
            ("analyzer", "trends", f"{module}:several"),
            ("learner", "tiny", f"{module}:several"),
        ]
    )
    assert registry.get("analyzer", "trends").factory() == "trends"
    assert registry.get("learner", "tiny").kind == "learner"
    # The list also holds a processor, but the table does not declare it.
    assert registry.names("processor") == []


def test_builtin_reference_that_lacks_the_name(make_module: MakeModule) -> None:
    module = make_module()
    reference = f"{module}:plugin"
    registry = PluginRegistry(builtins=[("processor", "ghost", reference)])
    with pytest.raises(PluginError, match="does not define processor/ghost") as info:
        registry.get("processor", "ghost")
    assert reference in str(info.value)
    assert not isinstance(info.value, PluginNotFoundError)


def test_broken_builtin_fails_on_get_not_on_construction() -> None:
    reference = "agentrt_test_no_such_module:plugin"
    registry = PluginRegistry(builtins=[("learner", "broken", reference)])
    assert registry.names("learner") == ["broken"]
    with pytest.raises(PluginError, match="cannot import plugin module") as info:
        registry.get("learner", "broken")
    assert reference in str(info.value)
    assert isinstance(info.value.__cause__, ImportError)


# --- module:attr references ------------------------------------------------------------------


def test_module_attr_reference_to_one_plugin(make_module: MakeModule) -> None:
    module = make_module()
    registry = PluginRegistry(enable=[f"{module}:plugin"], builtins=())
    plugin = registry.get("processor", "shaper")
    assert plugin is sys.modules[module].plugin
    assert registry.names("processor") == ["shaper"]


def test_module_attr_reference_to_a_list(make_module: MakeModule) -> None:
    module = make_module()
    registry = PluginRegistry(enable=[f"{module}:several", f"{module}:as_tuple"], builtins=())
    assert registry.names("analyzer") == ["trends"]
    assert registry.names("learner") == ["tiny"]
    assert registry.names("processor") == ["scaler"]
    assert registry.names("rollout") == ["blue_green"]
    assert registry.names("validator") == []
    assert registry.get("analyzer", "trends").factory() == "trends"


def test_dotted_attribute_path(make_module: MakeModule) -> None:
    module = make_module()
    registry = PluginRegistry(enable=[f"{module}:Namespace.plugin"], builtins=())
    assert registry.get("processor", "shaper").name == "shaper"


def test_enabling_the_same_reference_twice_is_harmless(make_module: MakeModule) -> None:
    module = make_module()
    registry = PluginRegistry(enable=[f"{module}:plugin", f"{module}:plugin"], builtins=())
    assert registry.names("processor") == ["shaper"]


def test_from_config_uses_plugins_enable(make_module: MakeModule) -> None:
    module = make_module()
    config = load_config({"plugins": {"enable": [f"{module}:several"]}})
    registry = PluginRegistry.from_config(config.plugins.enable)
    assert registry.get("learner", "tiny").name == "tiny"


@pytest.mark.parametrize(
    ("attribute", "expected"),
    [
        ("missing", "has no 'missing'"),
        ("Namespace.missing", "has no 'Namespace.missing'"),
        ("not_a_plugin", r"must point to an agentrt.plugins.Plugin or a list of them \(got int\)"),
        ("empty", r"\(got list\)"),
        ("mixed", r"\(got list\)"),
        ("text", r"\(got str\)"),
    ],
)
def test_bad_attribute_names_the_reference(
    make_module: MakeModule, attribute: str, expected: str
) -> None:
    module = make_module()
    reference = f"{module}:{attribute}"
    with pytest.raises(PluginError, match=expected) as info:
        PluginRegistry(enable=[reference], builtins=())
    assert repr(reference) in str(info.value)
    assert not isinstance(info.value, PluginNotFoundError)


def test_missing_module_names_the_reference() -> None:
    reference = "agentrt_test_no_such_module.sub:plugin"
    with pytest.raises(PluginError, match="cannot import plugin module") as info:
        PluginRegistry(enable=[reference], builtins=())
    assert reference in str(info.value)
    assert isinstance(info.value.__cause__, ImportError)


def test_module_whose_own_import_fails(make_module: MakeModule) -> None:
    module = make_module("import agentrt_test_missing_dependency\n")
    reference = f"{module}:plugin"
    with pytest.raises(PluginError, match="agentrt_test_missing_dependency") as info:
        PluginRegistry(enable=[reference], builtins=())
    assert reference in str(info.value)
    assert isinstance(info.value.__cause__, ModuleNotFoundError)


# --- lookup ----------------------------------------------------------------------------------


def test_unknown_name_lists_available_names_of_that_kind(make_module: MakeModule) -> None:
    enabled, builtin = make_module(), make_module()
    registry = PluginRegistry(
        enable=[f"{enabled}:several", f"{enabled}:plugin"],
        builtins=[("processor", "normalization", f"{builtin}:plugin")],
    )
    with pytest.raises(PluginNotFoundError) as info:
        registry.get("processor", "shapr")
    error = info.value
    assert (error.kind, error.name) == ("processor", "shapr")
    assert error.available == ["normalization", "scaler", "shaper"]
    assert "available processor plugins: normalization, scaler, shaper" in str(error)
    assert "trends" not in str(error)
    assert "tiny" not in str(error)
    # Listing the names did not import the built-in.
    assert builtin not in sys.modules


def test_unknown_name_of_an_empty_kind() -> None:
    registry = PluginRegistry(builtins=())
    with pytest.raises(PluginNotFoundError, match="available validator plugins: none"):
        registry.get("validator", "anything")
    assert registry.names("validator") == []


def test_same_name_in_different_kinds() -> None:
    registry = PluginRegistry(builtins=())
    registry.register(Plugin(kind="learner", name="shared", factory=list))
    registry.register(Plugin(kind="validator", name="shared", factory=dict))
    assert registry.get("learner", "shared").factory is list
    assert registry.get("validator", "shared").factory is dict


# --- create ----------------------------------------------------------------------------------


def test_create_calls_the_factory(make_module: MakeModule) -> None:
    module = make_module()
    registry = PluginRegistry(builtins=[("processor", "shaper", f"{module}:plugin")])
    created = registry.create("processor", "shaper", 1, scale=2.0)
    shaper_class = sys.modules[module].Shaper
    assert isinstance(created, shaper_class)
    assert created.args == (1,)
    assert created.kwargs == {"scale": 2.0}
    assert sys.modules[module].calls == [((1,), {"scale": 2.0})]
    other = registry.create("processor", "shaper")
    assert other is not created
    assert len(sys.modules[module].calls) == 2


def test_create_unknown_name() -> None:
    with pytest.raises(PluginNotFoundError):
        PluginRegistry(builtins=()).create("learner", "missing")


# --- name clashes ----------------------------------------------------------------------------


def test_third_party_cannot_replace_a_builtin(make_module: MakeModule) -> None:
    builtin, third_party = make_module(), make_module()
    builtins: list[tuple[PluginKind, str, str]] = [("processor", "shaper", f"{builtin}:plugin")]
    with pytest.raises(PluginError, match="would replace agentrt's built-in") as info:
        PluginRegistry(enable=[f"{third_party}:plugin"], builtins=builtins)
    assert "processor plugin 'shaper'" in str(info.value)
    assert "choose another name" in str(info.value)
    assert builtin not in sys.modules


def test_register_cannot_replace_a_builtin(make_module: MakeModule) -> None:
    builtin = make_module()
    registry = PluginRegistry(builtins=[("learner", "linear", f"{builtin}:plugin")])
    with pytest.raises(PluginError, match="would replace agentrt's built-in"):
        registry.register(Plugin(kind="learner", name="linear", factory=dict))
    assert builtin not in sys.modules


def test_register_cannot_replace_a_loaded_builtin(make_module: MakeModule) -> None:
    builtin = make_module()
    registry = PluginRegistry(builtins=[("processor", "shaper", f"{builtin}:plugin")])
    loaded = registry.get("processor", "shaper")
    with pytest.raises(PluginError, match="two processor plugins are named 'shaper'"):
        registry.register(Plugin(kind="processor", name="shaper", factory=dict))
    assert registry.get("processor", "shaper") is loaded


def test_two_third_party_plugins_with_one_name() -> None:
    registry = PluginRegistry(builtins=())
    registry.register(Plugin(kind="analyzer", name="trends", factory=list))
    with pytest.raises(PluginError, match="rename one of them"):
        registry.register(Plugin(kind="analyzer", name="trends", factory=dict))
    assert registry.get("analyzer", "trends").factory is list


# --- entry points ----------------------------------------------------------------------------


def test_entry_point_enabled_by_name(make_module: MakeModule, install: Install) -> None:
    module = make_module()
    install({"reward_shaping": f"{module}:plugin"})
    registry = PluginRegistry(enable=["reward_shaping"], builtins=())
    plugin = registry.get("processor", "shaper")
    assert plugin is sys.modules[module].plugin


def test_entry_point_to_a_list(make_module: MakeModule, install: Install) -> None:
    module = make_module()
    install({"agentrt_test_bundle": f"{module}:several"})
    registry = PluginRegistry(enable=["agentrt_test_bundle"], builtins=())
    assert registry.names("learner") == ["tiny"]
    assert registry.names("analyzer") == ["trends"]


def test_nothing_is_imported_for_plugins_not_enabled(
    make_module: MakeModule, install: Install
) -> None:
    wanted, unwanted, by_path = make_module(), make_module(), make_module()
    install({"wanted": f"{wanted}:plugin", "unwanted": f"{unwanted}:several"})

    PluginRegistry(builtins=())
    assert wanted not in sys.modules
    assert unwanted not in sys.modules

    registry = PluginRegistry(enable=["wanted"], builtins=())
    assert registry.names("processor") == ["shaper"]
    assert registry.names("learner") == []
    assert wanted in sys.modules
    assert unwanted not in sys.modules
    assert by_path not in sys.modules


def test_unknown_entry_point_lists_installed_names(
    make_module: MakeModule, install: Install
) -> None:
    module = make_module()
    install({"agentrt_test_alpha": f"{module}:plugin", "agentrt_test_beta": f"{module}:several"})
    with pytest.raises(PluginError) as info:
        PluginRegistry(enable=["agentrt_test_gamma"], builtins=())
    message = str(info.value)
    assert "'agentrt_test_gamma'" in message
    assert ENTRY_POINT_GROUP in message
    installed = message.split("(installed: ", 1)[1].split(")", 1)[0].split(", ")
    assert {"agentrt_test_alpha", "agentrt_test_beta"} <= set(installed)
    assert installed == sorted(installed)
    assert "module:attr" in message
    assert module not in sys.modules


def test_entry_point_in_another_group_is_not_a_plugin(site_dir: Path) -> None:
    info = site_dir / "agentrt_test_other-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: agentrt_test_other\nVersion: 1.0\n", encoding="utf-8"
    )
    (info / "entry_points.txt").write_text(
        "[console_scripts]\nagentrt_test_sneaky = agentrt_test_nowhere:main\n", encoding="utf-8"
    )
    importlib.invalidate_caches()
    with pytest.raises(PluginError, match="no installed package provides the entry point"):
        PluginRegistry(enable=["agentrt_test_sneaky"], builtins=())


def test_entry_point_whose_module_is_missing(install: Install) -> None:
    install({"agentrt_test_ghost": "agentrt_test_no_such_module:plugin"})
    with pytest.raises(
        PluginError, match="entry point 'agentrt_test_ghost' failed to load"
    ) as info:
        PluginRegistry(enable=["agentrt_test_ghost"], builtins=())
    assert isinstance(info.value.__cause__, ImportError)


def test_entry_point_whose_attribute_is_missing(make_module: MakeModule, install: Install) -> None:
    module = make_module()
    install({"agentrt_test_typo": f"{module}:plugn"})
    with pytest.raises(PluginError, match="entry point 'agentrt_test_typo' failed to load"):
        PluginRegistry(enable=["agentrt_test_typo"], builtins=())


def test_entry_point_to_something_else(make_module: MakeModule, install: Install) -> None:
    module = make_module()
    install({"agentrt_test_number": f"{module}:not_a_plugin"})
    with pytest.raises(PluginError, match=r"'agentrt_test_number' must point to .*\(got int\)"):
        PluginRegistry(enable=["agentrt_test_number"], builtins=())


def test_entry_point_cannot_replace_a_builtin(make_module: MakeModule, install: Install) -> None:
    builtin, third_party = make_module(), make_module()
    install({"agentrt_test_impostor": f"{third_party}:plugin"})
    with pytest.raises(PluginError, match="would replace agentrt's built-in"):
        PluginRegistry(
            enable=["agentrt_test_impostor"],
            builtins=[("processor", "shaper", f"{builtin}:plugin")],
        )
    assert builtin not in sys.modules
