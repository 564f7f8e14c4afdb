"""parse_inbound: charsets, HTML-only mail, attachments, senders, threading ids, the corpus."""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from mailcase.errors import MessageError
from mailcase.inbound import InboundMail, html_texts, html_to_text, parse_inbound

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
NOT_MAIL = {"SOURCE.md", "README.md"}

WEB = "web@internet-plarey.com.mx"


def parse(text: str, **kwargs: Any) -> InboundMail:
    """Parse a message written as text: LF line ends, every byte < 0x80."""
    return parse_inbound(text.encode("ascii"), **kwargs)


def head(**headers: str) -> str:
    base = {
        "From": "Juan <juan@example.com>",
        "To": "contacto@internet-plarey.com.mx",
        "Subject": "Prueba",
        "Message-ID": "<m1@example.com>",
    }
    base.update({k.replace("_", "-"): v for k, v in headers.items()})
    return "".join(f"{k}: {v}\n" for k, v in base.items() if v)


# --- charsets ----------------------------------------------------------------------


def test_utf8_quoted_printable_body_and_rfc2047_subject_decode() -> None:
    mail = parse(
        head(Subject="=?UTF-8?Q?Sin_se=C3=B1al_en_Le=C3=B3n?=")
        + "Content-Type: text/plain; charset=utf-8\n"
        "Content-Transfer-Encoding: quoted-printable\n\n"
        "Se=C3=B1al d=C3=A9bil desde el a=C3=B1o pasado =E2=82=AC\n"
    )
    assert mail.subject == "Sin señal en León"
    assert mail.text == "Señal débil desde el año pasado €"


def test_iso_8859_1_quoted_printable_body_and_rfc2047_subject_decode() -> None:
    mail = parse(
        head(
            From="=?iso-8859-1?q?Jos=E9_P=E9rez?= <Jose.Perez@Example.COM>",
            Subject="=?ISO-8859-1?B?U2luIHNl8WFsIGVuIExl825=?=",
        )
        + "Content-Type: text/plain; charset=iso-8859-1\n"
        "Content-Transfer-Encoding: quoted-printable\n\n"
        "Se=F1al d=E9bil, =BFqu=E9 pasa?\n"
    )
    assert mail.subject == "Sin señal en León"
    assert mail.text == "Señal débil, ¿qué pasa?"
    assert mail.sender_name == "José Pérez"
    assert mail.sender == "jose.perez@example.com"  # addresses are lower-cased


def test_multiline_encoded_subject_is_one_line() -> None:
    mail = parse(head(Subject="=?utf-8?q?Sin_servicio?=\n =?utf-8?q?_desde_ayer?=") + "\nx\n")
    assert mail.subject == "Sin servicio desde ayer"


def test_raw_8bit_utf8_and_latin1_headers_decode() -> None:
    for raw_subject in ("Cañón".encode(), "Cañón".encode("latin-1")):
        raw = b"From: juan@example.com\nSubject: " + raw_subject + b"\n\nx\n"
        assert parse_inbound(raw).subject == "Cañón"


def test_unknown_body_charset_and_invalid_bytes_never_raise() -> None:
    for charset in ("x-unknown", "utf-8", ""):
        ctype = f"text/plain; charset={charset}" if charset else "text/plain"
        raw = (
            head().encode()
            + f"Content-Type: {ctype}\nContent-Transfer-Encoding: 8bit\n\n".encode()
            + b"caf\xe9 \xff\xfe listo\n"
        )
        mail = parse_inbound(raw)
        assert mail.text.startswith("caf"), charset
        assert mail.text.endswith(" listo"), charset
        # The undecodable bytes became something readable, never lost characters
        # of the valid text, and never a lone surrogate.
        assert "\ufffd" in mail.text or "é" in mail.text, charset
        mail.text.encode("utf-8")


def test_bad_encoded_words_are_decoded_as_far_as_possible() -> None:
    cases = {
        "=?x-unknown?q?Ca=F1on?=": "Ca\ufffdon",  # unknown charset
        # windows-1252 bytes labelled UTF-8: read as windows-1252
        "=?utf-8?q?se=F1al_d=E9bil?=": "señal débil",
        "=?utf-8?q?Re:_[Folio_PLR-2026-000001]_caf=E9?=": "Re: [Folio PLR-2026-000001] café",
        "=?utf-8?b?!!!?= ok": "ok",
    }
    for header, expected in cases.items():
        assert parse(head(Subject=header) + "\nx\n").subject == expected, header


