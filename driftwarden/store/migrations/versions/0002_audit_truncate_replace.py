"""the audit log refuses TRUNCATE (PostgreSQL) and REPLACE (SQLite)

Row-level triggers do not see ``TRUNCATE`` on PostgreSQL: a statement-level ``BEFORE
TRUNCATE`` trigger refuses it. SQLite's ``INSERT OR REPLACE`` / ``REPLACE INTO`` deletes the
row it replaces without firing delete triggers (unless ``recursive_triggers`` is on): a
``BEFORE INSERT`` trigger refuses an insert whose id is already there.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 05:00:00
"""

from __future__ import annotations

from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute("""
            CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
            FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()""")
    else:
        op.execute("""
            CREATE TRIGGER audit_log_no_replace BEFORE INSERT ON audit_log
            WHEN NEW.id IS NOT NULL AND EXISTS (SELECT 1 FROM audit_log WHERE id = NEW.id)
            BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END""")


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute("DROP TRIGGER audit_log_no_truncate ON audit_log")
    else:
        op.execute("DROP TRIGGER audit_log_no_replace")
