"""A customer's "¡Gracias!" to a resolved case, through a real poll: kept, not reopened."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from helpers import NOTIFY, Cli, mail, offline_runtime, pause_after_triage, write_config
from servers import Dovecot, SmtpSink

pytestmark = pytest.mark.integration

CUSTOMER = "juan.perez@example.com"
# Gmail's answer: the customer's words above the quoted resolution notice.
QUOTE = (
    "\n\nEl mar, 24 nov 2026 a las 10:30, Internet Plarey "
    "<contacto@internet-plarey.com.mx> escribió:\n"
    "> Su reporte fue resuelto. Si el problema continúa, responda este correo.\n"
)


def _resolved(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, *, extra: str = "", **kw: Any
) -> tuple[Cli, str]:
    """The desk (agents notified of everything) and a case it resolved, every notice sent."""
    cli = Cli(write_config(tmp_path, mailboxes, sink, notify=True, extra=extra, **kw), capsys)
    mailboxes.append("contacto", mail())
    cli.poll()
    [case] = cli.json("cases", "list")
    folio = str(case["folio"])
    code, _, err = cli("cases", "resolve", folio, "--outcome", "valid", "--cause", "Módem nuevo.")
    assert code == 0, err
    cli.poll()  # sends the resolution
    sink.wait_for(3)  # acknowledgement, agents' notice, resolution
    sink.clear()
    return cli, folio


def _reply(mailboxes: Dovecot, cli: Cli, folio: str, body: str, **kw: Any) -> dict[str, Any]:
    """The customer answers the resolution; the reply's ledger row."""
    [uid] = mailboxes.append_many(
        "contacto", [mail(subject=f"Re: [Folio {folio}] Sin servicio de internet", body=body, **kw)]
    )
    cli.poll()
    [row] = [r for r in cli.json("messages", "list") if r["uid"] == uid]
    return row  # type: ignore[no-any-return]


def test_thanks_are_kept_on_the_resolved_case_and_a_complaint_still_reopens_it(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str
) -> None:
    cli, folio = _resolved(tmp_path, mailboxes, sink, capsys, db_url=db_url)
    before, notices = cli.json("cases", "show", folio), cli.json("outbox", "list")
    row = _reply(mailboxes, cli, folio, "¡Muchas gracias!" + QUOTE)
    assert row["disposition"] == "follow_up" and row["folio"] == folio
    assert row["reason"] == f"folio {folio}; thanks only: not reopened"
    case = cli.json("cases", "show", folio)
    for field in ("status", "outcome", "cause", "resolved_at", "closed_at"):
        assert case[field] == before[field], field
    assert case["status"] == "resolved"
    thanked, note = case["messages"][-2:]
    assert thanked["kind"] == "customer" and thanked["from"] == CUSTOMER
    assert thanked["text"] == "¡Muchas gracias!"
    assert note["kind"] == "system" and note["text"] == "thanks only: not reopened"
    # Nobody told, nothing queued; no customer waiting for an answer.
    assert sink.messages == []
    assert cli.json("outbox", "list") == notices
    assert cli.json("cases", "list", "--unanswered") == []
    # More than thanks reopens the case, and the agents hear of it, as before.
    row = _reply(mailboxes, cli, folio, "Gracias, pero sigo sin servicio." + QUOTE)
    assert row["reason"] == f"folio {folio}; reopens the case"
    assert cli.json("cases", "show", folio)["status"] == "open"
    [notice] = sink.wait_for(1)
    assert notice.rcpt_tos == [NOTIFY] and "sigo sin servicio" in notice.message.as_string()


