"""Who may act on a case: an agent's proof (a signed notice id) stops being one
once it is seen in other hands, and an agent writing to the customer directly is
not taken for a forger."""

from __future__ import annotations

from email.message import EmailMessage

from helpers import AGENT, CONTACTO, NOTIFY, mail
from test_agents import CUSTOMER, Desk, desk, text

__all__ = ["desk"]  # the fixture, shared with test_agents


def forged_by_customer(notification: EmailMessage, body: str) -> bytes:
    """The customer writing as the agent, with the notice's id they were handed."""
    notice_id = notification["Message-ID"].strip()
    return mail(
        sender=f"Ana Técnica <{AGENT}>",
        subject=f"Re: {notification['Subject']}",
        body=body,
        headers={"In-Reply-To": notice_id, "References": notice_id},
    )


def test_a_customer_handed_the_notice_id_cannot_act_as_the_agent(desk: Desk) -> None:
    folio = desk.open_case()
    [notification] = desk.to(NOTIFY)
    # As the README suggests for some cases: written to the customer by replying to
    # the notice, the mailbox in copy. The customer's copy carries the notice's id.
    desk.agent_reply(notification, "Le escribo directamente.", to=f"{CUSTOMER}, {CONTACTO}")
    # Still the agent's proof (then the agent becoming the owner: auto_assign).
    assert [m["kind"] for m in desk.case(folio)["messages"][-2:]] == ["agent", "system"]
    desk.deliver(forged_by_customer(notification, "#resolver procedente\nSe bonifican 3 meses."))
    case = desk.case(folio)
    assert case["status"] == "open" and case["outcome"] is None
    assert case["messages"][-2]["kind"] == "unverified"
    warning = desk.last_to(AGENT)
    assert "también llegó a alguien que no es agente" in text(warning)
    # The real agent answers the warning, which is a proof of its own.
    desk.agent_reply(warning, "#resolver procedente\nSe cambió el módem dañado.")
    assert desk.case(folio)["status"] == "resolved"


def test_a_notice_id_sent_back_by_someone_else_is_no_proof_afterwards(desk: Desk) -> None:
    folio = desk.open_case()
    [notification] = desk.to(NOTIFY)
    notice_id = notification["Message-ID"].strip()
    # The customer's reply to a mail the agent sent them outside the case.
    desk.deliver(mail(body="Gracias, quedo atento.", headers={"References": notice_id}))
    desk.agent_reply(notification, "#cerrar")
    assert desk.case(folio)["status"] == "open"
    assert desk.case(folio)["messages"][-2]["kind"] == "unverified"


def test_an_agent_writing_to_the_customer_from_the_customers_mail_gets_no_forgery_warning(
    desk: Desk,
) -> None:
    folio = desk.open_case()
    [ack] = desk.to(CUSTOMER)
    to_agent = len(desk.to(AGENT))
    # Replying to the customer's own thread: no signed id, no authenticated sender.
    desk.deliver(
        mail(
            sender=f"Ana Técnica <{AGENT}>",
            to=CUSTOMER,
            subject=f"Re: {ack['Subject']}",
            body="Mañana pasamos a revisar su módem.",
            headers={"Cc": CONTACTO, "In-Reply-To": ack["Message-ID"].strip()},
        )
    )
    assert desk.case(folio)["messages"][-1]["kind"] == "unverified"
    assert len(desk.to(AGENT)) == to_agent


def test_an_answer_from_the_shared_agents_address_is_kept_and_explained(desk: Desk) -> None:
    # Agents of a small provider read notices in the shared mailbox and answer from it:
    # mailcase's own address, which it never obeys (a loop guard). The answer used to
    # vanish without a word.
    folio = desk.open_case()
    [notification] = desk.to(NOTIFY)
    to_customer = len(desk.to(CUSTOMER))
    desk.agent_reply(notification, "#resolver procedente\nSe cambió el módem.", sender=NOTIFY)
    assert desk.case(folio)["status"] == "open"
    assert len(desk.to(CUSTOMER)) == to_customer
    told = text(desk.last_to(NOTIFY))
    assert f"desde {NOTIFY}, una dirección del propio sistema de casos" in told
    assert "responda de nuevo desde su propio buzón" in told


