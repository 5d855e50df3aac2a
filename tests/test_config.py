"""Loading and validating configuration files: ``load_config`` and the one-line problem reports."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from agentrt.config import (
    AgentRTConfig,
    DatabaseConfig,
    ExplorationConfig,
    load_config,
    mask_url,
    masked_dump,
)
from agentrt.errors import AgentRTError, ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
CONFIG_FILES = sorted(CONFIG_DIR.glob("*.yaml"))

WriteYaml = Callable[[str], Path]


@pytest.fixture
def write_yaml(tmp_path: Path) -> WriteYaml:
    """Write YAML text to a file in the test's directory and return its path."""

    def write(text: str) -> Path:
        path = tmp_path / "agentrt.yaml"
        path.write_text(text, encoding="utf-8")
        return path

    return write


def problems(source: Any, overrides: dict[str, Any] | None = None, **environ: str) -> list[str]:
    """The lines of the ConfigError that loading ``source`` raises."""
    with pytest.raises(ConfigError) as caught:
        load_config(source, overrides, environ=environ)
    return caught.value.lines


# --- the shipped files ---------------------------------------------------------------------


def test_the_config_directory_has_files() -> None:
    assert {path.name for path in CONFIG_FILES} >= {"agentrt.yaml", "full.yaml", "postgres.yaml"}


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda path: path.name)
def test_every_shipped_file_validates(path: Path) -> None:
    config = load_config(path, environ={})
    assert isinstance(config, AgentRTConfig)
    for agent in config.agents.values():
        assert agent.model is None or agent.model in config.model_configuration.learning_models


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda path: path.name)
def test_every_shipped_file_survives_a_show_and_reload(path: Path) -> None:
    config = load_config(path, environ={})
    dumped = masked_dump(config)
    reloaded = load_config(yaml.safe_load(yaml.safe_dump(dumped, sort_keys=False)), environ={})
    # Only a masked password can differ; everything else reads back as it was.
    assert masked_dump(reloaded) == dumped
    assert reloaded.model_dump(exclude={"database": {"url"}}) == config.model_dump(
        exclude={"database": {"url"}}
    )


def key_paths(tree: object, prefix: str = "") -> set[str]:
    """Dotted paths of every key, with user-chosen agent and model names as ``*``."""
    if not isinstance(tree, dict):
        return set()
    named = prefix in ("agents", "model_configuration.learning_models")
    paths: set[str] = set()
    for key, value in tree.items():
        path = f"{prefix}.{'*' if named else key}" if prefix else str(key)
        paths |= {path, *key_paths(value, path)}
    return paths


def test_the_full_file_lists_every_key() -> None:
    path = CONFIG_DIR / "full.yaml"
    written = yaml.safe_load(path.read_text(encoding="utf-8"))
    resolved = masked_dump(load_config(path, environ={}))
    assert key_paths(resolved) - key_paths(written) == set()


def test_the_default_file_uses_sqlite_unless_the_environment_says_otherwise() -> None:
    path = CONFIG_DIR / "agentrt.yaml"
    assert load_config(path, environ={}).database.url == "sqlite+aiosqlite:///agentrt.db"
    moved = load_config(path, environ={"AGENTRT_DATABASE_URL": "sqlite:///elsewhere.db"})
    assert moved.database.url == "sqlite+aiosqlite:///elsewhere.db"


def test_the_postgres_file_defaults_every_connection_setting() -> None:
    config = load_config(CONFIG_DIR / "postgres.yaml", environ={})
    assert config.database.url == "postgresql+asyncpg://postgres:@127.0.0.1:5432/agentrt"
    assert not config.database.is_sqlite
    assert config.runtime.durability == "sync"
    assert config.runtime.flush_interval == timedelta(milliseconds=50)
    assert config.experience_configuration.retention.duration == timedelta(days=90)


def test_the_postgres_file_takes_connection_settings_from_the_environment() -> None:
    environ = {
        "PGUSER": "app",
        "PGPASSWORD": "s3cret",
        "PGHOST": "db.internal",
        "PGPORT": "6543",
        "PGDATABASE": "prod",
    }
    config = load_config(CONFIG_DIR / "postgres.yaml", environ=environ)
    assert config.database.url == "postgresql+asyncpg://app:s3cret@db.internal:6543/prod"
    assert masked_dump(config)["database"]["url"] == (
        "postgresql+asyncpg://app:***@db.internal:6543/prod"
    )


