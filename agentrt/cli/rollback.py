"""``agentrt rollback AGENT [--to V]``: serve an earlier version again, recorded as a rollback."""

from __future__ import annotations

from typing import Annotated

import anyio
import typer

from agentrt.cli.common import DEFAULT_CONFIG, ConfigOption, console, handle_errors, load
from agentrt.cli.inspection import existing_database
from agentrt.exploration import from_config as exploration_from_config
from agentrt.pipeline.adapter import StrategyAdapter, describe, roll_back
from agentrt.storage import migrate

__all__ = ["rollback"]


@handle_errors
def rollback(
    agent: Annotated[str, typer.Argument(help="The agent to roll back.")],
    to: Annotated[
        int | None,
        typer.Option("--to", help="The version to serve (default: the active one's parent)."),
    ] = None,
    config: ConfigOption = DEFAULT_CONFIG,
) -> None:
    """Retire the agent's active version and serve an earlier one (or the baseline).

    The change is a `rollback` row in `strategy_updates` with `details.manual = true`; running
    applications pick the version up within `runtime.policy_refresh_interval`.

    Example: agentrt rollback router --to 3
    """
    loaded = load(config)
    db = existing_database(loaded.database)
    reason = f"rolled back by hand to {'v' + str(to) if to is not None else 'the predecessor'}"
    exploration = (
        exploration_from_config(loaded.exploration_for(agent)) if agent in loaded.agents else None
    )

    async def run() -> tuple[int | None, int | None]:
        try:
            await migrate.ensure_schema(db, auto_migrate=False)
            retired, activated = await roll_back(db, agent, to, reason)
            before = {"active_version": retired}
            after = {"active_version": activated}
            if exploration is not None:
                before, after = describe(retired, exploration), describe(activated, exploration)
            details = {"reason": reason, "retired": retired, "activated": activated, "manual": True}
            await StrategyAdapter(loaded, db).record(agent, "rollback", before, after, details)
            return retired, activated
        finally:
            await db.dispose()

    retired, activated = anyio.run(run)
    serving = f"v{activated}" if activated is not None else "the baseline"
    before = f"retired v{retired}" if retired is not None else "the baseline was serving"
    console.print(f"{agent}: {before}, now serving {serving}", markup=False, highlight=False)
