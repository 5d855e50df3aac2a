"""agentrt.errors: the one hierarchy, the data each error carries, and messages that guide."""

from __future__ import annotations

import pytest

import agentrt.errors as errors_module
from agentrt.errors import (
    AgentRTError,
    ArtifactIntegrityError,
    BackpressureError,
    ConfigError,
    ConfigIssue,
    InvalidInputError,
    PluginError,
    PluginNotFoundError,
    PolicyError,
    SchemaOutdatedError,
    StorageError,
    TrainingProcessError,
    UnknownActionError,
    UnknownDecisionError,
)

# (error, its direct agentrt parent) exactly as STYLE.md draws the tree.
HIERARCHY: list[tuple[type[AgentRTError], type[Exception]]] = [
    (ConfigError, AgentRTError),
    (InvalidInputError, AgentRTError),
    (UnknownActionError, InvalidInputError),
    (UnknownDecisionError, InvalidInputError),
    (BackpressureError, AgentRTError),
    (StorageError, AgentRTError),
    (SchemaOutdatedError, StorageError),
    (PluginError, AgentRTError),
    (PluginNotFoundError, PluginError),
    (PolicyError, AgentRTError),
    (ArtifactIntegrityError, PolicyError),
    (TrainingProcessError, PolicyError),
]


