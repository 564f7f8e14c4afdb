"""Loops through the agents' notifications are broken (RFC 3834 section 2)."""

from __future__ import annotations

from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from helpers import AGENT, NOTIFY, Cli, mail, write_config
from servers import Dovecot, SmtpSink

from mailcase.classify import MailKind, classify
from mailcase.inbound import parse_inbound

pytestmark = pytest.mark.integration

OURS = frozenset({"contacto@internet-plarey.com.mx"})


def auto_answer(notice: EmailMessage, sender: str, headers: dict[str, str]) -> bytes:
    """procmail's autoreply (``formail -r``, procmailex(5)) to ``notice``, from ``sender``."""
    return mail(
        sender=sender,
        to=str(notice["Reply-To"] or notice["From"]),
        subject=f"Re: {notice['Subject']}",
        body="Estoy fuera de la oficina hasta el lunes.",
        headers={
            "In-Reply-To": notice["Message-ID"].strip(),
            "References": notice["Message-ID"].strip(),
            **headers,
        },
    )


def test_x_loop_marks_an_answer_to_our_notice_as_automatic() -> None:
    answer = parse_inbound(
        b"From: luis@internet-plarey.com.mx\r\nTo: contacto@internet-plarey.com.mx\r\n"
        b"Subject: Re: [Folio PLR-2026-000001] Sin servicio\r\n"
        b"In-Reply-To: <mc.1.abc.def@internet-plarey.com.mx>\r\n"
        b"X-Loop: luis@internet-plarey.com.mx\r\n\r\nFuera de la oficina.\r\n"
    )
    result = classify(answer, own_addresses=OURS)
    assert result.kind is MailKind.AUTO_REPLY and result.reason.startswith("X-Loop: ")
    # A customer's own forwarding rule (procmail adds X-Loop too): still a customer's mail.
    forwarded = parse_inbound(
        b"From: juan@example.com\r\nTo: contacto@internet-plarey.com.mx\r\n"
        b"Subject: Sin servicio\r\nX-Loop: juan@example.com\r\n\r\nNo tengo internet.\r\n"
    )
    assert classify(forwarded, own_addresses=OURS).kind is MailKind.CUSTOMER


@pytest.mark.parametrize("marker", [{"X-Loop": "luis@internet-plarey.com.mx"}, {}])
def test_an_auto_responder_on_the_agents_list_does_not_loop(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, marker: dict[str, str]
) -> None:
    # luis@ reads the agents' list (agents.notify), is no agent of mailcase's, and his
    # responder answers every notice: with X-Loop it is automatic mail; with no header
    # at all, the per-case cap on agent notifications ends it.
    cli = Cli(write_config(tmp_path, mailboxes, sink, notify=True), capsys)
    mailboxes.append("contacto", mail())
    cli.poll()
    rounds = 0
    while (notices := [m.message for m in sink.messages if m.rcpt_tos == [NOTIFY]]) and rounds < 15:
        sink.clear()
        for notice in notices:
            mailboxes.append("contacto", auto_answer(notice, "luis@internet-plarey.com.mx", marker))
        cli.poll()
        rounds += 1
    assert rounds == (1 if marker else 10)  # limits.max_agent_notices_per_case_per_hour


def test_an_agents_auto_reply_is_not_relayed_to_the_customer(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    cli = Cli(write_config(tmp_path, mailboxes, sink, notify=True), capsys)
    mailboxes.append("contacto", mail())
    cli.poll()
    [notification] = [m.message for m in sink.messages if m.rcpt_tos == [NOTIFY]]
    sink.clear()
    mailboxes.append("contacto", auto_answer(notification, AGENT, {"X-Loop": AGENT}))
    cli.poll()
    assert sink.messages == []
    [entry] = [e for e in cli.json("messages", "list") if e["disposition"] != "new_case"]
    assert entry["disposition"] == "auto_reply"


def test_a_held_relay_is_said_to_be_held_and_those_notices_are_capped_too(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    extra = "[limits]\nmax_relays_per_case_per_hour = 1\nmax_agent_notices_per_case_per_hour = 2\n"
    cli = Cli(write_config(tmp_path, mailboxes, sink, notify=True, extra=extra), capsys)
    mailboxes.append("contacto", mail())
    cli.poll()
    [notification] = [m.message for m in sink.messages if m.rcpt_tos == [NOTIFY]]
    customer = next(m.rcpt_tos for m in sink.messages if m.rcpt_tos != [NOTIFY])
    told: list[str] = []
    for i in range(4):  # a responder with no header, answering the notification again
        sink.clear()
        reply = auto_answer(notification, AGENT, {}).replace(
            b"Estoy fuera de la oficina", f"Respuesta {i}".encode()
        )
        mailboxes.append("contacto", reply)
        cli.poll()
        assert [m.rcpt_tos for m in sink.messages if m.rcpt_tos == customer] == (
            [customer] if i == 0 else []
        )
        told += [str(m.message.get_body(("plain",)).get_content()) for m in sink.messages
                 if m.rcpt_tos == [AGENT]]  # fmt: skip
    # Held from the second on, and said so (not "sent"); the notices saying so are capped.
    assert len(told) == 2
    assert all("no se envió al cliente" in t and "ciclo" in t for t in told)
