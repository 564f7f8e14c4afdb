"""parse_inbound: spoofed addresses in encoded words, unusable Message-IDs, windows-1252
text under Latin-1, ASCII and UTF-8 labels, unnamed attachments and raw 8-bit file names,
forwarded mail's text."""

from __future__ import annotations

import base64

import pytest

from mailcase.inbound import parse_inbound

HEAD = (
    b"From: Juan <juan@example.com>\r\n"
    b"To: contacto@internet-plarey.com.mx\r\n"
    b"Subject: Prueba\r\n"
    b"Message-ID: <m1@example.com>\r\n"
    b"MIME-Version: 1.0\r\n"
)


def plain(body: bytes, content_type: bytes = b"text/plain; charset=utf-8") -> bytes:
    return (
        HEAD
        + b"Content-Type: "
        + content_type
        + b"\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        + body
        + b"\r\n"
    )


# --- 1. encoded words never supply an addr-spec (RFC 2047 section 5) ---------------------

SPOOF_NAME = b"=?utf-8?q?Ana_=3Cana=2Esoporte=2Eplarey=40gmail=2Ecom=3E=2C?="


def test_an_encoded_word_in_from_cannot_name_the_sender() -> None:
    raw = (
        b"From: " + SPOOF_NAME + b" <mallory@gmail.com>\r\n"
        b"To: contacto@internet-plarey.com.mx\r\nSubject: x\r\n\r\nx\r\n"
    )
    mail = parse_inbound(raw)
    assert mail.from_address == mail.sender == "mallory@gmail.com"
    # The display name is still decoded, as a name.
    assert mail.sender_name == "Ana <ana.soporte.plarey@gmail.com>,"
    # The headers mapping keeps showing the decoded value.
    assert "ana.soporte.plarey@gmail.com" in mail.header("from")


def test_an_encoded_word_cannot_add_recipients_or_a_reply_to() -> None:
    victim = b"=?utf-8?q?juan=40example=2Ecom=2C?="
    raw = (
        b"From: web@internet-plarey.com.mx\r\n"
        b"To: " + victim + b" <contacto@internet-plarey.com.mx>\r\n"
        b"Cc: " + victim + b" <info@internet-plarey.com.mx>\r\n"
        b"Reply-To: " + victim + b" <mallory@evil.example>\r\n"
        b"Subject: x\r\n\r\nx\r\n"
    )
    mail = parse_inbound(raw, web_form_senders=["web@internet-plarey.com.mx"])
    assert mail.to == ("contacto@internet-plarey.com.mx",)
    assert mail.cc == ("info@internet-plarey.com.mx",)
    assert mail.reply_to == ("mallory@evil.example",)
    assert mail.sender == "mallory@evil.example"


def test_an_encoded_word_is_never_decoded_into_an_addr_spec() -> None:
    raw = b"From: =?utf-8?q?ana=40example=2Ecom?=\r\nSubject: x\r\n\r\nx\r\n"
    mail = parse_inbound(raw)
    assert mail.from_address == ""
    assert mail.sender == ""


def test_address_fields_with_raw_8bit_names_and_utf8_addresses_still_parse() -> None:
    raw = (
        "From: José Pérez <josé@correo.example.mx>\r\n".encode()
        + b"Cc: Mar\xeda <maria@example.com>, =?iso-8859-1?q?Jos=E9?= <jose@example.com>\r\n"
        + b"Subject: x\r\n\r\nx\r\n"
    )
    mail = parse_inbound(raw)
    assert (mail.sender_name, mail.from_address) == ("José Pérez", "josé@correo.example.mx")
    assert mail.cc == ("maria@example.com", "jose@example.com")


@pytest.mark.parametrize(
    "field",
    [
        b"tim@powerupdev.com concierge@powerupdev.com",  # two bare addresses, no comma
        b"<@powerupdev.com>",
        b"<juan@>",
    ],
)
def test_an_address_without_a_local_part_or_a_domain_is_no_sender(field: bytes) -> None:
    # An acknowledgement had been queued to "@powerupdev.com".
    mail = parse_inbound(b"From: " + field + b"\r\nSubject: x\r\n\r\nx\r\n")
    assert mail.sender == ""


