"""``${VAR}`` interpolation of configuration strings, before validation."""

from __future__ import annotations

import pytest

from agentrt.errors import ConfigIssue
from agentrt.interpolation import interpolate


def resolve(tree: object, environ: dict[str, str]) -> tuple[object, list[ConfigIssue]]:
    issues: list[ConfigIssue] = []
    return interpolate(tree, environ, issues), issues


@pytest.mark.parametrize(
    ("text", "environ", "expected"),
    [
        ("${HOST}", {"HOST": "db.example"}, "db.example"),
        ("${HOST:-localhost}", {"HOST": "db.example"}, "db.example"),
        ("${HOST:-localhost}", {}, "localhost"),
        ("${HOST:-localhost}", {"HOST": ""}, "localhost"),
        ("${HOST-localhost}", {}, "localhost"),
        ("${HOST-localhost}", {"HOST": ""}, ""),
        ("${HOST-localhost}", {"HOST": "db.example"}, "db.example"),
        ("${PASSWORD:-}", {}, ""),
        ("${PASSWORD-}", {}, ""),
        ("${URL:-sqlite:///a.db}", {}, "sqlite:///a.db"),
        ("${HOST:-a b-c}", {}, "a b-c"),
    ],
)
def test_replaces_a_reference(text: str, environ: dict[str, str], expected: str) -> None:
    assert resolve(text, environ) == (expected, [])


def test_replaces_several_references_inside_one_string() -> None:
    text = "postgresql://${USER:-app}:${PASS}@${HOST:-127.0.0.1}:${PORT:-5432}/db"
    resolved, issues = resolve(text, {"PASS": "pw", "PORT": "6543"})
    assert resolved == "postgresql://app:pw@127.0.0.1:6543/db"
    assert issues == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$${HOST}", "${HOST}"),
        ("$${HOST:-x} is ${HOST}", "${HOST:-x} is db"),
        ("cost: $5", "cost: $5"),
        ("$HOST", "$HOST"),
        ("${1HOST}", "${1HOST}"),
        ("no references", "no references"),
    ],
)
def test_leaves_escapes_and_non_references_literal(text: str, expected: str) -> None:
    assert resolve(text, {"HOST": "db"}) == (expected, [])


def test_a_value_is_not_interpolated_again() -> None:
    resolved, issues = resolve("${A}", {"A": "${B}", "B": "nope"})
    assert resolved == "${B}"
    assert issues == []


def test_interpolates_inside_nested_mappings_and_lists() -> None:
    tree = {
        "database": {"url": "${URL:-sqlite:///x.db}", "pool_size": 5, "echo": False},
        "agents": {"router": {"actions": ["${FIRST}", "sql", None]}},
        "plugins": {"enable": [{"name": "${PLUGIN:-demo}"}]},
    }
    resolved, issues = resolve(tree, {"FIRST": "search"})
    assert resolved == {
        "database": {"url": "sqlite:///x.db", "pool_size": 5, "echo": False},
        "agents": {"router": {"actions": ["search", "sql", None]}},
        "plugins": {"enable": [{"name": "demo"}]},
    }
    assert issues == []


def test_does_not_modify_the_tree_it_is_given() -> None:
    tree = {"runtime": {"device": "${DEVICE}"}, "list": ["${DEVICE}"]}
    resolve(tree, {"DEVICE": "cpu"})
    assert tree == {"runtime": {"device": "${DEVICE}"}, "list": ["${DEVICE}"]}


def test_keys_are_not_interpolated() -> None:
    resolved, _ = resolve({"${KEY}": "v"}, {"KEY": "k"})
    assert resolved == {"${KEY}": "v"}


def test_an_unset_variable_without_default_is_an_issue_at_its_key_path() -> None:
    tree = {"database": {"url": "postgresql://${PGUSER}@h/db"}, "runtime": {"device": "cpu"}}
    resolved, issues = resolve(tree, {})
    assert [str(issue) for issue in issues] == [
        "database.url: environment variable PGUSER is not set and has no default "
        "(set it, or write ${PGUSER:-default})"
    ]
    assert issues[0].path == "database.url"
    assert issues[0].value == "postgresql://${PGUSER}@h/db"
    # The string is left as written, so later checks show what the file says.
    assert resolved == tree


def test_an_empty_variable_without_default_is_used_as_is() -> None:
    assert resolve("${PGPASSWORD}", {"PGPASSWORD": ""}) == ("", [])


def test_every_unset_variable_is_reported_with_list_indexes_in_the_path() -> None:
    tree = {"plugins": {"enable": ["ok", "${ONE}", "${TWO}"]}, "top": "${THREE}"}
    _, issues = resolve(tree, {})
    assert [issue.path for issue in issues] == ["plugins.enable[1]", "plugins.enable[2]", "top"]
    assert [issue.message.split(" is not set")[0] for issue in issues] == [
        "environment variable ONE",
        "environment variable TWO",
        "environment variable THREE",
    ]


@pytest.mark.parametrize("value", [5, 1.5, True, None])
def test_non_strings_pass_through(value: object) -> None:
    assert resolve(value, {}) == (value, [])