def test_an_encoded_word_next_to_raw_8bit_text_is_decoded() -> None:
    raw = b"From: juan@example.com\nSubject: =?utf-8?q?Ca=C3=B1=C3=B3n?= r\xc3\xa1pido\n\nx\n"
    assert parse_inbound(raw).subject == "Cañón rápido"


# --- HTML-only mail ------------------------------------------------------------------

HTML = """<html><head><title>Titulo secreto</title>
<style>p { color: red; } .oculto { display: none }</style>
<script>var x = "<b>no</b>"; alert(1);</script></head>
<body><p>Hola &amp; buen d&iacute;a,</p><p>no tengo internet &lt;desde ayer&gt; &#8364; &eacute;</p>
<ul><li>uno</li><li>dos</li></ul><noscript>sin js</noscript></body></html>"""


def test_html_only_mail_becomes_text_without_tags_script_or_style() -> None:
    mail = parse(head() + "Content-Type: text/html; charset=utf-8\n\n" + HTML + "\n")
    assert "Hola & buen día," in mail.text
    assert "no tengo internet <desde ayer> € é" in mail.text
    assert "- uno" in mail.text
    assert "- dos" in mail.text
    for absent in ("<p>", "</", "color", "alert", "var x", "Titulo secreto", "sin js", "&amp;"):
        assert absent not in mail.text, absent


def test_plain_text_part_is_preferred_to_the_html_one() -> None:
    mail = parse(
        head()
        + 'Content-Type: multipart/alternative; boundary="b"\n\n'
        + "--b\nContent-Type: text/plain; charset=utf-8\n\ntexto plano\n"
        + "--b\nContent-Type: text/html; charset=utf-8\n\n<p>texto html</p>\n--b--\n"
    )
    assert mail.text == "texto plano"


def test_html_to_text_survives_broken_html() -> None:
    text = html_to_text("<p>uno<p>dos</b></i><script>x")
    assert [line for line in text.splitlines() if line] == ["uno", "dos"]
    assert html_to_text("<div>a &nbsp; b</div>") == "a b"


# --- attachments ---------------------------------------------------------------------

JPEG = bytes.fromhex("ffd8ffe000104a46494600010100ff00fe")
PDF = b"%PDF-1.4\n%\xc7\xec\x8f\xa2\n"
CSV = "año,señal\n1,baja\n".encode()


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


ATTACHMENTS = (
    head(Subject="Fotos")
    + 'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="XX"\n\n'
    + "--XX\nContent-Type: text/plain; charset=utf-8\n\nAdjunto fotos.\n"
    # RFC 2231 extended parameter
    + "--XX\nContent-Type: image/jpeg; name*=utf-8''fotograf%C3%ADa%20m%C3%B3dem.jpg\n"
    + "Content-Disposition: attachment; filename*=utf-8''fotograf%C3%ADa%20m%C3%B3dem.jpg\n"
    + f"Content-Transfer-Encoding: base64\n\n{_b64(JPEG)}\n"
    # RFC 2047 encoded word in a quoted parameter (Outlook, Thunderbird of old)
    + '--XX\nContent-Type: application/pdf; name="=?iso-8859-1?q?recibo_se=F1al.pdf?="\n'
    + 'Content-Disposition: attachment; filename="=?iso-8859-1?q?recibo_se=F1al.pdf?="\n'
    + f"Content-Transfer-Encoding: base64\n\n{_b64(PDF)}\n"
    # RFC 2231 continuations
    + "--XX\nContent-Type: text/csv; name*0*=utf-8''a%C3%B1o; name*1=\"_2026.csv\"\n"
    + "Content-Disposition: attachment; filename*0*=utf-8''a%C3%B1o; filename*1=\"_2026.csv\"\n"
    + f"Content-Transfer-Encoding: base64\n\n{_b64(CSV)}\n"
    + "--XX--\n"
)


def test_attachments_keep_their_non_ascii_names_types_and_bytes() -> None:
    mail = parse(ATTACHMENTS)
    assert mail.text == "Adjunto fotos."
    got = [(a.filename, a.content_type, a.payload, a.size, a.sha256) for a in mail.attachments]
    expected = [
        ("fotografía módem.jpg", "image/jpeg", JPEG),
        ("recibo señal.pdf", "application/pdf", PDF),
        ("año_2026.csv", "text/csv", CSV),
    ]
    assert got == [
        (name, ctype, data, len(data), hashlib.sha256(data).hexdigest())
        for name, ctype, data in expected
    ]


