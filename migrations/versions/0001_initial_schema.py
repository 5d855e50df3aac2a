"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-21 06:15:51.397814
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# JSONB on PostgreSQL, JSON text elsewhere.
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

EXPERIENCE_VIEW = """
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
    # Schema steps first, then data steps (if any), so that downgrade can mirror them.
    op.create_table('agents',
    sa.Column('agent_id', sa.String(length=128), nullable=False),
    sa.Column('reward_combine', sa.String(length=8), nullable=False),
    sa.Column('config', JSON, nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("reward_combine IN ('last', 'sum', 'mean', 'max')", name=op.f('ck_agents_reward_combine')),
    sa.PrimaryKeyConstraint('agent_id', name=op.f('pk_agents'))
    )
    op.create_table('decisions',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('agent_id', sa.String(length=128), nullable=False),
    sa.Column('episode_id', sa.Uuid(), nullable=True),
    sa.Column('step', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('context', JSON, nullable=False),
    sa.Column('actions', JSON, nullable=False),
    sa.Column('action', sa.String(length=128), nullable=False),
    sa.Column('action_index', sa.Integer(), nullable=False),
    sa.Column('propensity', sa.Double(), nullable=True),
    sa.Column('probabilities', JSON, nullable=True),
    sa.Column('policy_version', sa.Integer(), nullable=True),
    sa.Column('exploration', JSON, nullable=True),
    sa.Column('mode', sa.String(length=16), nullable=False),
    sa.Column('policy_action', sa.String(length=128), nullable=True),
    sa.CheckConstraint("mode IN ('live', 'shadow', 'deferred')", name=op.f('ck_decisions_mode')),
    sa.CheckConstraint('propensity IS NULL OR (propensity > 0 AND propensity <= 1)', name=op.f('ck_decisions_propensity')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_decisions'))
    )
    with op.batch_alter_table('decisions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_decisions_agent_id_created_at'), ['agent_id', 'created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_decisions_episode_id_step'), ['episode_id', 'step'], unique=False)

    op.create_table('episodes',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('agent_id', sa.String(length=128), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('episode_return', sa.Double(), nullable=True),
    sa.Column('length', sa.Integer(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.CheckConstraint("status IN ('running', 'completed', 'failed')", name=op.f('ck_episodes_status')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_episodes'))
    )
    with op.batch_alter_table('episodes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_episodes_agent_id_started_at'), ['agent_id', 'started_at'], unique=False)

    op.create_table('feedback',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('decision_id', sa.Uuid(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('reward', sa.Double(), nullable=True),
    sa.Column('outcome', JSON, nullable=True),
    sa.Column('source', sa.String(length=128), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("kind IN ('reward', 'activation')", name=op.f('ck_feedback_kind')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_feedback'))
    )
    with op.batch_alter_table('feedback', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_feedback_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_feedback_decision_id_created_at'), ['decision_id', 'created_at'], unique=False)

    op.create_table('knowledge',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('agent_id', sa.String(length=128), nullable=False),
    sa.Column('window_start', sa.DateTime(timezone=True), nullable=True),
    sa.Column('window_end', sa.DateTime(timezone=True), nullable=True),
    sa.Column('kind', sa.String(length=64), nullable=False),
    sa.Column('payload', JSON, nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_knowledge'))
    )
    with op.batch_alter_table('knowledge', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_knowledge_agent_id_kind_created_at'), ['agent_id', 'kind', 'created_at'], unique=False)

    op.create_table('metrics',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('agent_id', sa.String(length=128), nullable=True),
    sa.Column('stage', sa.String(length=32), nullable=True),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('value', sa.Double(), nullable=True),
    sa.Column('details', JSON, nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_metrics'))
    )
    with op.batch_alter_table('metrics', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_metrics_agent_id_name_created_at'), ['agent_id', 'name', 'created_at'], unique=False)

    op.create_table('policy_versions',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('agent_id', sa.String(length=128), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('parent_version', sa.Integer(), nullable=True),
    sa.Column('learner', sa.String(length=128), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('status_reason', sa.Text(), nullable=True),
    sa.Column('metrics', JSON, nullable=False),
    sa.Column('validation', JSON, nullable=True),
    sa.Column('artifact_metadata', JSON, nullable=False),
    sa.Column('artifact', sa.LargeBinary(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('activated_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("status IN ('candidate', 'canary', 'active', 'retired', 'rejected', 'failed')", name=op.f('ck_policy_versions_status')),
    sa.CheckConstraint('version > 0', name=op.f('ck_policy_versions_version_positive')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_policy_versions')),
    sa.UniqueConstraint('agent_id', 'version', name=op.f('uq_policy_versions_agent_id_version'))
    )
    with op.batch_alter_table('policy_versions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_policy_versions_agent_id_status'), ['agent_id', 'status'], unique=False)

    op.create_table('strategy_updates',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('agent_id', sa.String(length=128), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('previous', JSON, nullable=False),
    sa.Column('updated', JSON, nullable=False),
    sa.Column('details', JSON, nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_strategy_updates'))
    )
    with op.batch_alter_table('strategy_updates', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_strategy_updates_agent_id_created_at'), ['agent_id', 'created_at'], unique=False)


    # The `experience` view: one row per decision with its combined reward (a frozen copy of
    # agentrt.storage.tables.EXPERIENCE_VIEW_SQL at this revision).
    op.execute(EXPERIENCE_VIEW)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS experience")
    with op.batch_alter_table('strategy_updates', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_strategy_updates_agent_id_created_at'))

    op.drop_table('strategy_updates')
    with op.batch_alter_table('policy_versions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_policy_versions_agent_id_status'))

    op.drop_table('policy_versions')
    with op.batch_alter_table('metrics', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_metrics_agent_id_name_created_at'))

    op.drop_table('metrics')
    with op.batch_alter_table('knowledge', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_knowledge_agent_id_kind_created_at'))

    op.drop_table('knowledge')
    with op.batch_alter_table('feedback', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_feedback_decision_id_created_at'))
        batch_op.drop_index(batch_op.f('ix_feedback_created_at'))

    op.drop_table('feedback')
    with op.batch_alter_table('episodes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_episodes_agent_id_started_at'))

    op.drop_table('episodes')
    with op.batch_alter_table('decisions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_decisions_episode_id_step'))
        batch_op.drop_index(batch_op.f('ix_decisions_agent_id_created_at'))

    op.drop_table('decisions')
    op.drop_table('agents')