# --- sources -------------------------------------------------------------------------------


def test_no_source_gives_the_defaults() -> None:
    config = load_config(environ={})
    assert config == AgentRTConfig()
    assert config.database.url == "sqlite+aiosqlite:///agentrt.db"
    assert config.runtime.durability == "buffered"
    assert config.runtime.flush_interval == timedelta(milliseconds=100)
    assert config.agents == {}


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n"])
def test_an_empty_file_gives_the_defaults(write_yaml: WriteYaml, text: str) -> None:
    assert load_config(write_yaml(text), environ={}) == AgentRTConfig()


def test_a_path_given_as_a_string_is_read(write_yaml: WriteYaml) -> None:
    path = write_yaml("runtime: {durability: sync}\n")
    assert load_config(str(path), environ={}).runtime.durability == "sync"


def test_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTRT_TEST_DEVICE", "cuda:1")
    config = load_config({"runtime": {"device": "${AGENTRT_TEST_DEVICE}"}})
    assert config.runtime.device == "cuda:1"


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert caught.value.source == str(path)
    assert caught.value.lines == ["cannot read the file: No such file or directory"]
    assert str(path) in str(caught.value)


# --- one line per problem ------------------------------------------------------------------


def test_an_unknown_key_suggests_the_closest_and_lists_the_allowed_keys() -> None:
    assert problems({"runtime": {"durabilty": "sync"}}) == [
        "runtime.durabilty: unknown key; did you mean 'durability'? allowed keys: "
        "auto_migrate, backpressure, buffer_size, device, durability, flush_interval, "
        "max_context_bytes, pipeline, policy_refresh_interval, retention_interval, seed, "
        "shutdown_timeout, spill_dir, training, trigger_check_interval"
    ]


def test_an_unknown_section_lists_the_sections() -> None:
    assert problems({"runtme": {}}) == [
        "runtme: unknown key; did you mean 'runtime'? allowed keys: agents, database, "
        "experience_configuration, logging, model_configuration, optimization_parameters, "
        "performance_metrics, plugins, runtime"
    ]


def test_an_unknown_key_far_from_any_allowed_one_has_no_suggestion() -> None:
    (line,) = problems({"logging": {"zzz": 1}})
    assert line == "logging.zzz: unknown key; allowed keys: format, level"


