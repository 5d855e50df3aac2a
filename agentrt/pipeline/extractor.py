"""KnowledgeExtractor: what an agent's recent experience says, as ``knowledge`` rows.

Each extraction reads the agent's experience since the start of the previous one's new rows (so
consecutive windows overlap by one cycle and a change between cycles is visible; at most
``experience_configuration.collection.batch_size`` times ten rows; the first extraction takes
the newest ones), runs the analyzers in a worker thread and stores their findings, one row per
kind: action statistics and exploration health always, plus the analyzers named in
``experience_configuration.analysis.methods`` (all of them when the list is empty). The
StrategyAdapter reads the ``trend`` rows for change points; ``agentrt status`` reads the
exploration health.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import anyio

from agentrt.config import AgentRTConfig
from agentrt.log import get_logger
from agentrt.plugins import PluginRegistry
from agentrt.schemas import Experience, Knowledge
from agentrt.storage import repositories
from agentrt.storage.engine import Database
from agentrt.types import Analyzer

__all__ = ["ALWAYS", "DEFAULT_METHODS", "KnowledgeExtractor"]

log = get_logger(__name__)

ALWAYS = ("action_statistics", "exploration_health")
DEFAULT_METHODS = (
    "trend_analysis",
    "anomaly_detection",
    "pattern_recognition",
    "temporal_aggregation",
)


class KnowledgeExtractor:
    """Runs the configured analyzers over each agent's newest experience.

    Args:
        config: the whole configuration (analyzers are built from it).
        db: the database.
        registry: where analyzers are looked up.
        limiter: worker-thread slots for the analysis (shared with training).
    """

    def __init__(
        self,
        config: AgentRTConfig,
        db: Database,
        registry: PluginRegistry,
        limiter: anyio.CapacityLimiter | None = None,
    ) -> None:
        self.config = config
        self.db = db
        self.limiter = limiter or anyio.CapacityLimiter(1)
        methods = config.experience_configuration.analysis.methods or list(DEFAULT_METHODS)
        names = list(dict.fromkeys([*ALWAYS, *methods]))
        self.analyzers: list[tuple[str, Analyzer]] = [
            (name, registry.create("analyzer", name, config)) for name in names
        ]
        self._since: dict[str, datetime] = {}
        self._window_start: dict[str, datetime] = {}

    def window(self, agent_id: str) -> tuple[datetime | None, datetime | None]:
        """Where the agent's next extraction starts: (since, start of the last new rows)."""
        return self._since.get(agent_id), self._window_start.get(agent_id)

    def resume(self, agent_id: str, window: tuple[datetime | None, datetime | None]) -> None:
        """Continue from a :meth:`window` (of this extractor or one in another process)."""
        for state, value in zip((self._since, self._window_start), window, strict=True):
            if value is None:
                state.pop(agent_id, None)
            else:
                state[agent_id] = value

    async def extract(self, agent_id: str) -> list[Knowledge]:
        """Analyse the agent's experience since the last extraction and store the findings."""
        limit = self.config.experience_configuration.collection.batch_size * 10
        async with self.db.session() as session:
            rows = await repositories.fetch_experience(
                session, agent_id, since=self._since.get(agent_id), limit=limit
            )
        if not rows:
            return []
        findings = await anyio.to_thread.run_sync(
            self._analyze, agent_id, rows, limiter=self.limiter
        )
        async with self.db.session() as session:
            await repositories.insert_knowledge(session, findings)
        # The next window starts where this one's new rows began: each window overlaps the
        # previous one, so a change between two cycles is visible to the change detector.
        self._since[agent_id] = self._window_start.get(agent_id, rows[0].created_at)
        self._window_start[agent_id] = rows[-1].created_at + timedelta(microseconds=1)
        return findings

    def _analyze(self, agent_id: str, rows: Sequence[Experience]) -> list[Knowledge]:
        findings: list[Knowledge] = []
        for name, analyzer in self.analyzers:
            try:
                findings.extend(analyzer.analyze(agent_id, rows))
            except Exception as exc:  # one failing analyzer must not lose the others' findings
                log.error(
                    "analyzer_failed",
                    stage="extractor",
                    agent=agent_id,
                    analyzer=name,
                    error=repr(exc),
                )
        return findings