def test_a_latin1_text_attachment_keeps_its_original_bytes() -> None:
    mail = parse(
        head()
        + 'Content-Type: multipart/mixed; boundary="XX"\n\n'
        + "--XX\nContent-Type: text/plain\n\ncuerpo\n"
        + '--XX\nContent-Type: text/plain; charset=iso-8859-1; name="notas.txt"\n'
        + 'Content-Disposition: attachment; filename="notas.txt"\n'
        + "Content-Transfer-Encoding: quoted-printable\n\nse=F1al baja\n--XX--\n"
    )
    (attachment,) = mail.attachments
    assert attachment.payload == "señal baja".encode("latin-1")
    assert attachment.sha256 == hashlib.sha256(b"se\xf1al baja").hexdigest()


# --- senders and addresses -------------------------------------------------------------


def test_web_form_sender_is_the_reply_to_address() -> None:
    mail = parse(
        head(From=f"Formulario web <{WEB}>", Reply_To="Juan Perez <Juan.Perez@Example.com>")
        + "\nMensaje\n",
        web_form_senders=[WEB.upper()],
    )
    assert mail.sender == "juan.perez@example.com"
    assert mail.from_address == WEB
    # The customer's name as the form gives it in Reply-To, never the form's own
    # ("Formulario web"): agents read "Cliente: <address>" alone, and the
    # acknowledgement greeted nobody (agent notices review).
    assert mail.sender_name == "Juan Perez"
    assert mail.reply_to == ("juan.perez@example.com",)


def test_reply_to_of_an_ordinary_sender_does_not_change_the_sender() -> None:
    mail = parse(head(Reply_To="otro@example.com") + "\nx\n", web_form_senders=[WEB])
    assert mail.sender == "juan@example.com"
    assert mail.sender_name == "Juan"


def test_web_form_without_reply_to_stays_the_form() -> None:
    mail = parse(head(From=WEB) + "\nx\n", web_form_senders=[WEB])
    assert mail.sender == WEB


def test_to_and_cc_lists_are_lower_cased_addr_specs() -> None:
    mail = parse(
        head(
            To="Contacto <Contacto@Internet-Plarey.com.mx>, info@internet-plarey.com.mx",
            Cc='"Perez, Ana" <Ana@Example.com>',
        )
        + "\nx\n"
    )
    assert mail.to == ("contacto@internet-plarey.com.mx", "info@internet-plarey.com.mx")
    assert mail.cc == ("ana@example.com",)


def test_missing_from_gives_an_empty_sender() -> None:
    mail = parse(head(From="") + "\nx\n")
    assert mail.sender == ""
    assert mail.from_address == ""


# --- threading headers -------------------------------------------------------------------


def test_message_ids_keep_their_angle_brackets() -> None:
    mail = parse(
        head(
            Message_ID="  <abc.123@mail.example.com>  ",
            In_Reply_To="<p1@example.com> (comentario)",
            References="<r1@example.com>\n <r2@example.com>\t<p1@example.com>",
        )
        + "\nx\n"
    )
    assert mail.message_id == "<abc.123@mail.example.com>"
    assert mail.in_reply_to == ("<p1@example.com>",)
    assert mail.references == ("<r1@example.com>", "<r2@example.com>", "<p1@example.com>")


def test_thread_ids_put_in_reply_to_first_then_references_newest_first() -> None:
    mail = parse(head(In_Reply_To="<p1@x>", References="<r1@x> <r2@x> <p1@x> <r3@x>") + "\nx\n")
    assert mail.thread_ids == ("<p1@x>", "<r3@x>", "<r2@x>", "<r1@x>")


def test_a_message_id_without_brackets_is_kept_with_brackets() -> None:
    assert parse(head(Message_ID="sin-corchetes@x") + "\nx\n").message_id == "<sin-corchetes@x>"


def test_dedup_key_is_the_message_id() -> None:
    assert parse(head() + "\nx\n").dedup_key == "<m1@example.com>"


def test_dedup_key_falls_back_to_the_content_without_trace_fields() -> None:
    raw = (head(Message_ID="") + "\nsin identificador\n").encode()
    mail = parse_inbound(raw)
    assert mail.message_id is None
    assert mail.raw_sha256 == hashlib.sha256(raw).hexdigest()
    assert mail.raw_key == f"sha256:{mail.raw_sha256}"  # the key before content keys
    assert mail.dedup_key.startswith("content:") and mail.dedup_key != mail.raw_key
    assert parse_inbound(b"Received: by mx\n" + raw).dedup_key == mail.dedup_key
    assert mail.size == len(raw)
    # Another byte, another key.
    assert parse_inbound(raw + b"\n").dedup_key != mail.dedup_key


# --- headers and metadata ------------------------------------------------------------------


