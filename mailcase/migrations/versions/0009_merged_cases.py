"""merged cases

Revision ID: 0009
Revises: 0008

``cases.merged_into_id``: the case a case was merged into (``mailcase cases
merge``). A merged case is closed; its messages moved to the other case, and
mail naming its folio joins that case.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_FK = "fk_cases_merged_into_id_cases"


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # SQLite adds a column with a REFERENCES clause in place (its default is
        # NULL). Alembic's batch mode would copy the table and DROP the old one,
        # which fails with the store's PRAGMA foreign_keys=ON as soon as a case
        # message, ledger row or notice refers to a case: every installation
        # with data.
        op.execute(
            f"ALTER TABLE cases ADD COLUMN merged_into_id INTEGER CONSTRAINT {_FK} "
            "REFERENCES cases (id)"
        )
        return
    op.add_column("cases", sa.Column("merged_into_id", sa.Integer(), nullable=True))
    op.create_foreign_key(_FK, "cases", "cases", ["merged_into_id"], ["id"])


def downgrade() -> None:
    # The constraint goes with its column (PostgreSQL drops it; SQLite, which drops a
    # column that holds a constraint only by copying the table, copies it without).
    with op.batch_alter_table("cases", schema=None) as batch_op:
        batch_op.drop_column("merged_into_id")
