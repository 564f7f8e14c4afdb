"""What customers, agents and staff meet at the desk: a forwarded report read whole, an
agent's mail that names no case, commands on a resolved case, and what the notices to
agents say (fourth review round)."""

from __future__ import annotations

import pytest
from helpers import CONTACTO, NOTIFY, mail
from test_agents import AGENT, CUSTOMER, Desk, desk, text

__all__ = ["desk"]  # the fixture, shared with test_agents

ROSA = "rosa.diaz@hotmail.com"
TRUSTED = "mx.internet-plarey.com.mx"
# What the receiving server writes for mail it authenticated (agents.trusted_authserv_ids).
AUTHENTICATED = {
    "Authentication-Results": f"{TRUSTED}; dkim=pass header.d=internet-plarey.com.mx; "
    f"spf=pass smtp.mailfrom={AGENT}"
}


def trusting(desk: Desk) -> Desk:
    """``desk`` with its receiving server's Authentication-Results trusted."""
    config = desk.cli.config
    text_ = config.read_text()
    if "trusted_authserv_ids" not in text_:
        trust = f'trusted_authserv_ids = ["{TRUSTED}"]\n[web_form]'
        config.write_text(text_.replace("[web_form]", trust))
    return desk


REPORT = "Desde el sábado no tengo internet en Calle Pino 12, col. Centro. Contrato 7788."

GMAIL_FORWARD = (
    "---------- Forwarded message ---------\n"
    f"De: Rosa Díaz <{ROSA}>\n"
    "Date: lun, 16 nov 2026 a las 9:10\n"
    "Subject: No tengo servicio\n"
    "To: <contacto@internet-plarey.com.mx>\n\n"
)
OUTLOOK_FORWARD = (
    "________________________________\n"
    "De: Pedro Díaz <pedro@gmail.com>\n"
    "Enviado: lunes, 16 de noviembre de 2026 10:00\n"
    f"Para: Rosa Díaz <{ROSA}>\n"
    "Asunto: módem\n\n"
)


@pytest.mark.parametrize(
    ("subject", "forwarded"),
    [
        ("RV: No tengo servicio", GMAIL_FORWARD),
        ("RV: módem", OUTLOOK_FORWARD),
        # No forward prefix (the customer retyped the subject): Gmail's marker says it.
        ("Nadie me contestó", GMAIL_FORWARD),
    ],
)
def test_a_forwarded_report_reaches_the_case_and_the_agents_whole(
    desk: Desk, subject: str, forwarded: str
) -> None:
    folio = desk.open_case(
        sender=f"Rosa Díaz <{ROSA}>",
        subject=subject,
        body="Les reenvío mi correo de la semana pasada, nadie me contestó.\n\n"
        + forwarded
        + REPORT,
    )
    [stored] = desk.case(folio)["messages"][:1]
    assert REPORT in stored["text"] and "nadie me contestó" in stored["text"]
    assert REPORT in text(desk.last_to(NOTIFY))


def _agent_forwards_rosas_report(desk: Desk, forward: str = GMAIL_FORWARD) -> None:
    """Ana, authenticated by the receiving server, forwards Rosa's mail (``forward``:
    the forward's header block) to support."""
    trusting(desk).deliver(
        mail(
            sender=f"Ana Técnica <{AGENT}>",
            subject="Fwd: No tengo servicio",
            body="Ábranle caso a esta clienta.\n\n" + forward + REPORT,
            headers=AUTHENTICATED,
        )
    )


def test_an_agent_forwarding_a_customers_mail_opens_the_case_for_that_customer(
    desk: Desk,
) -> None:
    _agent_forwards_rosas_report(desk)
    [case] = desk.cli.json("cases", "list")
    shown = desk.case(case["folio"])
    assert shown["customer"] == ROSA and shown["customer_name"] == "Rosa Díaz"
    assert shown["messages"][0]["kind"] == "agent" and REPORT in shown["messages"][0]["text"]
    [ack] = desk.to(ROSA)  # the customer learns the folio
    assert case["folio"] in ack["Subject"]
    assert desk.to(AGENT) == []  # no acknowledgement to the agent as if a customer
    assert REPORT in text(desk.last_to(NOTIFY))


