"""What customers, agents and staff meet at the desk: a forwarded report read whole, an
agent's mail that names no case, commands on a resolved case, and what the notices to
agents say (fourth review round)."""

from __future__ import annotations

import pytest
from helpers import NOTIFY
from test_agents import Desk, desk, text

__all__ = ["desk"]  # the fixture, shared with test_agents

ROSA = "rosa.diaz@hotmail.com"
REPORT = "Desde el sábado no tengo internet en Calle Pino 12, col. Centro. Contrato 7788."

GMAIL_FORWARD = (
    "---------- Forwarded message ---------\n"
    f"De: Rosa Díaz <{ROSA}>\n"
    "Date: lun, 16 nov 2026 a las 9:10\n"
    "Subject: No tengo servicio\n"
    "To: <contacto@internet-plarey.com.mx>\n\n"
)
OUTLOOK_FORWARD = (
    "________________________________\n"
    "De: Pedro Díaz <pedro@gmail.com>\n"
    "Enviado: lunes, 16 de noviembre de 2026 10:00\n"
    f"Para: Rosa Díaz <{ROSA}>\n"
    "Asunto: módem\n\n"
)


@pytest.mark.parametrize(
    ("subject", "forwarded"),
    [
        ("RV: No tengo servicio", GMAIL_FORWARD),
        ("RV: módem", OUTLOOK_FORWARD),
        # No forward prefix (the customer retyped the subject): Gmail's marker says it.
        ("Nadie me contestó", GMAIL_FORWARD),
    ],
)
def test_a_forwarded_report_reaches_the_case_and_the_agents_whole(
    desk: Desk, subject: str, forwarded: str
) -> None:
    folio = desk.open_case(
        sender=f"Rosa Díaz <{ROSA}>",
        subject=subject,
        body="Les reenvío mi correo de la semana pasada, nadie me contestó.\n\n"
        + forwarded
        + REPORT,
    )
    [stored] = desk.case(folio)["messages"][:1]
    assert REPORT in stored["text"] and "nadie me contestó" in stored["text"]
    assert REPORT in text(desk.last_to(NOTIFY))