def test_an_unknown_key_deep_in_a_section_names_its_whole_path() -> None:
    (line,) = problems(
        {
            "performance_metrics": {
                "learning_metrics": {
                    "model_performance": {
                        "accuracy": {"type": "percentage", "threshold": 0.9, "treshold": 1}
                    }
                }
            }
        }
    )
    assert line == (
        "performance_metrics.learning_metrics.model_performance.accuracy.treshold: "
        "unknown key; did you mean 'threshold'? allowed keys: threshold, type"
    )


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (
            {"agents": {"router": {"actons": []}}},
            "agents.router.actons: unknown key; did you mean 'actions'? allowed keys: "
            "actions, baseline, exploration, features, learner, mode, model, reward, rollout, "
            "shadow, training, trigger, validation",
        ),
        (
            {"agents": {"router": {"rollout": {"strategi": "canary"}}}},
            "agents.router.rollout.strategi: unknown key; did you mean 'strategy'? "
            "allowed keys: confidence, fraction, min_decisions, min_duration, strategy",
        ),
        (
            {
                "model_configuration": {
                    "learning_models": {"m": {"type": "contextual_bandit", "parameterz": {}}}
                }
            },
            "model_configuration.learning_models.m.parameterz: unknown key; did you mean "
            "'parameters'? allowed keys: architecture, optimization, parameters, type",
        ),
    ],
)
def test_an_unknown_key_inside_a_named_entry_gets_the_hint(
    source: dict[str, Any], expected: str
) -> None:
    assert problems(source) == [expected]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (
            {"runtime": {"buffer_size": "lots"}},
            "runtime.buffer_size: must be an integer (got 'lots')",
        ),
        (
            {"runtime": {"buffer_size": 1.5}},
            "runtime.buffer_size: must be a whole number (got 1.5)",
        ),
        ({"database": {"echo": "loud"}}, "database.echo: must be true or false (got 'loud')"),
        (
            {"agents": {"router": {"actions": "search"}}},
            "agents.router.actions: must be a list (got 'search')",
        ),
        (
            {"agents": {"router": {"actions": ["search", 7]}}},
            "agents.router.actions[1]: must be a string (got 7)",
        ),
        (
            {
                "model_configuration": {
                    "learning_models": {
                        "m": {"type": "contextual_bandit", "parameters": {"learning_rate": "fast"}}
                    }
                }
            },
            "model_configuration.learning_models.m.parameters.learning_rate: "
            "must be a number (got 'fast')",
        ),
        ({"agents": ["router"]}, "agents: must be a mapping"),
    ],
)
def test_a_wrong_type_names_the_path_and_the_value(source: dict[str, Any], expected: str) -> None:
    assert problems(source) == [expected]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (
            {"agents": {"router": {"exploration": {"epsilon": 1.5}}}},
            "agents.router.exploration.epsilon: must be between 0 and 1, in [0, 1] (got 1.5)",
        ),
        (
            {"agents": {"router": {"rollout": {"fraction": 1}}}},
            "agents.router.rollout.fraction: must be between 0 and 1, in (0, 1) (got 1)",
        ),
        ({"database": {"pool_size": 0}}, "database.pool_size: must be > 0 (got 0)"),
        ({"database": {"max_overflow": -1}}, "database.max_overflow: must be >= 0 (got -1)"),
        (
            {"runtime": {"flush_interval": "0s"}},
            "runtime.flush_interval: must be a duration greater than zero, such as 100ms or 30s "
            "(got '0s')",
        ),
    ],
)
def test_a_value_out_of_range_names_the_bounds(source: dict[str, Any], expected: str) -> None:
    assert problems(source) == [expected]


def test_a_bad_duration_shows_the_accepted_forms() -> None:
    assert problems({"runtime": {"flush_interval": "30x"}}) == [
        "runtime.flush_interval: must be a duration such as 100ms, 30s, 5m, 2h or 30d (got '30x')"
    ]


def test_an_unknown_literal_value_lists_the_choices() -> None:
    assert problems({"runtime": {"durability": "fast"}}) == [
        "runtime.durability: must be one of 'sync' or 'buffered' (got 'fast')"
    ]


def test_an_invalid_device_says_what_is_accepted() -> None:
    assert problems({"runtime": {"device": "gpu"}}) == [
        "runtime.device: must be auto, cpu, cuda or cuda:N (got 'gpu')"
    ]


def test_a_missing_required_key_is_reported() -> None:
    source = {"model_configuration": {"learning_models": {"m": {"architecture": "mlp"}}}}
    assert problems(source) == [
        "model_configuration.learning_models.m.type: required key is missing"
    ]


def test_a_missing_variable_is_reported_at_the_key_holding_the_reference() -> None:
    lines = problems({"runtime": {"spill_dir": "/var/${SPOOL_ROOT}/agentrt"}})
    assert lines == [
        "runtime.spill_dir: environment variable SPOOL_ROOT is not set and has no default "
        "(set it, or write ${SPOOL_ROOT:-default})"
    ]


def test_a_missing_variable_in_a_list_names_the_index() -> None:
    lines = problems({"agents": {"router": {"actions": ["search", "${SECOND}"]}}})
    assert (
        "agents.router.actions[1]: environment variable SECOND is not set and has no default "
        "(set it, or write ${SECOND:-default})"
    ) in lines


