"""The reason a quarantine notice gives agents is in the notice's language; the ledger's
reason stays the English sentence admins and scripts read (mailcase.reasons)."""

from __future__ import annotations

import pickle
import string
from pathlib import Path
from typing import Any

import pytest
from helpers import NOTIFY, Cli, mail, write_config
from servers import Dovecot, SmtpSink
from sqlalchemy.exc import OperationalError

from mailcase import inbound
from mailcase.errors import MessageError
from mailcase.inbound import MAX_HEADER_BYTES, parse_inbound
from mailcase.reasons import TEXTS, QuarantineReason, Reason
from mailcase.render import render_body
from mailcase.service import _CaseChanged, _reason_of

# One set of parameters per reason, and the ledger's English for it: what
# `messages list` showed before the reasons had codes, word for word.
SAMPLES: dict[Reason, tuple[dict[str, Any], str]] = {
    Reason.MIME_PARTS: (
        {"parts": 7, "limit": 3},
        "message has 7 MIME parts, more than the limit of 3",
    ),
    Reason.HEADER_FIELD: (
        {"size": 70000, "limit": 65536},
        "a header field of 70000 bytes, more than the limit of 65536",
    ),
    Reason.MIME_FIELD: (
        {"size": 9000, "limit": 8192},
        "a Content-Type or Content-Disposition field of 9000 bytes, more than the limit of 8192",
    ),
    Reason.HEADER_SECTION: (
        {"limit": 1024},
        "a header section longer than the limit of 1024 bytes",
    ),
    Reason.MIME_DEPTH: (
        {"depth": 8, "limit": 5},
        "MIME structure nested 8 deep, more than the limit of 5",
    ),
    Reason.UNPARSEABLE: (
        {"error": "ValueError: bad"},
        "cannot parse message: ValueError: bad",
    ),
    Reason.PARSER_DIED: (
        {"exit": "3"},
        "the parser process died reading this message (exit 3)",
    ),
    Reason.TEMPLATE_FAILED: (
        {"template": "es/x.txt.j2", "error": "IndexError: list index out of range"},
        "template es/x.txt.j2 failed on this message: IndexError: list index out of range",
    ),
    Reason.UNREADABLE: (
        {"answer": "fetch failed: [LIMIT] too big"},
        "the IMAP server could not return it (fetch failed: [LIMIT] too big); "
        "`mailcase messages retry` fetches it again",
    ),
    Reason.CASE_CHANGING: ({"folio": "PLR-2026-000001"}, "_CaseChanged: PLR-2026-000001"),
    Reason.DATABASE: (
        {"error": "OperationalError: canceling statement due to statement timeout"},
        "OperationalError: canceling statement due to statement timeout",
    ),
    Reason.UNEXPECTED: ({"error": "KeyError: 'x'"}, "KeyError: 'x'"),
    Reason.NO_SENDER: ({}, "no sender address"),
    Reason.ADDRESS_NESTING: (
        {"field": "From"},
        "the From field nests parentheses too deeply to read its addresses",
    ),
}


def _fields(sentence: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(sentence) if name}


def test_every_reason_has_a_spanish_sentence_with_the_english_ones_parameters() -> None:
    # A new Reason without Spanish words fails here (MessageError takes a Reason,
    # so mypy makes every raise site name one).
    assert set(TEXTS) == set(Reason) == set(SAMPLES)
    for code, sentences in TEXTS.items():
        assert set(sentences) == {"es", "en"}, code
        assert _fields(sentences["es"]) == _fields(sentences["en"]), code


@pytest.mark.parametrize("code", list(Reason))
def test_the_english_reason_is_the_ledgers_and_the_spanish_one_differs(code: Reason) -> None:
    params, english = SAMPLES[code]
    why = QuarantineReason(code, params)
    assert why.text() == why.text("en") == english
    spanish = why.text("es")
    assert spanish != english and "{" not in spanish
    for value in params.values():  # every detail is still said
        assert str(value) in spanish
    # A language without sentences (an override's, one day): the English.
    assert why.text("fr") == english


def test_a_message_error_says_its_reason_in_english_and_survives_the_parser_process() -> None:
    error = MessageError(Reason.MIME_PARTS, parts=7, limit=3)
    assert str(error) == "message has 7 MIME parts, more than the limit of 3"
    back = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes
    assert type(back) is MessageError and back.reason == error.reason
    assert str(back) == str(error)


# --- Each family from where it is raised ---


def _reason(raw: bytes, **limits: int) -> QuarantineReason:
    with pytest.raises(MessageError) as refused:
        parse_inbound(raw, **limits)
    return refused.value.reason


def _photos(count: int) -> bytes:
    files = [(f"f{i}.png", "image/png", b"x" * 10 + bytes([i])) for i in range(count)]
    return mail(subject="Fotos", attachments=files)


def test_too_many_parts() -> None:
    why = _reason(_photos(5), max_parts=3)
    assert why.code is Reason.MIME_PARTS and why.params["limit"] == 3
    assert (
        why.text("es")
        == f"el mensaje tiene {why.params['parts']} partes MIME, más que el límite de 3"
    )


