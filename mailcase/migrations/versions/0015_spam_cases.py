"""cases marked spam

Revision ID: 0015
Revises: 0014

``cases.spam_at``: when an agent marked the case spam (``#spam``, ``mailcase cases
spam``): spam the receiving server's filter missed, which opened a case. Such a case
is counted in no figure of ``mailcase report`` but its own, ``spam``, and its
customer's new mail opens no case while it is so marked. NULL, as for every existing
case, when it is not spam. Indexed by customer only where set, as ``outage_id`` is
(0014): a new case costs the index nothing, and the check made for every message that
would open a case looks in an index holding the spam cases alone.
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

_WHERE = sa.text("spam_at IS NOT NULL")


def upgrade() -> None:
    # In place on both backends (SQLite's ALTER TABLE ADD COLUMN, NULL for every row), as
    # 0012: batch mode would copy the cases table and drop the old one, which the store's
    # PRAGMA foreign_keys=ON refuses on any database with a case message.
    op.add_column("cases", sa.Column("spam_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
    op.create_index(
        "ix_cases_spam_customer",
        "cases",
        ["customer"],
        sqlite_where=_WHERE,
        postgresql_where=_WHERE,
    )


def downgrade() -> None:
    op.drop_index("ix_cases_spam_customer", table_name="cases")
    if op.get_bind().dialect.name == "sqlite":
        # SQLite (3.35 and later) drops a column with no index nor constraint in place
        # (its partial index is gone above); batch mode would copy the table (see upgrade).
        op.execute("ALTER TABLE cases DROP COLUMN spam_at")
        return
    op.drop_column("cases", "spam_at")