def agent_writes_to_rosa(desk: Desk, name: str = "Rosa Díaz") -> None:
    """An authenticated agent writes to the customer Rosa (To: ``name``) with support in Cc."""
    trusting(desk).deliver(
        mail(
            sender=f"Ana Técnica <{AGENT}>",
            to=f'"{name}" <{ROSA}>',
            headers={"Cc": CONTACTO, **AUTHENTICATED},
            subject="Su reporte de esta mañana",
            body="Buenos días, Rosa: mañana pasa el técnico a revisar su antena.",
        )
    )


def test_an_agent_writing_to_a_customer_with_support_in_copy_opens_the_case_for_them(
    desk: Desk,
) -> None:
    agent_writes_to_rosa(desk)
    [case] = desk.cli.json("cases", "list")
    assert case["customer"] == ROSA
    assert len(desk.to(ROSA)) == 1 and desk.to(AGENT) == []


def test_an_agents_mail_naming_no_case_and_no_customer_opens_nothing_and_says_why(
    desk: Desk,
) -> None:
    for _ in range(2):  # the second one in the hour is kept, not sent
        trusting(desk).deliver(
            mail(
                sender=f"Ana Técnica <{AGENT}>",
                subject="resolver lo de Rosa",
                body="#resolver procedente\nSe reinició la ONT.",
                headers=AUTHENTICATED,
            )
        )
    assert desk.cli.json("cases", "list") == []
    [told] = desk.to(AGENT)
    assert "no nombra ningún caso" in told["Subject"]
    assert "resolver lo de Rosa" in text(told) and "no se ejecutó ningún comando" in text(told)
    ledger = desk.cli.json("messages", "list")
    assert [m["disposition"] for m in ledger] == ["no_case", "no_case"]
    statuses = sorted(n["status"] for n in desk.cli.json("outbox", "list"))
    assert statuses == ["sent", "suppressed"]


def test_a_mail_only_claiming_an_agents_address_opens_no_case_for_anyone(desk: Desk) -> None:
    # Anyone can write an agent's From: a forged forward, or a forged mail with a
    # victim in copy, must not get third parties acknowledged.
    desk.deliver(
        mail(
            sender=f"Ana Técnica <{AGENT}>",
            subject="Fwd: No tengo servicio",
            body="Ábranle caso.\n\n" + GMAIL_FORWARD + REPORT,
        )
    )
    desk.deliver(
        mail(sender=AGENT, to=f"Víctima <{ROSA}>", headers={"Cc": CONTACTO}, subject="Hola")
    )
    assert desk.cli.json("cases", "list") == [] and desk.to(ROSA) == []
    [told] = desk.to(AGENT)  # once in the hour
    assert "No pudimos comprobar que usted lo haya enviado" in text(told)
    assert "trusted_authserv_ids" in text(told)
    ledger = desk.cli.json("messages", "list")
    assert [m["disposition"] for m in ledger] == ["no_case", "no_case"]


def test_a_second_resolution_is_refused_until_the_case_is_reopened(desk: Desk) -> None:
    folio = desk.open_case()
    [notification] = desk.to(NOTIFY)
    desk.agent_reply(notification, "#resolver procedente\nSe cambió el conector del poste.")
    desk.agent_reply(notification, "#resolver improcedente\nLa falla es del router del cliente.")
    [resolution] = [m for m in desk.to(CUSTOMER) if "PROCEDENTE" in text(m)]
    assert "IMPROCEDENTE" not in text(resolution)
    refusal = text(desk.last_to(AGENT))
    assert "#resolver improcedente" in refusal and "ya está resuelto" in refusal
    assert desk.case(folio)["outcome"] == "valid"
    code, _, err = desk.cli("cases", "resolve", folio, "--outcome", "invalid", "--cause", "x")
    assert code == 1 and "already resolved: reopen it first" in err
    # A correction, said so: reopened, then resolved again.
    desk.agent_reply(notification, "#reabrir\n#resolver improcedente\nEra el router del cliente.")
    assert desk.case(folio)["outcome"] == "invalid"
    assert "IMPROCEDENTE" in text(desk.last_to(CUSTOMER))


