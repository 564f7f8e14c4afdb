"""Golden tests: each sample mail in examples/mail with the values mailcase must read from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailcase.classify import MailKind, classify
from mailcase.inbound import parse_inbound

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "mail"

GOLDEN = {
    # Raw UTF-8 in From (RFC 6532 style), 8bit body.
    "01-falla.eml": (
        "juan.perez@example.com",
        "Juan Pérez",
        "Sin internet desde ayer",
        "El módem tiene la luz roja encendida.",
        MailKind.CUSTOMER,
        (),
    ),
    # ISO-8859-1 quoted-printable body, RFC 2047 Q-encoded subject and name, soft line break.
    "02-aclaracion.eml": (
        "maria.lopez@example.org",
        "María López",
        "Aclaración de cobro de noviembre",
        "cargo doble por $399. ¿Me pueden explicar por qué?",
        MailKind.CUSTOMER,
        (),
    ),
    # HTML only: style dropped, entities decoded.
    "03-html.eml": (
        "roberto@example.net",
        "Roberto Sánchez",
        "Internet muy lento en las noches",
        "(menos de 1 Mbps)",
        MailKind.CUSTOMER,
        (),
    ),
    # Web form: the customer is the Reply-To, with the name it gives there.
    "04-formulario-web.eml": (
        "laura.gomez@example.com",
        "Laura Gómez",
        "Solicitud de cancelación",
        "quiero cancelar mi servicio",
        MailKind.CUSTOMER,
        (),
    ),
    # RFC 2231 UTF-8 attachment name; raw UTF-8 subject.
    "05-adjunto.eml": (
        "pedro.ramirez@example.com",
        "Pedro Ramírez",
        "Cable dañado en el poste",
        "Les mando una foto.",
        MailKind.CUSTOMER,
        ("foto del cable dañado.png",),
    ),
    "06-respuesta-automatica.eml": (
        "ana.torres@example.com",
        "Ana Torres",
        "Respuesta automática: Promociones de diciembre",
        "vacaciones",
        MailKind.AUTO_REPLY,
        (),
    ),
}


def test_every_example_has_a_golden_entry() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.eml")) == sorted(GOLDEN)


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_example_reads_as_expected(name: str) -> None:
    sender, sender_name, subject, excerpt, kind, attachments = GOLDEN[name]
    mail = parse_inbound(
        (EXAMPLES / name).read_bytes(), web_form_senders=["web@internet-plarey.com.mx"]
    )
    assert mail.sender == sender
    assert mail.sender_name == sender_name
    assert mail.subject == subject
    assert excerpt in mail.text
    assert "<" not in mail.text and "font-family" not in mail.text
    assert classify(mail).kind is kind
    assert tuple(a.filename for a in mail.attachments) == attachments