def test_an_encoded_comma_in_a_display_name_does_not_split_the_address() -> None:
    raw = b"From: =?iso-8859-1?q?P=E9rez=2C_Juan?= <juan@example.com>\r\nSubject: x\r\n\r\nx\r\n"
    mail = parse_inbound(raw)
    assert (mail.sender_name, mail.from_address) == ("Pérez, Juan", "juan@example.com")


# --- 2. an empty or unusable Message-ID is no Message-ID ------------------------------------


@pytest.mark.parametrize("value", ["<>", "< >", "<<>>", "<@>", "<", "<.>"])
def test_an_unusable_message_id_is_none_and_dedup_uses_the_content(value: str) -> None:
    def message(body: bytes) -> bytes:
        return b"From: a@example.com\r\nMessage-ID: " + value.encode() + b"\r\n\r\n" + body

    first, second = parse_inbound(message(b"Ana")), parse_inbound(message(b"Beto"))
    assert first.message_id is None
    assert first.dedup_key.startswith("content:")
    assert first.dedup_key != second.dedup_key


def test_a_real_message_id_next_to_an_empty_one_is_kept() -> None:
    raw = b"From: a@example.com\r\nMessage-ID: <> <id.1@example.com>\r\n\r\nx"
    assert parse_inbound(raw).message_id == "<id.1@example.com>"


def test_a_message_id_without_an_at_sign_is_still_an_id() -> None:
    # Exchange writes ids such as this one; they are unique all the same.
    raw = b"From: a@example.com\r\nMessage-ID: <0000ff00-2222-0022-fffe-000000000000>\r\n\r\nx"
    assert parse_inbound(raw).message_id == "<0000ff00-2222-0022-fffe-000000000000>"


# --- 3. Latin-1 labels mean windows-1252 (WHATWG Encoding Standard) --------------------------

SMART = "Año – “urgente” €100"


@pytest.mark.parametrize(
    "charset", [b"iso-8859-1", b"ISO-8859-1", b'"latin1"', b"windows-1252", b"cp819"]
)
def test_a_latin1_labelled_body_with_windows_1252_bytes_decodes_as_windows_1252(
    charset: bytes,
) -> None:
    mail = parse_inbound(plain(SMART.encode("cp1252"), b"text/plain; charset=" + charset))
    assert mail.text == SMART


def test_a_latin1_labelled_html_body_decodes_as_windows_1252() -> None:
    html = ("<p>" + SMART + "</p>").encode("cp1252")
    mail = parse_inbound(plain(html, b"text/html; charset=iso-8859-1"))
    assert mail.text == SMART


def test_latin1_labelled_encoded_words_decode_as_windows_1252() -> None:
    raw = (
        b"From: =?iso-8859-1?q?Jos=E9_=93Pepe=94?= <j@example.com>\r\n"
        b"Subject: =?ISO-8859-1?Q?Cotizaci=F3n_=96_=80100?= listo\r\n\r\nx\r\n"
    )
    mail = parse_inbound(raw)
    assert mail.sender_name == "José “Pepe”"
    assert mail.subject == "Cotización – €100 listo"
    assert mail.header("from") == "José “Pepe” <j@example.com>"


def test_iso_8859_15_is_not_read_as_windows_1252() -> None:
    # 0xA4 is the euro sign in ISO-8859-15 and the currency sign in windows-1252.
    mail = parse_inbound(plain(b"Total \xa4100", b"text/plain; charset=iso-8859-15"))
    assert mail.text == "Total €100"


def test_bytes_windows_1252_leaves_undefined_never_raise() -> None:
    mail = parse_inbound(plain(b"a\x81b\x93c\x94", b"text/plain; charset=iso-8859-1"))
    assert mail.text == "a\x81b“c”"


# --- 4. 8-bit text with no charset or an ASCII label: UTF-8, else windows-1252 --------------

ACCENTED = "Buenos días, ¿cuándo llegará el técnico? Año"


@pytest.mark.parametrize("content_type", [b"text/plain", b"text/plain; charset=us-ascii"])
def test_unlabelled_or_ascii_labelled_latin1_bytes_keep_their_accents(content_type: bytes) -> None:
    mail = parse_inbound(plain(ACCENTED.encode("cp1252") + " – €".encode("cp1252"), content_type))
    assert mail.text == ACCENTED + " – €"


