"""Seventh review round: the session's new features (merge, report, languages) read
against the rest of the product. Each test failed before its fix."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from helpers import NOTIFY, Cli, mail, write_config
from servers import Dovecot, SmtpSink
from sqlmodel import select

from mailcase.models import Case
from mailcase.reasons import TEXTS, Reason
from mailcase.store import Store
from mailcase.triage import NO_SENDER_REASON

pytestmark = pytest.mark.integration

MX = ZoneInfo("America/Mexico_City")


def test_mail_with_no_sender_address_is_told_to_the_agents_in_their_language(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    # A complaint whose From holds only a name (a broken web form) was quarantined and
    # nobody heard of it: the one quarantine with no notice to agents.notify.
    cli = Cli(write_config(tmp_path, mailboxes, sink, notify=True), capsys)
    mailboxes.append("contacto", mail(sender="Juan Perez", subject="Sin servicio desde ayer"))

    cli.poll()

    [row] = cli.json("messages", "list")
    assert (row["disposition"], row["reason"]) == ("quarantined", "no sender address")
    [notice] = [m.message for m in sink.messages if m.rcpt_tos == [NOTIFY]]
    body = notice.get_body(("plain",)).get_content()
    assert "no trae la dirección de correo de quien lo envía" in body


def test_the_ledgers_no_sender_reason_is_the_reasons_english() -> None:
    assert TEXTS[Reason.NO_SENDER]["en"] == NO_SENDER_REASON


def test_a_case_is_dated_by_when_its_report_reached_the_mailbox(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    # Dated by the poll that read it: after two days with the daemon down, the report
    # showed the customer's wait as 0 h, and last evening-of-the-month mail fell in
    # the next month's figures (while its folio took the arrival's year).
    cli = Cli(write_config(tmp_path, mailboxes, sink), capsys)
    arrived = datetime.now(MX) - timedelta(hours=48)
    mailboxes.append(
        "contacto",
        mail(sender="Juan <juan@example.com>", subject="Sin internet"),
        internal_date=arrived,
    )
    cli.poll()
    [case] = cli.json("cases", "list")
    created = datetime.fromisoformat(case["created_at"])
    assert abs(created - arrived.astimezone(UTC)) < timedelta(seconds=2)
    code, _, err = cli("cases", "resolve", case["folio"], "--outcome", "valid", "--cause", "Fibra.")
    assert code == 0, err
    today = datetime.now(MX).date()
    figures = cli.json("report", "--from", str(today - timedelta(days=5)), "--to", str(today))
    assert figures["resolution_time"]["median_hours"] >= 47.9


def test_a_visit_made_on_a_merged_duplicate_is_counted_on_the_case_that_stays(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    # The visit stayed on the merged case, which the report leaves out: visits_booked
    # went from 1 to 0 on merging.
    cli = Cli(write_config(tmp_path, mailboxes, sink), capsys)
    for subject in ("Sin internet", "Sigo sin internet"):
        mailboxes.append("contacto", mail(sender="Juan <juan@example.com>", subject=subject))
    cli.poll()
    first, second = [c["folio"] for c in reversed(cli.json("cases", "list"))]
    tomorrow = (datetime.now(MX) + timedelta(days=1)).date()
    assert cli("cases", "visit", second, "--date", str(tomorrow), "--time", "10:00")[0] == 0
    # The visit took place: three days ago, as the database now says.
    store = Store.open(f"sqlite:///{tmp_path}/mailcase.db", auto_upgrade=False)
    try:
        with store.transaction() as session:
            case = session.exec(select(Case).where(Case.folio == second)).one()
            case.visit_date = tomorrow - timedelta(days=3)
            session.add(case)
    finally:
        store.dispose()

    assert cli("cases", "merge", second, "--into", first, "--no-notice")[0] == 0

    kept = cli.json("cases", "show", first)
    assert kept["visit"] == {"date": str(tomorrow - timedelta(days=3)), "time": "10:00"}
    assert cli.json("cases", "show", second)["visit"] is None
    today = datetime.now(MX).date()
    figures = cli.json("report", "--from", str(today - timedelta(days=5)), "--to", str(today))
    assert figures["visits_booked"] == 1


def test_a_reminder_shows_the_cases_type_as_its_notification_does() -> None:
    from test_templates_all import SAMPLES

    from mailcase.render import render_body

    for language, line in (("es", "Tipo:     Aclaración"), ("en", "Type:        Clarification")):
        body = render_body("reminder", language, {**SAMPLES["reminder"]}).text
        assert line in body
        assert ("#tipo" if language == "es" else "#type") in body
