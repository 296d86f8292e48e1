"""rollouts and their verdicts

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 21:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('rollouts',
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('model', sa.String(length=200), nullable=False),
    sa.Column('spec', sa.JSON(), nullable=False),
    sa.Column('source', sa.String(length=20), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('promoted_by_hand', sa.String(length=100), nullable=True),
    sa.Column('created_by', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('name')
    )
    with op.batch_alter_table('rollouts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_rollouts_model'), ['model'], unique=False)

    op.create_table('rollout_verdicts',
    sa.Column('event_id', sa.String(length=64), nullable=False),
    sa.Column('rollout', sa.String(length=100), nullable=False),
    sa.Column('candidate', sa.String(length=100), nullable=False),
    sa.Column('verdict', sa.String(length=20), nullable=False),
    sa.Column('signal', sa.String(length=20), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('evidence', sa.JSON(), nullable=False),
    sa.Column('ts', sa.DateTime(timezone=True), nullable=True),
    sa.Column('recorded_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('event_id')
    )
    with op.batch_alter_table('rollout_verdicts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_rollout_verdicts_rollout'), ['rollout'],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table('rollout_verdicts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_rollout_verdicts_rollout'))
    op.drop_table('rollout_verdicts')
    with op.batch_alter_table('rollouts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_rollouts_model'))
    op.drop_table('rollouts')
