"""Agents work cases from their mail client: against the real Dovecot and SMTP sink."""

from __future__ import annotations

import html
import json
import os
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from helpers import AGENT, CONTACTO, NOTIFY, Cli, DaemonProcess, mail, write_config
from servers import Dovecot, SmtpSink
from sqlmodel import col

from mailcase.config import load_settings
from mailcase.models import Case
from mailcase.msgid import verify_message_id
from mailcase.store import Store
from mailcase.visitdates import spanish_date

pytestmark = pytest.mark.integration

CUSTOMER = "juan.perez@example.com"
AREAS = '[areas.redes]\nnotify = "redes@internet-plarey.com.mx"\nname = "Redes"\n'


@dataclass
class Desk:
    cli: Cli
    imap: Dovecot
    sink: SmtpSink
    dir: Path

    def deliver(self, raw: bytes) -> None:
        self.imap.append("contacto", raw)
        self.cli.poll()

    def to(self, rcpt: str) -> list[EmailMessage]:
        return [m.message for m in self.sink.messages if m.rcpt_tos == [rcpt]]

    def last_to(self, rcpt: str) -> EmailMessage:
        return self.to(rcpt)[-1]

    def notification(self, folio: str) -> EmailMessage:
        """The latest notice to ``agents.notify`` about ``folio``: what an agent replies to."""
        return [m for m in self.to(NOTIFY) if folio in str(m["Subject"])][-1]

    def case(self, folio: str) -> dict[str, Any]:
        return self.cli.json("cases", "show", folio)  # type: ignore[no-any-return]

    def open_case(self, **kw: Any) -> str:
        self.deliver(mail(**kw))
        return str(self.cli.json("cases", "list")[0]["folio"])

    def open_phone_case(self) -> str:
        """A case registered by phone, with no customer address; its folio."""
        code, out, err = self.cli(
            "cases", "open", "--channel", "phone", "--subject", "Llamada: sin servicio",
            "--text", "Llamó sin dejar correo.", "--json",
        )  # fmt: skip
        assert code == 0, err
        return str(json.loads(out)["folio"])

    def agent_html_reply(self, notice: EmailMessage, html: str) -> None:
        """Reply as the agent from a client that sends HTML only, threading to ``notice``."""
        self.deliver(
            mail(
                sender=f"Ana Técnica <{AGENT}>",
                to=str(notice["Reply-To"] or CONTACTO),
                subject=f"Re: {notice['Subject']}",
                body="",
                html=html,
                headers={
                    "In-Reply-To": notice["Message-ID"].strip(),
                    "References": notice["Message-ID"].strip(),
                },
            )
        )

    def agent_reply(self, notice: EmailMessage, body: str, **kw: Any) -> None:
        """Reply as the agent from a mail client: quoting the notice, threading to it."""
        quoted = "\n".join("> " + line for line in text(notice).splitlines())
        self.deliver(
            mail(
                sender=kw.pop("sender", f"Ana Técnica <{AGENT}>"),
                to=kw.pop("to", str(notice["Reply-To"] or CONTACTO)),
                subject=f"Re: {notice['Subject']}",
                body=f"{body}\n\nEl jue, 26 nov 2026, Soporte escribió:\n{quoted}",
                headers={
                    "In-Reply-To": notice["Message-ID"].strip(),
                    "References": notice["Message-ID"].strip(),
                    **kw.pop("headers", {}),
                },
                **kw,
            )
        )


def ahead(days: int) -> date:
    """A day ``days`` from today: visits are refused in the past and over 180 days ahead."""
    return date.today() + timedelta(days=days)


def text(message: EmailMessage) -> str:
    body = message.get_body(("plain",))
    assert body is not None
    return str(body.get_content())


@pytest.fixture
def desk(tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str) -> Desk:
    config = write_config(tmp_path, mailboxes, sink, notify=True, extra=AREAS, db_url=db_url)
    return Desk(Cli(config, capsys), mailboxes, sink, tmp_path)


def test_whole_conversation_from_first_mail_to_resolution(desk: Desk) -> None:
    folio = desk.open_case(
        subject="Sin internet",
        body="Desde ayer no tengo internet.",
        attachments=[("módem.jpg", "image/jpeg", b"\xff\xd8\xff")],
    )
    # New case: the customer gets the acknowledgement, the agents a notification.
    [ack] = desk.to(CUSTOMER)
    [notification] = desk.to(NOTIFY)
    assert folio in notification["Subject"]
    assert notification["Reply-To"].addresses[0].addr_spec == CONTACTO
    body = text(notification)
    for expected in (CUSTOMER, "contacto", "Desde ayer no tengo internet.", "módem.jpg", "#nota"):
        assert expected in body

    # 1. The agent answers: relayed to the customer, new text only, threaded.
    desk.agent_reply(notification, "Buenas tardes, mañana revisamos su línea.")
    relayed = desk.last_to(CUSTOMER)
    assert relayed is not ack
    assert folio in relayed["Subject"]
    assert relayed["From"].addresses[0].addr_spec == CONTACTO
    relayed_text = text(relayed)
    assert "mañana revisamos su línea" in relayed_text
    assert "Comandos" not in relayed_text and "Desde ayer" not in relayed_text
    customer_id = desk.case(folio)["messages"][0]["message_id"]
    assert relayed["In-Reply-To"].strip() == customer_id

    # 2. An internal note is recorded and never sent.
    sent_before = len(desk.sink.messages)
    desk.agent_reply(notification, "#nota\nEl cliente tiene adeudo, revisar con cobranza.")
    assert len(desk.sink.messages) == sent_before
    notes = [m for m in desk.case(folio)["messages"] if m["kind"] == "note"]
    assert notes and "adeudo" in notes[-1]["text"]

    # 3. Resolution upheld: the customer is told why and that it was corrected.
    desk.agent_reply(notification, "#resolver procedente\nSe cambió el conector dañado del poste.")
    detail = desk.case(folio)
    assert (detail["status"], detail["outcome"]) == ("resolved", "valid")
    assert detail["cause"] == "Se cambió el conector dañado del poste."
    resolution = desk.last_to(CUSTOMER)
    resolution_text = text(resolution).lower()
    assert folio.lower() in resolution_text and "conector dañado" in resolution_text
    assert "procedente" in resolution_text and "corregida" in resolution_text

    # 4. The customer answers the resolution: the case reopens, the agents are told.
    notices_to_agents = len(desk.to(NOTIFY))
    desk.deliver(
        mail(
            subject=f"Re: {resolution['Subject']}",
            body="Sigue fallando en las noches.",
            headers={"In-Reply-To": resolution["Message-ID"].strip()},
        )
    )
    assert desk.case(folio)["status"] == "open"
    assert len(desk.to(NOTIFY)) == notices_to_agents + 1
    assert "reabri" in text(desk.last_to(NOTIFY))

    # 5. Resolution not upheld.
    desk.agent_reply(
        notification, "#resolve invalid\nLa lentitud se debe a un repetidor del cliente."
    )
    detail = desk.case(folio)
    assert (detail["status"], detail["outcome"]) == ("resolved", "invalid")
    invalid_text = text(desk.last_to(CUSTOMER)).lower()
    assert "improcedente" in invalid_text and "corregida" not in invalid_text

    kinds = [m["kind"] for m in desk.case(folio)["messages"]]
    assert {"customer", "agent", "note", "notice"} <= set(kinds)
    assert len(desk.cli.json("cases", "list")) == 1