def test_header_lookup_is_case_insensitive() -> None:
    mail = parse(head(X_Custom_Thing="uno") + "X-CUSTOM-THING: dos\n\nx\n")
    assert mail.header("x-custom-thing") == "uno"
    assert mail.header("X-Custom-Thing") == "uno"
    assert mail.header("X-CUSTOM-THING") == "uno"
    assert mail.headers["x-custom-thing"] == ("uno", "dos")
    assert mail.header("Subject") == mail.header("SUBJECT") == "Prueba"
    assert mail.header("no-such-header") == ""


def test_headers_cannot_be_changed() -> None:
    mail = parse(head() + "\nx\n")
    with pytest.raises(TypeError):
        mail.headers["subject"] = ("otro",)  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        mail.subject = "otro"  # type: ignore[misc]


def test_date_is_timezone_aware() -> None:
    mail = parse(head(Date="Fri, 20 Nov 2026 10:30:00 -0600") + "\nx\n")
    assert mail.date == datetime(2026, 11, 20, 10, 30, tzinfo=timezone(timedelta(hours=-6)))
    naive = parse(head(Date="Fri, 20 Nov 2026 10:30:00 -0000") + "\nx\n")
    assert naive.date == datetime(2026, 11, 20, 10, 30, tzinfo=UTC)
    assert parse(head(Date="ayer") + "\nx\n").date is None
    assert parse(head() + "\nx\n").date is None


def test_content_type_is_the_top_level_type_lower_cased() -> None:
    mail = parse(
        head()
        + 'Content-Type: Multipart/Report; report-type=delivery-status; boundary="b"\n\n'
        + "--b\nContent-Type: text/plain\n\nx\n--b--\n"
    )
    assert mail.content_type == "multipart/report"


# --- the corpus of real-world mail ----------------------------------------------------------


def _corpus_files() -> list[Path]:
    return sorted(
        p
        for p in CORPUS.rglob("*")
        if p.is_file()
        and p.name not in NOT_MAIL
        and not p.name.startswith("LICENSE")
        and p.suffix != ".json"
    )


def _strings(value: Any) -> Iterator[str]:
    """Every string inside an InboundMail, however deeply nested."""
    if isinstance(value, str):
        yield value
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from _strings(getattr(value, f.name))
    elif isinstance(value, tuple | list):
        for item in value:
            yield from _strings(item)
    elif hasattr(value, "items"):
        for key, item in value.items():
            yield from _strings(key)
            yield from _strings(item)


@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"optional mail corpus {CORPUS} is not present")
def test_every_corpus_file_parses_or_is_refused_with_message_error() -> None:
    files = _corpus_files()
    assert len(files) > 400
    parsed = 0
    for path in files:
        try:
            mail = parse_inbound(path.read_bytes())
        except MessageError:
            continue
        parsed += 1
        for text in _strings(mail):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:  # a lone surrogate
                pytest.fail(f"{path.relative_to(CORPUS)}: {exc}: {text[:80]!r}")
        for item in (*mail.thread_ids, mail.message_id or "<x>"):
            assert item.startswith("<") and item.endswith(">"), path
    # Refusing is for bytes that are not a message at all, not an easy way out.
    assert parsed > len(files) * 0.9


def test_html_with_thousands_of_unclosed_tags_is_read_in_linear_time() -> None:
    # Python's HTMLParser looks for the end of every "<" to the end of the text
    # (CVE-2025-6069, quadratic before CPython 3.11.13): 120 KB of "<a " took three
    # minutes, 480 KB of "<!--x>" 50 s. A "<" that cannot open a tag, or a comment or
    # marked section nothing closes, is text; beyond a few it is written so.
    for pattern in ("<a ", "<a b=", "<!--", "</", "<!--x>", "<![CDATA[x>", "<![if x>"):
        start = time.perf_counter()
        text, _ = html_texts(f"<p>Sin servicio</p>{pattern * 40_000}")
        assert time.perf_counter() - start < 5, pattern  # minutes without the rewrite
        assert text.startswith("Sin servicio")


def test_outlooks_conditional_comments_and_sections_are_markup_however_many() -> None:
    html = "<p>a</p><!--[if gte mso 9]><xml>x</xml><![endif]-->" + (
        "<![if !supportLists]>1.<![endif]> item " * 20
    )
    assert html_texts(html)[0] == "a\n" + " ".join(["1. item"] * 20)


def test_a_few_stray_angle_brackets_leave_the_markup_as_written() -> None:
    html = "<p>3 < 4</p><!-- <b>oculto</b> --><p>fin</p>"
    assert html_texts(html)[0] == "3 < 4\n\nfin"  # the comment is markup
    # Beyond the tolerance, every "<" that cannot open a tag is text: the comment too.
    assert "<!-- oculto -->" in html_texts(html + "<x " * 11)[0]
