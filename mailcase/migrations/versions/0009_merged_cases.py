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


def upgrade() -> None:
    # batch mode: SQLite adds a column with a REFERENCES clause only by copying the
    # table, which alembic's batch mode does; PostgreSQL gets a plain ALTER TABLE.
    with op.batch_alter_table("cases", schema=None) as batch_op:
        batch_op.add_column(sa.Column("merged_into_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            "fk_cases_merged_into_id_cases", "cases", ["merged_into_id"], ["id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("cases", schema=None) as batch_op:
        batch_op.drop_constraint("fk_cases_merged_into_id_cases", type_="foreignkey")
        batch_op.drop_column("merged_into_id")
