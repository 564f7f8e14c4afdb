"""Bounces that say they are auto-replies, and delivery reports that are not failures.

1. Exim and Gmail put ``Auto-Submitted: auto-replied`` on their plain-text
   bounces; the bounce evidence (MAILER-DAEMON/postmaster sender,
   ``X-Failed-Recipients``) must win, or the bounce of an acknowledgement is
   read as an auto-reply and never recorded.
2. RFC 3464 section 2.3.3: only ``Action: failed`` is a failure; ``delayed`` is
   a warning and ``delivered``/``relayed``/``expanded`` are successes, so they
   must not mark the notice failed nor tell the agents.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from helpers import CONTACTO, NOTIFY, Cli, mail, offline_runtime, write_config
from servers import Dovecot, SmtpSink
from sqlmodel import select

from mailcase import service
from mailcase.classify import Classification, MailKind, classify
from mailcase.dsn import parse_dsn
from mailcase.imap import FetchedMessage
from mailcase.inbound import InboundMail, parse_inbound
from mailcase.models import Case, CaseMessage, Notice

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
CUSTOMER = "juan.perez@example.com"
NOTICE_ID = "<mc.1a2b3c4d5e6f@internet-plarey.com.mx>"


def inbound(headers: dict[str, str], body: str = "Hola.\r\n") -> InboundMail:
    """A small text/plain message with ``headers`` (From, To and Subject have defaults)."""
    merged = {
        "From": f"Juan Perez <{CUSTOMER}>",
        "To": CONTACTO,
        "Subject": "Mail delivery failed: returning message to sender",
        "Message-ID": "<b1@mx.example.com>",
        **headers,
    }
    head = "".join(f"{name}: {value}\r\n" for name, value in merged.items())
    raw = f"MIME-Version: 1.0\r\nContent-Type: text/plain\r\n{head}\r\n{body}"
    return parse_inbound(raw.encode())


# --- 1. bounce evidence wins over Auto-Submitted --------------------------------------


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        pytest.param(
            {
                "Return-Path": "<>",
                "X-Failed-Recipients": CUSTOMER,
                "Auto-Submitted": "auto-replied",
                "From": "Mail Delivery System <Mailer-Daemon@mx.example.com>",
            },
            "From: mailer-daemon@mx.example.com",
            id="exim",
        ),
        pytest.param(
            {"Auto-Submitted": "auto-replied", "From": "postmaster@correo.mx"},
            "From: postmaster@correo.mx",
            id="postmaster",
        ),
        pytest.param(
            {"Auto-Submitted": "auto-replied", "From": "MAILER-DAEMON"},
            "From: MAILER-DAEMON",
            id="bare-mailer-daemon",
        ),
        pytest.param(
            # Gmail's text bounces name the failed address even when From is odd.
            {"Auto-Submitted": "auto-replied", "X-Failed-Recipients": CUSTOMER},
            f"X-Failed-Recipients: {CUSTOMER}",
            id="x-failed-recipients",
        ),
    ],
)
def test_bounce_evidence_beats_auto_submitted(headers: dict[str, str], reason: str) -> None:
    assert classify(inbound(headers)) == Classification(MailKind.BOUNCE, reason)


@pytest.mark.parametrize("return_path", ["<>", "<MAILER-DAEMON>"])
def test_null_return_path_still_yields_to_auto_submitted(return_path: str) -> None:
    # RFC 3834 section 3.3: out-of-office replies use the null path too (sendmail
    # writes it <MAILER-DAEMON>); they must not mark our notice undeliverable.
    reply = inbound(
        {"Return-Path": return_path, "Auto-Submitted": "auto-replied", "Subject": "Ausente"}
    )
    assert classify(reply) == Classification(MailKind.AUTO_REPLY, "Auto-Submitted: auto-replied")


# Bounces in the shared corpus that carry Auto-Submitted: auto-replied (Exim,
# Google Groups, Mail.ru, an unnamed MTA, and a postmaster notice sisimai keeps
# under not/), and an old postmaster report with no report-type.
CORPUS_BOUNCES = [
    "sisimai-set-of-emails/bsd/lhost-exim-01.eml",
    "sisimai-set-of-emails/bsd/lhost-exim-02.eml",
    "sisimai-set-of-emails/bsd/lhost-exim-03.eml",
    "sisimai-set-of-emails/bsd/lhost-googlegroups-01.eml",
    "sisimai-set-of-emails/bsd/lhost-googlegroups-07.eml",
    "sisimai-set-of-emails/bsd/lhost-mailru-01.eml",
    "sisimai-set-of-emails/bsd/lhost-x6-01.eml",
    "sisimai-set-of-emails/not/rb-issue-368-bug.eml",
    "cpython-test_email/msg_16.txt",
]


@pytest.mark.parametrize("name", CORPUS_BOUNCES)
def test_corpus_bounces_with_auto_submitted_are_bounces(name: str) -> None:
    path = CORPUS / name
    if not path.is_file():
        pytest.skip(f"{name} is not in ../shared/corpus")
    assert classify(parse_inbound(path.read_bytes())).kind is MailKind.BOUNCE


# --- 2. only Action: failed is a failure ------------------------------------------


def report(*blocks: str, returned: str = NOTICE_ID, n: int = 1) -> bytes:
    """A multipart/report DSN with one per-recipient block per ``blocks`` entry.

    ``n`` numbers its own Message-ID, so a second report is not a duplicate.
    """
    status = "".join(f"\r\n{b.strip()}\r\n" for b in blocks)
    return (
        "From: Mail Delivery System <MAILER-DAEMON@mx.example.com>\r\n"
        f"To: {CONTACTO}\r\nSubject: Delivery Status Notification\r\n"
        f"Message-ID: <dsn{n}@mx.example.com>\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: text/plain\r\n\r\nA report.\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        f"Reporting-MTA: dns; mx.example.com\r\n{status}\r\n"
        "--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"From: {CONTACTO}\r\nMessage-ID: {returned}\r\n\r\n--B--\r\n"
    ).encode()


def block(action: str | None, status: str, rcpt: str = CUSTOMER) -> str:
    line = f"Action: {action}\r\n" if action is not None else ""
    return f"Final-Recipient: rfc822; {rcpt}\r\n{line}Status: {status}\r\n"


def test_a_delay_is_not_a_failure() -> None:
    dsn = parse_dsn(report(block("delayed", "4.4.7")))
    assert not dsn.is_failure
    assert dsn.failed == ()
    assert dsn.worst is not None
    assert (dsn.worst.recipient, dsn.worst.action, dsn.worst.status) == (
        CUSTOMER,
        "delayed",
        "4.4.7",
    )
    assert dsn.message_ids == (NOTICE_ID,)


@pytest.mark.parametrize("action", ["delivered", "relayed", "expanded", "Relayed"])
def test_a_success_is_not_a_failure(action: str) -> None:
    dsn = parse_dsn(report(block(action, "2.0.0")))
    assert not dsn.is_failure
    assert dsn.failed == () and dsn.recipients == ()
    assert [s.action for s in dsn.statuses] == [action.lower()]


def test_one_failed_recipient_makes_the_report_a_failure_and_is_the_one_shown() -> None:
    dsn = parse_dsn(
        report(
            block("delayed", "4.4.7", "otro@example.com"),
            block("relayed", "2.0.0", "tercero@example.com"),
            block("failed", "5.2.2"),
        )
    )
    assert dsn.is_failure
    assert [r.recipient for r in dsn.failed] == [CUSTOMER]
    assert dsn.worst is not None and dsn.worst.status == "5.2.2"
    # recipients: the ones not delivered, failed or delayed, in report order.
    assert [r.action for r in dsn.recipients] == ["delayed", "failed"]


@pytest.mark.parametrize(
    "action",
    [
        pytest.param(None, id="no-action-field"),
        pytest.param("failed (mailbox full)", id="comment-after-keyword"),
        pytest.param("FAILED", id="upper-case"),
    ],
)
def test_failed_action_variants_are_failures(action: str | None) -> None:
    dsn = parse_dsn(report(block(action, "5.2.2")))
    assert dsn.is_failure
    assert [(r.recipient, r.status) for r in dsn.failed] == [(CUSTOMER, "5.2.2")]


def test_a_report_with_no_readable_status_is_a_failure() -> None:
    # An unknown action-value is left out, and with nothing else read the
    # bounce counts as a failure, as before.
    dsn = parse_dsn(report(block("bounced", "5.0.0")))
    assert dsn.statuses == () and dsn.worst is None
    assert dsn.is_failure


def test_a_plain_text_bounce_is_a_failure() -> None:
    # Exim, qmail and Gmail text bounces carry no message/delivery-status part.
    dsn = parse_dsn(exim_bounce(NOTICE_ID))
    assert dsn.statuses == ()
    assert dsn.is_failure
    assert NOTICE_ID in dsn.message_ids


def exim_bounce(notice_id: str) -> bytes:
    """A bounce as Exim writes it: text only, Auto-Submitted, the notice's copy inline."""
    return (
        "Return-path: <>\r\n"
        "Received: from mail by mx.example.com with local (Exim 4.96)\r\n"
        "\tid 1P1ceB-000FL1-4q\r\n"
        "Date: Fri, 20 Nov 2026 19:15:23 +0000\r\n"
        "Message-Id: <E1P1ceB-000FL1-4q@mx.example.com>\r\n"
        f"X-Failed-Recipients: {CUSTOMER}\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "From: Mail Delivery System <Mailer-Daemon@mx.example.com>\r\n"
        f"To: {CONTACTO}\r\n"
        "Subject: Mail delivery failed: returning message to sender\r\n\r\n"
        "This message was created automatically by mail delivery software.\r\n\r\n"
        "A message that you sent could not be delivered to one or more of its\r\n"
        "recipients. This is a permanent error. The following address(es) failed:\r\n\r\n"
        f"  {CUSTOMER}\r\n    mailbox is full\r\n\r\n"
        "------ This is a copy of the message, including all the headers. ------\r\n\r\n"
        f"Return-path: <{CONTACTO}>\r\nFrom: {CONTACTO}\r\nTo: {CUSTOMER}\r\n"
        f"Subject: [Folio PLR-2026-000001] Sin servicio\r\nMessage-ID: {notice_id}\r\n"
        "Auto-Submitted: auto-replied\r\n\r\nHola\r\n"
    ).encode()


