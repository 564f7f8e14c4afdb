"""End to end against the real Dovecot and SMTP sink: mail in, cases and acknowledgements out."""

from __future__ import annotations

import hashlib
import sys
from datetime import date, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from helpers import CONTACTO, INFO, WEB, Cli, Env, mail, write_config
from servers import Dovecot, SmtpSink

pytestmark = pytest.mark.integration


@pytest.fixture
def env(tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str) -> Env:
    config = write_config(tmp_path, mailboxes, sink, db_url=db_url)
    return Env(Cli(config, capsys), mailboxes, sink, config, tmp_path)


def test_spanish_mail_opens_case_and_sends_checked_acknowledgement(env: Env) -> None:
    raw = mail(subject="Sin señal desde ayer", body="Hola, no tengo señal. ¿Pueden revisar?")
    env.deliver(raw)
    env.poll()

    [case] = env.cases()
    assert case["status"] == "open"
    assert case["customer"] == "juan.perez@example.com"
    assert case["mailbox"] == "contacto"
    assert case["subject"] == "Sin señal desde ayer"
    folio = case["folio"]
    assert folio.startswith("PLR-2026-") or folio.startswith("PLR-")
    assert len(folio.split("-")[2]) == 6

    [ack] = env.acks()
    original_id = EmailMessage()
    sent = env.sink.messages[0]
    assert sent.rcpt_tos == ["juan.perez@example.com"]
    assert sent.mail_from == CONTACTO
    assert ack["Subject"] == f"[Folio {folio}] Sin señal desde ayer"
    assert ack["From"].addresses[0].addr_spec == CONTACTO
    assert ack["Auto-Submitted"] == "auto-replied"
    assert ack["X-Auto-Response-Suppress"] == "All"
    assert ack["X-Mailcase-Loop"]
    inbound_id = next(m for m in env.case(folio)["messages"] if m["direction"] == "in")[
        "message_id"
    ]
    assert ack["In-Reply-To"] == inbound_id
    assert inbound_id in ack["References"]
    assert ack["Message-ID"].endswith("@internet-plarey.com.mx>")
    text = ack.get_body(("plain",)).get_content()
    html = ack.get_body(("html",)).get_content()
    assert folio in text and folio in html
    assert "procedente" in text  # states what happens next (the written procedure)
    assert "800 123 4567" in text  # contact channels
    del original_id

    detail = env.case(folio)
    assert detail["outcome"] is None
    directions = [(m["direction"], m["kind"]) for m in detail["messages"]]
    assert directions == [("in", "customer"), ("out", "notice")]
    assert detail["messages"][0]["text"] == "Hola, no tengo señal. ¿Pueden revisar?"
    assert (
        detail["messages"][1]["message_id"] == ack["Message-ID"].strip()
    )  # RFC 5322 folding may lead with a space


def test_iso_8859_1_quoted_printable_decodes(env: Env) -> None:
    raw = (
        b"From: Mar\xeda <maria@example.com>\r\nTo: contacto@internet-plarey.com.mx\r\n"
        b"Subject: =?ISO-8859-1?Q?Aclaraci=F3n_de_cobro?=\r\nMessage-ID: <latin1@example.com>\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=ISO-8859-1\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        b"Me cobraron dos veces el mes de octubre. =BFPodr=EDan revisar?\r\nGracias, Mar=EDa\r\n"
    )
    env.deliver(raw)
    env.poll()
    [case] = env.cases()
    assert case["subject"] == "Aclaración de cobro"
    text = env.case(case["folio"])["messages"][0]["text"]
    assert text == "Me cobraron dos veces el mes de octubre. ¿Podrían revisar?\nGracias, María"


def test_html_only_mail_becomes_readable_text(env: Env) -> None:
    html = (
        "<html><head><style>p {color: red}</style><script>alert('x')</script></head>"
        "<body><p>Mi m&oacute;dem parpadea en <b>rojo</b>.</p><p>Saludos</p></body></html>"
    )
    env.deliver(mail(body="", html=html))
    env.poll()
    [case] = env.cases()
    text = env.case(case["folio"])["messages"][0]["text"]
    assert "Mi módem parpadea en rojo." in text
    assert "Saludos" in text
    for leaked in ("<", "alert", "color: red"):
        assert leaked not in text


