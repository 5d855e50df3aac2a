"""``agentrt config validate|show``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
import yaml

from agentrt.cli.common import DEFAULT_CONFIG, ConfigOption, console, handle_errors, load
from agentrt.config import mask_url, masked_dump

app = typer.Typer(
    help="Check and print configuration files.\n\n"
    "Example: agentrt config validate config/full.yaml",
    no_args_is_help=True,
)

FileArgument = Annotated[
    Path | None,
    typer.Argument(help="The YAML file (default: --config).", show_default=False),
]


@app.command()
@handle_errors
def validate(file: FileArgument = None, config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Validate a configuration: every problem on its own line, exit code 2 when invalid.

    Example: agentrt config validate config/full.yaml
    """
    path = file or config
    loaded = load(path, logging=False)
    agents = len(loaded.agents)
    console.print(
        f"{path}: valid ({agents} agent{'s' if agents != 1 else ''}, "
        f"database {mask_url(loaded.database.url)})",
        highlight=False,
        soft_wrap=True,
        markup=False,
    )


@app.command()
@handle_errors
def show(file: FileArgument = None, config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Print the resolved configuration: defaults filled in, variables resolved, passwords masked.

    Example: agentrt config show config/postgres.yaml
    """
    loaded = load(file or config, logging=False)
    typer.echo(yaml.safe_dump(masked_dump(loaded), sort_keys=False, allow_unicode=True), nl=False)