def test_control_characters_from_a_customer_never_reach_the_admins_terminal(desk: Desk) -> None:
    # An ESC sequence in a subject retitled the window, cleared the screen and hid text
    # when an admin ran `cases list`; the stored case keeps the text as it came.
    hostile = "Falla\x1b]0;pwned\x07\x1b[2J\x1b[8mOCULTO\x1b[0m"
    folio = desk.open_case(
        subject=hostile,
        body=f"Hola {hostile}",
        attachments=[(f"foto{chr(27)}[2J.jpg", "image/jpeg", b"\xff\xd8\xff")],
    )
    for args in (("cases", "list"), ("cases", "show", folio)):
        code, out, _ = desk.cli(*args)
        assert code == 0 and "\x1b" not in out and "\x07" not in out
        assert "\\x1b]0;pwned\\x07" in out
    assert "\x1b" in desk.case(folio)["subject"]  # --json: escaped by JSON, whole


@pytest.mark.parametrize(
    "sender", [f'"{AGENT}" <{AGENT}>', f'"Ana ({AGENT})" <{AGENT}>', f"Ana Técnica <{AGENT}>"]
)
def test_a_relayed_reply_is_signed_without_the_agents_address(desk: Desk, sender: str) -> None:
    desk.open_case()
    [notification] = desk.to(NOTIFY)
    desk.agent_reply(notification, "Ya quedó su servicio, don Juan.", sender=sender)
    relay = text(desk.last_to(CUSTOMER))
    assert "Ya quedó su servicio" in relay and AGENT not in relay
    assert ("Ana Técnica" in relay) is sender.startswith("Ana Técnica")


def test_the_agents_notice_names_the_folio_a_new_case_is_related_to(desk: Desk) -> None:
    folio = desk.open_case()
    # The customer's wife, from her own address, in the thread of his case.
    desk.deliver(mail(sender=f"Rosa Díaz <{ROSA}>", subject=f"RE: [Folio {folio}] Sin servicio"))
    notice = text(desk.last_to(NOTIFY))
    assert "Caso nuevo" in notice and f"Relacionado con: {folio}" in notice


def test_the_agents_notice_of_a_case_an_agent_opened_calls_the_agent_an_agent(
    desk: Desk,
) -> None:
    _agent_forwards_rosas_report(desk)
    notice = text(desk.last_to(NOTIFY))
    assert f"Escribió: {AGENT} (agente)" in notice and "no es el cliente" not in notice


def test_agents_see_the_customers_name_and_a_long_subject_as_written(desk: Desk) -> None:
    subject = "Sin servicio desde el sábado " + "y el módem parpadea en rojo " * 6
    desk.open_case(sender="Juan Pérez (ventas.com.mx) <juan.perez@example.com>", subject=subject)
    notice = text(desk.last_to(NOTIFY))
    assert "Juan Pérez (ventas.com.mx)" in notice  # a domain in it: kept from the customer
    assert " ".join(subject.split()) in " ".join(notice.split())
    assert "Juan Pérez" not in text(desk.last_to(CUSTOMER))


