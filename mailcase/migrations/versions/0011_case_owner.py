"""case owner

Revision ID: 0011
Revises: 0010

``cases.owner``: the agent responsible for a case (an address of
``agents.addresses``), as an agent assigned it (``#asignar``, ``cases assign``)
or as the first agent who answered the customer became; NULL for a case nobody
owns, which every existing case is.
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # In place on both backends (SQLite's ALTER TABLE ADD COLUMN, NULL for every row).
    # Never batch mode: it copies the cases table and drops the old one, which the
    # store's PRAGMA foreign_keys=ON refuses on any database with a case message.
    op.add_column(
        "cases", sa.Column("owner", sqlmodel.sql.sqltypes.AutoString(length=320), nullable=True)
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # SQLite (3.35 and later) drops a column with no index nor constraint in place;
        # batch mode would copy the table, which foreign keys may refuse (see upgrade).
        op.execute("ALTER TABLE cases DROP COLUMN owner")
        return
    op.drop_column("cases", "owner")
