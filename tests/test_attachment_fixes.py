"""Fifth review round, attachments end to end. Each test failed before its fix."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from helpers import CONTACTO, Cli, write_config
from servers import Dovecot, SmtpSink
from test_agents import AGENT, CUSTOMER, NOTIFY, Desk, desk, text
from test_templates_all import context as template_context

from mailcase.render import render_body

__all__ = ["desk"]

pytestmark = pytest.mark.integration

AREA = "redes@internet-plarey.com.mx"
JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 40


def test_the_routed_area_gets_the_customers_photos(desk: Desk) -> None:
    # "#area" told the area it must answer from its notice alone, and sent it the
    # customer's words without the photo, or even its name.
    desk.open_case(
        subject="Módem con luz roja",
        body="Les mando foto del módem, la luz LOS está en rojo.",
        attachments=[("foto módem.jpg", "image/jpeg", JPEG)],
    )
    [notice] = desk.to(NOTIFY)
    desk.agent_reply(notice, "#area redes\nRevisen la foto, parece fibra dañada.")
    routed = desk.last_to(AREA)
    assert "foto módem.jpg" in text(routed)
    files = [(p.get_filename(), p.get_content()) for p in routed.iter_attachments()]
    assert files == [("foto módem.jpg", JPEG)]


def test_files_kept_on_the_case_can_be_had_back_by_their_number(desk: Desk, tmp_path: Path) -> None:
    # The agents' notice said "kept on the case"; nothing could get them back.
    folio = desk.open_case(
        subject="Fotos",
        body="Van las fotos.",
        attachments=[
            ("recibo.pdf", "application/pdf", b"%PDF-1.4 recibo"),
            ("foto módem.jpg", "image/jpeg", JPEG),
        ],
    )
    code, out, _ = desk.cli("cases", "show", folio)
    assert "[attachment 1] recibo.pdf" in out and "[attachment 2] foto módem.jpg" in out
    target = tmp_path / "foto.jpg"
    code, _, err = desk.cli("cases", "attachment", folio, "2", "--output", str(target))
    assert code == 0, err
    assert target.read_bytes() == JPEG and oct(target.stat().st_mode & 0o777) == "0o600"
    # Never over an existing file; a number the case does not have is "not found".
    assert desk.cli("cases", "attachment", folio, "2", "--output", str(target))[0] == 2
    code, _, err = desk.cli("cases", "attachment", folio, "3", "--output", str(tmp_path / "x"))
    assert code == 4 and "has 2 attachment(s), not 3" in err


@pytest.mark.parametrize("language", ["es", "en"])
def test_the_notice_says_how_to_get_the_files_left_out(language: str) -> None:
    ctx = template_context("agent_notification", not_attached=["foto-modem.jpg"])
    reasons = {
        True: {"es": "por su tamaño", "en": "for their size"},
        False: {"es": "solo en el caso", "en": "on the case only"},
    }
    for attaching, why in reasons.items():
        ctx["attaching"] = attaching
        body = render_body("agent_notification", language, ctx).text
        assert why[language] in body
        assert "mailcase cases attachment PLR-2026-000123 N" in body


def test_a_bidirectional_override_cannot_disguise_a_file_name() -> None:
    # "factura\u202efdp.exe" displays as "facturaexe.pdf": in the case, the agents'
    # notice ("Adjuntos:") and on the admin's terminal.
    from mailcase.cli_common import visible
    from mailcase.inbound import parse_inbound

    raw = (
        b"From: juan@example.com\r\nTo: contacto@example.com\r\nSubject: factura\r\n"
        b"Message-ID: <bidi@example.com>\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n'
        b"--B\r\nContent-Type: text/plain\r\n\r\nla factura\r\n"
        b"--B\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Disposition: attachment; filename*=utf-8''factura%E2%80%AEfdp.exe\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nTVo=\r\n--B--\r\n"
    )
    [file] = parse_inbound(raw).attachments
    assert file.filename == "facturafdp.exe"
    assert visible("factura\u202efdp.exe") == "factura\\u202efdp.exe"


def _reply_to(notice: Any, body: str) -> str:
    """The head of an agent's reply to ``notice`` (verified by its signed id)."""
    return (
        f"From: Ana Técnica <{AGENT}>\r\nTo: {CONTACTO}\r\nSubject: Re: {notice['Subject']}\r\n"
        f"Message-ID: <{abs(hash(body))}@internet-plarey.com.mx>\r\n"
        f"In-Reply-To: {notice['Message-ID']}\r\nReferences: {notice['Message-ID']}\r\n"
        "MIME-Version: 1.0\r\n"
    )


