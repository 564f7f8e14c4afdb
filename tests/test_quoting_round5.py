"""Quoting, fifth review round: prose with a time is not an attribution, inline
answers below a greeting, forwards and memos under an edited subject, device
signatures that are sentences, a signature above the quote."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime
from pathlib import Path

import pytest
from helpers import mail, offline_runtime
from sqlmodel import select

from mailcase import service
from mailcase.imap import FetchedMessage
from mailcase.models import Case, CaseMessage, Notice
from mailcase.quoting import agent_text, customer_text, strip_quoted

CUSTOMER = "Juan Pérez <juan.perez@example.com>"
AGENT = "ana.tecnica@internet-plarey.com.mx"
GMAIL_ATTRIBUTION = (
    "El vie, 27 nov 2026 a las 10:00, Internet Plarey <contacto@internet-plarey.com.mx> escribió:"
)
NOTICE = (
    "Caso nuevo: PLR-2026-000001.\n"
    "\n"
    "Folio:    PLR-2026-000001\n"
    "Cliente:  Juan Pérez <juan.perez@example.com>\n"
    "Buzón:    contacto (contacto@internet-plarey.com.mx)\n"
    "Asunto:   Sin servicio de internet\n"
    "\n"
    "--\n"
    "Cómo trabajar este caso por correo:\n"
    "Responda a este mensaje desde su propio buzón, sin cambiar el asunto.\n"
)
QUOTED_NOTICE = "\n".join("> " + line if line else ">" for line in NOTICE.split("\n"))


# --- 1 and 2: prose naming a time of day is not a client's attribution -------------

AGENT_WORDS = (
    "Buen día, Sr. Pérez.\n"
    "El lunes a las 10:00 nuestro técnico le escribió:\n"
    '"pase a la sucursal por su módem nuevo"\n'
    "Le confirmo que el módem ya está listo en la sucursal Centro; traiga su INE."
)


def test_an_agents_prose_naming_a_time_is_relayed_whole_and_the_notice_cut() -> None:
    reply = f"{AGENT_WORDS}\n\n{GMAIL_ATTRIBUTION}\n\n{QUOTED_NOTICE}\n"
    written = agent_text(reply)
    assert written.text == AGENT_WORDS
    assert written.notice_line == ""


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(
            "Buenas tardes.\n"
            "El sábado a las 4:30 el técnico me escribió:\n"
            '"su módem está dañado, el cambio cuesta $800"\n'
            "Pero el módem lo instalaron hace 2 semanas, no acepto ese cobro.\n"
            "Contrato 55321.",
            id="es-time",
        ),
        pytest.param(
            "Hola.\n"
            "El 3 de noviembre cobranza@internet-plarey.com.mx me escribió:\n"
            "que me bonificarían el mes.\n"
            "No ha pasado.",
            id="es-address",
        ),
        pytest.param(
            "Hi,\n"
            "On Monday at 10:30 your technician wrote:\n"
            "your modem is broken.\n"
            "It was installed 2 weeks ago.",
            id="en-time",
        ),
        pytest.param(
            "Buenas tardes.\n"
            "El 20/11/2026 a las 10:00, Juan Pérez me escribió:\n"
            "que el técnico vendría el martes. No vino.",
            id="es-date-year-time-lowercase-words",
        ),
    ],
)
def test_a_report_that_says_when_someone_wrote_is_kept(text: str) -> None:
    assert strip_quoted(text) == text
    assert customer_text(text, "Cobro indebido") == text


@pytest.mark.parametrize(
    "attribution",
    [
        pytest.param(GMAIL_ATTRIBUTION, id="gmail-es"),
        pytest.param(
            "On Fri, Nov 27, 2026 at 10:00\u202fAM Internet Plarey <contacto@example.com> wrote:",
            id="gmail-en",
        ),
        pytest.param(
            "El 27 nov 2026, a las 10:00, Internet Plarey <contacto@example.com> escribió:",
            id="apple-es",
        ),
        pytest.param(
            "El 27 nov 2026, a las 10:00, Internet Plarey escribió:", id="apple-no-address"
        ),
        pytest.param("En vie., 27 nov. 2026 a las 10:00, Internet Plarey escribió:", id="yahoo-es"),
    ],
)
def test_a_client_attribution_without_quote_marks_is_still_cut(attribution: str) -> None:
    # HTML turned into text, or Yahoo's text/plain: the quote has no ">" marks.
    text = f"Ya volvió el servicio.\n\n{attribution}\n\nRecibimos su reporte."
    assert strip_quoted(text) == "Ya volvió el servicio."


# --- 3: answers between quoted lines, below a line written above the quote ---------

INLINE_REPLY = (
    "Hola, les contesto abajo.\n"
    "\n"
    f"{GMAIL_ATTRIBUTION}\n"
    "\n"
    "> ¿Qué luces tiene encendidas el módem?\n"
    ">\n"
    "\n"
    "Solo la luz roja de LOS, parpadeando.\n"
    "\n"
    "> ¿Ya lo reinició?\n"
    ">\n"
    "\n"
    "Sí, tres veces, y el cable de fibra está doblado junto a la ventana.\n"
)
INLINE_KEPT = (
    "Hola, les contesto abajo.\n"
    "\n"
    "Solo la luz roja de LOS, parpadeando.\n"
    "\n"
    "\n"
    "Sí, tres veces, y el cable de fibra está doblado junto a la ventana."
)


def test_inline_answers_below_a_greeting_are_kept() -> None:
    assert strip_quoted(INLINE_REPLY) == INLINE_KEPT
    assert strip_quoted(INLINE_KEPT) == INLINE_KEPT


@pytest.mark.parametrize("delimiter", ["-- ", "--"])
def test_a_signature_above_the_quote_does_not_take_the_answers_below(delimiter: str) -> None:
    # Gmail puts the signature above the quote; the answers go under each question.
    text = (
        "Hola, les contesto abajo.\n"
        "\n"
        f"{delimiter}\n"
        "Juan Pérez\n"
        "Tel. 662 123 4567\n"
        "\n"
        f"{GMAIL_ATTRIBUTION}\n"
        "> ¿Ya lo reinició?\n"
        "Sí, tres veces.\n"
        "\n"
        "Enviado desde mi iPhone\n"
    )
    assert strip_quoted(text) == "Hola, les contesto abajo.\n\nSí, tres veces."


def test_a_top_posted_reply_keeps_only_its_text() -> None:
    text = (
        "Gracias, ya funciona.\n"
        "\n"
        f"{GMAIL_ATTRIBUTION}\n"
        "\n"
        "> Hola\n"
        ">\n"
        "> El lun, 3 nov 2026 a las 10:00, Juan <j@example.com> escribió:\n"
        ">> Sin servicio\n"
    )
    assert strip_quoted(text) == "Gracias, ya funciona."


def test_an_agents_top_posted_reply_over_the_quoted_notice_keeps_only_its_text() -> None:
    written = agent_text(f"Listo, ya quedó.\n\n{GMAIL_ATTRIBUTION}\n\n{QUOTED_NOTICE}\n")
    assert written == agent_text("Listo, ya quedó.")


def test_notice_lines_left_unquoted_below_the_quote_refuse_the_reply() -> None:
    # A client that wrapped the quote and lost its ">" marks: the notice's fields
    # appear as text below the attribution's quote, and must never be relayed.
    reply = (
        f"Listo.\n\n{GMAIL_ATTRIBUTION}\n> Caso nuevo: PLR-2026-000001.\n"
        "Folio:    PLR-2026-000001\n"
        "Cliente:  Juan Pérez <juan.perez@example.com>\n"
        "Buzón:    contacto (contacto@internet-plarey.com.mx)\n"
    )
    assert agent_text(reply).notice_line == "Folio:    PLR-2026-000001"


# --- 4: a forward under an edited subject, a memo ---------------------------------

OUTLOOK_FORWARD = (
    "Les reenvío mi reporte de la semana pasada, nadie me ha contestado.\n"
    "\n"
    "________________________________\n"
    "De: Juan Pérez <juan.perez@example.com>\n"
    "Enviado: lunes, 16 de noviembre de 2026 09:00\n"
    "Para: contacto@internet-plarey.com.mx <contacto@internet-plarey.com.mx>\n"
    "Asunto: Sin servicio\n"
    "\n"
    "Desde el sábado no tengo internet, el módem tiene la luz LOS roja.\n"
    "Domicilio: Reforma 120, col. Centro. Contrato 55321."
)
MEMO = (
    "Buenas tardes.\n"
    "\n"
    "De: Juan Pérez, contrato 55321\n"
    "Para: Internet Plarey, Atención a clientes\n"
    "Asunto: Queja por cobro indebido\n"
    "\n"
    "Por medio de la presente me quejo del cobro de $500 del recibo de noviembre."
)


@pytest.mark.parametrize(
    ("subject", "text"),
    [
        pytest.param("URGENTE: sigo sin servicio", OUTLOOK_FORWARD, id="outlook-forward"),
        pytest.param("Queja", MEMO, id="memo"),
    ],
)
def test_a_header_block_under_a_subject_that_answers_nothing_is_kept(
    subject: str, text: str
) -> None:
    assert customer_text(text, subject) == text


@pytest.mark.parametrize("prefix", ["RE: ", "Re: ", "RES: ", "AW: "])
def test_a_reply_quoting_under_a_header_block_is_still_cut(prefix: str) -> None:
    assert customer_text(OUTLOOK_FORWARD, f"{prefix}Sin servicio") == (
        "Les reenvío mi reporte de la semana pasada, nadie me ha contestado."
    )


# --- device signatures -------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        "Enviado desde el celular de mi esposa porque no hay internet",
        "Enviado desde mi celular porque no hay internet en la casa",
        "Enviado desde mi casa",
        "Sent from my phone while waiting for your technician",
    ],
)
def test_a_sentence_that_starts_like_a_device_signature_is_kept(line: str) -> None:
    text = f"No tengo servicio desde el lunes.\n{line}"
    assert strip_quoted(text) == text


@pytest.mark.parametrize(
    "line",
    [
        "Enviado desde mi iPhone",
        "Enviado desde mi smartphone Samsung Galaxy.",
        "Enviado desde mi teléfono Huawei",
        "Enviado desde mi Xiaomi",
        "Enviado desde mi celular",
        "Sent from my Samsung Galaxy smartphone.",
        "Sent from my Verizon Wireless BlackBerry",
        "Sent from my iPhone 15 Pro Max",
        "Sent from Yahoo Mail on Android",
        "Enviado desde Yahoo Mail para Android",
        "Enviado desde Correo<https://go.microsoft.com/fwlink/?LinkId=550986> para Windows",
        "Sent from Mail for Windows",
        "Enviado desde Outlook",
        "Obtener Outlook para iOS<https://aka.ms/o0ukef>",
        "Get Outlook for Android",
    ],
)
def test_device_and_app_signatures_are_cut(line: str) -> None:
    assert strip_quoted(f"No tengo servicio desde el lunes.\n\n{line}") == (
        "No tengo servicio desde el lunes."
    )


# --- through the service: what the case, the agents and the customer get -----------


def _open_case(rt: object, body: str, subject: str = "Sin servicio de internet") -> None:
    raw = mail(sender=CUSTOMER, subject=subject, body=body, message_id="<first@example.com>")
    now = datetime.now(UTC)
    assert service.ingest_message(rt, "contacto", 1, FetchedMessage(1, raw, now)) == "new_case"  # type: ignore[arg-type]


def _notices(rt: object, kind: str) -> list[str]:
    with rt.store.transaction() as session:  # type: ignore[attr-defined]
        raws = session.exec(select(Notice.raw).where(Notice.kind == kind).order_by(Notice.id))
        messages = [email.message_from_bytes(r, policy=email.policy.default) for r in raws.all()]
    return [m.get_body(("plain",)).get_content() for m in messages]  # type: ignore[union-attr]


def _customer_texts(rt: object) -> list[str]:
    with rt.store.transaction() as session:  # type: ignore[attr-defined]
        rows = session.exec(
            select(CaseMessage.text).where(CaseMessage.kind == "customer").order_by(CaseMessage.id)
        )
        return list(rows.all())


def test_a_new_forward_under_an_edited_subject_reaches_the_case_and_the_agents(
    tmp_path: Path,
) -> None:
    rt = offline_runtime(tmp_path, notify=True)
    try:
        _open_case(rt, OUTLOOK_FORWARD, subject="URGENTE: sigo sin servicio")
        recorded = _customer_texts(rt)
        notices = _notices(rt, "agent_notification")
    finally:
        rt.store.dispose()
    assert "luz LOS roja" in recorded[0]
    assert "luz LOS roja" in notices[0]


def test_an_agents_prose_naming_a_time_reaches_the_customer(tmp_path: Path) -> None:
    rt = offline_runtime(tmp_path, notify=True)
    try:
        _open_case(rt, "Hola, desde ayer no tengo internet.")
        with rt.store.transaction() as session:
            folio = session.exec(select(Case.folio)).one()
            notice_id = session.exec(
                select(Notice.message_id).where(Notice.kind == "agent_notification")
            ).one()
        reply = mail(
            sender=f"Ana <{AGENT}>",
            subject=f"Re: [Folio {folio}] Sin servicio de internet",
            body=f"{AGENT_WORDS}\n\n{GMAIL_ATTRIBUTION}\n\n{QUOTED_NOTICE}\n",
            headers={"In-Reply-To": notice_id, "References": notice_id},
        )
        now = datetime.now(UTC)
        outcome = service.ingest_message(rt, "contacto", 1, FetchedMessage(2, reply, now))
        relayed = _notices(rt, "relay")
    finally:
        rt.store.dispose()
    assert outcome == "follow_up"
    assert len(relayed) == 1
    assert "sucursal Centro" in relayed[0]
    assert "Cliente:" not in relayed[0]


def test_a_quoted_line_the_client_wrapped_is_not_the_agents_text() -> None:
    # Ragged quoting (Outlook's plain text, mutt, K-9): the rest of a long quoted
    # line loses its ">". Read as an answer between the quoted lines, a piece of
    # the notice's internal routing note went to the customer (own-diff review).
    reply = (
        "Ya quedó su servicio, disculpe la molestia.\n\n"
        "El mar, 25 nov 2026 a las 10:12, Soporte <contacto@plarey.mx> escribió:\n"
        "> El cliente escribió de nuevo en el caso PLR-2026-000042.\n>\n"
        "> Nota de quien lo turnó:\n"
        "> Cliente moroso, no ofrecer bonificación aunque la pida; si insiste\n"
        "escalar a gerencia.\n>\n> Mensaje del cliente:\n> sigo sin internet\n"
    )
    assert agent_text(reply).text == "Ya quedó su servicio, disculpe la molestia."
    # A short answer under a short question is still an answer.
    inline = (
        "Hola, les contesto abajo.\n\n"
        "El mar, 25 nov 2026 a las 10:12, Soporte <contacto@plarey.mx> escribió:\n"
        "> ¿Qué luces tiene el módem?\nSolo la roja de LOS.\n> ¿Ya lo reinició?\nSí, dos veces.\n"
    )
    assert agent_text(inline).text == (
        "Hola, les contesto abajo.\n\nSolo la roja de LOS.\nSí, dos veces."
    )


def test_nothing_below_a_quoted_notice_is_the_agents_text() -> None:
    # Agents write above the notice; what sits among its quoted lines is the notice's.
    reply = (
        "Listo, quedó resuelto.\n\n"
        "El mar, 25 nov 2026 a las 10:12, Soporte <contacto@plarey.mx> escribió:\n"
        "> Caso nuevo: PLR-2026-000042.\n>\n"
        "> Folio:    PLR-2026-000042\n"
        "> Cliente:  Juan Pérez <juan.perez@example.com>\n"
        "> Buzón:    contacto (contacto@plarey.mx)\n"
        "fragmento de una línea larga\n"
        "> Asunto:   Sin servicio\n"
    )
    assert agent_text(reply).text == "Listo, quedó resuelto."