def test_forged_agent_from_without_proof_runs_nothing(desk: Desk) -> None:
    folio = desk.open_case()
    before = len(desk.to(CUSTOMER))
    desk.deliver(
        mail(
            sender=AGENT,
            subject=f"Re: [Folio {folio}] Sin servicio",
            body="#cerrar\nCaso cerrado, no hay falla.",
        )
    )
    detail = desk.case(folio)
    assert detail["status"] == "open"  # the command did not run
    assert len(desk.to(CUSTOMER)) == before  # nothing relayed
    assert any(m["kind"] == "unverified" for m in detail["messages"])
    warning = desk.last_to(AGENT)
    assert folio in warning["Subject"] or folio in text(warning)
    # It names the message the agent is to look for: its own subject, not the case's.
    assert f"Re: [Folio {folio}] Sin servicio»" in text(warning)


def test_a_customer_holding_our_notices_cannot_pass_as_an_agent(desk: Desk) -> None:
    # The customer keeps everything we sent: the acknowledgement and an agent's
    # relayed answer (whose References carry the whole visible thread). None of
    # those ids may prove "agent": a forged From replying to them runs nothing.
    folio = desk.open_case()
    [notification] = desk.to(NOTIFY)
    desk.agent_reply(notification, "Revisamos su línea mañana.")
    ack, relayed = desk.to(CUSTOMER)
    seen = " ".join(str(m[h] or "") for m in (ack, relayed) for h in ("Message-ID", "References"))
    assert notification["Message-ID"].strip() not in seen  # no agent proof leaks
    for notice in (ack, relayed):
        desk.deliver(
            mail(
                sender=AGENT,
                subject=f"Re: {notice['Subject']}",
                body="#resolver procedente\nYa quedó.",
                headers={
                    "In-Reply-To": notice["Message-ID"].strip(),
                    "References": f"{notice['References'] or ''} {notice['Message-ID']}".strip(),
                },
            )
        )
    detail = desk.case(folio)
    assert (detail["status"], detail["outcome"]) == ("open", None)
    assert [m["kind"] for m in detail["messages"]].count("unverified") == 2
    assert len(desk.to(CUSTOMER)) == 2  # no resolution notice


def test_signing_secret_from_config_signs_the_notices_to_agents(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str
) -> None:
    secret = "un-secreto-de-prueba-largo"
    config = write_config(tmp_path, mailboxes, sink, notify=True, db_url=db_url)
    config.write_text(
        config.read_text().replace("[web_form]", f'signing_secret = "{secret}"\n[web_form]')
    )
    d = Desk(Cli(config, capsys), mailboxes, sink, tmp_path)
    d.open_case()
    [notification] = d.to(NOTIFY)
    [ack] = d.to(CUSTOMER)
    assert verify_message_id(secret.encode(), notification["Message-ID"]) is not None
    assert verify_message_id(secret.encode(), ack["Message-ID"]) is None  # customers get no proof
    assert secret not in capsys.readouterr().out


def test_authenticated_agent_is_verified_by_a_trusted_server(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str
) -> None:
    config = write_config(tmp_path, mailboxes, sink, notify=True, extra=AREAS, db_url=db_url)
    config.write_text(
        config.read_text().replace(
            "[web_form]", 'trusted_authserv_ids = ["mx.internet-plarey.com.mx"]\n[web_form]'
        )
    )
    d = Desk(Cli(config, capsys), mailboxes, sink, tmp_path)
    folio = d.open_case()
    day = ahead(20)
    d.deliver(
        mail(
            sender=AGENT,
            subject=f"[Folio {folio}] visita",
            body=f"#visita {day} 10:30",
            headers={
                "Authentication-Results": "mx.internet-plarey.com.mx; "
                "dkim=pass header.d=internet-plarey.com.mx; spf=pass "
                "smtp.mailfrom=ana.tecnica@internet-plarey.com.mx"
            },
        )
    )
    assert d.case(folio)["visit"] == {"date": day.isoformat(), "time": "10:30"}
    visit = text(d.last_to(CUSTOMER))
    assert spanish_date(day) in visit


