"""backfill resolved_at and closed_at of cases resolved or closed before 0002

Revision ID: 0006
Revises: 0005

0002 added ``cases.resolved_at`` and ``closed_at`` empty. A case resolved or
closed before it kept them empty, so it never closed by itself
(``cases.close_after_days`` compares ``resolved_at``) and a customer reply
reopened it however late (``cases.reopen_days`` counts from ``resolved_at``).
Their last change (``updated_at``) is the best time there is: for a resolved
case it is the resolution, for a closed one the closing, no earlier than the
resolution.
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # closed_at IS NULL: a case closed since 0002 has its closing time, and one
    # without resolved_at then was reopened (which clears it, keeping the outcome)
    # and closed unresolved: it must not count as resolved.
    op.execute(
        "UPDATE cases SET resolved_at = updated_at WHERE resolved_at IS NULL"
        " AND (status = 'resolved' OR (status = 'closed' AND outcome IS NOT NULL"
        " AND closed_at IS NULL))"
    )
    op.execute(
        "UPDATE cases SET closed_at = updated_at WHERE closed_at IS NULL AND status = 'closed'"
    )


def downgrade() -> None:
    pass  # data only: the times stay, as 0002's columns would hold them
