"""indexes for the erasure's lookups

Revision ID: 0013
Revises: 0012

Each customer's survey under a purge batch's lock read every case for the cases
merged into theirs (``cases.merged_into_id``: indexed where set, so that the index
costs a new case nothing and ``mailcase report``'s "not merged" never takes it) and
every participant for the cases they took part in (``participants.address``).

The stored files' hashes (``ledger.raw_sha256``, ``case_messages.raw_sha256``,
``attachments.sha256``) are not indexed, though the erasure looks files up by them:
random 64-character keys cost every ingested message about 1 ms of CPU on SQLite
(bench/ingest.py at 1,000 messages: the poll's CPU 9.3 to 10.4 s with them, 8.0 to
8.9 s without), and ingest is mailcase's main work. An erasure on SQLite erases a few
customers per transaction instead (mailcase.erasure.SQLITE_BATCH).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
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
