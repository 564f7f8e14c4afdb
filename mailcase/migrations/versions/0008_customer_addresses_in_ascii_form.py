"""customer addresses with a non-ASCII domain in their ASCII (IDNA) form

Revision ID: 0008
Revises: 0007

From this release every address is stored as :func:`mailcase.inbound.canonical_address`
spells it: a non-ASCII domain in its IDNA form (``juan@telefonía.mx`` is
``juan@xn--telefona-i2a.mx``), the form notices were already sent to. A case
stored with the other spelling would no longer find its customer's mail, so
the stored ones are rewritten. Few rows qualify; the conversion is written
here, frozen, not imported: a migration must do tomorrow what it does today.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def _ascii_form(address: str) -> str:
    """``address`` with its domain in IDNA form, when its local part is ASCII and the
    domain converts to itself and back (the rule of mailcase.wire.ascii_domain)."""
    local, at, domain = address.rpartition("@")
    if not at or address.isascii() or not local.isascii():
        return address
    try:
        ascii_form = domain.encode("idna")
        if ascii_form.decode("idna").lower() != domain.lower():
            return address
        return f"{local}@{ascii_form.decode('ascii')}"
    except UnicodeError:
        return address


# Only an address with a character outside printable ASCII can change: the rest of a
# large table is not read into Python. (SQLite's GLOB and PostgreSQL's regular
# expressions say it each their own way.)
_OUTSIDE_ASCII = {
    "sqlite": {
        "cases": "SELECT id, customer FROM cases WHERE customer GLOB '*[^ -~]*'",
        "participants": "SELECT id, case_id, address FROM participants"
        " WHERE address GLOB '*[^ -~]*'",
    },
    "postgresql": {
        "cases": "SELECT id, customer FROM cases WHERE customer ~ '[^ -~]'",
        "participants": "SELECT id, case_id, address FROM participants WHERE address ~ '[^ -~]'",
    },
}


def upgrade() -> None:
    conn = op.get_bind()
    queries = _OUTSIDE_ASCII[conn.dialect.name]
    for case_id, customer in conn.execute(sa.text(queries["cases"])).fetchall():
        ascii_form = _ascii_form(customer)
        if ascii_form != customer:
            conn.execute(
                sa.text("UPDATE cases SET customer = :c WHERE id = :i"),
                {"c": ascii_form, "i": case_id},
            )
    for row_id, case_id, address in conn.execute(sa.text(queries["participants"])).fetchall():
        ascii_form = _ascii_form(address)
        if ascii_form == address:
            continue
        taken = conn.execute(
            sa.text("SELECT 1 FROM participants WHERE case_id = :c AND address = :a"),
            {"c": case_id, "a": ascii_form},
        ).first()
        if taken is not None:  # both spellings on one case: one row
            conn.execute(sa.text("DELETE FROM participants WHERE id = :i"), {"i": row_id})
        else:
            conn.execute(
                sa.text("UPDATE participants SET address = :a WHERE id = :i"),
                {"a": ascii_form, "i": row_id},
            )


def downgrade() -> None:
    pass  # data only: the ASCII form is the same mailbox