def test_invalid_yaml_names_the_line_and_column(write_yaml: WriteYaml) -> None:
    path = write_yaml("runtime:\n  durability: sync\n  device: [cpu\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    (line,) = caught.value.lines
    assert line.startswith("line 4, column 1: invalid YAML: ")
    assert caught.value.source == str(path)
    assert isinstance(caught.value.__cause__, yaml.YAMLError)


def test_a_tab_indent_is_reported_where_it_is(write_yaml: WriteYaml) -> None:
    (line,) = problems(write_yaml("runtime:\n\tdurability: sync\n"))
    assert line.startswith("line 2, column 1: invalid YAML: ")


def test_python_tags_are_refused(write_yaml: WriteYaml) -> None:
    (line,) = problems(write_yaml("runtime:\n  seed: !!python/object/apply:os.getpid []\n"))
    assert line.startswith("line 2, column 9: invalid YAML: ")


@pytest.mark.parametrize("text", ["- runtime\n- database\n", "just a string\n", "42\n"])
def test_the_top_level_must_be_a_mapping(write_yaml: WriteYaml, text: str) -> None:
    assert problems(write_yaml(text)) == ["the configuration must be a mapping of sections"]


def test_an_agent_model_must_name_a_learning_model() -> None:
    source = {
        "agents": {"router": {"model": "router_modle"}},
        "model_configuration": {
            "learning_models": {
                "router_model": {"type": "contextual_bandit"},
                "episode_model": {"type": "reinforcement_learning"},
            }
        },
    }
    assert problems(source) == [
        "agents.router.model: no model_configuration.learning_models entry named "
        "'router_modle' (defined: router_model, episode_model)"
    ]


def test_an_agent_model_with_no_learning_models_at_all() -> None:
    assert problems({"agents": {"router": {"model": "m"}}}) == [
        "agents.router.model: no model_configuration.learning_models entry named 'm' "
        "(defined: none defined)"
    ]


# --- every problem at once -----------------------------------------------------------------


def test_every_problem_in_a_file_is_reported_in_one_error(write_yaml: WriteYaml) -> None:
    path = write_yaml(
        "runtime:\n"
        "  durabilty: sync\n"
        "  flush_interval: 30x\n"
        "database:\n"
        "  url: ${DB_URL}\n"
        "  pool_size: 0\n"
        "agents:\n"
        "  router:\n"
        "    model: missing_model\n"
        "    exploration: {epsilon: 1.5}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    error = caught.value
    expected = [
        "database.url: environment variable DB_URL is not set and has no default "
        "(set it, or write ${DB_URL:-default})",
        "runtime.durabilty: unknown key; did you mean 'durability'?",
        "runtime.flush_interval: must be a duration such as 100ms, 30s, 5m, 2h or 30d (got '30x')",
        "database.pool_size: must be > 0 (got 0)",
        "agents.router.exploration.epsilon: must be between 0 and 1, in [0, 1] (got 1.5)",
        "agents.router.model: no model_configuration.learning_models entry named "
        "'missing_model' (defined: none defined)",
    ]
    for wanted in expected:
        assert any(line.startswith(wanted) for line in error.lines), wanted
    assert len(error.lines) == len(set(error.lines))
    # The message is a header naming the file, then one indented line per problem.
    message = str(error).splitlines()
    assert message[0] == f"{len(error.lines)} configuration problems in {path}:"
    assert message[1:] == [f"  {line}" for line in error.lines]
    assert [issue.path for issue in error.issues if issue.path == "runtime.flush_interval"]
    assert error.source == str(path)


def test_a_config_error_is_a_value_error_and_an_agentrt_error() -> None:
    with pytest.raises(ValueError, match=r"runtime\.durability") as caught:
        load_config({"runtime": {"durability": "fast"}}, environ={})
    assert isinstance(caught.value, ConfigError)
    assert isinstance(caught.value, AgentRTError)


def test_an_issue_carries_its_path_and_value() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config({"runtime": {"flush_interval": "30x"}}, environ={})
    (issue,) = caught.value.issues
    assert (issue.path, issue.value) == ("runtime.flush_interval", "30x")
    assert str(caught.value).startswith("1 configuration problem:\n")


# --- interpolation through load_config -----------------------------------------------------


def test_a_whole_number_from_a_variable_becomes_an_int() -> None:
    config = load_config({"database": {"pool_size": "${POOL:-7}"}}, environ={})
    assert config.database.pool_size == 7
    assert type(config.database.pool_size) is int
    assert (
        load_config(
            {"database": {"pool_size": "${POOL:-7}"}}, environ={"POOL": "12"}
        ).database.pool_size
        == 12
    )


def test_numbers_and_booleans_from_variables_are_validated() -> None:
    source = {
        "database": {"echo": "${ECHO:-false}"},
        "agents": {"router": {"exploration": {"epsilon": "${EPSILON}", "floor": "0"}}},
    }
    config = load_config(source, environ={"ECHO": "true", "EPSILON": "0.25"})
    assert config.database.echo is True
    assert config.exploration_for("router").epsilon == 0.25
    assert problems(source, EPSILON="lots") == [
        "agents.router.exploration.epsilon: must be a number (got 'lots')"
    ]


def test_colon_dash_and_dash_differ_on_an_empty_variable() -> None:
    source = {"runtime": {"device": "${DEVICE:-cpu}", "spill_dir": "${SPILL-spill}"}}
    config = load_config(source, environ={"DEVICE": "", "SPILL": ""})
    assert config.runtime.device == "cpu"
    assert config.runtime.spill_dir == ""
    unset = load_config(source, environ={})
    assert unset.runtime.spill_dir == "spill"


def test_an_escaped_reference_stays_literal() -> None:
    config = load_config({"runtime": {"spill_dir": "/data/$${HOME}"}}, environ={"HOME": "/root"})
    assert config.runtime.spill_dir == "/data/${HOME}"


def test_interpolates_inside_lists_and_nested_mappings(write_yaml: WriteYaml) -> None:
    path = write_yaml(
        "agents:\n"
        "  router:\n"
        "    actions: ['${FIRST:-search}', sql, '${THIRD}']\n"
        "    baseline: {policy: fixed, action: '${FALLBACK:-sql}'}\n"
        "plugins:\n"
        "  enable: ['${PLUGIN:-agentrt_demo}']\n"
    )
    config = load_config(path, environ={"THIRD": "ask_human"})
    assert config.agents["router"].actions == ["search", "sql", "ask_human"]
    assert config.agents["router"].baseline.action == "sql"
    assert config.plugins.enable == ["agentrt_demo"]


# --- overrides -----------------------------------------------------------------------------


def test_a_nested_override_merges_key_by_key() -> None:
    source = {"runtime": {"durability": "sync", "seed": 3, "device": "cpu"}}
    config = load_config(source, {"runtime": {"durability": "buffered"}}, environ={})
    assert config.runtime.durability == "buffered"
    assert config.runtime.seed == 3
    assert config.runtime.device == "cpu"


def test_a_nested_override_merges_at_every_depth() -> None:
    source = {"agents": {"router": {"actions": ["a", "b"], "reward": {"combine": "sum"}}}}
    overrides = {"agents": {"router": {"reward": {"combine": "max"}}}}
    router = load_config(source, overrides, environ={}).agents["router"]
    assert router.actions == ["a", "b"]
    assert router.reward.combine == "max"


def test_a_dotted_override_addresses_a_nested_key(write_yaml: WriteYaml) -> None:
    path = write_yaml("runtime:\n  durability: sync\n  seed: 3\n")
    overrides = {"runtime.durability": "buffered", "agents.router.actions": ["x", "y"]}
    config = load_config(path, overrides, environ={})
    assert config.runtime.durability == "buffered"
    assert config.runtime.seed == 3
    assert config.agents["router"].actions == ["x", "y"]


def test_an_override_replaces_a_list_whole() -> None:
    source = {"agents": {"router": {"actions": ["a", "b", "c"]}}}
    config = load_config(source, {"agents.router.actions": ["z"]}, environ={})
    assert config.agents["router"].actions == ["z"]


def test_an_invalid_override_is_reported_like_a_file_value() -> None:
    assert problems({}, {"runtime.durability": "fast"}) == [
        "runtime.durability: must be one of 'sync' or 'buffered' (got 'fast')"
    ]


def test_overrides_leave_the_source_mapping_unchanged() -> None:
    source = {"runtime": {"durability": "sync"}, "agents": {"router": {"actions": ["a"]}}}
    load_config(source, {"runtime": {"durability": "buffered"}, "agents.router.mode": "shadow"})
    assert source == {"runtime": {"durability": "sync"}, "agents": {"router": {"actions": ["a"]}}}


# --- database URLs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("sqlite://", "sqlite+aiosqlite://"),
        ("postgresql://app:pw@db:5432/agentrt", "postgresql+asyncpg://app:pw@db:5432/agentrt"),
        ("postgres://app:pw@db/agentrt", "postgresql+asyncpg://app:pw@db/agentrt"),
        ("postgresql+asyncpg://app@db/agentrt", "postgresql+asyncpg://app@db/agentrt"),
    ],
)
def test_a_database_url_gets_its_async_driver(url: str, expected: str) -> None:
    config = load_config({"database": {"url": url}}, environ={})
    assert config.database.url == expected
    assert config.database.is_sqlite == expected.startswith("sqlite")


