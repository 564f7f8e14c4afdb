"""Fifth review round, attachments end to end. Each test failed before its fix."""

from __future__ import annotations

import pytest
from test_agents import NOTIFY, Desk, desk, text

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
