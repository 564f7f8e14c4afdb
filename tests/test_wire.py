"""wire: headers and MIME bodies written straight to bytes, read back by the email package."""

from __future__ import annotations

import email
import email.header
import email.policy
import string
from email.message import EmailMessage
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailcase import wire

# Any text a customer can send: mail-parser never yields lone surrogates.
TEXT = st.text(st.characters(exclude_categories=["Cs"]))


def parse(raw: bytes) -> EmailMessage:
    msg = email.message_from_bytes(raw.replace(b"\r\n", b"\n"), policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def with_body(
    headers: str, text: str = "x\n", html: str | None = None, utf8: bool = False
) -> EmailMessage:
    return parse(wire.message(headers, text, html, utf8=utf8))


def lines(header: str) -> list[str]:
    assert header.endswith("\r\n")
    return header[:-2].split("\r\n")


def test_a_plain_subject_is_written_as_is() -> None:
    assert wire.unstructured("Subject", "Sin internet") == "Subject: Sin internet\r\n"


def test_a_long_subject_is_folded_at_spaces_before_78_columns() -> None:
    subject = " ".join(["palabra"] * 40)
    header = wire.unstructured("Subject", subject)
    assert len(lines(header)) > 1
    assert all(len(line) <= 78 for line in lines(header))
    assert with_body(header)["Subject"] == subject


def test_a_subject_that_looks_like_an_encoded_word_reaches_the_customer_as_written() -> None:
    # The standard library decodes it on output ("Cobro x"); the customer wrote the literal text.
    subject = "Cobro =?utf-8?q?x?= duplicado"
    header = wire.unstructured("Subject", subject)
    assert "=?utf-8?q?x?=" not in header
    assert with_body(header)["Subject"] == subject


def test_non_ascii_is_encoded_without_smtputf8_and_raw_with_it() -> None:
    subject = "Aclaración de cobro — señal"
    ascii_header = wire.unstructured("Subject", subject)
    assert ascii_header.isascii() and "=?utf-8?b?" in ascii_header
    assert with_body(ascii_header)["Subject"] == subject
    assert wire.unstructured("Subject", subject, utf8=True) == f"Subject: {subject}\r\n"


def test_a_long_unbroken_word_goes_into_encoded_words_short_enough() -> None:
    word = "x" * 300
    header = wire.unstructured("Subject", word)
    assert all(len(line) <= 78 for line in lines(header))
    assert with_body(header)["Subject"] == word


def test_encoded_words_never_split_a_character() -> None:
    text = "ñ" * 100 + "😀" * 30
    for word in wire.encoded_words(text):
        assert len(word) <= 75  # RFC 2047 2
        assert "=?utf-8?b?" in word
    assert with_body(wire.unstructured("Subject", text))["Subject"] == text


def test_display_names_are_phrases_quoted_or_encoded() -> None:
    assert wire.address("From", "Atencion a clientes", "c@x.mx") == (
        "From: Atencion a clientes <c@x.mx>\r\n"
    )
    quoted = wire.address("From", 'Internet "Plarey", S.A.', "c@x.mx")
    assert quoted == 'From: "Internet \\"Plarey\\", S.A." <c@x.mx>\r\n'
    assert with_body(quoted)["From"].addresses[0].display_name == 'Internet "Plarey", S.A.'
    encoded = wire.address("From", "Atención a clientes", "c@x.mx")
    assert encoded.isascii()
    address = with_body(encoded)["From"].addresses[0]
    assert (address.display_name, address.addr_spec) == ("Atención a clientes", "c@x.mx")


def test_an_odd_local_part_is_quoted_and_a_domain_cannot_carry_header_text() -> None:
    assert wire.addr_spec("juan perez@example.com") == '"juan perez"@example.com'
    spec = wire.addr_spec("juan@example.com Bcc: evil@example.com")
    assert " " not in spec.rpartition("@")[2] and ":" not in spec.rpartition("@")[2]
    assert wire.addr_spec("jóse@ejemplo.mx", utf8=True) == "jóse@ejemplo.mx"


def test_message_ids_that_no_receiver_could_match_are_left_out() -> None:
    header = wire.identifiers("References", ["<a@x>", "<b c@x>", "<ñ@x>", "<=?x?=@x>", "<d@x>"])
    assert header == "References: <a@x> <d@x>\r\n"
    assert wire.identifiers("In-Reply-To", ["<b c@x>"]) == ""
    assert wire.identifiers("In-Reply-To", ["<ñ@x>"], utf8=True) == "In-Reply-To: <ñ@x>\r\n"
    # Any character but controls and spaces, even one Unicode has not assigned yet.
    unassigned = "<\U0001019d@x>"
    assert (
        wire.identifiers("In-Reply-To", [unassigned], utf8=True) == f"In-Reply-To: {unassigned}\r\n"
    )


def test_no_header_line_can_reach_998_characters() -> None:
    huge_id = "<" + "x" * 990 + "@example.com>"  # inbound caps ids at 998
    assert wire.identifiers("References", [huge_id, "<a@x>"]) == "References: <a@x>\r\n"
    subject = wire.unstructured("Subject", "y" * 5000)
    assert all(len(line) <= 78 for line in lines(subject))


def test_many_references_fold_between_ids() -> None:
    refs = [f"<reference-{i}@mail.example.com>" for i in range(20)]
    header = wire.identifiers("References", refs)
    assert all(len(line) <= 78 for line in lines(header))
    assert with_body(header)["References"].split() == refs


def test_no_header_can_carry_a_line_break() -> None:
    for header in (
        wire.unstructured("Subject", "a\r\nBcc: evil@x"),
        wire.address("From", "a\nBcc: evil@x", "c@x.mx"),
        wire.raw_header("Date", "x\r\nBcc: evil@x"),
    ):
        assert "\n" not in header[:-2] and "\r" not in header[:-2]


def test_the_body_keeps_its_last_line_end_in_both_alternatives() -> None:
    msg = with_body("Subject: x\r\n", "Hola\n\nAdiós\n", "<p>Hola</p>\n")
    assert msg.get_content_type() == "multipart/alternative"
    plain, html = msg.get_body(("plain",)), msg.get_body(("html",))
    assert plain is not None and html is not None
    assert plain.get_content() == "Hola\n\nAdiós\n"
    assert html.get_content() == "<p>Hola</p>\n"


def test_quoted_printable_lines_stay_short_and_end_in_crlf() -> None:
    body = wire.quoted_printable("a" * 500 + " \nlínea = final \t\n")
    assert all(len(line) <= 76 for line in body.split(b"\r\n"))
    assert b"\n" not in body.replace(b"\r\n", b"")


def test_without_smtputf8_the_message_is_pure_ascii() -> None:
    raw = wire.message(wire.unstructured("Subject", "Señal"), "Señal perdida\n", "<p>Señal</p>\n")
    raw.decode("ascii")


@given(text=TEXT, html=st.one_of(st.none(), TEXT))
def test_any_body_reaches_the_reader_unchanged(text: str, html: str | None) -> None:
    msg = with_body("Subject: x\r\n", text, html)
    plain = msg.get_body(("plain",))
    assert plain is not None
    expected = text.replace("\r\n", "\n").replace("\r", "\n")
    assert plain.get_content() == expected
    if html is not None:
        part = msg.get_body(("html",))
        assert part is not None
        assert part.get_content() == html.replace("\r\n", "\n").replace("\r", "\n")


@given(subject=TEXT, name=TEXT, utf8=st.booleans())
def test_any_subject_and_name_survive_and_add_no_header(
    subject: str, name: str, utf8: bool
) -> None:
    one_line = " ".join(subject.replace("\x00", " ").split())
    display = " ".join(name.replace("\x00", " ").split())
    headers = wire.unstructured("Subject", one_line, utf8=utf8) + wire.address(
        "From", display, "c@x.mx", utf8=utf8
    )
    raw = wire.message(headers, "x\n", None, utf8=utf8)
    if not utf8:
        raw.decode("ascii")
    msg = parse(raw)
    assert sorted(k.lower() for k in msg) == [
        "content-transfer-encoding", "content-type", "from", "mime-version", "subject"
    ]  # fmt: skip
    assert msg["Subject"] == one_line
    assert msg["From"].addresses[0].addr_spec == "c@x.mx"
    # CPython leaves raw UTF-8 (RFC 6532) in a parsed address as surrogate escapes.
    name_read = msg["From"].addresses[0].display_name
    name_read = name_read.encode("utf-8", "surrogateescape").decode("utf-8")
    assert "".join(name_read.split()) == "".join(display.split())


_ATEXT_CHARS = set(string.ascii_letters + string.digits + "!#$%&'*+/=?^_`{|}~-")
_SAMPLE = [chr(c) for c in range(0x250)] + ["\u2028", "ñ", "€", "\U0001f600", "\U0010fffd"]


@pytest.mark.parametrize("char", _SAMPLE)
def test_utf8_address_characters_follow_rfc_6532(char: str) -> None:
    """With SMTPUTF8, any non-ASCII character is atext and may stand in a domain; an ASCII
    one only where RFC 5322 allows it (else the local part is quoted, the domain drops it)."""
    if char in '@."\\\r\n\x00':
        return  # structure, quoting and line breaks: tested above
    keeps = not char.isascii() or char.isalnum() or char == "-"
    assert wire.addr_spec(f"x@a{char}b.mx", utf8=True) == (f"x@a{char}b.mx" if keeps else "x@ab.mx")
    atext = not char.isascii() or char in _ATEXT_CHARS
    assert wire.addr_spec(f"a{char}b@x.mx", utf8=True).startswith('"') is not atext


def test_a_non_ascii_domain_is_given_in_its_ascii_form_only_when_it_is_the_same_name() -> None:
    from mailcase.wire import ascii_domain

    assert ascii_domain("juan@telefonía-señal.mx") == "juan@xn--telefona-seal-2ib8d.mx"
    assert ascii_domain("juan@example.com") == "juan@example.com"
    assert ascii_domain("josé@ejemplo.es") == "josé@ejemplo.es"  # a local part needs SMTPUTF8
    # IDNA 2003 (Python's codec) maps ß to ss: another domain than IDNA 2008's.
    assert ascii_domain("ana@straße.de") == "ana@straße.de"


# --- attachments (an agent's files relayed to the customer) ---------------------------------

HEAD = "From: a@example.com\r\nTo: b@example.com\r\nSubject: x\r\n"
DATA = bytes(range(256)) * 5


def attached(*names: str, html: str | None = "<p>Hola</p>") -> EmailMessage:
    files = [wire.FileAttachment(name, "application/pdf", DATA) for name in names]
    raw = wire.message(HEAD, "Hola\n", html, attachments=files)
    assert raw.isascii()
    assert max(map(len, raw.split(b"\r\n"))) <= wire.MAX_LINE
    return email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[return-value]


@pytest.mark.parametrize("html", [None, "<p>Hola</p>"])
def test_attachments_follow_the_body_in_a_mixed_message(html: str | None) -> None:
    message = attached("recibo.pdf", "foto.pdf", html=html)
    assert message.get_content_type() == "multipart/mixed"
    body = message.get_body(("plain",))
    assert body is not None and body.get_content().replace("\r\n", "\n") == "Hola\n"
    files = [(p.get_filename(), p.get_content()) for p in message.iter_attachments()]
    assert files == [("recibo.pdf", DATA), ("foto.pdf", DATA)]


@given(st.text(min_size=1, max_size=300))
def test_any_file_name_arrives_as_one_safe_line(name: str) -> None:
    [part] = attached(name).iter_attachments()
    got = part.get_filename()
    assert got and got.isprintable() and "/" not in got and "\\" not in got
    assert len(got) <= wire.MAX_FILENAME


def test_a_spanish_name_arrives_whole_and_a_long_one_keeps_its_ending() -> None:
    long = "recibo de señal – año 2026 " + "ñ" * 300 + ".pdf"
    parts = list(attached("recibo de señal – año.pdf", long, "../../etc/passwd").iter_attachments())
    names = [p.get_filename() for p in parts]
    assert names[0] == "recibo de señal – año.pdf"
    assert (
        names[1] is not None and names[1].endswith("ñ.pdf") and len(names[1]) == wire.MAX_FILENAME
    )
    assert names[2] == "_.._etc_passwd"


def test_a_content_type_that_is_not_one_is_sent_as_octet_stream() -> None:
    bad = wire.FileAttachment("a.bin", "text/plain\r\nBcc: x@example.com", b"x")
    raw = wire.message(HEAD, "Hola", None, attachments=[bad])
    message = email.message_from_bytes(raw, policy=email.policy.default)
    [part] = message.iter_attachments()  # type: ignore[attr-defined]
    assert part.get_content_type() == "application/octet-stream"
    assert b"Bcc" not in raw


@pytest.mark.parametrize(
    "name",
    [
        "foto módem (1).jpg",
        "Estado de cuenta de noviembre 2026 del contrato 55321 a nombre de Juan.pdf",
        "recibo de señal – año 2026 " + "ñ" * 150 + ".pdf",
    ],
)
def test_content_type_names_a_file_as_outlook_reads_it(name: str) -> None:
    # Outlook does not read RFC 2231: with `name*0*=utf-8''…` alone it showed
    # "Untitled attachment" (ATT00001). The name goes as RFC 2047 words in quotes.
    raw = wire.message(
        HEAD, "Hola", None, attachments=[wire.FileAttachment(name, "image/jpeg", DATA)]
    )
    assert max(map(len, raw.split(b"\r\n"))) <= wire.MAX_LINE
    parts: Any = email.message_from_bytes(raw, policy=email.policy.compat32).get_payload()
    part = parts[1]
    assert "name*" not in part["Content-Type"]
    written = " ".join(str(part.get_param("name")).split())
    decoded = str(email.header.make_header(email.header.decode_header(written)))
    assert decoded == wire._safe_filename(name)
    assert part.get_filename() == wire._safe_filename(name)  # Content-Disposition's, RFC 2231
