"""indexes for a long history

Revision ID: 0007
Revises: 0006

Measured at 200,000 cases (fifth review round): a bounce naming only its
subject and a refused notice scanned every case message (no index on
``notice_id``); each quarantined message on SQLite read every notice ever
sent to ``agents.notify`` (``rcpt_to`` alone); an agent's reply scanned for
their last relayed message (``from_addr``); ``cases list`` read and sorted
every case. Each grew with the whole history, inside ingest's transaction.
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_case_messages_notice_id", "case_messages", ["notice_id"])
    op.create_index(
        "ix_case_messages_from_addr_kind_id", "case_messages", ["from_addr", "kind", "id"]
    )
    op.create_index(
        "ix_notices_rcpt_to_kind_created_at", "notices", ["rcpt_to", "kind", "created_at"]
    )
    # Its leading column: every query it served, the new one serves.
    op.drop_index("ix_notices_rcpt_to", table_name="notices")
    op.create_index("ix_cases_created_at_id", "cases", ["created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_cases_created_at_id", table_name="cases")
    op.create_index("ix_notices_rcpt_to", "notices", ["rcpt_to"])
    op.drop_index("ix_notices_rcpt_to_kind_created_at", table_name="notices")
    op.drop_index("ix_case_messages_from_addr_kind_id", table_name="case_messages")
    op.drop_index("ix_case_messages_notice_id", table_name="case_messages")