def test_stranger_with_a_known_folio_gets_a_linked_case_of_its_own(desk: Desk) -> None:
    folio = desk.open_case(body="Mi contraseña del wifi es secreta123")
    desk.deliver(mail(sender="extrano@example.net", subject=f"Re: [Folio {folio}] Sin servicio"))
    cases = desk.cli.json("cases", "list")
    assert len(cases) == 2
    other = next(c for c in cases if c["customer"] == "extrano@example.net")
    assert desk.case(other["folio"])["related"] == [folio]
    for message in desk.to("extrano@example.net"):
        assert folio not in str(message) and "secreta123" not in str(message)


def test_commands_from_a_customer_are_ordinary_text(desk: Desk) -> None:
    folio = desk.open_case()
    desk.deliver(mail(subject=f"Re: [Folio {folio}]", body="#cerrar\n#resolver procedente\nya"))
    detail = desk.case(folio)
    assert detail["status"] == "open" and detail["outcome"] is None
    assert detail["messages"][-1]["kind"] in ("customer", "notice")
    assert any("#cerrar" in m["text"] for m in detail["messages"] if m["kind"] == "customer")


def test_malformed_command_changes_nothing_and_agent_gets_the_forms(desk: Desk) -> None:
    folio = desk.open_case()
    [notification] = desk.to(NOTIFY)
    to_customer = len(desk.to(CUSTOMER))
    desk.agent_reply(notification, "#visita mañana\nLlevar módem nuevo.")
    assert desk.case(folio)["visit"] is None
    assert len(desk.to(CUSTOMER)) == to_customer
    error = text(desk.last_to(AGENT))
    assert "#visita mañana" in error
    assert "#visita AAAA-MM-DD" in error or "AAAA-MM-DD" in error


def test_unknown_area_or_command_runs_nothing_else_and_says_why(desk: Desk) -> None:
    folio = desk.open_case()
    [notification] = desk.to(NOTIFY)
    to_customer = len(desk.to(CUSTOMER))
    desk.agent_reply(notification, "#resolver procedente\n#area nada\nSe cambió el módem.")
    detail = desk.case(folio)
    assert (detail["status"], detail["outcome"], detail["area"]) == ("open", None, None)
    assert len(desk.to(CUSTOMER)) == to_customer
    error = text(desk.last_to(AGENT))
    assert "#area nada" in error and "redes" in error  # names the configured areas
    desk.agent_reply(notification, "#ntoa\nEl cliente tiene adeudo.")
    assert len(desk.to(CUSTOMER)) == to_customer  # a typo never relays a note
    assert "#ntoa" in text(desk.last_to(AGENT))


def test_english_commands_by_mail(desk: Desk) -> None:
    folio = desk.open_case()
    [notification] = desk.to(NOTIFY)
    to_customer = len(desk.to(CUSTOMER))
    desk.agent_reply(notification, "#note\nCheck the node.")
    assert len(desk.to(CUSTOMER)) == to_customer
    desk.agent_reply(notification, "#route redes\nNode 4.")
    assert desk.case(folio)["area"] == "redes"
    assert folio in desk.last_to("redes@internet-plarey.com.mx")["Subject"]
    desk.agent_reply(notification, f"#visit {ahead(20)} 10:30")
    assert ahead(20).isoformat() in str(desk.case(folio)["visit"])
    assert len(desk.to(CUSTOMER)) == to_customer + 1  # the visit notice
    desk.agent_reply(notification, "#close")
    assert desk.case(folio)["status"] == "closed"
    assert len(desk.to(CUSTOMER)) == to_customer + 2  # the visit was ahead: it is off
    desk.agent_reply(notification, "#reopen")
    assert desk.case(folio)["status"] == "open"
    assert len(desk.to(CUSTOMER)) == to_customer + 2
    kinds = [m["kind"] for m in desk.case(folio)["messages"]]
    assert kinds.count("note") >= 4 and "unverified" not in kinds


def test_participants_are_whom_the_customer_put_in_cc(desk: Desk) -> None:
    folio = desk.open_case()
    desk.deliver(
        mail(
            subject=f"Re: [Folio {folio}] Sin servicio de internet",
            to=f"{CONTACTO}, vecino@example.net",
            body="Le escribo también a mi vecino.",
            headers={"Cc": "hermana@example.net"},
        )
    )
    for writer in ("hermana@example.net", "vecino@example.net"):
        desk.deliver(mail(sender=writer, subject=f"Re: [Folio {folio}] Sin servicio de internet"))
    cases = desk.cli.json("cases", "list")
    customers = sorted(c["customer"] for c in cases)
    # The Cc'd sister joined the case; the neighbour in To opened a case of their own.
    assert customers == [CUSTOMER, "vecino@example.net"]
    senders = [m["from"] for m in desk.case(folio)["messages"] if m["direction"] == "in"]
    assert "hermana@example.net" in " ".join(senders)
    # The agents are told who wrote: the sister is not the customer.
    [told] = [text(m) for m in desk.to(NOTIFY) if "hermana@example.net" in text(m)]
    assert "hermana@example.net (participante, no es el cliente) escribió de nuevo" in told
    assert "Mensaje del participante:" in told and "El cliente escribió" not in told


