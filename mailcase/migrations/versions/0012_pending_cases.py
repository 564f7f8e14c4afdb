"""pending cases

Revision ID: 0012
Revises: 0011

``cases.pending_until``: the case waits for the customer's answer until then
(``#pendiente``, ``mailcase cases pending``) and is closed unresolved when it
passes; NULL for a case not waiting, which every existing case is.
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # In place on both backends (SQLite's ALTER TABLE ADD COLUMN, NULL for every row).
    # Never batch mode: it copies the cases table and drops the old one, which the
    # store's PRAGMA foreign_keys=ON refuses on any database with a case message.
    op.add_column(
        "cases", sa.Column("pending_until", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True)
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # SQLite (3.35 and later) drops a column with no index nor constraint in place;
        # batch mode would copy the table, which foreign keys may refuse (see upgrade).
        op.execute("ALTER TABLE cases DROP COLUMN pending_until")
        return
    op.drop_column("cases", "pending_until")