@pytest.mark.parametrize("content_type", [b"text/plain", b"text/plain; charset=us-ascii"])
def test_unlabelled_or_ascii_labelled_utf8_bytes_are_utf8(content_type: bytes) -> None:
    assert parse_inbound(plain(ACCENTED.encode(), content_type)).text == ACCENTED


def test_a_body_without_content_type_falls_back_to_windows_1252() -> None:
    raw = b"From: j@example.com\r\nSubject: x\r\n\r\n" + ACCENTED.encode("latin-1") + b"\r\n"
    assert parse_inbound(raw).text == ACCENTED


def test_a_base64_unlabelled_latin1_body_keeps_its_accents() -> None:
    raw = (
        HEAD
        + b"Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes(ACCENTED.encode("latin-1"))
    )
    assert parse_inbound(raw).text == ACCENTED


@pytest.mark.parametrize("charset", [b"utf-8", b"UTF-8", b'"utf8"'])
def test_a_utf8_labelled_windows_1252_body_keeps_its_accents(charset: bytes) -> None:
    body = (ACCENTED + " – €").encode("cp1252")
    mail = parse_inbound(plain(body, b"text/plain; charset=" + charset))
    assert mail.text == ACCENTED + " – €"


def test_utf8_text_with_a_windows_1252_signature_keeps_both() -> None:
    # Only the bytes that are not UTF-8 are read as windows-1252.
    body = "Sin señal desde ayer.\n".encode() + "-- \nJosé Núñez".encode("cp1252")
    mail = parse_inbound(plain(body))
    assert mail.text == "Sin señal desde ayer.\n-- \nJosé Núñez"


def test_utf8_labelled_encoded_words_with_windows_1252_bytes_keep_their_accents() -> None:
    raw = (
        b"From: =?UTF-8?Q?Jos=E9?= <j@example.com>\r\n"
        b"Subject: =?utf-8?q?Se=F1al_ca=EDda?= =?utf-8?q?_en_Le=C3=B3n?=\r\n\r\nx\r\n"
    )
    mail = parse_inbound(raw)
    assert (mail.subject, mail.sender_name) == ("Señal caída en León", "José")


def test_valid_utf8_under_a_utf8_label_is_untouched() -> None:
    # "Ã©" and "Â" are valid UTF-8 of their own: nothing is re-read.
    text = "Ã© Â¿ año 😀"
    assert parse_inbound(plain(text.encode())).text == text


@pytest.mark.parametrize(
    ("label", "text", "codec"),
    [
        (b"gb2312", "这个是什么拢", "gbk"),  # GBK text under its older name
        (b"GB2312", "鎔接", "gbk"),
        (b"shift_jis", "①髙橋", "cp932"),  # NEC and IBM extensions
        (b"iso-8859-9", "Şükrü €", "cp1254"),
        (b"ks_c_5601-1987", "똠방각하", "cp949"),
    ],
)
def test_labels_of_older_charsets_are_read_as_their_supersets(
    label: bytes, text: str, codec: str
) -> None:
    # WHATWG Encoding Standard: what browsers and mail clients do with these labels.
    mail = parse_inbound(plain(text.encode(codec), b"text/plain; charset=" + label))
    assert mail.text == text
    word = base64.b64encode(text.encode(codec))
    raw = b"From: a@example.com\r\nSubject: =?" + label + b"?b?" + word + b"?=\r\n\r\nx\r\n"
    assert parse_inbound(raw).subject == text


# --- 5. unnamed attachments are kept under a generated name ---------------------------------


def mixed(*parts: bytes) -> bytes:
    body = b"".join(b"--B\r\n" + part + b"\r\n" for part in parts)
    return HEAD + b"Content-Type: multipart/mixed; boundary=B\r\n\r\n" + body + b"--B--\r\n"


TEXT_PART = b"Content-Type: text/plain; charset=utf-8\r\n\r\nFoto del modem"
JPEG = b"\xff\xd8\xff\xe0JFIF"
PDF = b"%PDF-1.4 data"


def binary_part(headers: bytes, payload: bytes) -> bytes:
    return headers + b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(payload)