def _exception_classes() -> list[type[BaseException]]:
    found = []
    for name in errors_module.__all__:
        obj = getattr(errors_module, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            found.append(obj)
    return found


def test_agentrt_error_is_a_plain_exception() -> None:
    assert AgentRTError.__bases__ == (Exception,)
    assert not issubclass(AgentRTError, ValueError)


@pytest.mark.parametrize(("error", "parent"), HIERARCHY, ids=lambda value: value.__name__)
def test_each_error_sits_under_its_parent(
    error: type[AgentRTError], parent: type[Exception]
) -> None:
    assert issubclass(error, parent)
    assert issubclass(error, AgentRTError)
    assert parent in error.__mro__[1:]


def test_every_exported_exception_is_in_the_tree() -> None:
    exported = set(_exception_classes())
    assert exported == {AgentRTError, *(error for error, _ in HIERARCHY)}


@pytest.mark.parametrize(
    "error",
    [ConfigError, InvalidInputError, UnknownActionError, UnknownDecisionError],
    ids=lambda value: value.__name__,
)
def test_value_errors(error: type[AgentRTError]) -> None:
    # Callers' existing `except ValueError` handlers keep working.
    assert issubclass(error, ValueError)


@pytest.mark.parametrize(
    "error",
    [
        BackpressureError,
        StorageError,
        SchemaOutdatedError,
        PluginError,
        PolicyError,
        ArtifactIntegrityError,
        TrainingProcessError,
    ],
    ids=lambda value: value.__name__,
)
def test_runtime_errors_are_not_value_errors(error: type[AgentRTError]) -> None:
    assert not issubclass(error, ValueError)


def test_plugin_not_found_is_also_a_lookup_error() -> None:
    assert issubclass(PluginNotFoundError, LookupError)
    assert not issubclass(PluginError, LookupError)


def test_sibling_branches_do_not_catch_each_other() -> None:
    assert not issubclass(SchemaOutdatedError, PluginError)
    assert not issubclass(ArtifactIntegrityError, StorageError)
    assert not issubclass(UnknownActionError, ConfigError)
    assert not issubclass(PluginNotFoundError, InvalidInputError)


# --- ConfigIssue and ConfigError -----------------------------------------------------------


def test_config_issue_renders_path_and_message() -> None:
    issue = ConfigIssue("runtime.buffer_size", "must be > 0 (got -1)", -1)
    assert str(issue) == "runtime.buffer_size: must be > 0 (got -1)"
    assert issue.path == "runtime.buffer_size"
    assert issue.message == "must be > 0 (got -1)"
    assert issue.value == -1
    assert repr(issue) == (
        "ConfigIssue(path='runtime.buffer_size', message='must be > 0 (got -1)', value=-1)"
    )


def test_config_issue_without_path_is_just_the_message() -> None:
    assert str(ConfigIssue("", "the configuration must be a mapping of sections")) == (
        "the configuration must be a mapping of sections"
    )


def test_config_issues_compare_by_path_and_message() -> None:
    first = ConfigIssue("a.b", "bad", 1)
    same = ConfigIssue("a.b", "bad", 2)
    other = ConfigIssue("a.c", "bad", 1)
    assert first == same
    assert hash(first) == hash(same)
    assert first != other
    assert first != "a.b: bad"
    assert len({first, same, other}) == 2


def test_config_error_lists_every_issue_one_line_each() -> None:
    issues = [
        ConfigIssue("pipeline.updater.learners[0].lr", "must be > 0 (got -1)", -1),
        ConfigIssue("runtime.durabilty", "unknown key; did you mean 'durability'?", "sync"),
    ]
    error = ConfigError(issues, source="config/agentrt.yaml")

    assert error.issues == issues
    assert error.source == "config/agentrt.yaml"
    assert error.lines == [
        "pipeline.updater.learners[0].lr: must be > 0 (got -1)",
        "runtime.durabilty: unknown key; did you mean 'durability'?",
    ]
    assert str(error).splitlines() == [
        "2 configuration problems in config/agentrt.yaml:",
        "  pipeline.updater.learners[0].lr: must be > 0 (got -1)",
        "  runtime.durabilty: unknown key; did you mean 'durability'?",
    ]


def test_config_error_with_one_issue_and_no_source() -> None:
    error = ConfigError([ConfigIssue("database.url", "must be a database URL")])
    assert error.source is None
    assert str(error).splitlines() == [
        "1 configuration problem:",
        "  database.url: must be a database URL",
    ]


def test_config_error_copies_the_issues() -> None:
    issues = [ConfigIssue("a", "bad")]
    error = ConfigError(issues)
    issues.append(ConfigIssue("b", "bad"))
    assert len(error.issues) == 1


def test_config_error_is_caught_as_value_error() -> None:
    with pytest.raises(ValueError, match=r"runtime\.seed: must be an integer"):
        raise ConfigError([ConfigIssue("runtime.seed", "must be an integer")])


# --- InvalidInputError -----------------------------------------------------------------------


def test_invalid_input_names_field_value_and_problem() -> None:
    error = InvalidInputError("propensity", 1.5, "must be in (0, 1]")
    assert error.field == "propensity"
    assert error.value == 1.5
    assert error.problem == "must be in (0, 1]"
    assert str(error) == "propensity: must be in (0, 1] (got 1.5)"


def test_invalid_input_truncates_long_values_but_keeps_them_whole() -> None:
    value = "x" * 500
    error = InvalidInputError("context", value, "is too large")
    message = str(error)
    assert message.startswith("context: is too large (got 'xxx")
    assert message.endswith("...)")
    assert len(message) < 200
    assert error.value == value


@pytest.mark.parametrize("error", [UnknownActionError, UnknownDecisionError])
def test_unknown_errors_carry_the_same_data(error: type[InvalidInputError]) -> None:
    raised = error("action", "teleport", "is not one of search, sql, ask_human")
    assert isinstance(raised, InvalidInputError)
    assert isinstance(raised, ValueError)
    assert (raised.field, raised.value) == ("action", "teleport")
    assert str(raised) == "action: is not one of search, sql, ask_human (got 'teleport')"


# --- StorageError ---------------------------------------------------------------------------


def test_storage_error_says_whether_a_retry_may_help() -> None:
    assert StorageError("database x: refused").transient is False
    lost = StorageError("database x: connection lost", transient=True)
    assert lost.transient is True
    assert str(lost) == "database x: connection lost"


# --- SchemaOutdatedError ---------------------------------------------------------------------


def test_schema_outdated_names_revisions_and_the_command_to_run() -> None:
    error = SchemaOutdatedError("0001", "0002", "postgresql+asyncpg://app:***@db/prod")
    assert (error.current, error.head, error.url) == (
        "0001",
        "0002",
        "postgresql+asyncpg://app:***@db/prod",
    )
    message = str(error)
    assert "postgresql+asyncpg://app:***@db/prod" in message
    assert "revision 0001" in message
    assert "needs revision 0002" in message
    assert "run `agentrt db upgrade`" in message
    assert "runtime.auto_migrate: true" in message
    assert isinstance(error, StorageError)
    assert error.transient is False


def test_schema_outdated_on_an_empty_database() -> None:
    error = SchemaOutdatedError(None, "0001", "sqlite+aiosqlite:///agentrt.db")
    assert error.current is None
    assert "has no agentrt schema" in str(error)


# --- PluginNotFoundError ---------------------------------------------------------------------


def test_plugin_not_found_lists_what_is_available() -> None:
    error = PluginNotFoundError("learner", "dqnn", ["dqn", "linear"])
    assert (error.kind, error.name, error.available) == ("learner", "dqnn", ["dqn", "linear"])
    message = str(error)
    assert "no learner plugin named 'dqnn'" in message
    assert "available learner plugins: dqn, linear" in message
    assert "plugins.enable" in message


def test_plugin_not_found_when_nothing_is_available() -> None:
    error = PluginNotFoundError("rollout", "canary2", [])
    assert error.available == []
    assert "available rollout plugins: none" in str(error)


def test_plugin_not_found_is_caught_as_plugin_error() -> None:
    with pytest.raises(PluginError, match="no validator plugin named 'x'"):
        raise PluginNotFoundError("validator", "x", ())


@pytest.mark.parametrize(
    "error",
    [BackpressureError, StorageError, PluginError, PolicyError, ArtifactIntegrityError],
    ids=lambda value: value.__name__,
)
def test_plain_errors_keep_their_message(error: type[AgentRTError]) -> None:
    raised = error("run `agentrt db upgrade`")
    assert str(raised) == "run `agentrt db upgrade`"
    assert isinstance(raised, AgentRTError)
