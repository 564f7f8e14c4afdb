"""Thanks that do not reopen a case: mailcase.thanks and triage's rule 6 (no I/O)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from helpers import mail
from test_triage import AGENT, AGENTS, CUSTOMER, OWN

from mailcase.classify import classify
from mailcase.inbound import InboundMail, parse_inbound
from mailcase.models import Disposition
from mailcase.quoting import customer_text
from mailcase.thanks import _COURTESY, _THANKS, MAX_CHARS, NEVER, is_thanks_only
from mailcase.triage import CaseRef, Decision, Facts, Role, triage

NAME = "Juan Pérez"
REPLY = "Re: [Folio PLR-2026-000001] Sin servicio de internet"


def thanks(text: str, name: str = NAME, sender: str = CUSTOMER) -> bool:
    return is_thanks_only(text, name, sender)


@pytest.mark.parametrize(
    "text",
    [
        "Gracias",
        "gracias",
        "¡Gracias!",
        "¡Muchas gracias!",
        "Muchísimas gracias!!!",
        "Mil gracias 🙏",
        "GRACIAS 👍👍",
        "Graciaaas",
        "Ok, gracias",
        "Ok",
        "Okey, muchas gracias.",
        "Perfecto, gracias por la atención",
        "Excelente, gracias por su ayuda.",
        "Listo, gracias",
        "Enterado, gracias.",
        "Recibido. Saludos",
        "De acuerdo, gracias por todo",
        "Muy amable, gracias por el apoyo y la pronta respuesta",
        "Gracias por su atención, que tenga buen día",
        "Hola, buenas tardes.\n\nMuchas gracias por la atención.\n\nSaludos cordiales",
        "Gracias joven, bendiciones",
        "Muy bien, gracias",
        "Le agradezco mucho",
        "Atentamente\nGracias",
        "Thanks!",
        "thank you",
        "Thank you so much for your help!",
        "Thanks a lot, have a nice day",
        "Great, thanks.",
        "Got it, thanks",
        "Perfect. Best regards",
        "Cheers",
        "Thx 😊",
        "Gracias :)",
        # A sign-off with the sender's own name, whole or in part.
        "Gracias\nJuan Pérez",
        "Muchas gracias.\n\nJuan",
        "Gracias,\nJUAN PEREZ",
        "Gracias. Saludos, Juan",
        "Gracias\nAtte. Juan Pérez",
        "Gracias\n\nJuan",
        # How a repair is confirmed in Mexico, as a whole phrase; greetings with a time of day.
        "Gracias, ya funciona",
        "Ya quedó, muchas gracias",
        "Gracias, ya quedó",
        "Listo, ya tengo internet. Gracias",
        "Ya hay servicio, gracias!",
        "Buenas noches, gracias",
        "Gracias por su tiempo",
        "Que tengan buen fin de semana, gracias",
        "Good morning, thanks!",
        "Thanks, it works now",
    ],
)
def test_thanks_and_acknowledgements_are_thanks_only(text: str) -> None:
    assert thanks(text), text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   \n  ",
        "👍",  # only an emoji: nothing to judge
        "!!!",
        "Gracias, pero sigo sin internet",
        "Gracias, pero sigo sin servicio",
        "No, gracias",
        "no gracias",
        "Sí, gracias",
        "Gracias por nada",
        "Gracias... todavía falla",
        "Gracias, aún no hay señal",
        "Ok, pero la falla sigue",
        "Gracias, quedo en espera",
        "Gracias de antemano",
        "Gracias, otra vez sin internet",
        "Gracias, el módem sigue parpadeando",
        "Gracias. ¿Me pueden enviar la factura?",
        "Gracias?",
        "¿Ok?",
        "Gracias, mi contrato es 55321",
        "Gracias, llamen al 55 1234 5678",
        "Gracias ¹",  # a superscript is a digit too
        "Gracias 😡",
        "Gracias 🙄",
        "Gracias :(",
        "Gracias :/",
        "Thanks, but it is still down",
        "Thanks, not working",
        "Thank you. Is it fixed?",
        "Okay no",
        "Hola",  # a greeting alone thanks nobody
        "Saludos",
        "Buenas tardes",
        "Juan Pérez",  # a name alone
        "Gracias Ana",  # the agent's name: not the sender's
        "Gracias, https://fotos.example.com/modem",
        "Gracias " + "muchas " * 40,  # longer than the bound
        # The sender's name counts only as the last line's sign-off.
        "Juan\nGracias, pero sigo igual",
        "Juan Pérez\nGracias\nsigo igual",
        # A time of day outside a greeting says when it fails, or that it came late.
        "Gracias, muy tarde",
        "Ok, muy tarde",
        "Gracias, muy tarde la solución",
        "Perfecto, todos los días",
        "Ok, por las noches",
        "Ok, nuevamente",
        "Gracias, mucho tiempo",
        # "Ya" only in a phrase that confirms the repair.
        "Ya quedó pero lento",
        "Ya van tres días, gracias",
        "Gracias, ya no funciona",
        "Ya funciona?",
        # Irony.
        "Gracias ¬¬",
        "Gracias ¬ ¬",
        "Gracias 🙃",
        "Excelente 🤡",
        "Gracias -_-",
        "Gracias 😏",
        "Gracias 😂",
    ],
)
def test_anything_more_than_thanks_is_not_thanks_only(text: str) -> None:
    assert not thanks(text), text


def test_the_bound_is_on_the_text_as_given() -> None:
    words = "Muchas gracias " * 13
    assert len(words.strip()) <= MAX_CHARS and thanks(words)
    assert not thanks(words * 2)


def test_the_name_is_the_display_names_or_the_local_parts() -> None:
    assert thanks("Gracias\nRosa Díaz", "Rosa Díaz", "rdiaz@example.com")
    assert thanks("Gracias\nrdiaz", "", "rdiaz@example.com")
    assert thanks("Gracias\nRosa", "", "rosa.diaz@example.com")
    assert not thanks("Gracias\nRosa", "", "rdiaz@example.com")
    # A display name of words that never thank is no sign-off.
    assert not thanks("Gracias\nsigue sin internet", "Sigue Sin Internet", "x@example.com")


def test_the_vocabulary_holds_no_word_that_can_turn_thanks_into_a_complaint() -> None:
    assert not (_THANKS | _COURTESY) & NEVER
    for word in ("pero", "sigo", "sigue", "no", "si", "falla", "todavia", "nada", "but", "not"):
        assert word in NEVER


# What customer_text keeps of a real reply is what is judged.


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # Gmail: the attribution and the quote below are cut.
        (
            "¡Muchas gracias!\n\nEl vie, 20 nov 2026 a las 10:30, Internet Plarey "
            "<contacto@internet-plarey.com.mx> escribió:\n> Su caso PLR-2026-000001 fue "
            "resuelto.\n> ¿Sigue sin servicio? Responda este correo.\n",
            True,
        ),
        # Outlook: its header block under the rule.
        (
            "Perfecto, gracias por la atención\n\n________________________________\n"
            "De: Internet Plarey <contacto@internet-plarey.com.mx>\n"
            "Enviado: viernes, 20 de noviembre de 2026 10:30\nPara: Juan Pérez\n"
            f"Asunto: {REPLY}\n\nSu caso fue resuelto. Folio PLR-2026-000001.\n",
            True,
        ),
        # A signature after the RFC 3676 delimiter, with a phone number.
        ("Gracias\n\n-- \nJuan Pérez\nTel. 55 1234 5678\n", True),
        # A phone's line.
        ("Ok, gracias\n\nEnviado desde mi iPhone\n", True),
        # Above the same quote, a complaint.
        (
            "Gracias, pero sigo sin servicio.\n\nEl vie, 20 nov 2026 a las 10:30, "
            "Internet Plarey <contacto@internet-plarey.com.mx> escribió:\n"
            "> Su caso fue resuelto.\n",
            False,
        ),
        # Answers written under the quoted lines are the customer's words too.
        (
            "Gracias\n\nEl vie, 20 nov 2026 a las 10:30, Internet Plarey "
            "<contacto@internet-plarey.com.mx> escribió:\n> ¿Ya tiene servicio?\n"
            "No, todavía no.\n",
            False,
        ),
        # A signature with a number but no delimiter stays in the words: not thanks only.
        ("Gracias\nJuan Pérez\nTel. 55 1234 5678", False),
        # Only a quote: customer_text keeps it all, and it is more than thanks.
        ("> Su caso PLR-2026-000001 fue resuelto.\n", False),
    ],
)
def test_a_replys_own_words_are_judged(body: str, expected: bool) -> None:
    assert thanks(customer_text(body, REPLY)) is expected


# Triage, rule 6.

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
RESOLVED = CaseRef(
    id=1,
    folio="PLR-2026-000001",
    customer=CUSTOMER,
    status="resolved",
    participants=frozenset({"esposa@example.com"}),
    resolved_at=NOW - timedelta(days=2),
    subject="Sin servicio de internet",
)


def reply(
    body: str,
    sender: str = f"{NAME} <{CUSTOMER}>",
    attachments: list[tuple[str, str, bytes]] = (),  # type: ignore[assignment]
    headers: dict[str, str] | None = None,
    subject: str = REPLY,
) -> InboundMail:
    raw = mail(sender=sender, subject=subject, body=body, attachments=attachments, headers=headers)
    return parse_inbound(raw)


def decide(
    message: InboundMail,
    case: CaseRef = RESOLVED,
    *,
    reopen_on_thanks: bool = False,
    spam: str = "",
) -> Decision:
    return triage(
        message,
        classify(message),
        Facts(by_folio=(case,)),
        own_addresses=OWN,
        agent_addresses=AGENTS,
        now=NOW,
        reopen_on_thanks=reopen_on_thanks,
        spam=spam,
    )


def test_thanks_on_a_resolved_case_are_kept_there_without_reopening_it() -> None:
    decision = decide(reply("¡Muchas gracias!\nJuan"))
    assert decision.disposition is Disposition.FOLLOW_UP
    assert decision.case == RESOLVED
    assert decision.thanks_only and not decision.reopen
    assert not decision.open_case and not decision.acknowledge
    assert decision.role is Role.CUSTOMER
    assert decision.reason == "folio PLR-2026-000001; thanks only: not reopened"


def test_thanks_on_a_case_closed_after_its_resolution_within_the_window_alike() -> None:
    closed = replace(RESOLVED, status="closed")
    decision = decide(reply("Ok, gracias"), closed)
    assert decision.thanks_only and not decision.reopen and decision.case == closed


def test_a_participants_thanks_are_judged_with_the_participants_own_name() -> None:
    decision = decide(reply("Gracias\nRosa", sender="Rosa Díaz <esposa@example.com>"))
    assert decision.thanks_only


def test_more_than_thanks_reopens_as_before() -> None:
    for body in ("Gracias, pero sigo sin servicio", "No, gracias", "Gracias. ¿Y la factura?"):
        decision = decide(reply(body))
        assert decision.reopen and not decision.thanks_only, body
        assert decision.reason == "folio PLR-2026-000001; reopens the case"


def test_thanks_with_a_file_reopen_the_case() -> None:
    photo = [("modem.jpg", "image/jpeg", b"\xff\xd8\xff\xe0 not much of a photo")]
    decision = decide(reply("Gracias", attachments=photo))
    assert decision.reopen and not decision.thanks_only


def test_reopen_on_thanks_restores_the_reopening() -> None:
    decision = decide(reply("¡Muchas gracias!"), reopen_on_thanks=True)
    assert decision.reopen and not decision.thanks_only


def test_thanks_on_an_open_case_are_a_follow_up_as_before() -> None:
    open_case = replace(RESOLVED, status="open", resolved_at=None)
    decision = decide(reply("¡Muchas gracias!"), open_case)
    assert decision.disposition is Disposition.FOLLOW_UP
    assert not decision.thanks_only and not decision.reopen
    assert decision.reason == "folio PLR-2026-000001"


def test_thanks_after_the_window_or_on_a_case_closed_unresolved_open_a_linked_case() -> None:
    late = replace(RESOLVED, resolved_at=NOW - timedelta(days=31))
    unresolved = replace(RESOLVED, status="closed", resolved_at=None)
    for case in (late, unresolved):
        decision = decide(reply("¡Muchas gracias!"), case)
        assert decision.disposition is Disposition.NEW_CASE and decision.open_case
        assert decision.related == ("PLR-2026-000001",) and not decision.thanks_only


def test_an_agents_thanks_and_an_auto_reply_are_unaffected() -> None:
    agent = decide(reply("Gracias", sender=f"Ana <{AGENT}>"))
    assert agent.role is Role.UNVERIFIED and not agent.thanks_only
    auto = decide(reply("Gracias", headers={"Auto-Submitted": "auto-replied"}))
    assert auto.disposition is Disposition.AUTO_REPLY and not auto.thanks_only


def test_thanks_the_spam_filter_misjudged_are_kept_as_thanks() -> None:
    decision = decide(reply("Gracias"), spam="X-Spam-Flag: YES")
    assert decision.thanks_only
    assert decision.reason == (
        "folio PLR-2026-000001; X-Spam-Flag: YES set aside: it follows a case; "
        "thanks only: not reopened"
    )


@pytest.mark.parametrize(
    "body",
    [
        "Gracias\n-- \nJuan Pérez\nPD: sigue sin servicio desde ayer",
        "Gracias\n\n--\nSigue sin servicio desde ayer",
        "Gracias\n--\nJuan Pérez\n¿Cuándo vienen?",
        "Gracias\n--\nJuan\nP.D. el módem parpadea",
    ],
)
def test_more_below_a_signature_delimiter_reopens(body: str) -> None:
    # The case keeps only what is above "--": the rest would be buried unread.
    decision = decide(reply(body))
    assert decision.reopen and not decision.thanks_only


def test_a_signature_below_the_delimiter_is_only_a_signature() -> None:
    body = "Muchas gracias\n-- \nJuan Pérez\nTel. 55 1234 5678\nCalle Morelos 12"
    assert decide(reply(body)).thanks_only


@pytest.mark.parametrize(
    "subject",
    [
        "Re: [Folio PLR-2026-000001] SIGUE SIN SERVICIO, NO HAN VENIDO",
        "Re: [Folio PLR-2026-000001] Otra falla",
        "Otra falla",
    ],
)
def test_a_subject_the_customer_rewrote_reopens(subject: str) -> None:
    decision = decide(reply("Gracias.", subject=subject))
    assert decision.reopen and not decision.thanks_only


@pytest.mark.parametrize(
    "subject",
    [
        "Re: [Folio PLR-2026-000001] Sin servicio de internet",
        "RE: RE: [Folio PLR-2026-000001] sin servicio de INTERNET",
        "[Folio PLR-2026-000001]",
    ],
)
def test_the_subject_our_notice_wrote_is_no_news(subject: str) -> None:
    assert decide(reply("Gracias.", subject=subject)).thanks_only