# --- end to end: real Dovecot and SMTP sink ------------------------------------------


class Desk:
    """One help desk with agents.notify set, read by ``mailcase poll``."""

    def __init__(self, cli: Cli, imap: Dovecot, sink: SmtpSink) -> None:
        self.cli = cli
        self.imap = imap
        self.sink = sink

    def deliver(self, raw: bytes) -> None:
        self.imap.append("contacto", raw)
        self.cli.poll()

    def sent_to(self, rcpt: str) -> int:
        return sum(1 for m in self.sink.messages if m.rcpt_tos == [rcpt])

    def acknowledgement(self) -> dict[str, Any]:
        [ack] = [n for n in self.cli.json("outbox", "list") if n["kind"] == "acknowledgement"]
        return ack  # type: ignore[no-any-return]

    def system_texts(self, folio: str) -> list[str]:
        messages = self.cli.json("cases", "show", folio)["messages"]
        return [str(m["text"]) for m in messages if m["kind"] == "system"]


@pytest.fixture
def desk(tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str) -> Desk:
    config = write_config(tmp_path, mailboxes, sink, notify=True, db_url=db_url)
    return Desk(Cli(config, capsys), mailboxes, sink)


def open_case(desk: Desk) -> tuple[str, str]:
    """A customer writes; the case's folio and its acknowledgement's Message-ID."""
    desk.deliver(mail())
    [case] = desk.cli.json("cases", "list")
    [ack] = [m.message for m in desk.sink.messages if m.rcpt_tos == [CUSTOMER]]
    return str(case["folio"]), str(ack["Message-ID"]).strip()


