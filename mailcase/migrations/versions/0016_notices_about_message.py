"""the message an agents' notice is about

Revision ID: 0016
Revises: 0015

``notices.about_message_id``: the case message (a customer's or participant's mail)
an agents' notice tells of; NULL for every existing notice and for a notice about no
one message (a routing, a resolution, a command's error). ``customers forget``
takes the notices about a person's mail on another customer's case by it: one about
a photo with no words quoted nothing the erasure could recognise, and kept the
person's address and the photo. Not indexed: the erasure reads the notices of the
cases the person wrote on (by ``case_id``) and picks them out there, and an index
would cost every notice a write for that alone.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

_FK = "fk_notices_about_message_id_case_messages"


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # In place, as 0009 and 0014: batch mode would copy the table and DROP the old
        # one, which the store's PRAGMA foreign_keys=ON refuses (case messages refer to
        # notices).
        op.execute(
            f"ALTER TABLE notices ADD COLUMN about_message_id INTEGER CONSTRAINT {_FK} "
            "REFERENCES case_messages (id)"
        )
        return
    op.add_column("notices", sa.Column("about_message_id", sa.Integer(), nullable=True))
    op.create_foreign_key(_FK, "notices", "case_messages", ["about_message_id"], ["id"])


def downgrade() -> None:
    # The constraint goes with its column, as in 0014's downgrade.
    with op.batch_alter_table("notices", schema=None) as batch_op:
        batch_op.drop_column("about_message_id")
