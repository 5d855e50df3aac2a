"""experience view: per-decision correlated feedback subqueries

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 09:00:00.000000

The 0001 view joined every decision to aggregates of the whole ``feedback`` table, so a query
that filtered the view (one agent, a list of decision ids, a time window) still read and
grouped all the feedback. This revision reads each decision's feedback through correlated
subqueries on ``ix_feedback_decision_id_created_at``. Columns, names, types and values are
unchanged; no data moves, so both directions only replace the view. No index is added: one on
``feedback(decision_id, kind, created_at)`` saved at most about 10% of a full scan of the view
(measured on both backends), and every feedback row would pay for it on ingest.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A frozen copy of agentrt.storage.tables.EXPERIENCE_VIEW_SQL at this revision.
EXPERIENCE_VIEW = """
CREATE VIEW experience AS
SELECT d.id AS decision_id,
       d.agent_id,
       d.episode_id,
       d.step,
       d.created_at,
       d.mode,
       d.context,
       d.actions,
       d.action,
       d.action_index,
       d.propensity,
       d.probabilities,
       d.policy_version,
       d.exploration,
       d.policy_action,
       CASE WHEN COALESCE(a.reward_combine, 'last') IN ('sum', 'mean', 'max')
           THEN (SELECT CASE a.reward_combine
                            WHEN 'sum' THEN SUM(f.reward)
                            WHEN 'mean' THEN AVG(f.reward)
                            ELSE MAX(f.reward)
                        END
                 FROM feedback f
                 WHERE f.decision_id = d.id AND f.kind = 'reward')
           ELSE (SELECT f.reward FROM feedback f
                 WHERE f.decision_id = d.id AND f.kind = 'reward'
                 ORDER BY f.created_at DESC, f.id DESC LIMIT 1)
       END AS reward,
       (SELECT f.outcome FROM feedback f
        WHERE f.decision_id = d.id AND f.kind = 'reward'
        ORDER BY f.created_at DESC, f.id DESC LIMIT 1) AS outcome,
       (SELECT COUNT(*) FROM feedback f
        WHERE f.decision_id = d.id AND f.kind = 'reward') AS feedback_count,
       (SELECT MAX(f.created_at) FROM feedback f
        WHERE f.decision_id = d.id AND f.kind = 'reward') AS rewarded_at,
       CASE WHEN d.mode = 'deferred'
           THEN (SELECT MIN(f.created_at) FROM feedback f
                 WHERE f.decision_id = d.id AND f.kind = 'activation')
           ELSE d.created_at
       END AS activated_at
FROM decisions d
LEFT JOIN agents a ON a.agent_id = d.agent_id
"""

# The view of revision 0001, restored by downgrade (a frozen copy of 0001's EXPERIENCE_VIEW).
PREVIOUS_EXPERIENCE_VIEW = """
CREATE VIEW experience AS
WITH rewards AS (
    SELECT decision_id,
           COUNT(*) AS feedback_count,
           SUM(reward) AS reward_sum,
           AVG(reward) AS reward_mean,
           MAX(reward) AS reward_max,
           MAX(created_at) AS rewarded_at
    FROM feedback
    WHERE kind = 'reward'
    GROUP BY decision_id
),
latest AS (
    SELECT decision_id, reward, outcome
    FROM (
        SELECT decision_id, reward, outcome,
               ROW_NUMBER() OVER (PARTITION BY decision_id ORDER BY created_at DESC, id DESC) AS rn
        FROM feedback
        WHERE kind = 'reward'
    ) ranked
    WHERE rn = 1
),
activations AS (
    SELECT decision_id, MIN(created_at) AS activated_at
    FROM feedback
    WHERE kind = 'activation'
    GROUP BY decision_id
)
SELECT d.id AS decision_id,
       d.agent_id,
       d.episode_id,
       d.step,
       d.created_at,
       d.mode,
       d.context,
       d.actions,
       d.action,
       d.action_index,
       d.propensity,
       d.probabilities,
       d.policy_version,
       d.exploration,
       d.policy_action,
       CASE COALESCE(a.reward_combine, 'last')
           WHEN 'sum' THEN r.reward_sum
           WHEN 'mean' THEN r.reward_mean
           WHEN 'max' THEN r.reward_max
           ELSE l.reward
       END AS reward,
       l.outcome,
       COALESCE(r.feedback_count, 0) AS feedback_count,
       r.rewarded_at,
       CASE WHEN d.mode = 'deferred' THEN act.activated_at ELSE d.created_at END AS activated_at
FROM decisions d
LEFT JOIN rewards r ON r.decision_id = d.id
LEFT JOIN latest l ON l.decision_id = d.id
LEFT JOIN activations act ON act.decision_id = d.id
LEFT JOIN agents a ON a.agent_id = d.agent_id
"""


def upgrade() -> None:
    op.execute("DROP VIEW IF EXISTS experience")
    op.execute(EXPERIENCE_VIEW)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS experience")
    op.execute(PREVIOUS_EXPERIENCE_VIEW)
