"""The report: per agent, PNG charts and one self-contained HTML file that embeds them.

For each agent: the mean reward of live decisions over time, with the baseline's level and
the version changes (promotions, rollbacks) marked; the share of each action over time;
exploration health (entropy, coverage, minimum propensity); the patterns, anomalies and
reward changes the KnowledgeExtractor found; and the version history with validation results.
``agentrt report`` writes it from the command line; applications and the demo call
:func:`write_report`.

The modules: ``data`` reads an agent in bounded memory, ``charts`` draws the PNGs and ``page``
writes the HTML.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from hashlib import sha256
from pathlib import Path
from typing import Protocol

import anyio

from agentrt.clock import utcnow
from agentrt.config import AgentRTConfig, mask_url
from agentrt.errors import AgentRTError, InvalidInputError
from agentrt.report.charts import CHART_DPI, CHART_SIZE, CHARTS, draw
from agentrt.report.data import AgentData, read_agent, resolve_agents
from agentrt.report.page import agent_section, document
from agentrt.storage.engine import Database

__all__ = [
    "CHARTS",
    "CHART_DPI",
    "CHART_SIZE",
    "HTML_NAME",
    "ReportPaths",
    "ReportProgress",
    "write_report",
]

HTML_NAME = "report.html"


class ReportProgress(Protocol):
    """Told after each step of :func:`write_report`: what was done, and how many of how many."""

    def __call__(self, description: str, done: int, total: int) -> None: ...


@dataclass(frozen=True, slots=True)
class ReportPaths:
    """What :func:`write_report` wrote.

    Attributes:
        html: the HTML report.
        images: per agent, its PNGs in :data:`CHARTS` order (none for an agent without
            decisions).
    """

    html: Path
    images: dict[str, tuple[Path, ...]]

    @property
    def all(self) -> list[Path]:
        """The HTML report, then every PNG."""
        return [self.html, *(path for paths in self.images.values() for path in paths)]


async def write_report(
    db: Database,
    config: AgentRTConfig,
    out_dir: Path,
    agents: Sequence[str] | None = None,
    *,
    since: datetime | None = None,
    progress: ReportProgress | None = None,
) -> ReportPaths:
    """Write ``report.html`` and each agent's PNG charts (``<agent>-<chart>.png``) to a folder.

    Reads only; the schema must be current (``migrate.ensure_schema``). A file already in
    ``out_dir`` under the same name is replaced once its successor is complete. Drawing runs
    in a worker thread, so the event loop stays responsive.

    Args:
        db: the database to read.
        config: the configuration. Its agents are reported when ``agents`` is None, or every
            stored agent when it names none.
        out_dir: the folder to write to (created when missing).
        agents: the agents to report on, each configured or stored.
        since: only decisions, knowledge windows and strategy updates from this time on.
        progress: told after each step.

    Returns:
        The paths written.

    Raises:
        InvalidInputError: an agent is neither configured nor stored, or ``since`` is naive.
        StorageError: the database cannot be read.
        AgentRTError: a file cannot be written.
    """
    if since is not None and (since.tzinfo is None or since.utcoffset() is None):
        raise InvalidInputError("since", since, "must be timezone-aware")
    generated = utcnow()
    async with db.connect() as connection:
        names = await resolve_agents(connection, config, agents)
    total, done = 2 * len(names) + 1, 0

    def step(description: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(description, done, total)

    try:
        await anyio.Path(out_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AgentRTError(f"cannot create {out_dir}: {exc.strerror or exc}") from exc
    sections: list[str] = []
    images: dict[str, tuple[Path, ...]] = {}
    for agent_id in names:
        agent = config.agents.get(agent_id)
        async with db.connect() as connection:
            data = await read_agent(connection, agent_id, len(agent.actions) if agent else 0, since)
        step(f"read {agent_id}")
        section, images[agent_id] = await anyio.to_thread.run_sync(
            _render, data, out_dir, _file_stem(agent_id)
        )
        sections.append(section)
        step(f"drew {agent_id}")
    page = document(mask_url(config.database.url), generated, since, "".join(sections))
    html = out_dir / HTML_NAME
    await anyio.to_thread.run_sync(_write, html, page.encode("utf-8"))
    step(f"wrote {html}")
    return ReportPaths(html, images)


def _render(data: AgentData, out_dir: Path, stem: str) -> tuple[str, tuple[Path, ...]]:
    """Draw and write an agent's charts; its HTML section."""
    pngs = draw(data)
    paths = tuple(out_dir / f"{stem}-{chart}.png" for chart in CHARTS[: len(pngs)])
    for path, png in zip(paths, pngs, strict=True):
        _write(path, png)
    return agent_section(data, stem, pngs), paths


def _file_stem(agent_id: str) -> str:
    """A file name for any agent id; an id that must change gets a hash, so stems stay unique."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", agent_id).strip(".") or "agent"
    if stem == agent_id:
        return stem
    return f"{stem[:60]}-{sha256(agent_id.encode()).hexdigest()[:8]}"


def _write(path: Path, content: bytes) -> None:
    staging = path.with_name(f".{path.name}.partial")
    try:
        staging.write_bytes(content)
        staging.replace(path)
    except OSError as exc:
        staging.unlink(missing_ok=True)
        raise AgentRTError(f"cannot write {path}: {exc.strerror or exc}") from exc