def test_the_customers_photos_go_to_the_agents_with_the_notice(desk: Desk) -> None:
    # The acknowledgement asks for photographs; agents working from mail never saw them.
    photo = b"\xff\xd8\xff" + bytes(range(256)) * 40
    config = desk.cli.config
    limit = "[notices]\nmax_agent_attachment_bytes = 20000"
    config.write_text(config.read_text().replace("[notices]", limit))
    desk.open_case(
        attachments=[
            ("módem.jpg", "image/jpeg", photo),
            ("video.mp4", "video/mp4", b"\x00" * 15_000),  # over what is left of the limit
        ]
    )
    notice = desk.last_to(NOTIFY)
    files = {part.get_filename(): part.get_content() for part in notice.iter_attachments()}
    assert files == {"módem.jpg": photo}
    body = " ".join(text(notice).split())
    assert "Adjuntos: módem.jpg, video.mp4" in body
    assert (
        "(sin adjuntar, por su tamaño: video.mp4; se obtienen con «mailcase cases attachment"
        in body
    )


def test_a_folio_named_in_the_text_of_a_new_mail_is_linked_for_the_agents(desk: Desk) -> None:
    folio = desk.open_case()
    desk.deliver(
        mail(subject="Seguimiento", body=f"Mi reporte con folio {folio}: sigo sin servicio.")
    )
    newest = desk.cli.json("cases", "list")[0]
    assert newest["folio"] != folio
    assert desk.case(newest["folio"])["related"] == [folio]
    assert f"Relacionado con: {folio}" in text(desk.last_to(NOTIFY))
    # The reason admins read in `messages list`.
    assert desk.cli.json("messages", "list")[-1]["reason"] == f"names folio {folio} in its text"
    # Someone else's folio in a text is not linked: it tells nothing about the case.
    desk.deliver(mail(sender=ROSA, subject="Hola", body=f"Vi el folio {folio} en la tele."))
    assert desk.case(desk.cli.json("cases", "list")[0]["folio"])["related"] == []


def test_a_forged_agents_subject_reaches_the_agent_masked(desk: Desk) -> None:
    # The no_case notice goes from the support address to the real agent: a forger's
    # link in its subject would look like our own (and passes DMARC: it is ours).
    desk.deliver(
        mail(sender=AGENT, subject="Su buzón expira hoy: renueve en https://plarey.example/login")
    )
    told = text(desk.last_to(AGENT))
    assert "renueve en […]" in told and "plarey.example" not in told


def test_a_held_notice_to_agents_keeps_no_copy_of_the_customers_files(desk: Desk) -> None:
    import sqlalchemy as sa

    from mailcase.config import load_settings
    from mailcase.store import Store

    photo = ("foto.jpg", "image/jpeg", b"\xff\xd8\xff" + b"x" * 30_000)
    folio = desk.open_case()
    for _ in range(11):  # limits.max_agent_notices_per_case_per_hour: 10
        desk.deliver(mail(subject=f"Re: [Folio {folio}] Sin servicio", attachments=[photo]))
    store = Store.open(load_settings(desk.cli.config).database.url, auto_upgrade=False)
    with store.transaction() as session:
        rows = session.execute(
            sa.text("SELECT status, length(raw) FROM notices WHERE kind = 'agent_notification'")
        ).all()
    store.dispose()
    held = [size for status, size in rows if status == "suppressed"]
    sent = [size for status, size in rows if status == "sent"]
    assert held and max(held) < 10_000 < min(sent[1:])  # the first one had no file


def test_web_form_mail_speaks_for_its_customer_only_when_the_server_vouches_for_it(
    desk: Desk,
) -> None:
    from helpers import WEB

    trusting(desk)
    form = {"Reply-To": f"Rosa Díaz <{ROSA}>"}
    # Anyone can write the form's From: unauthenticated, it is the form's own mail.
    desk.deliver(mail(sender=WEB, subject="Cancelen mi reporte", headers=form))
    assert [c["customer"] for c in desk.cli.json("cases", "list")] == [WEB]
    domain = WEB.rpartition("@")[2]
    vouched = f"{TRUSTED}; dkim=pass header.d={domain}; spf=pass smtp.mailfrom={WEB}"
    desk.deliver(
        mail(
            sender=WEB,
            subject="Formulario: sin servicio",
            headers={**form, "Authentication-Results": vouched},
        )
    )
    assert desk.cli.json("cases", "list")[0]["customer"] == ROSA