def _b64(data: bytes) -> str:
    return base64.encodebytes(data).decode().replace("\n", "\r\n")


def test_a_photo_an_agent_sends_from_apple_mail_reaches_the_customer(desk: Desk) -> None:
    # Apple Mail puts an attached image in the HTML (inline, with a Content-ID): it
    # was dropped as if it were a signature's logo, and nobody was told.
    desk.open_case(subject="Sin internet", body="No tengo internet.")
    [notice] = desk.to(NOTIFY)
    photo = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 300  # 75 KB
    logo = b"\x89PNG\r\n\x1a\n" + bytes(200)
    raw = (
        _reply_to(notice, "apple")
        + 'Content-Type: multipart/related; type="text/html"; boundary="REL"\r\n\r\n'
        "--REL\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        "<div>Así deben verse las luces del módem.</div>"
        '<img src="cid:photo@apple"><img src="cid:logo@apple">\r\n'
        "--REL\r\nContent-Transfer-Encoding: base64\r\n"
        "Content-Disposition: inline; filename=IMG_0042.jpeg\r\n"
        'Content-Type: image/jpeg; name="IMG_0042.jpeg"\r\nContent-Id: <photo@apple>\r\n\r\n'
        + _b64(photo)
        + "\r\n--REL\r\nContent-Transfer-Encoding: base64\r\n"
        "Content-Disposition: inline; filename=logo.png\r\n"
        'Content-Type: image/png; name="logo.png"\r\nContent-Id: <logo@apple>\r\n\r\n'
        + _b64(logo)
        + "\r\n--REL--\r\n"
    )
    desk.deliver(raw.encode())
    relayed = desk.last_to(CUSTOMER)
    files = [(p.get_filename(), p.get_content()) for p in relayed.iter_attachments()]
    assert files == [("IMG_0042.jpeg", photo)]  # the photo; not the signature's logo


def test_no_file_of_a_message_an_agent_attaches_reaches_the_customer(desk: Desk) -> None:
    # The attached message was withheld, and the file inside it went out.
    desk.open_case(subject="Sin internet", body="No tengo internet.")
    [notice] = desk.to(NOTIFY)
    inner = (
        "From: noc@internet-plarey.com.mx\r\nTo: soporte@internet-plarey.com.mx\r\n"
        "Subject: Corte zona centro\r\n"
        'Content-Type: multipart/mixed; boundary="IN"\r\n\r\n'
        "--IN\r\nContent-Type: text/plain\r\n\r\nInterno: no reenviar.\r\n"
        '--IN\r\nContent-Type: text/csv; name="clientes_afectados.csv"\r\n'
        'Content-Disposition: attachment; filename="clientes_afectados.csv"\r\n\r\n'
        "contrato,nombre,telefono\r\n55321,Maria Lopez,5551234567\r\n--IN--\r\n"
    )
    raw = (
        _reply_to(notice, "eml") + 'Content-Type: multipart/mixed; boundary="OUT"\r\n\r\n'
        "--OUT\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        "Hay un corte en su zona; queda resuelto hoy.\r\n"
        "--OUT\r\nContent-Type: message/rfc822\r\n"
        'Content-Disposition: attachment; filename="Corte zona centro.eml"\r\n\r\n'
        + inner
        + "--OUT--\r\n"
    )
    desk.deliver(raw.encode())
    relayed = desk.last_to(CUSTOMER)
    assert "queda resuelto hoy" in text(relayed)
    assert [p.get_filename() for p in relayed.iter_attachments()] == []
    told = text(desk.last_to(AGENT))
    assert "clientes_afectados.csv" in told and "Corte zona centro.eml" in told


def test_agents_are_told_when_a_message_was_too_large_to_keep_its_files(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str
) -> None:
    # Only the case had a note: the agents' notice showed no attachment at all, and
    # nobody asked the customer for the photos.
    config = write_config(
        tmp_path, mailboxes, sink, notify=True, db_url=db_url,
        extra="[limits]\nmax_message_bytes = 20000\n",
    )  # fmt: skip
    big = Desk(Cli(config, capsys), mailboxes, sink, tmp_path)
    big.open_case(
        subject="Fotos del módem",
        body="Les mando las fotos.",
        attachments=[("IMG_1.jpg", "image/jpeg", JPEG * 10)],
    )
    notice = text(big.last_to(NOTIFY))
    assert "Adjuntos: no se guardaron" in notice
    [uid] = [m["uid"] for m in big.cli.json("messages", "list")]
    assert f"mailcase messages show {uid} --mailbox contacto" in notice