def assert_acknowledgement_bounced(desk: Desk, folio: str, agents_before: int) -> None:
    """The last message was a bounce on ``folio``: its acknowledgement failed, the
    case says so, the agents were told once, and no case was opened for it."""
    last = desk.cli.json("messages", "list")[-1]
    assert (last["disposition"], last["folio"]) == ("bounce", folio)
    assert desk.acknowledgement()["status"] == "failed"
    texts = desk.system_texts(folio)
    assert any(f"failed delivery of the acknowledgement to {CUSTOMER}" in t for t in texts)
    assert desk.sent_to(NOTIFY) == agents_before + 1
    assert len(desk.cli.json("cases", "list")) == 1


@pytest.mark.integration
def test_exim_bounce_of_the_acknowledgement_marks_it_failed_and_tells_agents(
    desk: Desk,
) -> None:
    folio, ack_id = open_case(desk)
    agents_before = desk.sent_to(NOTIFY)
    desk.deliver(exim_bounce(ack_id))
    assert_acknowledgement_bounced(desk, folio, agents_before)


def _bounced_count() -> float:
    from mailcase import metrics

    value = metrics.REGISTRY.get_sample_value("mailcase_notices_total", {"outcome": "bounced"})
    return value or 0.0


@pytest.mark.integration
def test_a_bounced_notice_is_counted_once_in_the_notices_metric(desk: Desk) -> None:
    # A notice a bounce marked failed was in `status` but in no metric: an alert on
    # notices_total could not see customers who never got their folio.
    _folio, ack_id = open_case(desk)
    before = _bounced_count()
    desk.deliver(exim_bounce(ack_id))
    assert _bounced_count() == before + 1
    desk.deliver(exim_bounce(ack_id).replace(b"E1P1ceB", b"E2P2ceB"))  # the MTA's second try
    assert _bounced_count() == before + 1