def test_unnamed_attachments_are_kept_with_a_generated_name() -> None:
    raw = mixed(
        TEXT_PART,
        binary_part(b"Content-Type: image/jpeg\r\n", JPEG),
        binary_part(b"Content-Type: application/pdf\r\nContent-Disposition: inline\r\n", PDF),
        b"Content-Type: text/plain\r\nContent-Disposition: attachment\r\n\r\nnotas",
        binary_part(b"Content-Type: application/x-desconocido\r\n", b"\x00\x01"),
    )
    mail = parse_inbound(raw)
    assert mail.text == "Foto del modem"
    assert [(a.filename, a.content_type, a.payload) for a in mail.attachments] == [
        ("attachment-1.jpg", "image/jpeg", JPEG),
        ("attachment-2.pdf", "application/pdf", PDF),
        ("attachment-3.txt", "text/plain", b"notas"),
        ("attachment-4", "application/x-desconocido", b"\x00\x01"),
    ]
    # The same message gives the same names (mail-parser named text ones at random).
    assert parse_inbound(raw).attachments == mail.attachments


def test_an_unnamed_image_that_is_the_whole_message_is_kept() -> None:
    raw = binary_part(HEAD + b"Content-Type: image/png\r\n", b"\x89PNG")
    mail = parse_inbound(raw)
    assert [(a.filename, a.payload) for a in mail.attachments] == [("attachment-1.png", b"\x89PNG")]
    assert mail.text == ""


def test_named_attachments_keep_their_names_and_do_not_count() -> None:
    raw = mixed(
        TEXT_PART,
        binary_part(b'Content-Type: image/jpeg; name="modem.jpg"\r\n', JPEG),
        binary_part(b"Content-Type: image/jpeg\r\n", JPEG),
    )
    assert [a.filename for a in parse_inbound(raw).attachments] == [
        "modem.jpg",
        "attachment-1.jpg",
    ]


@pytest.mark.parametrize(
    ("encoded", "name"),
    [("cp1252", "recibo de señal – año.pdf"), ("utf-8", "recibo de señal – año.pdf")],
)
def test_raw_8bit_file_names_keep_their_accents(encoded: str, name: str) -> None:
    raw_name = name.encode(encoded)
    raw = mixed(
        TEXT_PART,
        b'Content-Type: application/pdf; name="' + raw_name + b'"\r\n'
        b'Content-Disposition: attachment; filename="' + raw_name + b'"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.b64encode(PDF),
    )
    mail = parse_inbound(raw)
    assert [(a.filename, a.payload) for a in mail.attachments] == [(name, PDF)]
    assert mail.text == "Foto del modem"


def test_a_raw_8bit_name_only_in_content_type_keeps_its_accents() -> None:
    raw = mixed(
        TEXT_PART,
        b'Content-Type: image/jpeg; name="m\xf3dem.jpg"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.b64encode(JPEG),
    )
    assert [a.filename for a in parse_inbound(raw).attachments] == ["módem.jpg"]


# --- 6. the case text is the message's own body, never a forwarded message's ----------------

FORWARDED = (
    b"From: otro@example.com\r\nSubject: original\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n\r\nTexto del correo reenviado"
)


def test_html_only_mail_with_a_forwarded_message_takes_its_text_from_its_html() -> None:
    raw = mixed(
        b"Content-Type: text/html; charset=utf-8\r\n\r\n<p>Mi propio <b>texto</b></p>",
        b"Content-Type: message/rfc822\r\nContent-Disposition: attachment\r\n\r\n" + FORWARDED,
    )
    mail = parse_inbound(raw)
    assert mail.text == "Mi propio texto"
    ((attachment),) = mail.attachments
    assert (attachment.filename, attachment.content_type) == ("attachment-1.eml", "message/rfc822")
    assert b"Texto del correo reenviado" in attachment.payload


def test_a_forwarded_message_adds_nothing_to_the_text_and_is_kept_whole() -> None:
    raw = mixed(
        b"Content-Type: text/plain; charset=utf-8\r\n\r\nLes reenvio el correo",
        b'Content-Type: message/rfc822; name="original.eml"\r\n\r\n' + FORWARDED,
    )
    mail = parse_inbound(raw)
    assert mail.text == "Les reenvio el correo"
    assert [a.filename for a in mail.attachments] == ["original.eml"]