def test_attachment_with_non_ascii_name_is_stored_by_hash(env: Env) -> None:
    photo = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
    env.deliver(mail(attachments=[("fotografía del módem ñ.png", "image/png", photo)]))
    env.poll()
    [case] = env.cases()
    [att] = env.case(case["folio"])["messages"][0]["attachments"]
    digest = hashlib.sha256(photo).hexdigest()
    assert att == {
        "filename": "fotografía del módem ñ.png",
        "content_type": "image/png",
        "size": len(photo),
        "sha256": digest,
    }
    stored = env.dir / "store" / digest[:2] / digest[2:4] / digest
    assert stored.read_bytes() == photo


def test_same_mail_in_both_mailboxes_opens_one_case(env: Env) -> None:
    raw = mail(to=f"{CONTACTO}, {INFO}")
    env.deliver(raw, "contacto")
    env.deliver(raw, "info")
    env.poll()
    assert len(env.cases()) == 1
    dispositions = sorted(row["disposition"] for row in env.ledger())
    assert dispositions == ["duplicate", "new_case"]
    assert len({row["folio"] for row in env.ledger()}) == 1
    assert len(env.sink.messages) == 1


def test_mail_without_message_id_in_both_mailboxes_is_one_case(env: Env) -> None:
    raw = mail(message_id=None)
    env.deliver(raw, "contacto")
    env.deliver(raw, "info")
    env.poll()
    [case] = env.cases()
    assert sorted(r["disposition"] for r in env.ledger()) == ["duplicate", "new_case"]
    assert all(r["message_id"] is None for r in env.ledger())
    assert len(env.sink.messages) == 1
    assert case["customer"] == "juan.perez@example.com"


@pytest.mark.parametrize(
    ("headers", "sender", "subject", "disposition"),
    [
        ({"Auto-Submitted": "auto-replied"}, "juan@example.com", "Re: hola", "auto_reply"),
        ({}, "juan@example.com", "Respuesta automática: Sin servicio", "auto_reply"),
        ({"X-Autoreply": "yes"}, "juan@example.com", "hola", "auto_reply"),
        ({"List-Id": "<ofertas.example.com>"}, "news@example.com", "Ofertas", "bulk"),
        ({"Precedence": "bulk"}, "news@example.com", "Boletín", "bulk"),
        ({}, "MAILER-DAEMON@example.com", "Undelivered Mail", "bounce"),
    ],
)
def test_automatic_mail_opens_nothing_and_gets_no_notice(
    env: Env, headers: dict[str, str], sender: str, subject: str, disposition: str
) -> None:
    env.deliver(mail(sender=sender, subject=subject, headers=headers))
    env.poll()
    assert env.cases() == []
    [row] = env.ledger()
    assert row["disposition"] == disposition
    assert row["reason"]
    assert env.sink.messages == []


@pytest.mark.parametrize(
    "sender",
    [
        "Mail Delivery System <mailer-daemon@mx.example.net>",
        # The report alone decides: some servers sign bounces with an ordinary address.
        "Avisos del servidor <avisos@mx.example.net>",
    ],
)
def test_delivery_status_report_is_a_bounce(env: Env, sender: str) -> None:
    raw = (
        f"From: {sender}\r\n".encode()
        + b"To: contacto@internet-plarey.com.mx\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        b"Message-ID: <dsn1@mx.example.net>\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        b"--B\r\nContent-Type: text/plain\r\n\r\nNo se pudo entregar.\r\n"
        b"--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        b"Reporting-MTA: dns; mx.example.net\r\n\r\n"
        b"Final-Recipient: rfc822; nadie@example.com\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n"
        b"--B--\r\n"
    )
    env.deliver(raw)
    env.poll()
    assert [r["disposition"] for r in env.ledger()] == ["bounce"]
    assert env.cases() == [] and env.sink.messages == []


def test_web_form_mail_belongs_to_its_reply_to(env: Env) -> None:
    env.deliver(
        mail(
            sender=f"Formulario web <{WEB}>",
            subject="Contacto desde el sitio: cancelación",
            headers={"Reply-To": "Laura Gómez <laura.gomez@example.org>"},
            body="Nombre: Laura Gómez\nMensaje: Quiero cancelar mi servicio.",
        )
    )
    env.poll()
    [case] = env.cases()
    assert case["customer"] == "laura.gomez@example.org"
    assert env.sink.messages[0].rcpt_tos == ["laura.gomez@example.org"]


