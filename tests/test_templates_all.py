"""Every notice template: renders in es and en, takes exactly its context, escapes HTML."""

from __future__ import annotations

from typing import Any

import jinja2
import pytest
from helpers import COMPANY, FOLIO
from hypothesis import given
from hypothesis import strategies as st

from mailcase.casework import CASE_PROBLEM_CODES
from mailcase.commands import (
    COMMAND_FORMS,
    CONFIG_PROBLEM_CODES,
    PROBLEM_CODES,
    REPLY_PROBLEM_CODES,
)
from mailcase.errors import MessageError, TemplateError
from mailcase.notices import CUSTOMER_KINDS
from mailcase.render import render_body, shipped_templates

EVIL = "<script>alert(1)</script>"
LANGUAGES = ("es", "en")

NO_CONTACT = {"name": "", "phone": "", "email": "", "website": "", "address": "", "hours": ""}

# The context each kind takes: every key here is required (a missing one is an
# UndefinedError), except those in OPTIONAL.
SAMPLES: dict[str, dict[str, Any]] = {
    "agent_notification": {
        "folio": FOLIO,
        "customer": "juan.perez@example.com",
        "customer_name": "Juan Pérez",
        "mailbox": "contacto",
        "mailbox_address": "contacto@internet-plarey.com.mx",
        "subject": "Sin servicio de internet",
        "text": "Desde ayer no tengo internet.\nYa reinicié el módem.",
        "attachments": ["foto-modem.jpg", "recibo.pdf"],
        "area": "",
        "area_name": "",
        "areas": ["redes (Redes y nodos)", "facturacion"],
        "replies": ["formas-de-pago", "reinicio-modem"],
        "commands": list(COMMAND_FORMS),
        "reason": "new",
        "note": "",
        "other_sender": "",
        "by_agent": False,
        "case_type": "",
        "owner": "ana.tecnica@internet-plarey.com.mx",
        "related": [],
        "outage": "",
        "outage_status": "open",
        "outage_reports": 0,
        "not_attached": [],
        "attaching": True,
        "unstored": {},
        "history": {},
        "company": COMPANY,
    },
    "relay": {
        "folio": FOLIO,
        "customer_name": "Juan Pérez",
        "text": "Buenas tardes, don Juan:\n\nYa quedó su servicio.\nSaludos.",
        "agent_name": "Ana Técnica",
        "company": COMPANY,
    },
    "resolution_valid": {
        "folio": FOLIO,
        "customer_name": "Juan Pérez",
        "subject": "Sin servicio de internet",
        "cause": "La lluvia dañó el conector de la antena.",
        "cancelled_visit": "",
        "company": COMPANY,
        "reopen_days": 7,
    },
    "resolution_invalid": {
        "folio": FOLIO,
        "customer_name": "Juan Pérez",
        "subject": "Sin servicio de internet",
        "cause": "El servicio funciona; el equipo del cliente tiene un virus.",
        "cancelled_visit": "jueves 3 de diciembre de 2026 a las 10:30",
        "company": COMPANY,
        "reopen_days": 7,
    },
    "visit_cancelled": {
        "folio": FOLIO,
        "customer_name": "Juan Pérez",
        "cancelled_visit": "jueves 3 de diciembre de 2026 a las 10:30",
        "company": COMPANY,
    },
    "merged": {
        "folio": FOLIO,
        "merged_folio": "PLR-2026-000045",
        "customer_name": "Juan Pérez",
        "company": COMPANY,
    },
    "outage_joined": {
        "folio": FOLIO,
        "customer_name": "Juan Pérez",
        "subject": "Sin servicio de internet",
        "company": COMPANY,
    },
    "closed_no_answer": {
        "folio": FOLIO,
        "customer_name": "Juan Pérez",
        "subject": "Sin servicio de internet",
        "days": 7,
        "company": COMPANY,
    },
    "visit": {
        "folio": FOLIO,
        "customer_name": "Juan Pérez",
        "visit_date": "2026-12-03",
        "visit_date_text": "jueves 3 de diciembre de 2026",
        "visit_time": "10:30",
        "visit_time_text": "10:30",
        "previous_visit": "",
        "company": COMPANY,
    },
    "command_error": {
        "folio": FOLIO,
        "problems": [
            {"line": "#ntoa", "problem": "unknown"},
            {"line": "#visita 2026-02-30", "problem": "bad_date"},
        ],
        "commands": list(COMMAND_FORMS),
        "areas": ["redes (Redes y nodos)", "facturacion"],
        "replies": ["formas-de-pago", "reinicio-modem"],
        "area_keys": ["facturacion", "redes"],
        "about_areas": True,
        "agents": ["ana.tecnica@internet-plarey.com.mx", "luis@internet-plarey.com.mx"],
        "about_agents": True,
        "about_replies": True,
        "company": COMPANY,
    },
    "unverified_agent": {
        "folio": FOLIO,
        "claimed_from": "ana.tecnica@internet-plarey.com.mx",
        "subject": "Re: [Folio PLR-2026-000123] Sin servicio",
        "exposed": False,
        "company": COMPANY,
    },
    "not_relayed": {
        "folio": FOLIO,
        "reason": "attachments",
        "attachments": ["recibo.pdf", "foto.jpg", "notificacion.eml"],
        "attachment_limit": "5 MB",
        "withheld": ["notificacion.eml"],
        "untold": [],
        "pending_dropped": False,
        "outage_news": False,
        "outage_main": "",
        "canned_only": "",
        "own_sender": "soporte@internet-plarey.com.mx",
        "customer": "juan.perez@example.com",
        "mailbox_address": "contacto@internet-plarey.com.mx",
        "company": COMPANY,
    },
    "quarantined": {
        "subject": "Fotos del módem",
        "sender": "Juan Pérez <juan.perez@example.com>",
        "mailbox": "contacto",
        "mailbox_address": "contacto@internet-plarey.com.mx",
        "uid": 7,
        "reason": "message has 7 MIME parts, more than the limit of 3",
        "reason_text": "el mensaje tiene 7 partes MIME, más que el límite de 3",
        "stored": True,
        "company": COMPANY,
    },
    "no_case": {
        "unverified": False,
        "subject": "resolver lo de Rosa",
        "mailbox_address": "contacto@internet-plarey.com.mx",
        "company": COMPANY,
    },
    "reminder": {
        "folio": FOLIO,
        "customer": "juan.perez@example.com",
        "customer_name": "Juan Pérez",
        "mailbox": "contacto",
        "mailbox_address": "contacto@internet-plarey.com.mx",
        "subject": "Sin servicio de internet",
        "area_name": "",
        "areas": ["redes (Redes y nodos)", "facturacion"],
        "replies": ["formas-de-pago", "reinicio-modem"],
        "commands": list(COMMAND_FORMS),
        "waited_hours": 27,
        "since": "2026-11-26 09:15",
        "timezone": "America/Mexico_City",
        "text": "Desde ayer no tengo internet.\nYa reinicié el módem.",
        "unanswered_hours": 24,
        "business_hours": True,
        "company": COMPANY,
        "case_type": "clarification",
        "owner": "ana.tecnica@internet-plarey.com.mx",
    },
    "assigned": {
        "folio": FOLIO,
        "customer": "juan.perez@example.com",
        "customer_name": "Juan Pérez",
        "mailbox": "contacto",
        "mailbox_address": "contacto@internet-plarey.com.mx",
        "subject": "Sin servicio de internet",
        "status": "open",
        "area_name": "",
        "areas": ["redes (Redes y nodos)", "facturacion"],
        "replies": ["formas-de-pago", "reinicio-modem"],
        "commands": list(COMMAND_FORMS),
        "case_type": "complaint",
        "owner": "luis.soporte@internet-plarey.com.mx",
        "assigned_by": "ana.tecnica@internet-plarey.com.mx",
        "note": "Luis, es de tu zona.",
        "text": "Desde ayer no tengo internet.\nYa reinicié el módem.",
        "company": COMPANY,
    },
    "delivery_failed": {
        "folio": FOLIO,
        "recipient": "juan.perez@example.com",
        "status": "5.1.1",
        "diagnostic": "smtp; 550 5.1.1 <juan.perez@example.com>: user unknown",
        "notice_kind": "resolution_valid",
        "customer": "juan.perez@example.com",
        "customer_name": "Juan Pérez",
        "subject": "Sin servicio",
        "company": COMPANY,
    },
}
# visit_date_text is a nicety the caller may give; relay does not greet (the
# agent writes their own greeting), so customer_name is accepted but unused.
OPTIONAL = {
    "visit": {"visit_date_text", "visit_time_text", "previous_visit"},
    "relay": {"customer_name"},
    # Read only for their reasons.
    "not_relayed": {"untold", "own_sender", "outage_main", "canned_only"},
    "agent_notification": {"area", "attaching"},  # read only when routed, or files left out
    # The ledger's English words, for override templates: the shipped ones say reason_text.
    "quarantined": {"reason"},
}
CUSTOMER_FACING = (
    "relay",
    "resolution_valid",
    "resolution_invalid",
    "visit",
    "visit_cancelled",
    "merged",
    "closed_no_answer",
    "outage_joined",
)
AGENT_ONLY = (
    "agent_notification",
    "command_error",
    "unverified_agent",
    "delivery_failed",
    "not_relayed",
    "no_case",
    "quarantined",
    "reminder",
    "assigned",
)


