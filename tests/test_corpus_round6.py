"""What a walk through the real-world corpus found (sixth review round), as unit tests."""

from __future__ import annotations

from email.message import EmailMessage

import pytest
from helpers import mail

from mailcase.classify import is_automatic_address
from mailcase.inbound import parse_inbound

REPORT = (
    "<html><body><p>Buenas tardes, soy cliente con contrato 55321.</p>"
    "<p>Desde el lunes no tengo internet, el módem tiene la luz LOS en rojo.</p></body></html>"
)


@pytest.mark.parametrize(
    "placeholder",
    [
        "This is the body in plain text for non-HTML mail clients",  # PHPMailer's sample
        "This is an HTML message. Please use an HTML capable mail program to read it.",
    ],
)
def test_a_plain_placeholder_gives_way_to_the_html_report(placeholder: str) -> None:
    # The agents read the placeholder, and the customer's report was in the HTML only.
    parsed = parse_inbound(mail(body=placeholder, html=REPORT))
    assert "luz LOS en rojo" in parsed.text
    assert placeholder not in parsed.text


@pytest.mark.parametrize(
    ("plain", "html"),
    [
        # An agent's reply: its commands are read in the plain text.
        (
            "#resolver procedente\nSe cambió el módem.",
            "<p>#resolver procedente</p><p>Se cambió el módem.</p>",
        ),
        ("Gracias", "<div dir='ltr'>Gracias<br><br>Juan Pérez<br>Tel. 55 1234 5678</div>"),
        ("*Sin internet* desde ayer", "<p><b>Sin internet</b> desde ayer</p>"),
    ],
)  # fmt: skip
def test_a_plain_alternative_that_says_what_the_html_says_is_kept(plain: str, html: str) -> None:
    assert parse_inbound(mail(body=plain, html=html)).text == plain


@pytest.mark.parametrize(
    "address",
    [
        "gmail-noreply@google.com",
        "calendar-notification-noreply@google.com",
        "messages-noreply@linkedin.com",
        "facturacion-noreply@cfe.mx",
        "avisos.no-reply@banco.mx",
        "alertas_donotreply@banco.mx",
    ],
)
def test_noreply_after_a_prefix_is_a_robot(address: str) -> None:
    # Each opened a case and got an acknowledgement: backscatter to robots.
    assert is_automatic_address(address)


@pytest.mark.parametrize(
    "address", ["noe.reyes@example.com", "reply@example.com", "norma.replica@example.com"]
)
def test_people_are_not_robots(address: str) -> None:
    assert not is_automatic_address(address)


def test_raw_utf8_cut_inside_its_last_character_keeps_the_rest() -> None:
    # Yahoo cuts long names inside a character: the whole value was read as
    # windows-1252, and the customer was greeted as "JosÃ© RamÃ³n NÃºÃ±ezÃ".
    name = "José Ramón Núñez".encode() + b"\xc3"
    subject = "Sin señal desde el miércoles, Núñ".encode()[:-1]
    filename = "Recibo Núñez ñ".encode()[:-1]
    raw = (
        b"From: " + name + b" <jose@example.com>\r\nTo: contacto@internet-plarey.com.mx\r\n"
        b"Subject: " + subject + b"\r\nMessage-ID: <t3@example.com>\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n\r\nAdjunto mi recibo.\r\n--B\r\n"
        b"Content-Type: application/pdf\r\n"
        b'Content-Disposition: attachment; filename="' + filename + b'"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--B--\r\n"
    )
    parsed = parse_inbound(raw)
    assert parsed.sender_name.startswith("José Ramón Núñez")
    assert parsed.subject.startswith("Sin señal desde el miércoles, Nú")
    assert parsed.attachments[0].filename.startswith("Recibo Núñez")


def test_a_latin1_header_still_reads_as_latin1() -> None:
    raw = mail(subject="x").replace(b"Subject: x", b"Subject: Sin se\xf1al en Le\xf3n")
    assert parse_inbound(raw).subject == "Sin señal en León"


# --- the same, reviewed: what the first version of these fixes broke ---------------------


def _alternative(plain: str, html: str) -> bytes:
    message = EmailMessage()
    message["From"] = "Rosa Díaz <rosa@example.com>"
    message["To"] = "contacto@internet-plarey.com.mx"
    message["Subject"] = "Sin servicio"
    message["Message-ID"] = "<x1@example.com>"
    message.set_content(plain)
    message.add_alternative(html, subtype="html")
    return message.as_bytes()


def test_a_short_plain_text_keeps_the_link_its_html_shows_as_words() -> None:
    # Gmail writes a linked phrase as "text <URL>" in the plain part; the URL's words
    # are not in the HTML's text, and the link, the customer's evidence, was lost.
    url = "https://drive.google.com/file/d/1AbCdEfGhIj/view?usp=drive_link"
    plain = f"Buenas tardes, aqui esta mi comprobante de pago <{url}>\n"
    html = (
        f'<div dir="ltr">Buenas tardes, aqui esta mi <a href="{url}">comprobante de pago</a></div>'
    )
    assert url in parse_inbound(_alternative(plain, html)).text


def test_an_unrelated_html_part_never_stands_in_for_the_plain_body() -> None:
    message = EmailMessage()
    message["From"] = "rosa@example.com"
    message["To"] = "contacto@internet-plarey.com.mx"
    message["Subject"] = "Ya pagué"
    message.set_content("Ya pagué la mensualidad y sigo sin internet, favor de reactivar.")
    message.make_mixed()
    receipt = EmailMessage()
    receipt.set_content("<p>Banco Ejemplo: transferencia SPEI 000123</p>", subtype="html")
    message.attach(receipt)
    assert "sigo sin internet" in parse_inbound(message.as_bytes()).text


@pytest.mark.parametrize(
    "field",
    [
        "Subject: \u201cYA PAGU\u00c9\u201d y sigo sin servicio",  # É before a closing quote
        "Subject: JOS\u00c9\u00a0GARC\u00cdA",  # É before a no-break space
    ],
)
def test_a_windows_1252_header_with_a_pair_that_looks_like_utf8_reads_as_windows_1252(
    field: str,
) -> None:
    raw = (
        field.encode("cp1252") + b"\r\nFrom: rosa@example.com\r\nTo: contacto@x.mx\r\n"
        b"Message-ID: <x3@example.com>\r\n\r\nhola\r\n"
    )
    # (A no-break space in a subject is a space: subjects are one plain line.)
    expected = field.removeprefix("Subject: ").replace("\xa0", " ")
    assert parse_inbound(raw).subject == expected