def test_the_database_model_normalises_on_its_own() -> None:
    assert DatabaseConfig(url="postgres://u@h/db").url == "postgresql+asyncpg://u@h/db"


@pytest.mark.parametrize(
    "url", ["mysql://app:hunter2@db/agentrt", "mysql+aiomysql://app:hunter2@db/agentrt"]
)
def test_an_unsupported_driver_is_refused_with_the_password_masked(url: str) -> None:
    (line,) = problems({"database": {"url": url}})
    assert line.startswith("database.url: unsupported database driver 'mysql")
    assert "sqlite+aiosqlite:///FILE" in line
    assert "postgresql+asyncpg://" in line
    assert "app:***@db" in line
    assert "hunter2" not in line


def test_a_string_that_is_not_a_url_is_refused() -> None:
    assert problems({"database": {"url": "agentrt.db"}}) == [
        "database.url: must be a database URL such as sqlite:///agentrt.db (got 'agentrt.db')"
    ]


def test_a_url_with_a_bad_port_is_reported_without_the_password() -> None:
    lines = problems({"database": {"url": "postgresql://app:hunter2@db:port/agentrt"}})
    assert [line.split(":")[0] for line in lines] == ["database.url"]
    assert "hunter2" not in "\n".join(lines)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "postgresql+asyncpg://app:hunter2@db:5432/agentrt",
            "postgresql+asyncpg://app:***@db:5432/agentrt",
        ),
        ("postgresql+asyncpg://app@db/agentrt", "postgresql+asyncpg://app@db/agentrt"),
        ("sqlite+aiosqlite:///agentrt.db", "sqlite+aiosqlite:///agentrt.db"),
        ("not a url://app:hunter2@db", "not a url://app:***@db"),
    ],
)
def test_mask_url_hides_only_the_password(url: str, expected: str) -> None:
    assert mask_url(url) == expected