def context(kind: str, **changes: Any) -> dict[str, Any]:
    return {**SAMPLES[kind], **changes}


def test_the_samples_cover_every_kind_shipped() -> None:
    shipped = {
        path.name.split(".", 1)[0]
        for language in LANGUAGES
        for path in (shipped_templates() / language).glob("*.txt.j2")
        if not path.name.startswith("_")
    }
    assert shipped == {*SAMPLES, "acknowledgement"}
    assert set(CUSTOMER_FACING) | set(AGENT_ONLY) == set(SAMPLES)


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_every_kind_renders(kind: str, language: str) -> None:
    body = render_body(kind, language, context(kind))
    assert body.text.strip()
    assert "{{" not in body.text and "{%" not in body.text
    if kind in CUSTOMER_FACING:
        assert body.html is not None
        assert f'lang="{"es-MX" if language == "es" else "en"}"' in body.html
    else:
        # Agents reply to plain text: their clients quote it cleanly.
        assert body.html is None


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_every_context_variable_is_required(kind: str, language: str) -> None:
    for key in set(SAMPLES[kind]) - OPTIONAL.get(kind, set()):
        ctx = context(kind)
        del ctx[key]
        # Its own names: broken for every notice (TemplateError); an include's: MessageError.
        with pytest.raises((TemplateError, MessageError)) as raised:
            render_body(kind, language, ctx)
        assert isinstance(raised.value.__cause__, jinja2.UndefinedError)
    for key in OPTIONAL.get(kind, set()):
        ctx = context(kind)
        del ctx[key]
        render_body(kind, language, ctx)


