"""``agentrt versions AGENT``: an agent's policy versions, their metrics and their validation."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer

from agentrt.cli.common import DEFAULT_CONFIG, ConfigOption, console, fail, handle_errors, load
from agentrt.cli.inspection import format_time, read
from agentrt.storage.tables import PolicyVersionRow

__all__ = ["validation_summary", "versions"]

_STATUS_STYLES = {
    "active": "bold green",
    "canary": "yellow",
    "rejected": "red",
    "failed": "red",
    "retired": "dim",
}


@handle_errors
def versions(
    agent: Annotated[str, typer.Argument(help="The agent's id.", show_default=False)],
    config: ConfigOption = DEFAULT_CONFIG,
) -> None:
    """List an agent's policy versions: lineage, status, training metrics and validation.

    Exits 1 when the agent has no version yet (its baseline serves).

    Example: agentrt versions router --config config/postgres.yaml
    """
    loaded = load(config)
    rows = read(loaded.database, partial(_versions, agent))
    if not rows:
        raise fail(f"agent {agent!r} has no policy versions yet; its baseline serves")
    active = [row.version for row in rows if row.status == "active"]
    table = Table(
        title=f"{agent}: {len(rows)} policy version{'s' if len(rows) != 1 else ''}, "
        f"active {'v' + str(active[-1]) if active else 'none (baseline)'} (times in UTC)",
    )
    # Fold rather than truncate: on a narrow terminal every value stays complete.
    for column in ("version", "parent", "learner", "status", "reason", "created", "activated"):
        table.add_column(column, overflow="fold")
    table.add_column("rows", justify="right", overflow="fold")
    table.add_column("holdout mse", justify="right", overflow="fold")
    table.add_column("validation", overflow="fold")
    for row in rows:
        table.add_row(
            f"v{row.version}",
            "-" if row.parent_version is None else f"v{row.parent_version}",
            Text(row.learner),
            Text(row.status, style=_STATUS_STYLES.get(row.status, "")),
            Text(row.status_reason or "-"),
            format_time(row.created_at),
            format_time(row.activated_at),
            _metric(row.metrics, "rows"),
            _metric(row.metrics, "holdout_mse"),
            Text(validation_summary(row.validation)),
        )
    console.print(table)


async def _versions(agent_id: str, session: AsyncSession) -> list[PolicyVersionRow]:
    query = (
        select(PolicyVersionRow)
        .options(defer(PolicyVersionRow.artifact))  # the weights are not shown; don't load them
        .where(PolicyVersionRow.agent_id == agent_id)
        .order_by(PolicyVersionRow.version)
    )
    return list((await session.execute(query)).scalars())


def _metric(metrics: dict[str, Any], name: str) -> str:
    value = metrics.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    return str(value) if isinstance(value, int) else f"{value:.4g}"


def validation_summary(validation: dict[str, Any] | None) -> str:
    """The validation report in one line: ``failed: ope (check, ...); passed: sanity``.

    Names are sorted: PostgreSQL's JSONB does not keep the order the validators ran in.

    Reads the report of ``run_validators`` (``{"passed", "reasons", "validators": {name:
    {"passed", "reason", "details"}}}``) and the older ``{name: {"passed", "checks"}}``; a
    failed validator lists its boolean checks that are False.
    """
    validation = validation or {}
    reports = validation.get("validators")
    passed: list[str] = []
    failed: list[str] = []
    for name, report in (reports if isinstance(reports, dict) else validation).items():
        if not isinstance(report, dict) or not isinstance(report.get("passed"), bool):
            continue
        if report["passed"]:
            passed.append(name)
            continue
        checks = report.get("details", report.get("checks"))
        checks = checks if isinstance(checks, dict) else {}
        false = [key for key, ok in checks.items() if ok is False]
        failed.append(name + (f" ({', '.join(false)})" if false else ""))
    parts = [
        f"{verdict}: {', '.join(sorted(names))}"
        for verdict, names in (("failed", failed), ("passed", passed))
        if names
    ]
    return "; ".join(parts) or "-"