def test_a_message_that_only_forwards_another_has_no_text_of_its_own() -> None:
    raw = mixed(b"Content-Type: message/rfc822\r\nContent-Disposition: inline\r\n\r\n" + FORWARDED)
    mail = parse_inbound(raw)
    assert mail.text == ""
    assert [a.filename for a in mail.attachments] == ["attachment-1.eml"]


def test_an_inline_image_is_marked_inline_and_a_file_is_not() -> None:
    # A signature's logo (multipart/related, shown by Content-ID) is not a file the
    # sender meant to send: an agent's reply is not said to have lost it.
    raw = (
        b"From: ana@x.com\r\nTo: b@y.com\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="m"\r\n\r\n--m\r\n'
        b'Content-Type: multipart/related; boundary="r"\r\n\r\n--r\r\n'
        b'Content-Type: text/html\r\n\r\n<p>Listo <img src="cid:logo1"></p>\r\n--r\r\n'
        b"Content-Type: image/png\r\nContent-ID: <logo1>\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=\r\n--r--\r\n--m\r\n"
        b'Content-Type: application/pdf\r\nContent-Disposition: attachment; filename="r.pdf"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n--m--\r\n"
    )
    mail = parse_inbound(raw)
    assert {(a.content_type, a.inline) for a in mail.attachments} == {
        ("image/png", True),
        ("application/pdf", False),
    }
    # Named as any unnamed part is, not by its Content-ID ("<logo1>" in the
    # agents' notice).
    assert {a.filename for a in mail.attachments} == {"attachment-1.png", "r.pdf"}


def test_a_charset_whose_codec_refuses_replace_still_decodes() -> None:
    # "idna" raises a bare UnicodeError even with errors="replace".
    raw = (
        b"From: a@x.com\r\nTo: b@y.com\r\nSubject: s\r\n"
        b"Content-Type: text/plain; charset=idna\r\n\r\nNo tengo se\xf1al\r\n"
    )
    assert parse_inbound(raw).text == "No tengo señal"


def test_two_plain_alternatives_are_one_text() -> None:
    # RFC 2046 5.1.4: alternatives say the same thing; the second here is HTML
    # labelled text/plain, and joining them showed agents the markup.
    raw = (
        HEAD + b'Content-Type: multipart/alternative; boundary="a"\r\n\r\n'
        b"--a\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSin se\xc3\xb1al.\r\n"
        b"--a\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        b'<div dir="ltr">Sin se\xc3\xb1al.</div>\r\n'
        b"--a--\r\n"
    )
    assert parse_inbound(raw).text == "Sin señal."
    # Plain parts of a mixed message are still all of the body.
    mixed_body = mixed(TEXT_PART, b"Content-Type: text/plain; charset=utf-8\r\n\r\nY otra parte")
    assert parse_inbound(mixed_body).text == "Foto del modem\nY otra parte"


@pytest.mark.parametrize("cut", [0, 1, 2, 7], ids=["padded", "no-pad-1", "no-pad-2", "cut-short"])
def test_base64_without_its_padding_is_decoded_not_stored_as_text(cut: int) -> None:
    # b64decode refused it and the base64 text was stored as the "photo".
    jpeg = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4 + b"\xff\xd9"
    encoded = base64.b64encode(jpeg).decode()
    body = encoded.rstrip("=") if cut in (1, 2) else encoded[: len(encoded) - cut]
    raw = (
        "From: juan@example.com\r\nTo: contacto@example.com\r\nSubject: foto\r\n"
        "Message-ID: <pad@example.com>\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: text/plain\r\n\r\nfoto del módem\r\n"
        '--B\r\nContent-Type: image/jpeg; name="foto.jpg"\r\n'
        'Content-Disposition: attachment; filename="foto.jpg"\r\n'
        "Content-Transfer-Encoding: base64\r\n\r\n" + body + "\r\n--B--\r\n"
    ).encode()
    [photo] = parse_inbound(raw).attachments
    assert photo.payload.startswith(b"\xff\xd8\xff")
    if cut in (0, 1, 2):
        assert photo.payload == jpeg