@pytest.mark.parametrize("kind", CUSTOMER_FACING)
def test_spanish_customer_notices_name_the_folio(kind: str) -> None:
    body = render_body(kind, "es", context(kind))
    assert body.html is not None
    assert FOLIO in body.text
    assert FOLIO in body.html
    assert "Teléfono: 800 123 4567" in body.text


@pytest.mark.parametrize("kind", CUSTOMER_FACING)
def test_english_customer_notices_are_in_english(kind: str) -> None:
    body = render_body(kind, "en", context(kind))
    assert FOLIO in body.text
    assert "Phone: 800 123 4567" in body.text
    assert "Teléfono" not in body.text


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("kind", CUSTOMER_FACING)
def test_html_escapes_customer_and_agent_text(kind: str, language: str) -> None:
    evil = {
        key: EVIL
        for key in ("customer_name", "text", "cause", "subject", "agent_name", "visit_date_text")
        if key in SAMPLES[kind]
    }
    body = render_body(kind, language, context(kind, **evil))
    assert body.html is not None
    assert "<script" not in body.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body.html
    # text/plain is not HTML: what the agent wrote is shown as written.
    assert EVIL in body.text


@pytest.mark.parametrize("language", LANGUAGES)
def test_a_valid_resolution_says_the_failure_was_corrected_an_invalid_one_does_not(
    language: str,
) -> None:
    word = {"es": "corregida", "en": "corrected"}[language]
    valid = render_body("resolution_valid", language, context("resolution_valid"))
    invalid = render_body("resolution_invalid", language, context("resolution_invalid"))
    assert valid.html is not None and invalid.html is not None
    assert word in valid.text and word in valid.html
    assert word not in invalid.text.lower() and word not in invalid.html.lower()


