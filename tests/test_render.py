"""render: shipped templates, escaping, header injection, required headers, overrides."""

from __future__ import annotations

import email
import email.policy
import os
import time
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import jinja2
import pytest
from helpers import FOLIO, NOTICE_HEADERS
from hypothesis import given
from hypothesis import strategies as st

from mailcase.classify import LOOP_HEADER
from mailcase.errors import TemplateError
from mailcase.render import (
    TEMPLATE_RECHECK_SECONDS,
    Envelope,
    RenderedBody,
    build_message,
    render_body,
    shipped_templates,
)

PHONE = "800 123 4567"
INJECTION = "x\r\nBcc: evil@example.com"


def context(**changes: Any) -> dict[str, Any]:
    ctx: dict[str, Any] = {
        "folio": FOLIO,
        "customer": "juan.perez@example.com",
        "customer_name": "Juan Pérez",
        "subject": "Sin servicio de internet",
        "mailbox_address": "contacto@internet-plarey.com.mx",
        "company": {
            "name": "Internet Plarey",
            "phone": PHONE,
            "email": "contacto@internet-plarey.com.mx",
            "website": "https://internet-plarey.com.mx",
            "address": "Av. Juárez 1, Centro",
            "hours": "Lunes a sábado de 9:00 a 19:00",
        },
    }
    ctx.update(changes)
    return ctx


def envelope(**changes: Any) -> Envelope:
    values: dict[str, Any] = {
        "from_addr": "contacto@internet-plarey.com.mx",
        "from_name": "Atención a clientes",
        "to_addr": "juan.perez@example.com",
        "subject": f"[Folio {FOLIO}] Sin servicio de internet",
        "message_id": "<mc.0123abcd@internet-plarey.com.mx>",
        "date": datetime(2026, 11, 20, 16, 30, tzinfo=UTC),
        "in_reply_to": "<orig@example.com>",
        "references": ("<first@example.com>", "<orig@example.com>"),
    }
    values.update(changes)
    return Envelope(**values)