def test_masked_dump_hides_the_password_and_keeps_the_rest() -> None:
    config = load_config({"database": {"url": "postgres://app:hunter2@db/agentrt"}}, environ={})
    dumped = masked_dump(config)
    assert dumped["database"]["url"] == "postgresql+asyncpg://app:***@db/agentrt"
    assert "hunter2" not in yaml.safe_dump(dumped)
    # The configuration itself keeps the real password for connecting.
    assert config.database.url == "postgresql+asyncpg://app:hunter2@db/agentrt"


def test_masked_dump_keeps_entries_whose_names_look_secret() -> None:
    config = load_config(
        {
            "agents": {"token_router": {"actions": ["a"]}},
            "model_configuration": {
                "learning_models": {"secret_model": {"type": "contextual_bandit"}}
            },
        },
        environ={},
    )
    dumped = masked_dump(config)
    assert dumped["agents"]["token_router"]["actions"] == ["a"]
    assert dumped["model_configuration"]["learning_models"]["secret_model"]["type"] == (
        "contextual_bandit"
    )


# --- agents --------------------------------------------------------------------------------


def test_baseline_uniform_shorthand() -> None:
    config = load_config({"agents": {"r": {"actions": ["a", "b"], "baseline": "uniform"}}})
    baseline = config.agents["r"].baseline
    assert (baseline.policy, baseline.action) == ("uniform", None)


def test_baseline_action_shorthand_means_fixed() -> None:
    config = load_config({"agents": {"r": {"actions": ["search", "sql"], "baseline": "search"}}})
    baseline = config.agents["r"].baseline
    assert (baseline.policy, baseline.action) == ("fixed", "search")


def test_baseline_mapping_form() -> None:
    source = {
        "agents": {
            "r": {"actions": ["search", "sql"], "baseline": {"policy": "fixed", "action": "sql"}}
        }
    }
    baseline = load_config(source, environ={}).agents["r"].baseline
    assert (baseline.policy, baseline.action) == ("fixed", "sql")


def test_a_fixed_baseline_needs_an_action() -> None:
    assert problems({"agents": {"r": {"baseline": {"policy": "fixed"}}}}) == [
        "agents.r.baseline: a fixed baseline needs `action`, the default action's name"
    ]