@pytest.mark.parametrize("kind", ["resolution_valid", "resolution_invalid"])
def test_resolutions_give_the_outcome_the_causes_and_the_reopen_window(kind: str) -> None:
    body = render_body(kind, "es", context(kind))
    assert body.html is not None
    outcome = "PROCEDENTE" if kind == "resolution_valid" else "IMPROCEDENTE"
    assert f"Resultado: {outcome}." in body.text
    for part in (body.text, body.html):
        assert SAMPLES[kind]["cause"] in part
        assert "en un plazo de 7 días" in part
        assert "sin cambiar el asunto" in part
    one_day = render_body(kind, "es", context(kind, reopen_days=1))
    assert "en un plazo de 1 día:" in one_day.text
    english = render_body(kind, "en", context(kind, reopen_days=1))
    assert "within 1 day:" in english.text


@pytest.mark.parametrize("kind", ["resolution_valid", "resolution_invalid"])
def test_a_resolution_without_a_cause_still_reads_well(kind: str) -> None:
    body = render_body(kind, "es", context(kind, cause=""))
    assert "Causas de la falla" not in body.text
    assert "por lo siguiente" not in body.text


def test_relay_is_the_agents_words_without_the_internal_footer() -> None:
    body = render_body("relay", "es", context("relay"))
    assert body.html is not None
    assert body.text.startswith("Buenas tardes, don Juan:\n\nYa quedó su servicio.\nSaludos.\n")
    assert "Ana Técnica\nAtención a clientes de Internet Plarey\n" in body.text
    assert "conserve el folio en el asunto" in body.text
    for internal in ("#nota", "Comandos", "comando"):
        assert internal not in body.text
        assert internal not in body.html
    # Paragraphs and line breaks survive in HTML (Outlook ignores pre-wrap).
    assert "<p>Buenas tardes, don Juan:</p>" in body.html
    assert "Ya quedó su servicio.<br>\nSaludos.</p>" in body.html


@given(st.text())
def test_relay_shows_any_agent_text_literally(text: str) -> None:
    body = render_body("relay", "es", context("relay", text=text))
    assert text.strip() in body.text


@pytest.mark.parametrize("payload", ["{{ 7*7 }}", "{% raw %}", "{{ company.__class__ }}"])
def test_agent_text_is_data_never_template_source(payload: str) -> None:
    body = render_body("relay", "es", context("relay", text=payload))
    assert payload in body.text
    assert "49" not in body.text


@pytest.mark.parametrize("language", LANGUAGES)
def test_agent_notification_first_line_follows_the_reason(language: str) -> None:
    def first_line(**changes: Any) -> str:
        body = render_body("agent_notification", language, context("agent_notification", **changes))
        return body.text.split("\n", 1)[0]

    new = first_line(reason="new")
    reopened = first_line(reason="reopened")
    routed = first_line(reason="routed", area="redes", area_name="redes")
    assert len({new, reopened, routed}) == 3
    assert all(FOLIO in line for line in (new, reopened, routed))
    assert "redes" in routed
    assert first_line(reason="routed", area="") != routed
    expected = {
        "es": ("Caso nuevo", "reabrió", "se turnó al área redes"),
        "en": ("New case", "reopened", "routed to area redes"),
    }[language]
    assert expected[0] in new and expected[1] in reopened and expected[2] in routed


@pytest.mark.parametrize("language", LANGUAGES)
def test_agent_notification_shows_the_case_and_how_to_use_commands(language: str) -> None:
    body = render_body("agent_notification", language, context("agent_notification"))
    for value in ("juan.perez@example.com", "Juan Pérez", "contacto@internet-plarey.com.mx"):
        assert value in body.text
    assert "Ya reinicié el módem." in body.text
    assert "foto-modem.jpg, recibo.pdf" in body.text
    for form in COMMAND_FORMS:
        assert f"  {form}\n" in body.text
    assert ("#nota" if language == "es" else "#note") in body.text
    bare = render_body(
        "agent_notification", language, context("agent_notification", attachments=[])
    )
    assert "foto-modem.jpg" not in bare.text
    assert ("Adjuntos" if language == "es" else "Attachments") not in bare.text


