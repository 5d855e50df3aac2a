"""The ``agentrt`` command line: one module per command group."""

from __future__ import annotations

import typer

from agentrt.cli import config as config_commands
from agentrt.cli import db as db_commands
from agentrt.cli import demo as demo_commands
from agentrt.cli import export as export_commands
from agentrt.cli import init as init_commands
from agentrt.cli import prune as prune_commands
from agentrt.cli import report as report_commands
from agentrt.cli import rollback as rollback_commands
from agentrt.cli import sql as sql_commands
from agentrt.cli import status as status_commands
from agentrt.cli import versions as versions_commands
from agentrt.cli import worker as worker_commands

__all__ = ["app", "main"]

app = typer.Typer(
    name="agentrt",
    help="agentrt: agents that learn from their own executions.\n\n"
    "Example: agentrt config validate config/agentrt.yaml",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(config_commands.app, name="config")
app.add_typer(db_commands.app, name="db")
app.command("demo")(demo_commands.demo)
app.command("init")(init_commands.init)
app.command("status")(status_commands.status)
app.command("versions")(versions_commands.versions)
# A query may start with a `--` comment, which is not an option.
app.command("sql", context_settings={"ignore_unknown_options": True})(sql_commands.sql)
app.command("export")(export_commands.export)
app.command("rollback")(rollback_commands.rollback)
app.command("report")(report_commands.report)
app.command("prune")(prune_commands.prune)
app.command("worker")(worker_commands.worker)


def main() -> None:
    """Entry point of the ``agentrt`` console script."""
    app()