def reparse(raw: bytes) -> EmailMessage:
    """The message as a receiving MTA stores it: CRLF on the wire, local line ends on disk."""
    assert b"\n" not in raw.replace(b"\r\n", b"")  # bare LF is not allowed on the wire
    parsed = email.message_from_bytes(raw.replace(b"\r\n", b"\n"), policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


BODY = RenderedBody(text="Hola\n", html="<p>Hola</p>\n")


# --- the shipped templates -----------------------------------------------------


def test_the_shipped_templates_are_found() -> None:
    root = shipped_templates()
    for language in ("es", "en"):
        assert (root / language / "acknowledgement.txt.j2").is_file()
        assert (root / language / "acknowledgement.html.j2").is_file()


def test_spanish_acknowledgement_names_the_folio_and_the_company_phone() -> None:
    body = render_body("acknowledgement", "es", context())
    assert body.html is not None
    for part in (body.text, body.html):
        assert FOLIO in part
        assert PHONE in part
        assert "Juan Pérez" in part
        assert "Sin servicio de internet" in part
        assert "Internet Plarey" in part
    assert "Hola, Juan Pérez:" in body.text
    assert "Teléfono: 800 123 4567" in body.text
    assert 'lang="es-MX"' in body.html


def test_english_acknowledgement_is_in_english() -> None:
    body = render_body("acknowledgement", "en", context())
    assert body.html is not None
    assert "Hello Juan Pérez," in body.text
    assert f"Phone: {PHONE}" in body.text
    assert FOLIO in body.text
    assert FOLIO in body.html
    assert "Teléfono" not in body.text


def test_acknowledgement_without_a_name_or_contact_details_still_renders() -> None:
    empty = {k: "" for k in ("phone", "email", "website", "address", "hours")}
    body = render_body(
        "acknowledgement",
        "es",
        context(customer_name="", subject="", company={"name": "Plarey", **empty}),
    )
    assert body.text.startswith("Hola:")
    assert "(sin asunto)" in body.text
    assert "Otros medios de contacto" not in body.text


def test_html_escapes_the_customers_name_and_subject() -> None:
    evil = "<script>alert(1)</script>"
    body = render_body("acknowledgement", "es", context(customer_name=evil, subject=evil))
    assert body.html is not None
    assert "<script" not in body.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body.html
    # text/plain is not HTML: it shows the name as written.
    assert evil in body.text


@pytest.mark.parametrize("language", ["es", "en"])
@pytest.mark.parametrize("payload", ["{{ 7*7 }}", "{% raw %}", "{{ company.__class__ }}", "{#"])
def test_customer_text_is_data_never_template_source(language: str, payload: str) -> None:
    body = render_body("acknowledgement", language, context(customer_name=payload, subject=payload))
    assert body.html is not None
    assert payload in body.text  # rendered literally...
    assert "49" not in body.text  # ...never evaluated
    assert "49" not in body.html
    assert "<class" not in body.text


# --- build_message ---------------------------------------------------------------


def test_the_message_carries_the_automatic_reply_and_threading_headers() -> None:
    msg = reparse(build_message(envelope(), render_body("acknowledgement", "es", context())))
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["X-Auto-Response-Suppress"] == "All"
    assert msg[LOOP_HEADER] == "contacto@internet-plarey.com.mx"
    assert msg["In-Reply-To"] == "<orig@example.com>"
    assert msg["References"] == "<first@example.com> <orig@example.com>"
    assert msg["Message-ID"] == "<mc.0123abcd@internet-plarey.com.mx>"
    assert msg["Subject"] == f"[Folio {FOLIO}] Sin servicio de internet"
    assert msg["To"].addresses[0].addr_spec == "juan.perez@example.com"
    assert msg["From"].addresses[0].display_name == "Atención a clientes"
    assert msg["Date"].datetime == datetime(2026, 11, 20, 16, 30, tzinfo=UTC)


def test_the_message_is_marked_as_mexican_spanish() -> None:
    msg = reparse(build_message(envelope(), render_body("acknowledgement", "es", context())))
    assert msg.get_all("Content-Language") == ["es-MX"]
    english = build_message(envelope(language="en"), BODY)
    assert reparse(english).get_all("Content-Language") == ["en"]


def test_the_message_has_text_and_html_alternatives() -> None:
    msg = reparse(build_message(envelope(), render_body("acknowledgement", "es", context())))
    assert msg.get_content_type() == "multipart/alternative"
    plain = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    assert plain is not None and html is not None
    assert FOLIO in plain.get_content()
    assert "Teléfono: 800 123 4567" in plain.get_content()
    assert FOLIO in html.get_content()


def test_a_text_only_body_gives_a_text_plain_message() -> None:
    msg = reparse(build_message(envelope(), RenderedBody(text="Hola\n", html=None)))
    assert msg.get_content_type() == "text/plain"
    assert msg.get_content() == "Hola\n"
    assert msg["Content-Language"] == "es-MX"


def test_a_notice_that_is_not_an_auto_reply_has_no_rfc3834_marks() -> None:
    msg = reparse(build_message(envelope(auto_reply=False), BODY))
    assert msg["Auto-Submitted"] is None
    assert msg["X-Auto-Response-Suppress"] is None
    assert msg[LOOP_HEADER] is not None  # our own mail is always recognisable


def test_long_reference_chains_are_trimmed_from_the_middle() -> None:
    refs = tuple(f"<r{i}@example.com>" for i in range(30))
    msg = reparse(build_message(envelope(references=refs), BODY))
    kept = msg["References"].split()
    assert len(kept) == 20
    assert kept[0] == "<r0@example.com>"
    assert kept[-19:] == list(refs[-19:])


@pytest.mark.parametrize("field", ["subject", "from_name", "to_addr", "in_reply_to"])
@pytest.mark.parametrize("newline", ["\r\n", "\n", "\r", "\u2028", "\u0085", "\x00"], ids=repr)
def test_no_field_can_inject_a_header(field: str, newline: str) -> None:
    value = {
        "subject": "Sin internet",
        "from_name": "Juan",
        "to_addr": "juan.perez@example.com",
        "in_reply_to": "<orig@example.com>",
    }[field]
    injected = f"{value}{newline}Bcc: evil@example.com{newline}Subject: otro"
    msg = reparse(build_message(envelope(**{field: injected}), BODY))
    assert msg.get_all("Bcc") is None
    assert len(msg.get_all("Subject") or []) == 1
    assert msg.defects == []


def test_an_injected_subject_stays_in_the_subject() -> None:
    msg = reparse(build_message(envelope(subject=f"Hola{INJECTION}"), BODY))
    assert msg.get_all("Subject") == ["Holax Bcc: evil@example.com"]
    assert msg.get_all("Bcc") is None


# --- template overrides ----------------------------------------------------------


def test_an_override_directory_takes_precedence_and_the_html_falls_back(tmp_path: Path) -> None:
    (tmp_path / "es").mkdir()
    (tmp_path / "es" / "acknowledgement.txt.j2").write_text(
        "Folio propio {{ folio }} para {{ customer_name }}\n", encoding="utf-8"
    )
    body = render_body("acknowledgement", "es", context(), override=tmp_path)
    assert body.text == f"Folio propio {FOLIO} para Juan Pérez\n"
    shipped = render_body("acknowledgement", "es", context())
    assert body.html == shipped.html
    assert body.html is not None and "Guarde este número" in body.html


def test_a_typo_in_an_override_template_raises(tmp_path: Path) -> None:
    (tmp_path / "es").mkdir()
    (tmp_path / "es" / "acknowledgement.txt.j2").write_text(
        "Folio {{ follio }}\n", encoding="utf-8"
    )
    # No notice has "follio": the template is broken for every one (the admin's to
    # fix, said naming the file), not for this message.
    with pytest.raises(TemplateError, match="uses follio, which this notice does not have"):
        render_body("acknowledgement", "es", context(), override=tmp_path)


def test_an_override_template_cannot_reach_python_internals(tmp_path: Path) -> None:
    (tmp_path / "es").mkdir()
    (tmp_path / "es" / "acknowledgement.txt.j2").write_text(
        "{{ folio.__class__.__mro__[1].__subclasses__() }}\n", encoding="utf-8"
    )
    with pytest.raises(TemplateError) as raised:
        render_body("acknowledgement", "es", context(), override=tmp_path)
    assert isinstance(raised.value.__cause__, jinja2.exceptions.SecurityError)


def test_an_unknown_language_is_an_error_not_an_empty_notice() -> None:
    with pytest.raises(TemplateError, match=r"fr/acknowledgement\.txt\.j2 is missing"):
        render_body("acknowledgement", "fr", context())


# --- properties ----------------------------------------------------------------------

# st.text() never draws lone surrogates (U+D800..U+DFFF): they are not Unicode
# scalar values, cannot be encoded by the email package, and parse_inbound never
# produces them (it replaces them), so no customer string can contain one.


@given(name=st.text(), subject=st.text())
def test_no_customer_string_adds_a_header_or_breaks_the_message(name: str, subject: str) -> None:
    msg = reparse(build_message(envelope(from_name=name, subject=subject), BODY))
    assert sorted(k.lower() for k in msg) == NOTICE_HEADERS
    # The subject survives, folded onto one line.
    assert msg["Subject"] == " ".join(subject.replace("\x00", " ").split())
    # The display name too, but Python's encoded-word folding of long names may
    # move whitespace (a CPython quirk), so compare without it.
    display_name = msg["From"].addresses[0].display_name
    assert "".join(display_name.split()) == "".join(name.replace("\x00", " ").split())


@given(name=st.text(), subject=st.text())
def test_any_customer_string_renders_literally(name: str, subject: str) -> None:
    body = render_body("acknowledgement", "es", context(customer_name=name, subject=subject))
    assert name in body.text
    assert subject in body.text


def test_an_edited_or_new_template_applies_within_the_recheck(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Templates are not looked up on every notice: an edit, or an HTML template added
    where there was none, is used once TEMPLATE_RECHECK_SECONDS have passed."""
    text = tmp_path / "es" / "aviso.txt.j2"
    text.parent.mkdir()
    text.write_text("Aviso {{ folio }}\n", encoding="utf-8")
    assert render_body("aviso", "es", context(), override=tmp_path).html is None

    (tmp_path / "es" / "aviso.html.j2").write_text("<p>{{ folio }}</p>\n", encoding="utf-8")
    text.write_text("Aviso nuevo {{ folio }}\n", encoding="utf-8")
    os.utime(text, (1, 1))  # a different time from the first version's, whatever the clock
    body = render_body("aviso", "es", context(), override=tmp_path)
    assert (body.text, body.html) == (f"Aviso {FOLIO}\n", None)  # not looked up again yet

    later = time.monotonic() + TEMPLATE_RECHECK_SECONDS + 1
    monkeypatch.setattr(time, "monotonic", lambda: later)
    body = render_body("aviso", "es", context(), override=tmp_path)
    assert (body.text, body.html) == (f"Aviso nuevo {FOLIO}\n", f"<p>{FOLIO}</p>\n")


def test_an_edited_include_applies_within_the_recheck(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An included template is compared with its file like the one including it."""
    (tmp_path / "es").mkdir()
    (tmp_path / "es" / "aviso.txt.j2").write_text(
        'Aviso {{ folio }}\n{% include "es/_pie.txt.j2" %}', encoding="utf-8"
    )
    footer = tmp_path / "es" / "_pie.txt.j2"
    footer.write_text("Pie viejo\n", encoding="utf-8")
    assert render_body("aviso", "es", context(), override=tmp_path).text.endswith("Pie viejo\n")

    footer.write_text("Pie nuevo\n", encoding="utf-8")
    os.utime(footer, (1, 1))
    later = time.monotonic() + TEMPLATE_RECHECK_SECONDS + 1
    monkeypatch.setattr(time, "monotonic", lambda: later)
    assert render_body("aviso", "es", context(), override=tmp_path).text.endswith("Pie nuevo\n")
