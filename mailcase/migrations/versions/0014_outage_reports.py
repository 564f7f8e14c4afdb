"""reports of an outage

Revision ID: 0014
Revises: 0013

``cases.outage_id``: the main case of the outage a case is one of the reports of
(``#masivo FOLIO``, ``mailcase cases outage``); NULL, as for every existing case,
when it is none. Resolving the main case resolves its open reports. Indexed only
where set, as ``merged_into_id`` is (0013): a new case costs the index nothing, and
"not a report" never takes it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

_FK = "fk_cases_outage_id_cases"
_WHERE = sa.text("outage_id IS NOT NULL")


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # In place, as 0009: SQLite adds a column with a REFERENCES clause (NULL for every
        # row) without copying the table; batch mode would copy it and DROP the old one,
        # which the store's PRAGMA foreign_keys=ON refuses on any database with a case
        # message.
        op.execute(
            f"ALTER TABLE cases ADD COLUMN outage_id INTEGER CONSTRAINT {_FK} REFERENCES cases (id)"
        )
    else:
        op.add_column("cases", sa.Column("outage_id", sa.Integer(), nullable=True))
        op.create_foreign_key(_FK, "cases", "cases", ["outage_id"], ["id"])
    op.create_index(
        "ix_cases_outage_id", "cases", ["outage_id"], sqlite_where=_WHERE, postgresql_where=_WHERE
    )


def downgrade() -> None:
    op.drop_index("ix_cases_outage_id", table_name="cases")
    # The constraint goes with its column, as in 0009's downgrade (SQLite drops a column
    # that holds a constraint only by copying the table, and copies it without).
    with op.batch_alter_table("cases", schema=None) as batch_op:
        batch_op.drop_column("outage_id")