def test_route_to_area_notifies_that_area(desk: Desk) -> None:
    folio = desk.open_case()
    [notification] = desk.to(NOTIFY)
    desk.agent_reply(notification, "#area redes\nRevisar nodo 4.")
    assert desk.case(folio)["area"] == "redes"
    routed = desk.last_to("redes@internet-plarey.com.mx")
    assert folio in routed["Subject"]
    # The area can answer from the notice alone: the complaint and why it was routed.
    body = text(routed)
    assert "al área Redes." in body  # the area's name, as [areas.redes] gives it
    # Every notice to agents says what #area takes.
    assert "Áreas para #area: redes (Redes)" in body
    # A line about an area that went wrong lists them too.
    desk.agent_reply(notification, "#area Redes y nodos")
    error = text(desk.last_to(AGENT))
    assert "sin espacios" in error and "Áreas disponibles: redes (Redes)" in error
    desk.agent_reply(notification, "#Área ventas")  # accented, as agents may write it
    error = text(desk.last_to(AGENT))
    assert "no hay un área con ese nombre" in error and "Áreas disponibles: redes" in error
    assert "Nota de quien lo turnó:\nRevisar nodo 4.\n" in body
    assert "desde ayer no tengo internet" in body.split("Mensaje del cliente:", 1)[1]


def test_agent_writing_directly_to_customer_is_recorded_not_resent(desk: Desk) -> None:
    folio = desk.open_case()
    [notification] = desk.to(NOTIFY)
    before = len(desk.to(CUSTOMER))
    desk.agent_reply(notification, "Le escribo directamente.", to=f"{CUSTOMER}, {CONTACTO}")
    assert len(desk.to(CUSTOMER)) == before
    assert any(
        m["kind"] == "agent" and "directamente" in m["text"] for m in desk.case(folio)["messages"]
    )


def test_bounce_of_a_notice_is_recorded_and_agents_told_once(desk: Desk) -> None:
    folio = desk.open_case()
    [ack] = desk.to(CUSTOMER)
    agents_before = len(desk.to(NOTIFY))

    def bounce(n: int) -> bytes:
        return (
            b"From: Mail Delivery System <mailer-daemon@mx.example.com>\r\n"
            b"To: contacto@internet-plarey.com.mx\r\nSubject: Undelivered Mail\r\n"
            b"Message-ID: <dsn%d@mx.example.com>\r\nMIME-Version: 1.0\r\n"
            b'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
            b"--B\r\nContent-Type: text/plain\r\n\r\nNo se pudo entregar.\r\n"
            b"--B\r\nContent-Type: message/delivery-status\r\n\r\n"
            b"Reporting-MTA: dns; mx.example.com\r\n\r\n"
            b"Final-Recipient: rfc822; juan.perez@example.com\r\nAction: failed\r\n"
            b"Status: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 user unknown\r\n\r\n"
            b"--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
            b"From: contacto@internet-plarey.com.mx\r\nMessage-ID: "
            + ack["Message-ID"].strip().encode()
            + b"\r\n\r\n--B--\r\n"
        ) % n

    desk.deliver(bounce(1))
    desk.deliver(bounce(2))
    ledger = desk.cli.json("messages", "list")
    assert [r["disposition"] for r in ledger[-2:]] == ["bounce", "bounce"]
    assert ledger[-1]["folio"] == folio
    failed = [m for m in desk.case(folio)["messages"] if "failed delivery" in m["text"]]
    assert failed and "juan.perez@example.com" in failed[0]["text"] and "5.1.1" in failed[0]["text"]
    assert len(desk.to(NOTIFY)) == agents_before + 1  # told once
    assert "mailer-daemon@mx.example.com" not in {r for m in desk.sink.messages for r in m.rcpt_tos}


def test_reply_after_the_reopen_window_or_to_a_closed_case_opens_a_linked_case(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str
) -> None:
    config = write_config(
        tmp_path, mailboxes, sink, notify=True, extra="[cases]\nreopen_days = 0\n", db_url=db_url
    )
    d = Desk(Cli(config, capsys), mailboxes, sink, tmp_path)
    folio = d.open_case()
    code, _, err = d.cli(
        "cases", "resolve", folio, "--outcome", "valid", "--cause", "Cambio de módem."
    )
    assert code == 0, err
    d.deliver(mail(subject=f"Re: [Folio {folio}] Sin servicio", body="Gracias, ya funciona."))
    cases = d.cli.json("cases", "list")
    assert len(cases) == 2
    assert d.case(folio)["status"] == "resolved"
    newest = cases[0]["folio"]
    assert d.case(newest)["related"] == [folio]
    # A closed case: the same.
    assert d.cli("cases", "close", newest)[0] == 0
    d.deliver(mail(subject=f"Re: [Folio {newest}]", body="Otra falla."))
    assert len(d.cli.json("cases", "list")) == 3


def test_phone_case_from_the_cli(desk: Desk) -> None:
    code, out, err = desk.cli(
        "cases", "open", "--customer", "Maria@Example.com", "--name", "María",
        "--channel", "phone", "--subject", "Llamada: sin servicio",
        "--text", "Llamó para reportar que no tiene servicio.", "--json",
    )  # fmt: skip
    assert code == 0, err
    folio = json.loads(out)["folio"]
    detail = desk.case(folio)
    assert detail["channel"] == "phone" and detail["customer"] == "maria@example.com"
    ack = desk.last_to("maria@example.com")
    assert folio in ack["Subject"]
    # And without an address: a folio, no mail.
    code, out, _ = desk.cli(
        "cases", "open", "--channel", "visit", "--subject", "Visita en oficina", "--text", "x"
    )
    assert code == 0