@pytest.mark.integration
@pytest.mark.parametrize(("action", "status"), [("delayed", "4.4.7"), ("relayed", "2.0.0")])
def test_delay_or_success_report_leaves_the_acknowledgement_alone(
    desk: Desk, action: str, status: str
) -> None:
    folio, ack_id = open_case(desk)
    sent_before = len(desk.sink.messages)
    desk.deliver(report(block(action, status), returned=ack_id))
    last = desk.cli.json("messages", "list")[-1]
    # Recorded as automatic mail on the case: no new case, nothing answered.
    assert (last["disposition"], last["folio"]) == ("bounce", folio)
    assert len(desk.cli.json("cases", "list")) == 1
    assert len(desk.sink.messages) == sent_before
    assert desk.acknowledgement()["status"] == "sent"
    texts = desk.system_texts(folio)
    assert any(f"acknowledgement to {CUSTOMER} {action}: {status}" in t for t in texts)
    assert not any("failed delivery" in t for t in texts)

    # The MTA gives up later: that report marks the notice and tells the agents once.
    agents_before = desk.sent_to(NOTIFY)
    desk.deliver(report(block("failed", "5.4.7"), returned=ack_id, n=2))
    assert desk.acknowledgement()["status"] == "failed"
    assert desk.sent_to(NOTIFY) == agents_before + 1


def test_a_recipient_written_in_angle_brackets_is_the_bare_address() -> None:
    # Some MTAs write "Final-Recipient: rfc822; <u@ci.com>"; the brackets reached the
    # case, the notice's last error and the agents' notice.
    dsn = parse_dsn(report(block("failed", "5.1.1", f"<{CUSTOMER.upper()}>")))
    assert [r.recipient for r in dsn.failed] == [CUSTOMER]


@pytest.mark.parametrize(
    ("quotes_subject", "failed"),
    [(True, True), (False, False)],
    ids=["quoting-the-notices-subject", "a-forger-knowing-only-the-folio"],
)
def test_a_bounce_naming_the_case_only_by_its_folio_marks_the_notice_failed(
    tmp_path: Path, quotes_subject: bool, failed: bool
) -> None:
    # Exchange 2003 and Domino return no Message-ID of the bounced message: only its
    # subject, with the folio, and the recipient in their own words. A stranger who
    # knows a folio and the customer's address does not know the subject.
    rt = offline_runtime(tmp_path, notify=True)
    now = datetime.now(UTC)
    assert service.ingest_message(rt, "contacto", 1, FetchedMessage(1, mail(), now)) == "new_case"
    with rt.store.transaction() as session:
        folio = session.exec(select(Case.folio)).one()
        session.execute(sa.update(Notice).values(status="sent"))  # delivered by the outbox
    subject = f"[Folio {folio}] Sin servicio de internet" if quotes_subject else f"Folio {folio}"
    bounce = (
        "Return-Path: <>\r\nFrom: System Administrator <postmaster@mx.example.com>\r\n"
        f"To: {CONTACTO}\r\nSubject: Undeliverable: {subject}\r\n"
        "Message-ID: <x1@mx.example.com>\r\n\r\nYour message\r\n\r\n"
        f"  Subject: {subject}\r\n\r\n"
        f"did not reach the following recipient(s):\r\n\r\n{CUSTOMER} on Thu, 26 Nov 2026\r\n"
        "    The recipient name is not recognized\r\n"
    ).encode()
    assert service.ingest_message(rt, "contacto", 1, FetchedMessage(2, bounce, now)) == "bounce"
    with rt.store.transaction() as session:
        notices = {n.kind: (n.status, n.rcpt_to) for n in session.exec(select(Notice)).all()}
        noted = session.exec(select(CaseMessage.kind).where(CaseMessage.kind == "system")).all()
    rt.store.dispose()
    assert noted  # recorded on the case either way
    assert notices["acknowledgement"] == ("failed" if failed else "sent", CUSTOMER)
    assert ("delivery_failed" in notices) is failed