def test_an_attached_notice_never_reaches_the_customer(desk: Desk) -> None:
    # Outlook's "attach original message": the notice to agents, its signed id (an
    # agent's proof) and the command help, would have gone to the customer as a file.
    folio = desk.open_case()
    [notification] = desk.to(NOTIFY)
    notice_id = notification["Message-ID"].strip()
    note = (
        (
            f"From: Ana Técnica <{AGENT}>\r\nTo: {CONTACTO}\r\n"
            f"Subject: Re: {notification['Subject']}\r\n"
            f"In-Reply-To: {notice_id}\r\nReferences: {notice_id}\r\n"
            "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n"
            "--B\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nLe comparto el aviso.\r\n"
            "--B\r\nContent-Type: message/rfc822\r\n\r\n"
        ).encode()
        + notification.as_bytes()
        + b"\r\n--B\r\nContent-Type: text/plain\r\n"
    )
    note += b'Content-Disposition: attachment; filename="ids.txt"\r\n\r\n' + notice_id.encode()
    desk.deliver(note + b"\r\n--B--\r\n")
    relay = desk.last_to(CUSTOMER)
    assert "Le comparto el aviso." in text(relay)
    assert list(relay.iter_attachments()) == []
    assert notice_id.encode() not in relay.as_bytes()
    told = text(desk.last_to(AGENT))
    assert "No se reenvían: attachment-1.eml, ids.txt" in told
    assert desk.case(folio)["status"] == "open"


def test_an_auto_reply_quoting_the_notice_id_exposes_nothing(desk: Desk) -> None:
    # An out-of-office answer or a bounce quoting the notice's id shows nobody holds it.
    folio = desk.open_case()
    [notification] = desk.to(NOTIFY)
    notice_id = notification["Message-ID"].strip()
    desk.deliver(
        mail(
            sender="vacaciones@example.com",
            subject=f"Respuesta automática: {notification['Subject']}",
            headers={"Auto-Submitted": "auto-replied", "References": notice_id},
        )
    )
    desk.agent_reply(notification, "#nota\nRevisado.")
    assert desk.case(folio)["messages"][-1]["kind"] == "note"


def test_a_remark_on_the_forged_mail_warning_reaches_the_customer_only_when_asked_for(
    desk: Desk,
) -> None:
    # "Yo no envié eso, revisen quién usa mi cuenta." answered to the warning went to the
    # customer. It is a note, unless the warning asked for the agent's words as a reply
    # to itself (the case's notification exposed, the warning the one proof left: next).
    folio = desk.open_case()
    desk.deliver(mail(sender=AGENT, subject=f"Re: [Folio {folio}] Sin internet", body="#cerrar"))
    warning = desk.last_to(AGENT)
    assert "no pudimos comprobar" in text(warning)
    before = len(desk.to(CUSTOMER))
    desk.agent_reply(warning, "Yo no envié eso, revisen quién usa mi cuenta.")
    assert len(desk.to(CUSTOMER)) == before
    kinds = [m["kind"] for m in desk.case(folio)["messages"]]
    assert kinds[-2:] == ["note", "notice"]  # kept, and the agent told why


def test_words_answered_to_the_warning_of_an_exposed_case_reach_the_customer(
    desk: Desk,
) -> None:
    # Exposed: the warning is where the agent's words must go, and they do.
    desk.open_case()
    [notification] = desk.to(NOTIFY)
    desk.agent_reply(notification, "Le escribo directamente.", to=f"{CUSTOMER}, {CONTACTO}")
    desk.deliver(forged_by_customer(notification, "Soy el agente."))
    exposed_warning = desk.last_to(AGENT)
    assert "también llegó a alguien que no es agente" in text(exposed_warning)
    before = len(desk.to(CUSTOMER))
    desk.agent_reply(exposed_warning, "Don Juan, mañana pasamos a revisar su módem.")
    assert len(desk.to(CUSTOMER)) == before + 1