def test_follow_up_by_folio_joins_case_without_new_ack(env: Env) -> None:
    env.deliver(mail())
    env.poll()
    [case] = env.cases()
    folio = case["folio"]
    reply = mail(
        subject=f"RE:  [folio {folio.lower()}] Sin servicio de internet",
        body=(
            "Sigo sin servicio.\n\n"
            "El jue, 20 nov 2026 a las 10:30, Contacto <c@x.mx> escribió:\n"
            "> Recibimos su mensaje"
        ),
    )
    env.deliver(reply)
    env.poll()
    assert len(env.cases()) == 1
    assert [r["disposition"] for r in env.ledger()] == ["new_case", "follow_up"]
    assert len(env.sink.messages) == 1
    messages = env.case(folio)["messages"]
    assert messages[-1]["text"] == "Sigo sin servicio."


def test_follow_up_by_in_reply_to_alone(env: Env) -> None:
    env.deliver(mail())
    env.poll()
    [ack] = env.acks()
    reply = mail(
        subject="una pregunta más",  # no folio: threading headers alone
        headers={"In-Reply-To": ack["Message-ID"].strip()},
        body="¿A qué hora vendrá el técnico?",
    )
    env.deliver(reply)
    env.poll()
    assert len(env.cases()) == 1
    assert [r["disposition"] for r in env.ledger()] == ["new_case", "follow_up"]
    assert len(env.sink.messages) == 1


def test_auto_reply_to_a_notice_is_kept_on_its_case_and_answered_by_nothing(env: Env) -> None:
    # The customer's out-of-office answer to our resolution notice: common, and a loop risk.
    env.deliver(mail())
    env.poll()
    [case] = env.cases()
    folio = case["folio"]
    code, _, err = env.cli("cases", "resolve", folio, "--outcome", "valid", "--cause", "Listo.")
    assert code == 0, err
    env.poll()  # delivers the resolution notice
    notice = env.acks()[-1]
    sent_before = len(env.sink.messages)
    env.deliver(
        mail(
            subject=f"Respuesta automática: {notice['Subject']}",
            headers={"Auto-Submitted": "auto-replied", "In-Reply-To": notice["Message-ID"]},
            body="Estoy de vacaciones hasta el lunes 30.",
        )
    )
    env.poll()
    assert len(env.cases()) == 1
    assert [r["disposition"] for r in env.ledger()] == ["new_case", "auto_reply"]
    assert len(env.sink.messages) == sent_before  # no acknowledgement, no agent notification
    shown = env.case(folio)
    assert shown["status"] == "resolved"  # an auto-reply reopens nothing
    last = shown["messages"][-1]
    assert (last["direction"], last["kind"]) == ("in", "system")
    assert "vacaciones" in last["text"]


def test_stranger_with_someone_elses_folio_gets_own_case(env: Env) -> None:
    env.deliver(mail())
    env.poll()
    folio = env.cases()[0]["folio"]
    env.deliver(mail(sender="otro@example.net", subject=f"Re: [Folio {folio}] Sin servicio"))
    env.poll()
    cases = env.cases()
    assert len(cases) == 2
    stranger = next(c for c in cases if c["customer"] == "otro@example.net")
    assert stranger["folio"] != folio
    assert folio not in stranger["subject"]
    ack = env.acks()[-1]
    assert folio not in str(ack)


def test_repoll_changes_nothing_and_seen_mail_is_ingested(env: Env) -> None:
    env.deliver(mail(), flags=[b"\\Seen"])  # read by someone in webmail first
    env.deliver(mail(subject="Cambio de plan"))
    env.poll()
    before = (env.cases(), env.ledger(), len(env.sink.messages))
    env.poll()
    assert (env.cases(), env.ledger(), len(env.sink.messages)) == before
    assert len(before[0]) == 2
    flags = env.imap.fetch_flags("contacto")
    assert all(b"$MailcaseDone" in f and b"\\Seen" in f for f in flags.values())