def _statements(rt: Any) -> list[str]:
    """The SQL statements ``rt``'s database runs from now on, as they run."""
    seen: list[str] = []

    def note(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    sa.event.listen(rt.store.engine, "before_cursor_execute", note)
    return seen


def test_a_forged_bounce_folding_thousands_of_ids_costs_one_lookup(
    tmp_path: Path, db_url: str
) -> None:
    # One SELECT per id: 100,000 ids took half a minute on PostgreSQL, holding the
    # mailbox; a real report returns one message and names a few ids at most.
    rt = offline_runtime(tmp_path, db_url, notify=True)
    now = datetime.now(UTC)
    assert service.ingest_message(rt, "contacto", 1, FetchedMessage(1, mail(), now)) == "new_case"
    ids = "\r\n ".join(f"<f{n}@forged.example>" for n in range(20_000))
    bounce = (
        "Return-Path: <>\r\nFrom: MAILER-DAEMON@mx.example.com\r\n"
        f"To: {CONTACTO}\r\nSubject: Undelivered Mail\r\nMessage-ID: <x2@mx.example.com>\r\n\r\n"
        f"The original message:\r\n\r\nMessage-ID: {ids}\r\n"
    ).encode()
    seen = _statements(rt)
    assert service.ingest_message(rt, "contacto", 1, FetchedMessage(2, bounce, now)) == "bounce"
    rt.store.dispose()
    lookups = [s for s in seen if "FROM notices" in s and "message_id" in s]
    assert len(lookups) <= 2, len(lookups)


def test_thousands_of_references_are_looked_up_as_the_last_hundred(
    tmp_path: Path, db_url: str
) -> None:
    # 70,000 References made one lookup of 70,000 parameters, which PostgreSQL refuses:
    # the message failed its mailbox's every poll, as if the database were down.
    rt = offline_runtime(tmp_path, db_url, notify=True)
    now = datetime.now(UTC)
    # Short ids: the whole header section stays under inbound.MAX_HEADER_BYTES.
    refs = [f"<{n}@x>" for n in range(70_000)]
    # Each field under limits.max_field_bytes; nothing limits how many there are.
    fields = ["\r\n ".join(refs[n : n + 2000]) for n in range(0, 70_000, 2000)]
    raw = "".join(f"References: {value}\r\n" for value in fields).encode() + mail()
    assert len(parse_inbound(raw).references) == 70_000
    assert len(parse_inbound(raw).thread_ids) == 100
    assert service.ingest_message(rt, "contacto", 1, FetchedMessage(1, raw, now)) == "new_case"
    rt.store.dispose()


@pytest.mark.parametrize(
    "subject",
    [
        "Sin servicio de internet",
        "Sin señal en el módem",
        "Can’t connect",
        "No internet " + "since yesterday at noon " * 6,  # clipped with "…"
    ],
)
def test_a_bounce_naming_only_an_encoded_subject_finds_its_notice(
    tmp_path: Path, subject: str
) -> None:
    # Exchange 2003 / Domino style: no Message-ID, the subject quoted RFC 2047-encoded
    # and in a quoted-printable body. Matched against the raw bytes, a subject with one
    # accent never matched: the acknowledgement stayed "sent", nobody was told.
    import email.header
    import quopri

    rt = offline_runtime(tmp_path, notify=True)
    customer = "juan.perez@example.com"
    now = datetime.now(UTC)
    fetched = FetchedMessage(1, mail(subject=subject), now)
    assert service.ingest_message(rt, "contacto", 1, fetched) == "new_case"
    with rt.store.transaction() as session:
        session.execute(sa.update(Notice).values(status="sent"))
        sent = session.exec(select(CaseMessage.subject).where(CaseMessage.kind == "notice")).first()
    assert sent is not None
    body = (
        f"Your message\r\n\r\n  To: {customer}\r\n  Subject: {sent}\r\n\r\n"
        f"did not reach the following recipient(s):\r\n\r\n{customer}\r\n"
        "    The recipient name is not recognized\r\n"
    )
    bounce = (
        "Return-Path: <>\r\nFrom: System Administrator <postmaster@mx.example.com>\r\n"
        f"To: {CONTACTO}\r\n"
        f"Subject: {email.header.Header('Undeliverable: ' + sent, 'utf-8').encode()}\r\n"
        "Message-ID: <ndr-1@mx.example.com>\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        + quopri.encodestring(body.encode("utf-8")).decode()
    ).encode()
    try:
        assert service.ingest_message(rt, "contacto", 1, FetchedMessage(2, bounce, now)) == "bounce"
        with rt.store.transaction() as session:
            statuses = {n.kind: n.status for n in session.exec(select(Notice)).all()}
    finally:
        rt.store.dispose()
    assert statuses["acknowledgement"] == "failed", statuses
    assert "delivery_failed" in statuses


@pytest.mark.integration
def test_the_bounce_notice_names_the_customer_and_threads_with_the_case(desk: Desk) -> None:
    # "No se pudo entregar el acuse de recibo del caso … a rosa@…" and nothing else, as a
    # loose mail outside the case's conversation (agent notices review).
    _folio, ack_id = open_case(desk)
    [notification] = [m.message for m in desk.sink.messages if m.rcpt_tos == [NOTIFY]]
    desk.deliver(exim_bounce(ack_id))
    failed = [m.message for m in desk.sink.messages if m.rcpt_tos == [NOTIFY]][-1]
    text = failed.get_body(("plain",)).get_content()
    assert f"Cliente:     Juan Pérez <{CUSTOMER}>" in text
    assert "Asunto:      Sin servicio de internet" in text
    assert str(notification["Message-ID"]).strip() in str(failed["References"])


def kddi_bounce(notice_id: str) -> bytes:
    """A bounce as KDDI's au one net writes it: no report, no bounce sender, no null
    Return-Path; a no-reply From and the undelivered message attached."""
    return (
        "Return-Path: <no-reply@x0000000000000.dion.ne.jp>\r\n"
        f"To: <{CONTACTO}>\r\n"
        "From: no-reply@x0000000000000.dion.ne.jp\r\n"
        "Message-ID: <2026000000000000@nm00lds000.auone-net.jp>\r\n"
        "Date: Fri, 20 Nov 2026 23:45:22 +0900\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="==_FF00/00000000/FFF"\r\n'
        "Subject: =?ISO-2022-JP?B?GyRCJWEhPCVrJSgpaSE8RExDThsoQg==?=\r\n"
        "Reply-To: no-reply@app.auone-net.jp\r\n\r\n"
        "--==_FF00/00000000/FFF\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n\r\n"
        f"     Could not be delivered to: <{CUSTOMER}>\r\n"
        "     As their mailbox is full.\r\n\r\n"
        "--==_FF00/00000000/FFF\r\n"
        "Content-Type: message/rfc822\r\n"
        "Content-Description: Original message\r\n\r\n"
        f"From: {CONTACTO}\r\nTo: {CUSTOMER}\r\n"
        f"Subject: [Folio PLR-2026-000001] Sin servicio\r\nMessage-ID: {notice_id}\r\n"
        "Auto-Submitted: auto-replied\r\n\r\nHola\r\n\r\n"
        "--==_FF00/00000000/FFF--\r\n"
    ).encode()


@pytest.mark.integration
def test_a_kddi_bounce_without_a_report_marks_the_acknowledgement_failed(desk: Desk) -> None:
    # It opened a case of its own (never acknowledged: the sender is no-reply) and
    # left the acknowledgement marked sent, so nobody knew the customer was not told.
    folio, ack_id = open_case(desk)
    agents_before = desk.sent_to(NOTIFY)
    desk.deliver(kddi_bounce(ack_id))
    assert_acknowledgement_bounced(desk, folio, agents_before)