def test_a_fixed_baseline_must_be_one_of_the_actions() -> None:
    assert problems({"agents": {"r": {"actions": ["search", "sql"], "baseline": "ask_human"}}}) == [
        "agents.r: baseline action 'ask_human' is not one of the agent's actions (search, sql)"
    ]


def test_a_fixed_baseline_is_free_when_actions_come_per_call() -> None:
    config = load_config({"agents": {"r": {"baseline": "anything"}}}, environ={})
    assert config.agents["r"].actions == []
    assert config.agents["r"].baseline.action == "anything"


def test_duplicate_actions_are_refused() -> None:
    assert problems({"agents": {"r": {"actions": ["sql", "search", "sql", "search", "x"]}}}) == [
        "agents.r.actions: action names must be unique; repeated: search, sql"
    ]


def test_a_wait_window_needs_a_default_reward() -> None:
    assert problems({"agents": {"r": {"reward": {"wait_window": "10m"}}}}) == [
        "agents.r.reward: `default` is required when `wait_window` is set"
    ]
    reward = (
        load_config({"agents": {"r": {"reward": {"wait_window": "10m", "default": 0}}}}, environ={})
        .agents["r"]
        .reward
    )
    assert (reward.wait_window, reward.default) == (timedelta(minutes=10), 0.0)


def test_the_exploration_floor_must_not_exceed_epsilon() -> None:
    assert problems({"agents": {"r": {"exploration": {"epsilon": 0.05, "floor": 0.1}}}}) == [
        "agents.r.exploration: floor (0.1) must not exceed epsilon (0.05)"
    ]
    with pytest.raises(ValidationError):
        ExplorationConfig(epsilon=0.05, floor=0.1)


@pytest.mark.parametrize("name", ["", ".hidden", "-dash", "has space", "x" * 129])
def test_agent_ids_must_be_plain_names(name: str) -> None:
    lines = problems({"agents": {name: {}}})
    assert len(lines) == 1
    assert "must be 1-128 characters of letters, digits" in lines[0]


# --- exploration_for -----------------------------------------------------------------------


def test_exploration_for_returns_the_agents_own_block() -> None:
    source = {"agents": {"r": {"exploration": {"method": "softmax", "temperature": 0.5}}}}
    exploration = load_config(source, environ={}).exploration_for("r")
    assert exploration.method == "softmax"
    assert exploration.temperature == 0.5


def test_exploration_for_falls_back_to_strategy_optimization() -> None:
    source = {
        "agents": {"r": {"actions": ["a", "b"]}},
        "optimization_parameters": {
            "strategy_optimization": {
                "exploration": {"method": "thompson", "epsilon": 0.3, "decay": 0.9, "floor": 0.05},
                "exploitation": {"confidence": 1.5, "window_size": 500},
            }
        },
    }
    exploration = load_config(source, environ={}).exploration_for("r")
    assert exploration == ExplorationConfig(
        method="thompson", epsilon=0.3, decay=0.9, floor=0.05, confidence=1.5, window_size=500
    )


def test_exploration_for_defaults_when_nothing_is_configured() -> None:
    # The default learner, linear, estimates its uncertainty: it explores by UCB on it.
    exploration = load_config({"agents": {"r": {}}}, environ={}).exploration_for("r")
    assert (exploration.method, exploration.confidence, exploration.floor) == ("ucb", 2.0, 0.01)
    assert exploration.window_size == 1000


@pytest.mark.parametrize("learner", ["neural", "dqn", "behavior_cloning"])
def test_exploration_for_defaults_to_epsilon_greedy_for_learners_without_uncertainty(
    learner: str,
) -> None:
    source = {"agents": {"r": {"learner": learner}}}
    exploration = load_config(source, environ={}).exploration_for("r")
    assert (exploration.method, exploration.epsilon, exploration.floor) == (
        "epsilon_greedy",
        0.1,
        0.01,
    )


