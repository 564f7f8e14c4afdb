"""The customer's other cases in the agents' notice of a new case, as Zammad's and
OTRS/Znuny's customer panels and Request Tracker's "recent tickets of the requester"
show them: a third report of the same failure in a month calls for a home visit.

The templates in both languages, then the notices of real polls (Dovecot, the SMTP
sink) on SQLite and PostgreSQL: a first report has no history, a merged duplicate is
left out, the count covers the last 90 days only, another customer's cases never show.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from helpers import WEB, mail
from sqlmodel import col
from test_agents import CUSTOMER, Desk, desk, text
from test_templates_all import context

from mailcase.models import Case
from mailcase.render import render_body
from mailcase.store import utcnow

__all__ = ["desk"]  # the fixture

HISTORY = {
    "recent": 2,
    "cases": [
        {
            "folio": "PLR-2026-000120",
            "status": "resolved",
            "outcome": "valid",
            "type": "complaint",
            "opened": "2026-11-20",
        },
        {
            "folio": "PLR-2026-000098",
            "status": "open",
            "outcome": "",
            "type": "",
            "opened": "2026-11-02",
        },
    ],
}


@pytest.mark.parametrize(
    ("language", "expected"),
    [
        (
            "es",
            [
                "Otros casos: 2 de este cliente en los últimos 90 días",
                "PLR-2026-000120  2026-11-20  resuelto (procedente), queja",
                "PLR-2026-000098  2026-11-02  abierto",
            ],
        ),
        (
            "en",
            [
                "Other cases: 2 of this customer's in the last 90 days",
                "PLR-2026-000120  2026-11-20  resolved (upheld), complaint",
                "PLR-2026-000098  2026-11-02  open",
            ],
        ),
    ],
)
def test_the_notice_lists_the_customers_other_cases(language: str, expected: list[str]) -> None:
    body = render_body(
        "agent_notification", language, context("agent_notification", history=HISTORY)
    ).text
    for line in expected:
        assert line in body
    assert "abierto (" not in body and "open (" not in body  # no outcome while open
    plain = render_body("agent_notification", language, context("agent_notification")).text
    assert "PLR-2026-000120" not in plain
    assert "Otros casos" not in plain and "Other cases" not in plain


def _opened(desk: Desk, subject: str, sender: str = f"Juan Pérez <{CUSTOMER}>") -> str:
    folio = desk.open_case(subject=subject, sender=sender, body=f"{subject}: ayuda, por favor.")
    return folio


def _history_lines(desk: Desk, folio: str) -> list[str]:
    body = text(desk.notification(folio))
    lines = body.splitlines()
    start = [i for i, line in enumerate(lines) if line.startswith("Otros casos:")]
    if not start:
        return []
    out = [lines[start[0]]]
    for line in lines[start[0] + 1 :]:
        if not line.startswith("          PLR-"):
            break
        out.append(line.strip())
    return out


def test_a_new_cases_notice_shows_the_customers_earlier_reports(desk: Desk, db_url: str) -> None:
    first = _opened(desk, "Sin internet")
    assert _history_lines(desk, first) == []  # a first report: nothing to show

    second = _opened(desk, "Otra vez sin internet")
    [head, line] = _history_lines(desk, second)
    assert head.startswith("Otros casos: 1 de este cliente en los últimos 90 días")
    assert line.startswith(f"{first}  ") and line.endswith("  abierto")

    # The second report was the same one written twice: merged, it is no report of its own.
    assert desk.cli("cases", "merge", second, "--into", first, "--no-notice")[0] == 0
    assert desk.cli("cases", "type", first, "--type", "queja")[0] == 0
    code, _, err = desk.cli(
        "cases", "resolve", first, "--outcome", "valid", "--cause", "Se cambió el módem."
    )
    assert code == 0, err
    # The first report was opened long ago: listed, not counted in the last 90 days.
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(
            sa.update(Case)
            .where(col(Case.folio) == first)
            .values(created_at=utcnow() - timedelta(days=120))
        )
    engine.dispose()

    third = _opened(desk, "Sin internet de nuevo")
    [head, line] = _history_lines(desk, third)
    assert head.startswith("Otros casos: 0 de este cliente en los últimos 90 días")
    assert line.startswith(f"{first}  ")
    assert line.endswith("  resuelto (procedente), queja")
    assert second not in text(desk.notification(third))

    # Another customer's new case shows none of Juan's.
    other = _opened(desk, "Sin señal", sender="María López <maria.lopez@example.com>")
    assert _history_lines(desk, other) == []
    assert first not in text(desk.notification(other))


def test_only_a_new_cases_notice_shows_the_history(desk: Desk) -> None:
    first = _opened(desk, "Sin internet")
    second = _opened(desk, "Lento")
    assert _history_lines(desk, second)
    # Juan writes again on his second case: an update, no history (the agents know it).
    notice = desk.notification(second)
    ack = desk.last_to(CUSTOMER)
    assert second in str(ack["Subject"])
    desk.deliver(mail(subject=f"Re: {ack['Subject']}", body="Sigue lento."))
    update = desk.notification(second)
    assert update["Message-ID"] != notice["Message-ID"]
    assert "Otros casos" not in text(update)
    assert first not in text(update)


def test_a_web_forms_own_address_has_no_history(desk: Desk) -> None:
    # The site's form sent no Reply-To: each case's "customer" is the form's address, and
    # Laura's report is no history of Pedro's.
    laura = _opened(desk, "Contacto: sin internet", sender=f"Formulario web <{WEB}>")
    pedro = _opened(desk, "Contacto: cobro doble", sender=f"Formulario web <{WEB}>")
    assert laura != pedro
    assert _history_lines(desk, pedro) == []
    assert laura not in text(desk.notification(pedro))