def test_uidvalidity_change_rescans_without_duplicating(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str
) -> None:
    config = write_config(tmp_path, mailboxes, sink, contacto_folder="Soporte", db_url=db_url)
    cli = Cli(config, capsys)
    raws = [mail(subject=f"Reporte {i}") for i in range(3)]
    raws.append(_parser_bomb())  # quarantined: it must not get a second row either
    for raw in raws:
        mailboxes.append("contacto", raw, folder="Soporte")
    cli.poll()
    # Rebuild the folder: same messages, new UIDVALIDITY (as after a server migration).
    mailboxes.delete_folder("contacto", "Soporte")
    for raw in [*raws, mail(subject="Reporte nuevo")]:
        mailboxes.append("contacto", raw, folder="Soporte")
    cli.poll()
    ledger = cli.json("messages", "list")
    assert len(cli.json("cases", "list")) == 4
    assert len(ledger) == 5
    assert sorted(r["disposition"] for r in ledger).count("quarantined") == 1
    assert len({r["uidvalidity"] for r in ledger}) == 1
    assert len(sink.messages) == 4


def _parser_bomb() -> bytes:
    # Nesting deeper than Python's recursion limit. mail-parser itself reads
    # every message of the shared corpus; what it cannot take (this, or a
    # header of 200 KB) is refused before it by inbound's caps, as here.
    depth = sys.getrecursionlimit() + 100
    head = b"From: a@example.com\r\nTo: contacto@internet-plarey.com.mx\r\nSubject: bomb\r\n"
    parts = b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i)
        for i in range(depth)
    )
    return head + parts


def test_unparseable_message_is_quarantined_and_poll_goes_on(env: Env) -> None:
    env.deliver(_parser_bomb())
    env.deliver(mail(subject="Después del mensaje roto"))
    env.poll()
    ledger = env.ledger()
    assert [r["disposition"] for r in ledger] == ["quarantined", "new_case"]
    assert ledger[0]["reason"]
    code, out, _ = env.cli("messages", "list", "--disposition", "quarantined")
    assert code == 0 and "quarantined" in out


def test_unreadable_mailbox_fails_poll_naming_it_but_others_go_on(env: Env) -> None:
    env.imap.set_password("info", "cambiada")
    env.deliver(mail())
    code, _, err = env.cli("poll")
    assert code == 1
    [line] = [x for x in err.splitlines() if x.startswith("mailcase:")]  # one sentence
    assert "mailbox info" in line and "login refused" in line
    assert "Traceback" not in err
    assert "info-secret" not in err
    assert len(env.cases()) == 1  # contacto was still read
    assert len(env.sink.messages) == 1


def test_english_notices_by_config(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str
) -> None:
    config = write_config(tmp_path, mailboxes, sink, language="en", db_url=db_url)
    mailboxes.append("contacto", mail(subject="No internet"))
    Cli(config, capsys).poll()
    text = sink.messages[0].message.get_body(("plain",)).get_content()
    assert "We received your message" in text


def test_english_visit_notice_writes_the_date_in_english(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    cli = Cli(write_config(tmp_path, mailboxes, sink, language="en"), capsys)
    mailboxes.append("contacto", mail(subject="No internet"))
    cli.poll()
    [case] = cli.json("cases", "list")
    # The next Thursday at least a week ahead (a visit may be up to 180 days ahead).
    day = date.today() + timedelta(days=7 + (3 - date.today().weekday()) % 7)
    code, _, err = cli("cases", "visit", case["folio"], "--date", str(day), "--time", "10:00")
    assert code == 0, err
    visit = sink.messages[-1].message.get_body(("plain",)).get_content()
    assert f"Thursday, {day:%B} {day.day}, {day.year}" in visit and "10:00 AM" in visit
    assert "jueves" not in visit
    # Moved to the afternoon: in en-US a 24-hour "16:30" reads as military time.
    code, _, err = cli("cases", "visit", case["folio"], "--date", str(day), "--time", "16:30")
    assert code == 0, err
    moved = sink.messages[-1].message
    text = moved.get_body(("plain",)).get_content()
    assert "Time: 4:30 PM" in text and "16:30" not in text
    assert f"the visit on Thursday, {day:%B} {day.day}, {day.year} at 10:00 AM is" in text
    html = moved.get_body(("html",)).get_content()
    assert "4:30 PM" in html and "16:30" not in html


@pytest.mark.parametrize(
    ("hour", "english", "spanish"),
    [("00:05", "12:05 AM", "00:05"), ("09:30", "9:30 AM", "09:30"), ("12:00", "12:00 PM", "12:00"),
     ("23:59", "11:59 PM", "23:59")],
)  # fmt: skip
def test_visit_times_read_as_each_language_writes_them(
    hour: str, english: str, spanish: str
) -> None:
    from mailcase.visitdates import clock_text

    assert clock_text(hour, "en") == english
    assert clock_text(hour, "es") == spanish
