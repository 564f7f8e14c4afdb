"""indexes on the stored files' hashes

Revision ID: 0013
Revises: 0012

The message store is content-addressed: before a file is removed (an erasure, the
purge by age) every row that may still refer to it is looked for, by
``ledger.raw_sha256``, ``case_messages.raw_sha256`` and ``attachments.sha256``.
Without an index each look read the three tables whole: at 60,000 cases a batch of
50 customers of the purge held SQLite's write lock for 12.5 s (the daemon's polls
waited on it), and each file's removal read them again. Each customer's survey
under that lock also read every case for the cases merged into theirs
(``cases.merged_into_id``) and every participant for the cases they took part in
(``participants.address``): indexed too.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_ledger_raw_sha256", "ledger", ["raw_sha256"])
    op.create_index("ix_case_messages_raw_sha256", "case_messages", ["raw_sha256"])
    op.create_index("ix_attachments_sha256", "attachments", ["sha256"])
    # Partial: the whole-table index was taken for "merged_into_id IS NULL", and the
    # report read every unmerged case (tests/test_report.py's query plans).
    merged = sa.text("merged_into_id IS NOT NULL")
    op.create_index(
        "ix_cases_merged_into_id",
        "cases",
        ["merged_into_id"],
        sqlite_where=merged,
        postgresql_where=merged,
    )
    op.create_index("ix_participants_address", "participants", ["address"])


def downgrade() -> None:
    op.drop_index("ix_participants_address", table_name="participants")
    op.drop_index("ix_cases_merged_into_id", table_name="cases")
    op.drop_index("ix_attachments_sha256", table_name="attachments")
    op.drop_index("ix_case_messages_raw_sha256", table_name="case_messages")
    op.drop_index("ix_ledger_raw_sha256", table_name="ledger")