def test_exploration_for_follows_the_exploitation_method_when_exploration_is_not_set() -> None:
    def derived(exploitation: dict[str, Any], agent: dict[str, Any]) -> ExplorationConfig:
        source = {
            "agents": {"r": agent},
            "optimization_parameters": {"strategy_optimization": {"exploitation": exploitation}},
        }
        return load_config(source, environ={}).exploration_for("r")

    assert derived({"confidence": 0.5}, {}).method == "ucb"
    assert derived({"confidence": 0.5}, {}).confidence == 0.5
    assert derived({"method": "thompson"}, {}).method == "thompson"
    assert derived({"method": "greedy"}, {}).method == "epsilon_greedy"
    # A contextual bandit model with a linear architecture is the linear learner.
    models = {"learning_models": {"m": {"type": "contextual_bandit", "architecture": "linear"}}}
    source = {"agents": {"r": {"model": "m"}}, "model_configuration": models}
    assert load_config(source, environ={}).exploration_for("r").method == "ucb"


def test_an_explicit_exploration_block_keeps_its_method_for_the_linear_learner() -> None:
    source = {
        "agents": {"r": {"learner": "linear"}},
        "optimization_parameters": {
            "strategy_optimization": {"exploration": {"method": "epsilon_greedy"}}
        },
    }
    exploration = load_config(source, environ={}).exploration_for("r")
    assert (exploration.method, exploration.epsilon) == ("epsilon_greedy", 0.1)


def test_exploration_for_keeps_a_derived_floor_at_or_below_epsilon() -> None:
    source = {
        "agents": {"r": {}},
        "optimization_parameters": {
            "strategy_optimization": {"exploration": {"epsilon": 0.02, "floor": 0.05}}
        },
    }
    exploration = load_config(source, environ={}).exploration_for("r")
    assert (exploration.epsilon, exploration.floor) == (0.02, 0.02)


# --- durations and frequency in the configuration -----------------------------------------


def test_durations_in_the_file_become_timedeltas(write_yaml: WriteYaml) -> None:
    path = write_yaml(
        "runtime:\n"
        "  flush_interval: 250ms\n"
        "  shutdown_timeout: 2\n"
        "database:\n"
        "  pool_timeout: 1.5\n"
        "  sqlite_pragmas: {busy_timeout: 250us}\n"
        "experience_configuration:\n"
        "  retention: {duration: 2w}\n"
    )
    config = load_config(path, environ={})
    assert config.runtime.flush_interval == timedelta(milliseconds=250)
    assert config.runtime.shutdown_timeout == timedelta(seconds=2)
    assert config.database.pool_timeout == timedelta(seconds=1.5)
    assert config.database.sqlite_pragmas.busy_timeout == timedelta(microseconds=250)
    assert config.experience_configuration.retention.duration == timedelta(weeks=2)


def test_collection_frequency_real_time_or_a_duration() -> None:
    def frequency(value: object) -> timedelta | None:
        source = {"experience_configuration": {"collection": {"frequency": value}}}
        return load_config(source, environ={}).experience_configuration.collection.frequency

    assert frequency("real_time") is None
    assert frequency(None) is None
    assert frequency("5m") == timedelta(minutes=5)
    assert frequency(30) == timedelta(seconds=30)
    assert load_config(environ={}).experience_configuration.collection.frequency is None
    assert problems({"experience_configuration": {"collection": {"frequency": "hourly"}}}) == [
        "experience_configuration.collection.frequency: must be a duration such as 100ms, "
        "30s, 5m, 2h or 30d (got 'hourly')"
    ]


def test_the_dump_renders_durations_and_frequency_as_strings() -> None:
    source = {
        "runtime": {"flush_interval": 0.1, "shutdown_timeout": "120s"},
        "agents": {"r": {"reward": {"wait_window": "1440m", "default": 0}}},
        "experience_configuration": {
            "collection": {"frequency": "300s"},
            "retention": {"duration": "30d"},
        },
    }
    dumped = masked_dump(load_config(source, environ={}))
    assert dumped["runtime"]["flush_interval"] == "100ms"
    assert dumped["runtime"]["shutdown_timeout"] == "2m"
    assert dumped["agents"]["r"]["reward"]["wait_window"] == "1d"
    assert dumped["experience_configuration"]["collection"]["frequency"] == "5m"
    assert dumped["experience_configuration"]["retention"]["duration"] == "30d"
    default = masked_dump(load_config(environ={}))
    assert default["experience_configuration"]["collection"]["frequency"] == "real_time"