@pytest.mark.parametrize("language", LANGUAGES)
def test_command_error_explains_every_problem_code(language: str) -> None:
    codes = PROBLEM_CODES + CONFIG_PROBLEM_CODES + REPLY_PROBLEM_CODES + CASE_PROBLEM_CODES
    problems = [{"line": f"#line-{code}", "problem": code} for code in codes]
    body = render_body("command_error", language, context("command_error", problems=problems))
    fallback = {"es": "no se pudo interpretar.", "en": "could not be understood."}[language]
    assert fallback not in body.text
    sentences = []
    for code in codes:
        after = body.text.split(f"  #line-{code}\n", 1)[1]
        sentence = after.split("\n", 1)[0].strip()
        assert sentence.startswith("→ ")
        assert code not in sentence
        sentences.append(sentence)
    assert len(set(sentences)) == len(codes)
    for form in COMMAND_FORMS:
        assert form in body.text
    odd = render_body(
        "command_error",
        language,
        context("command_error", problems=[{"line": "#x", "problem": "new_code"}]),
    )
    assert fallback in odd.text
    areas = ["redes", "cobranza"]
    listed = {"es": "Áreas disponibles: redes, cobranza", "en": "Areas: redes, cobranza"}[language]
    unknown = [{"line": "#area nada", "problem": "unknown_area"}]
    ctx = context("command_error", problems=unknown, areas=areas, about_areas=True)
    assert listed in render_body("command_error", language, ctx).text
    ctx = context(
        "command_error",
        problems=[{"line": "#foo", "problem": "unknown"}],
        areas=areas,
        about_areas=False,
    )
    assert listed not in render_body("command_error", language, ctx).text


def test_visit_without_time_or_human_date() -> None:
    ctx = context("visit", visit_time="")
    del ctx["visit_date_text"]
    body = render_body("visit", "es", ctx)
    assert body.html is not None
    assert "Fecha: 2026-12-03\n" in body.text
    assert "Hora:" not in body.text and "Hora:" not in body.html
    assert "o la hora" not in body.text
    full = render_body("visit", "es", context("visit"))
    assert "Fecha: jueves 3 de diciembre de 2026 (2026-12-03)" in full.text
    assert "Hora:  10:30" in full.text


@pytest.mark.parametrize("language", LANGUAGES)
def test_unverified_agent_says_nothing_was_done_and_how_to_act(language: str) -> None:
    text = render_body("unverified_agent", language, context("unverified_agent")).text
    assert "ana.tecnica@internet-plarey.com.mx" in text
    assert FOLIO in text
    expected = {
        "es": (
            "no verificado",
            "ningún comando",
            "nada al cliente",
            "responda desde su propio buzón",
            "no a una copia del acuse",  # the customer's acknowledgement has the folio too
        ),
        "en": (
            "unverified",
            "no command",
            "nothing was sent",
            "reply from your own mailbox",
            "not to a copy of the acknowledgement",
        ),
    }[language]
    for phrase in expected:
        assert phrase in " ".join(text.split())


@pytest.mark.parametrize("language", LANGUAGES)
def test_delivery_failed_names_the_notice_the_recipient_and_the_reason(language: str) -> None:
    text = render_body("delivery_failed", language, context("delivery_failed")).text
    for value in ("juan.perez@example.com", "5.1.1", "user unknown", FOLIO):
        assert value in text
    assert "resolution_valid" not in text  # shown as words, not as the code
    odd = render_body("delivery_failed", language, context("delivery_failed", notice_kind="x_y"))
    assert "x_y" in odd.text


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("kind", [*SAMPLES, "acknowledgement"])
def test_every_notice_names_the_company_and_how_to_reach_it(kind: str, language: str) -> None:
    ctx = context(kind) if kind in SAMPLES else {**context("relay"), "subject": "x"}
    text = render_body(kind, language, ctx).text
    for detail in ("name", "phone", "website", "address"):
        assert COMPANY[detail] in text, (kind, detail)


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("kind", [*sorted(SAMPLES), "acknowledgement"])
def test_no_contact_details_and_no_company_name_still_read_well(kind: str, language: str) -> None:
    ctx = context(kind) if kind in SAMPLES else {**context("relay"), "subject": "x"}
    if "company" in ctx:
        ctx["company"] = NO_CONTACT
    body = render_body(kind, language, ctx)
    for part in (body.text, body.html or ""):
        assert "Otros medios" not in part and "Other ways" not in part
        assert " de \n" not in part and " de <" not in part and " de  " not in part


