"""A mail or a multipart entity attached as a file reaches the agents whole and readable.

A customer forwards a mail "as attachment" (Outlook, Thunderbird): it is stored as
message/rfc822 and went to the agents as base64 message/rfc822, which RFC 2046
5.2.1 does not allow; readers took the base64 text for the mail (no From, no
Subject). multipart/* in base64 (RFC 2045 6.4 forbids it) lost its boundary.
"""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime
from email.message import EmailMessage, Message

import pytest

from mailcase.render import Envelope, RenderedBody, build_message
from mailcase.wire import FileAttachment

POLICIES = [email.policy.default, email.policy.compat32]


def forwarded_mail() -> bytes:
    """A supplier's invoice as the customer's client stores it: 8-bit UTF-8, LF line ends."""
    inner = EmailMessage()
    inner["From"] = "Facturación <facturas@proveedor.example>"
    inner["To"] = "juan.perez@example.com"
    inner["Subject"] = "Su factura de noviembre"
    inner.set_content("Adjuntamos su factura. Total: $499.00 — señal incluida.", cte="8bit")
    return inner.as_bytes(policy=email.policy.default.clone(linesep="\n"))


ALTERNATIVE = (
    b'Content-Type: multipart/alternative; boundary="B"\r\n\r\n'
    b"--B\r\nContent-Type: text/plain\r\n\r\nadjunto texto\r\n"
    b"--B\r\nContent-Type: text/html\r\n\r\n<p>adjunto html</p>\r\n--B--\r\n"
)


def notice(attachment: FileAttachment) -> bytes:
    envelope = Envelope(
        from_addr="contacto@internet-plarey.com.mx",
        from_name="Atención a clientes",
        to_addr="soporte@internet-plarey.com.mx",
        subject="[Folio PLR-2026-000123] Cobro duplicado",
        message_id="<mc.0123abcd@internet-plarey.com.mx>",
        date=datetime(2026, 11, 20, 16, 30, tzinfo=UTC),
    )
    return build_message(envelope, RenderedBody("Caso nuevo.", "<p>Caso nuevo.</p>"), [attachment])


def the_file(raw: bytes, policy: email.policy.Policy) -> Message:
    """The one attached part of ``raw`` as ``policy`` reads it; no part may have defects."""
    message = email.message_from_bytes(raw, policy=policy)
    for part in message.walk():
        assert part.defects == [], (part.get_content_type(), part.defects)
    [attached] = [p for p in message.walk() if p.get_content_disposition() == "attachment"]
    return attached


@pytest.mark.parametrize("policy", POLICIES)
def test_a_forwarded_mail_reaches_the_agents_as_the_same_eml_file(
    policy: email.policy.Policy,
) -> None:
    data = forwarded_mail()
    raw = notice(FileAttachment("attachment-1.eml", "message/rfc822", data))
    attached = the_file(raw, policy)
    assert attached.get_content_type() == "application/octet-stream"
    assert attached["Content-Transfer-Encoding"] == "base64"
    assert attached.get_filename() == "attachment-1.eml"
    assert attached.get_payload(decode=True) == data
    # What the agent's client opens is the customer's mail itself.
    opened = email.message_from_bytes(data, policy=email.policy.default)
    assert opened["Subject"] == "Su factura de noviembre"
    assert opened["From"].addresses[0].username == "facturas"


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize(
    ("name", "sent_as"),
    [
        ("Reenviado", "Reenviado.eml"),  # no extension
        ("", "adjunto.eml"),  # no name
        ("Pago $499.00", "Pago $499.00.eml"),  # a subject as its name: ".00" opens nothing
        ("Factura señal", "Factura señal.eml"),  # RFC 2231 / encoded words
        ("Corte zona centro.EML", "Corte zona centro.EML"),  # already a mail's name
    ],
)
def test_a_forwarded_mail_is_named_so_clients_open_it_as_a_mail(
    policy: email.policy.Policy, name: str, sent_as: str
) -> None:
    data = forwarded_mail()
    attached = the_file(notice(FileAttachment(name, "message/rfc822", data)), policy)
    assert attached.get_content_type() == "application/octet-stream"
    assert attached.get_filename() == sent_as
    assert attached.get_payload(decode=True) == data


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize(
    ("content_type", "data"),
    [
        ("multipart/alternative", ALTERNATIVE),
        ("multipart/mixed", ALTERNATIVE.replace(b"/alternative", b"/mixed", 1)),
        ("MESSAGE/DELIVERY-STATUS", b"Final-Recipient: rfc822; juan@example.com\r\n"),
        ("message/global", "Subject: Señal\r\n\r\nSin señal\r\n".encode()),
    ],
)
def test_other_attached_messages_and_multiparts_go_as_files_under_their_own_names(
    policy: email.policy.Policy, content_type: str, data: bytes
) -> None:
    attached = the_file(notice(FileAttachment("attachment-1", content_type, data)), policy)
    assert attached.get_content_type() == "application/octet-stream"
    assert attached.get_filename() == "attachment-1"
    assert attached.get_payload(decode=True) == data