def test_a_case_an_agent_reopens_after_thanks_is_not_unanswered(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    # The thanks asked for nothing: the resolution answered the customer's last request.
    cli, folio = _resolved(tmp_path, mailboxes, sink, capsys)
    _reply(mailboxes, cli, folio, "Ok, gracias\nJuan")
    code, _, err = cli("cases", "reopen", folio)
    assert code == 0, err
    assert cli.json("cases", "list", "--unanswered") == []
    # The customer's next word is waited on, as always.
    _reply(mailboxes, cli, folio, "Ahora se corta cada hora.")
    assert [c["folio"] for c in cli.json("cases", "list", "--unanswered")] == [folio]


def test_thanks_with_a_photo_or_too_large_to_read_whole_reopen_the_case(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    cli, folio = _resolved(
        tmp_path, mailboxes, sink, capsys, extra="[limits]\nmax_message_bytes = 20000\n"
    )
    photo = [("modem.jpg", "image/jpeg", b"\xff\xd8\xff\xe0" + b"\0" * 1000)]
    row = _reply(mailboxes, cli, folio, "Gracias", attachments=photo)
    assert row["reason"] == f"folio {folio}; reopens the case"
    assert cli("cases", "resolve", folio, "--outcome", "valid", "--cause", "Otra vez.")[0] == 0
    # Over limits.max_message_bytes only the beginning is read, and no file is kept:
    # what it carried is unknown.
    big = [("video.mp4", "video/mp4", b"\0" * 30000)]
    row = _reply(mailboxes, cli, folio, "Gracias", attachments=big)
    assert "reopens the case" in row["reason"]
    assert cli.json("cases", "show", folio)["status"] == "open"


def test_reopen_on_thanks_restores_the_reopening(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    extra = "[cases]\nreopen_on_thanks = true\n"
    cli, folio = _resolved(tmp_path, mailboxes, sink, capsys, extra=extra)
    row = _reply(mailboxes, cli, folio, "¡Muchas gracias!" + QUOTE)
    assert row["reason"] == f"folio {folio}; reopens the case"
    assert cli.json("cases", "show", folio)["status"] == "open"
    [notice] = sink.wait_for(1)
    assert notice.rcpt_tos == [NOTIFY]


def test_thanks_triaged_before_an_agent_reopens_the_case_are_decided_again(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Triage read the case resolved; an agent's reopen committed before the reply locked
    # it (PostgreSQL). Kept as thanks on a case now open, nobody would hear of them.
    from sqlmodel import select

    from mailcase import casework, service
    from mailcase.imap import FetchedMessage
    from mailcase.models import Case, LedgerEntry
    from mailcase.store import case_by_folio, utcnow

    rt = offline_runtime(tmp_path, pg_url, notify=True)
    first = FetchedMessage(1, mail(sender=CUSTOMER), utcnow())
    assert service.ingest_message(rt, "contacto", 1, first) == "new_case"
    with rt.store.transaction() as session:
        case = session.exec(select(Case)).one()
        casework.resolve(session, rt.settings, case, "valid", "Módem nuevo.", by="cli:ana")
        folio = case.folio
    in_triage, go_on = pause_after_triage(monkeypatch)
    subject = f"Re: [Folio {folio}] Sin servicio de internet"
    thanks = mail(sender=CUSTOMER, subject=subject, body="¡Gracias!")
    worker = threading.Thread(
        target=service.ingest_message, args=(rt, "contacto", 1, FetchedMessage(2, thanks, utcnow()))
    )
    worker.start()
    try:
        assert in_triage.wait(20)
        with rt.store.transaction() as session:  # what `mailcase cases reopen` does
            found = case_by_folio(session, folio, for_update=True)
            assert found is not None
            casework.reopen(session, found, by="cli:ana")
    finally:
        go_on.set()
        worker.join(20)
    with rt.store.read_session() as session:
        reason = session.exec(select(LedgerEntry.reason).where(LedgerEntry.uid == 2)).one()
    rt.store.dispose()
    assert reason == f"folio {folio}"  # a follow-up of the open case: the agents are told


def test_an_auto_reply_saying_the_notes_words_hides_no_complaint(tmp_path: Path) -> None:
    # The reminders drop the customer's message a "thanks only" note follows; an
    # auto-reply kept on the case as "system" may say those words too.
    from datetime import UTC, datetime

    from sqlmodel import select

    from mailcase import casework, reminders, service
    from mailcase.imap import FetchedMessage
    from mailcase.models import Case, CaseMessage
    from mailcase.thanks import NOT_REOPENED

    rt = offline_runtime(tmp_path)
    at = datetime(2026, 11, 20, 10, 30, tzinfo=UTC)
    assert service.ingest_message(rt, "contacto", 1, FetchedMessage(1, mail(), at)) == "new_case"
    with rt.store.transaction() as session:
        case = session.exec(select(Case)).one()
        folio = case.folio
        # An agent answered the customer (a mail to the customer, support in copy).
        answer = casework.record(session, case, "agent", "Ya revisamos.", from_addr="ana@x")
        answer.to_addrs = CUSTOMER
        session.add(answer)
    subject = f"Re: [Folio {folio}] Sin servicio de internet"
    complaint = mail(subject=subject, body="Sigue sin servicio, ya van tres días.")
    got = service.ingest_message(rt, "contacto", 1, FetchedMessage(2, complaint, at))
    assert got == "follow_up"
    auto = mail(
        subject=f"Respuesta automática: {subject}",
        body=NOT_REOPENED,
        headers={"Auto-Submitted": "auto-replied"},
    )
    assert service.ingest_message(rt, "contacto", 1, FetchedMessage(3, auto, at)) == "auto_reply"
    with rt.store.read_session() as session:
        kinds = [m.kind for m in session.exec(select(CaseMessage).order_by(CaseMessage.id))]
        assert kinds[-2:] == ["customer", "system"]
        assert [c.folio for c in reminders.unanswered_cases(session)] == [folio]
