"""case type

Revision ID: 0010
Revises: 0009

``cases.type``: what kind of report a case is (complaint, question,
clarification, cancellation), as an agent classified it; NULL for a case not
classified yet, which every existing case is.
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # In place on both backends (SQLite's ALTER TABLE ADD COLUMN, NULL for every row).
    # Never batch mode: it copies the cases table and drops the old one, which the
    # store's PRAGMA foreign_keys=ON refuses on any database with a case message.
    op.add_column(
        "cases", sa.Column("type", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True)
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # SQLite (3.35 and later) drops a column with no index nor constraint in place;
        # batch mode would copy the table, which foreign keys may refuse (see upgrade).
        op.execute("ALTER TABLE cases DROP COLUMN type")
        return
    op.drop_column("cases", "type")