@pytest.mark.parametrize(
    ("language", "by_mail", "by_phone"),
    [
        ("es", "Recibimos su mensaje «Sin servicio»", "Registramos su reporte «Sin servicio»"),
        (
            "en",
            'We received your message "Sin servicio"',
            'We registered your report "Sin servicio"',
        ),
    ],
)
def test_an_acknowledgement_of_a_phone_call_does_not_speak_of_a_message(
    language: str, by_mail: str, by_phone: str
) -> None:
    ctx = {**context("relay"), "subject": "Sin servicio"}
    for channel, expected in (("mail", by_mail), ("phone", by_phone), ("visit", by_phone)):
        body = render_body("acknowledgement", language, {**ctx, "channel": channel})
        lead = expected.split(" «")[0].split(' "')[0]  # the HTML part quotes the subject its way
        assert expected in body.text and lead in (body.html or "")
        assert f"(folio):\n\n    {FOLIO}\n" in body.text or f"folio:\n\n    {FOLIO}\n" in body.text


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("previous", ["", "lunes 30 de noviembre de 2099 a las 10:00"])
def test_a_visit_notice_keeps_its_layout(language: str, previous: str) -> None:
    text = render_body("visit", language, context("visit", previous_visit=previous)).text
    date_label = {"es": "Fecha", "en": "Date"}[language]
    assert f":\n\n    {date_label}: " in text  # a blank line before the date, as before


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("kind", sorted(CUSTOMER_KINDS))
def test_delivery_failed_names_every_customer_notice_in_words(language: str, kind: str) -> None:
    text = render_body("delivery_failed", language, context("delivery_failed", notice_kind=kind))
    assert f"«{kind}»" not in text.text and f'"{kind}"' not in text.text  # the code's fallback


@pytest.mark.parametrize("language", LANGUAGES)
def test_customer_notices_do_not_take_every_report_for_a_technical_fault(language: str) -> None:
    # A billing complaint resolved "procedente" read "Nuestro técnico revisó su servicio",
    # and a cancellation was promised "El técnico verificará la causa de la falla".
    acknowledgement = {**context("relay"), "subject": "Cobro duplicado"}
    for kind, ctx in (("acknowledgement", acknowledgement), ("resolution_valid", None)):
        body = render_body(kind, language, ctx or context(kind))
        for part in (body.text, body.html or ""):
            assert "técnico" not in part and "technician" not in part, kind
            assert "normalidad" not in part and "normally" not in part, kind


@pytest.mark.parametrize(
    ("language", "hours", "said"),
    [
        ("es", 27, "desde hace 1 día y 3 horas"),
        ("es", 24, "desde hace 1 día."),
        ("es", 49, "desde hace 2 días y 1 hora"),
        ("es", 5, "desde hace 5 horas"),
        ("en", 27, "waiting 1 day and 3 hours"),
        ("en", 1, "waiting 1 hour"),
    ],
)
def test_a_reminder_says_how_long_the_customer_has_waited(
    language: str, hours: int, said: str
) -> None:
    text = render_body("reminder", language, context("reminder", waited_hours=hours)).text
    assert said in text
    assert "Ya reinicié el módem." in text  # the customer's last message
    # The notice's field block and help line, which quoting.agent_text cuts from a reply.
    assert f"Folio:    {FOLIO}" in text or f"Folio:       {FOLIO}" in text
    assert ("Cómo trabajar este caso por correo:" if language == "es" else "How to work") in text


@pytest.mark.parametrize("language", LANGUAGES)
def test_delivery_failed_names_the_reminder_in_words(language: str) -> None:
    ctx = context("delivery_failed", notice_kind="reminder")
    text = render_body("delivery_failed", language, ctx).text
    assert "recordatorio" in text or "reminder of a case" in text
