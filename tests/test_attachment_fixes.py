"""Fifth review round, attachments end to end. Each test failed before its fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_agents import NOTIFY, Desk, desk, text
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
    assert desk.cli("cases", "attachment", folio, "2", "--output", str(target))[0] == 1
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
    from mailcase.cli import visible
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