def test_a_long_header_field() -> None:
    why = _reason(mail(headers={"X-Long": "a" * 300}), max_field_bytes=200)
    assert why.code is Reason.HEADER_FIELD
    assert why.text("es").startswith("un campo de encabezado de ")
    assert why.text("es").endswith("más que el límite de 200")


def test_a_long_content_type_field() -> None:
    raw = mail(attachments=[("a" * 300 + ".pdf", "application/pdf", b"%PDF")])
    why = _reason(raw, max_mime_field_bytes=200)
    assert why.code is Reason.MIME_FIELD
    assert why.text("es").startswith("un campo Content-Type o Content-Disposition de ")


def test_a_header_section_over_the_limit() -> None:
    raw = b"".join(b"Cc: vecino%d@example.com\r\n" % i for i in range(MAX_HEADER_BYTES // 20))
    why = _reason(raw + mail())
    assert why.code is Reason.HEADER_SECTION
    assert why.text("es") == (
        f"una sección de encabezados más larga que el límite de {MAX_HEADER_BYTES} bytes"
    )


def test_nesting_too_deep() -> None:
    from test_poison_and_limits import nested

    why = _reason(nested(8), max_depth=5)
    assert why.code is Reason.MIME_DEPTH
    assert (
        why.text("es")
        == "una estructura MIME anidada 8 niveles de profundidad, más que el límite de 5"
    )


def test_a_message_the_parser_cannot_read(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(message: Any) -> Any:
        raise ValueError("bad boundary")

    monkeypatch.setattr(inbound, "_read_body", broken)
    why = _reason(mail())
    assert why.text() == "cannot parse message: ValueError: bad boundary"
    assert why.text("es") == "no se pudo leer la estructura del mensaje: ValueError: bad boundary"


def test_a_template_that_fails_on_this_message(tmp_path: Path) -> None:
    (tmp_path / "es").mkdir()
    (tmp_path / "es" / "no_case.txt.j2").write_text("{{ subject.split()[5] }}\n")
    with pytest.raises(MessageError) as failed:
        render_body("no_case", "es", {"subject": "hola"}, override=tmp_path)
    why = failed.value.reason
    template = tmp_path / "es" / "no_case.txt.j2"
    assert why.code is Reason.TEMPLATE_FAILED and why.params["template"] == str(template)
    assert why.text("es") == (
        f"la plantilla {template} falló con este mensaje: {why.params['error']}"
    )


def test_what_the_poll_quarantines_without_a_message_error() -> None:
    changing = _reason_of(_CaseChanged("PLR-2026-000001"))
    assert changing.text() == "_CaseChanged: PLR-2026-000001"
    assert "el caso PLR-2026-000001 cambió de estado" in changing.text("es")
    database = _reason_of(OperationalError("SELECT 1", {}, Exception("statement timeout")))
    assert database.code is Reason.DATABASE and database.text().startswith("OperationalError: ")
    assert database.text("es").startswith("la base de datos falló con este mensaje: ")
    unexpected = _reason_of(KeyError("x"))
    assert unexpected.text() == "KeyError: 'x'"
    assert unexpected.text("es") == "error inesperado: KeyError: 'x'"
    assert len(_reason_of(ValueError("x" * 5000)).text()) == 1000  # as the ledger always kept


def test_the_shipped_templates_show_the_reason_in_their_language() -> None:
    from test_templates_all import SAMPLES as CONTEXTS

    context = dict(CONTEXTS["quarantined"])
    spanish = render_body("quarantined", "es", context).text
    assert f"Motivo:  {context['reason_text']}" in spanish
    assert context["reason"] not in spanish


# --- Through the servers ---


def _told(sink: SmtpSink) -> str:
    [notice] = [m.message for m in sink.messages if m.rcpt_tos == [NOTIFY]]
    return " ".join(notice.get_body(("plain",)).get_content().split())


@pytest.mark.integration
def test_the_spanish_quarantine_notice_gives_the_reason_in_spanish(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str
) -> None:
    config = write_config(
        tmp_path,
        mailboxes,
        sink,
        extra="[limits]\nmax_mime_parts = 3\n",
        notify=True,
        db_url=db_url,
    )
    mailboxes.append("contacto", _photos(5))
    cli = Cli(config, capsys)
    cli.poll()
    [row] = cli.json("messages", "list")
    parts = row["reason"].split()[2]
    # The ledger (and `messages list`) keep the English words.
    assert row["reason"] == f"message has {parts} MIME parts, more than the limit of 3"
    body = _told(sink)
    assert f"Motivo: el mensaje tiene {parts} partes MIME, más que el límite de 3" in body
    assert "more than the limit" not in body


@pytest.mark.integration
def test_the_english_quarantine_notice_gives_the_ledgers_reason(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    config = write_config(
        tmp_path,
        mailboxes,
        sink,
        extra="[limits]\nmax_mime_parts = 3\n",
        notify=True,
        language="en",
    )
    mailboxes.append("contacto", _photos(5))
    cli = Cli(config, capsys)
    cli.poll()
    [row] = cli.json("messages", "list")
    assert f"Reason: {row['reason']}" in _told(sink)