def test_a_cli_change_by_a_user_without_a_name_is_recorded_by_uid(
    desk: Desk, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A container's arbitrary uid: no $USER and no passwd entry; getpass.getuser() fails.
    folio = desk.open_case()
    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.delenv(name, raising=False)

    def no_entry(uid: int) -> Any:
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    monkeypatch.setattr("pwd.getpwuid", no_entry)
    code, _, err = desk.cli("cases", "note", folio, "--text", "Llamar el lunes")
    assert code == 0, err
    note = [m for m in desk.case(folio)["messages"] if m["kind"] == "note"][-1]
    assert note["from"] == f"cli:uid {os.getuid()}"


def test_cli_note_resolve_close_reopen(desk: Desk) -> None:
    folio = desk.open_case()
    assert desk.cli("cases", "note", folio, "--text", "Llamar el lunes")[0] == 0
    assert (
        desk.cli("cases", "resolve", folio, "--outcome", "invalid", "--cause", "Sin falla.")[0] == 0
    )
    detail = desk.case(folio)
    assert (detail["status"], detail["outcome"], detail["cause"]) == (
        "resolved",
        "invalid",
        "Sin falla.",
    )
    assert "improcedente" in text(desk.last_to(CUSTOMER)).lower()
    assert desk.cli("cases", "close", folio)[0] == 0
    assert desk.case(folio)["status"] == "closed"
    assert desk.cli("cases", "reopen", folio)[0] == 0
    assert desk.case(folio)["status"] == "open"
    code, _, err = desk.cli("cases", "route", folio, "--area", "nada")
    # A usage error (2), as for `cases list --area`, before anything is opened.
    assert code == 2 and "no area named 'nada' in the configuration (areas: redes)" in err
    code, _, err = desk.cli("cases", "show", "PLR-1999-000001")
    assert code == 4


def test_cli_visit_tells_the_customer_and_refuses_a_bad_date(desk: Desk) -> None:
    folio = desk.open_case()
    code, _, err = desk.cli("cases", "visit", folio, "--date", "3/12/2026")
    assert code == 2 and err.strip().endswith("--date '3/12/2026' is not a date (YYYY-MM-DD)")
    day = ahead(20)
    code, _, err = desk.cli("cases", "visit", folio, "--date", str(day), "--time", "25:00")
    assert code == 2 and "--time '25:00' is not a time (HH:MM)" in err
    code, _, err = desk.cli("cases", "visit", folio, "--date", "2026-02-30")
    assert code == 2 and "is not a date" in err  # a day that does not exist
    assert desk.case(folio)["visit"] is None  # nothing half-done
    # As the mail command #visita reads it: one-digit hours are fine.
    assert desk.cli("cases", "visit", folio, "--date", str(day), "--time", "9:30")[0] == 0
    assert desk.case(folio)["visit"] == {"date": day.isoformat(), "time": "09:30"}
    notice = desk.last_to(CUSTOMER)
    assert folio in notice["Subject"]
    assert spanish_date(day) in text(notice) and "09:30" in text(notice)


def test_a_visit_scheduled_again_cancels_the_first_and_odd_hours_are_refused(
    desk: Desk,
) -> None:
    folio = desk.open_case()
    [notification] = desk.to(NOTIFY)
    first_day, second_day = ahead(10), ahead(11)
    desk.agent_reply(notification, f"#visita {first_day} 10:00")
    first = text(desk.last_to(CUSTOMER))
    assert "programamos una visita técnica" in first and "cancelada" not in first
    # "4:30" for the afternoon would have told the customer 4:30 in the morning.
    to_customer = len(desk.to(CUSTOMER))
    desk.agent_reply(notification, f"#visita {second_day} 4:30")
    assert len(desk.to(CUSTOMER)) == to_customer
    assert "fuera del horario de visitas" in text(desk.last_to(AGENT))
    code, _, err = desk.cli("cases", "visit", folio, "--date", str(second_day), "--time", "4:30")
    assert code == 1 and "outside visiting hours" in err
    # Moved: the customer is told the first visit is off, not that there are two.
    desk.agent_reply(notification, f"#visita {second_day} 16:30")
    second = text(desk.last_to(CUSTOMER))
    assert "Cambiamos la visita técnica" in second
    assert f"la del {spanish_date(first_day)} a las 10:00 queda cancelada" in second
    assert spanish_date(second_day) in second and "16:30" in second
    assert desk.case(folio)["visit"] == {"date": second_day.isoformat(), "time": "16:30"}
    # A visit that took place is not "cancelled" by a second one (the repair did not hold).
    store = Store.open(load_settings(desk.cli.config).database.url, auto_upgrade=False)
    with store.transaction() as session:
        session.execute(sa.update(Case).values(visit_date=date(2020, 1, 6)))
    store.dispose()
    desk.agent_reply(notification, f"#visita {ahead(12)} 10:00")
    third = text(desk.last_to(CUSTOMER))
    assert "programamos una visita técnica" in third and "cancelada" not in third


@pytest.mark.parametrize("runner", ["poll", "daemon"])
def test_closing_job_closes_resolved_cases_after_the_quiet_period(desk: Desk, runner: str) -> None:
    folio = desk.open_case()
    assert desk.cli("cases", "resolve", folio, "--outcome", "valid", "--cause", "Listo.")[0] == 0
    desk.cli.poll()
    assert desk.case(folio)["status"] == "resolved"
    eight_days_ago = datetime.now(UTC) - timedelta(days=8)
    # Behind mailcase's back, on whichever database the test runs.
    store = Store.open(load_settings(desk.cli.config).database.url, auto_upgrade=False)
    with store.transaction() as session:
        session.execute(
            sa.update(Case).where(col(Case.folio) == folio).values(resolved_at=eight_days_ago)
        )
    store.dispose()
    if runner == "poll":
        desk.cli.poll()
    else:  # the daemon's own scheduled job (hourly, and once at start)
        with DaemonProcess(desk.cli.config, desk.dir / "run.log") as daemon:
            deadline = time.monotonic() + 20
            while desk.case(folio)["status"] != "closed" and time.monotonic() < deadline:
                time.sleep(0.2)
            assert daemon.stop() == 0, daemon.tail()
    assert desk.case(folio)["status"] == "closed"


def test_a_reply_with_nothing_new_relays_nothing_and_tells_the_agent(desk: Desk) -> None:
    # Sent by mistake, or to pass on a file: the quote of the internal notice must
    # never reach the customer.
    desk.open_case()
    [notification] = desk.to(NOTIFY)
    to_customer = len(desk.to(CUSTOMER))
    desk.agent_reply(notification, "")
    assert len(desk.to(CUSTOMER)) == to_customer
    told = text(desk.last_to(AGENT))
    assert "no traía texto nuevo" in told and "no se envió nada al cliente" in told
    desk.agent_reply(notification, "", attachments=[("recibo.pdf", "application/pdf", b"%PDF-1.4")])
    assert len(desk.to(CUSTOMER)) == to_customer
    assert "Adjuntos no enviados: recibo.pdf" in text(desk.last_to(AGENT))


PDF = b"%PDF-1.4\n" + bytes(range(256)) * 4


def test_an_agents_attachments_go_to_the_customer_with_the_reply(desk: Desk) -> None:
    # Zammad, FreeScout and Request Tracker pass an agent's files on; an agent had to
    # write to the customer a second time, outside the case, to send a receipt.
    desk.open_case()
    [notification] = desk.to(NOTIFY)
    to_agent = len(desk.to(AGENT))
    desk.agent_reply(
        notification,
        "Le envío su recibo corregido.",
        attachments=[
            ("recibo de señal.pdf", "application/pdf", PDF),
            ("a.txt", "text/plain", b"x"),
        ],
    )
    relay = desk.last_to(CUSTOMER)
    assert "Le envío su recibo corregido." in text(relay)
    files = [
        (p.get_filename(), p.get_content_type(), p.get_content()) for p in relay.iter_attachments()
    ]
    assert files == [
        ("recibo de señal.pdf", "application/pdf", PDF),
        ("a.txt", "text/plain", "x"),
    ]
    assert len(desk.to(AGENT)) == to_agent  # nothing to report back


def relay_limited_desk(limit: int, *args: Any) -> Desk:
    """The ``desk`` fixture's set-up, with ``notices.max_relayed_attachment_bytes = limit``."""
    tmp_path, mailboxes, sink, capsys, db_url = args
    config = write_config(tmp_path, mailboxes, sink, notify=True, extra=AREAS, db_url=db_url)
    limited = f"[notices]\nmax_relayed_attachment_bytes = {limit}\n"
    config.write_text(config.read_text().replace("[notices]\n", limited))
    return Desk(Cli(config, capsys), mailboxes, sink, tmp_path)


def test_attachments_over_the_relay_limit_stay_on_the_case_and_are_named_back(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str
) -> None:
    desk = relay_limited_desk(2000, tmp_path, mailboxes, sink, capsys, db_url)
    desk.open_case()
    [notification] = desk.to(NOTIFY)
    big = ("fotos.zip", "application/zip", b"z" * 1500)
    desk.agent_reply(
        notification,
        "Le envío su recibo corregido.",
        attachments=[("recibo.pdf", "application/pdf", PDF), big, ("nota.txt", "text/plain", b"y")],
    )
    relay = desk.last_to(CUSTOMER)
    assert "Le envío su recibo corregido." in text(relay)
    # In order, while they fit: the zip would take the two past 2,000 bytes; the note fits.
    assert [p.get_filename() for p in relay.iter_attachments()] == ["recibo.pdf", "nota.txt"]
    told = text(desk.last_to(AGENT))
    assert "se envió al cliente, sin los adjuntos que se indican abajo" in told
    assert "Pasa del límite de 2 KB por respuesta" in told
    assert "Adjuntos no enviados: fotos.zip" in told and CUSTOMER in told


def test_with_no_relay_allowance_attachments_stay_on_the_case(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str
) -> None:
    desk = relay_limited_desk(0, tmp_path, mailboxes, sink, capsys, db_url)
    desk.open_case()
    [notification] = desk.to(NOTIFY)
    desk.agent_reply(
        notification, "Le envío su recibo.", attachments=[("recibo.pdf", "application/pdf", PDF)]
    )
    assert list(desk.last_to(CUSTOMER).iter_attachments()) == []
    told = text(desk.last_to(AGENT))
    assert "El sistema de casos está configurado para no reenviar adjuntos" in told
    assert "Adjuntos no enviados: recibo.pdf" in told


def test_a_reply_on_a_case_without_a_customer_address_tells_the_agent(desk: Desk) -> None:
    folio = desk.open_phone_case()
    notification = desk.last_to(NOTIFY)
    assert folio in notification["Subject"]
    assert "(sin correo: registrado por teléfono o en persona)" in text(notification)
    desk.agent_reply(notification, "Mañana pasamos a revisar.")
    told = text(desk.last_to(AGENT))
    assert "no tiene correo del cliente" in told
    assert [m["kind"] for m in desk.case(folio)["messages"]][-2:] == ["agent", "notice"]


def test_a_resolution_or_visit_on_a_phone_case_tells_the_agent_to_call(desk: Desk) -> None:
    # Resolved with causes "for the customer", the case told nobody, and the agent was not told.
    folio = desk.open_phone_case()
    notification = desk.last_to(NOTIFY)
    desk.agent_reply(notification, "#resolver procedente\nSe cambió el módem dañado.")
    assert desk.case(folio)["status"] == "resolved"
    told = text(desk.last_to(AGENT))
    assert "no tiene correo del cliente" in told
    assert "la resolución quedó registrada en el caso, pero no se le avisó" in told
    assert "por teléfono" in told
    # The command line says it too, on a case changed from an admin's shell.
    code, _, err = desk.cli("cases", "reopen", folio)
    assert code == 0, err
    code, _, err = desk.cli("cases", "resolve", folio, "--outcome", "valid", "--cause", "x")
    assert code == 0, err
    assert "has no customer mail address: the customer was not told of the resolution" in err


@pytest.mark.parametrize(
    ("reply", "line", "sentence"),
    [
        # A note's text would go to the customer as the causes.
        ("#resolver procedente\n#nota\nEl cliente tiene adeudo.", "#nota", "contradice"),
        ("#resolver procedente\n#resolver improcedente\nSe cambió.", "#resolver improcedente",
         "una sola vez"),
        ("#cerrar\n#reabrir", "#reabrir", "contradice"),
        ("#resolver procedente", "#resolver procedente", "faltan las causas"),
        ("#visita 2001-01-01 10:00", "#visita 2001-01-01 10:00", "ya pasaron"),
        # The year mistyped the other way: a date nobody will keep.
        ("#visita 2062-11-28 10:00", "#visita 2062-11-28 10:00", "más de 180 días; revise el año"),
        # Below the greeting, the note was relayed to the customer as text.
        ("Buenas tardes,\n#nota\nEl cliente debe 3 meses; no darle prioridad.", "#nota",
         "los comandos van en las primeras líneas de la respuesta"),
        ("Buenas tardes:\n\n#resolver procedente\nSe cambió el conector.",
         "#resolver procedente", "antes de cualquier otro texto"),
    ],
)  # fmt: skip
def test_commands_that_cannot_apply_run_nothing_and_say_why(
    desk: Desk, reply: str, line: str, sentence: str
) -> None:
    folio = desk.open_case()
    [notification] = desk.to(NOTIFY)
    to_customer = len(desk.to(CUSTOMER))
    desk.agent_reply(notification, reply)
    detail = desk.case(folio)
    assert (detail["status"], detail["outcome"], detail["visit"]) == ("open", None, None)
    assert len(desk.to(CUSTOMER)) == to_customer
    error = text(desk.last_to(AGENT))
    assert f"  {line}\n    → " in error and sentence in error


def test_a_closed_case_is_reopened_before_it_is_resolved_again(desk: Desk) -> None:
    folio = desk.open_case()
    [notification] = desk.to(NOTIFY)
    desk.agent_reply(notification, "#cerrar")
    to_customer = len(desk.to(CUSTOMER))
    desk.agent_reply(notification, "#resolver improcedente\nNo hubo falla.")
    assert desk.case(folio)["status"] == "closed"
    assert len(desk.to(CUSTOMER)) == to_customer
    assert "escriba #reabrir" in text(desk.last_to(AGENT))
    desk.agent_reply(notification, "#reabrir\n#resolver improcedente\nNo hubo falla.")
    assert desk.case(folio)["status"] == "resolved"
    assert "improcedente" in text(desk.last_to(CUSTOMER)).lower()
    # The command line refuses the same, with one sentence.
    assert desk.cli("cases", "close", folio)[0] == 0
    for args in (
        ("resolve", folio, "--outcome", "valid", "--cause", "Listo."),
        ("visit", folio, "--date", "2099-12-03"),
        ("route", folio, "--area", "redes"),
    ):
        code, _, err = desk.cli("cases", *args)
        assert code == 1, err
        assert err.strip() == (
            f"mailcase: case {folio} is closed: reopen it first (mailcase cases reopen {folio})"
        )
    assert len(desk.to(CUSTOMER)) == to_customer + 1


def test_the_cli_refuses_a_resolution_without_causes_and_a_past_visit(desk: Desk) -> None:
    folio = desk.open_case()
    code, _, err = desk.cli("cases", "resolve", folio, "--outcome", "valid", "--cause", "  ")
    assert code == 1 and "needs the causes (--cause)" in err
    code, _, err = desk.cli("cases", "visit", folio, "--date", "2026-01-05", "--time", "10:00")
    assert code == 1 and "the visit 2026-01-05 10:00 for case" in err and "is in the past" in err
    detail = desk.case(folio)
    assert (detail["status"], detail["visit"]) == ("open", None)


def test_a_visit_years_ahead_is_refused_by_the_cli_too(desk: Desk) -> None:
    folio = desk.open_case()
    code, _, err = desk.cli("cases", "visit", folio, "--date", "9999-12-31")
    assert code == 1, err
    assert f"the visit 9999-12-31 for case {folio} is more than 180 days ahead" in err
    assert "check the year" in err
    assert desk.case(folio)["visit"] is None


def test_invisible_characters_and_hashtags_in_a_reply(desk: Desk) -> None:
    folio = desk.open_case()
    [notification] = desk.to(NOTIFY)
    to_customer = len(desk.to(CUSTOMER))
    # A byte order mark or a zero-width space before "#nota" hid the command.
    desk.agent_reply(notification, "\ufeff#nota\nEl cliente debe 3 meses.")
    desk.agent_html_reply(notification, "<div>\u200b#nota</div><div>Adeudo confirmado.</div>")
    assert len(desk.to(CUSTOMER)) == to_customer
    notes = [m["text"] for m in desk.case(folio)["messages"] if m["kind"] == "note"]
    assert notes[-2:] == ["El cliente debe 3 meses.", "Adeudo confirmado."]
    # A "#" line under the greeting that is no command is the agent's text.
    desk.agent_reply(notification, "Buenas tardes,\n#1 en atención a clientes\n#SomosPLR")
    relayed = text(desk.last_to(CUSTOMER))
    assert "#1 en atención a clientes\n#SomosPLR" in relayed


def quoted_html(notice: EmailMessage) -> str:
    """The notice as an HTML client quotes it: one line per <br>, no ">"."""
    return "<br>".join(html.escape(line) for line in text(notice).splitlines())


def test_a_notice_quoted_by_an_html_only_client_never_reaches_the_customer(desk: Desk) -> None:
    folio = desk.open_case(subject="Sin internet", body="Desde ayer no tengo internet.")
    [notification] = desk.to(NOTIFY)
    quoted = quoted_html(notification)
    # Yahoo: the attribution ("En viernes, …") no rule knew, in div.yahoo_quoted.
    desk.agent_html_reply(
        notification,
        "<div>#resolver procedente</div><div>Se cambió el conector.</div>"
        '<div id="yahoo_quoted_1" class="yahoo_quoted"><div><div>En viernes, 27 de noviembre '
        "de 2026, 10:00:00 CST, Internet Plarey &lt;contacto@internet-plarey.com.mx&gt; "
        f"escribió:</div><div><br></div><div>{quoted}</div></div></div>",
    )
    detail = desk.case(folio)
    assert (detail["outcome"], detail["cause"]) == ("valid", "Se cambió el conector.")
    resolution = text(desk.last_to(CUSTOMER))
    for internal in ("Buzón", "Comandos", "Desde ayer", "escribió"):
        assert internal not in resolution
    # No quote element, and an attribution in a wording no rule knows: the notice
    # under it is still ours, and cut there.
    desk.agent_html_reply(
        notification,
        f"<div>Ya quedó su servicio.</div><div>Internet Plarey escribió:</div><div>{quoted}</div>",
    )
    relayed = text(desk.last_to(CUSTOMER))
    assert "Ya quedó su servicio." in relayed
    for internal in ("Folio:", "Buzón", "Comandos", "Desde ayer", "escribió"):
        assert internal not in relayed


def test_a_notice_that_cannot_be_cut_away_refuses_the_reply(desk: Desk) -> None:
    folio = desk.open_case(subject="Sin internet", body="Desde ayer no tengo internet.")
    [notification] = desk.to(NOTIFY)
    to_customer = len(desk.to(CUSTOMER))
    # Nothing marks where the quote starts: the notice follows the agent's words.
    desk.agent_html_reply(
        notification,
        f"<div>#resolver procedente</div><div>Listo.</div><div>{quoted_html(notification)}</div>",
    )
    assert len(desk.to(CUSTOMER)) == to_customer
    assert desk.case(folio)["outcome"] is None
    error = text(desk.last_to(AGENT))
    assert f"  Folio: {folio}\n    → esta línea es de la notificación citada" in error
    assert "escriba su respuesta arriba de la cita" in error


def test_a_reply_within_the_window_reopens_a_case_that_closed_since(desk: Desk) -> None:
    # The resolution notice promises cases.reopen_days (30); the case closes by itself
    # after cases.close_after_days (7), or an agent closes it.
    folio = desk.open_case()
    assert desk.cli("cases", "resolve", folio, "--outcome", "valid", "--cause", "Listo.")[0] == 0
    assert desk.cli("cases", "close", folio)[0] == 0
    desk.deliver(mail(subject=f"Re: [Folio {folio}] Sin servicio", body="Volvió a fallar."))
    assert len(desk.cli.json("cases", "list")) == 1
    assert desk.case(folio)["status"] == "open"
    assert "Volvió a fallar." in text(desk.last_to(NOTIFY))


def test_a_cases_notifications_to_the_agents_are_one_thread(desk: Desk) -> None:
    # Thunderbird threads by References only: each update was a conversation of its own.
    folio = desk.open_case()
    for body in ("Sigo sin servicio.", "Ya volvió, gracias."):
        desk.deliver(mail(subject=f"Re: [Folio {folio}] Sin servicio de internet", body=body))
    first, second, third = desk.to(NOTIFY)
    assert first["In-Reply-To"] is None
    assert second["In-Reply-To"].strip() == first["Message-ID"].strip()
    assert third["In-Reply-To"].strip() == second["Message-ID"].strip()
    assert third["References"].split() == [
        first["Message-ID"].strip(),
        second["Message-ID"].strip(),
    ]


def test_agents_see_a_subject_whole_while_the_customer_sees_its_links_masked(
    desk: Desk,
) -> None:
    folio = desk.open_case(subject="No abre www.portal-plarey.mx ni factura.pdf")
    ack = desk.last_to(CUSTOMER)
    assert "[…] ni factura.pdf" in str(ack["Subject"]) and "portal-plarey" not in text(ack)
    notification = desk.last_to(NOTIFY)
    assert "www.portal-plarey.mx ni factura.pdf" in str(notification["Subject"])
    assert "Asunto:   No abre www.portal-plarey.mx ni factura.pdf" in text(notification)
    assert folio in str(notification["Subject"])


STRANGER = "mallory@evil.example"


@pytest.mark.parametrize(
    "plant",
    [
        # An "auto-reply" naming the folio is recorded on the case, with the id it chose...
        {"sender": STRANGER, "headers": {"Auto-Submitted": "auto-replied"}},
        # ... and so is a message that claims an agent's address without proof.
        {"sender": f"Ana Técnica <{AGENT}>"},
    ],
    ids=["auto-reply", "unverified"],
)
def test_a_stranger_cannot_thread_into_a_case_by_an_id_they_planted(
    desk: Desk, plant: dict[str, Any]
) -> None:
    folio = desk.open_case()
    desk.deliver(
        mail(subject=f"Re: [Folio {folio}] fuera", message_id="<plant-1@evil.example>", **plant)
    )
    desk.deliver(
        mail(
            sender=STRANGER,
            subject="Cancelen mi servicio",
            headers={"In-Reply-To": "<plant-1@evil.example>"},
            body="Soy el titular: cancelen el servicio.",
        )
    )
    victim = desk.case(folio)
    assert not [m for m in victim["messages"] if "cancelen" in m["text"]]
    assert victim["status"] == "open"
    # The stranger's message opened a case of its own.
    [theirs] = [c for c in desk.cli.json("cases", "list") if c["folio"] != folio]
    assert desk.case(theirs["folio"])["customer"] == STRANGER
