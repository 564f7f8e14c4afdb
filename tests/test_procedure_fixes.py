"""Fifth review round, the procedure and what agents and customers are told.

Each test failed before its fix: a visit booked and cancelled by one reply, a
command below the reply's own ``#resolver`` refused with a false reason,
Outlook's linked addresses refused by ``#participante``, a phone customer's
visit cancelled with no word to the agent, today's visit "cancelled" by the
next one, and an agent-opened case acknowledged as a message the customer sent.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from test_agents import AGENT, CUSTOMER, NOTIFY, Desk, ahead, desk, text
from test_case_rules import problems
from test_desk_fixes import ROSA, agent_writes_to_rosa
from test_templates_all import context as template_context

from mailcase import casework
from mailcase.commands import CommandKind, parse_commands
from mailcase.config import load_settings
from mailcase.models import Case
from mailcase.render import render_body
from mailcase.store import Store

__all__ = ["desk"]

pytestmark = pytest.mark.integration


# --- One reply's commands, checked together (pure) ---


def test_a_visit_booked_and_settled_in_one_reply_is_refused() -> None:
    # The customer would get the appointment and its cancellation at once.
    day = ahead(3)
    for settle in ("#resolver procedente\nSe cambió el módem.", "#cerrar"):
        assert problems(f"#visita {day} 10:00\n{settle}") == [
            (settle.splitlines()[0], "settles_visit")
        ]
    # Cancelling the visit and resolving is one coherent reply.
    assert problems("#visita cancelar\n#resolver procedente\nListo.", status="open") != [
        ("#resolver procedente", "settles_visit")
    ]


def test_a_command_below_the_replys_own_resolution_is_out_of_order() -> None:
    # Not "already resolved: reopen first": nothing was resolved yet.
    for line, code in (("#area redes", "after_resolve"), (f"#visita {ahead(3)}", "settles_visit")):
        assert problems(f"#resolver improcedente\n{line}\nNo hubo falla.") == [(line, code)]
    # Above the resolution it is fine.
    assert problems("#area redes\n#resolver improcedente\nNo hubo falla.") == []


def test_outlook_linked_addresses_are_read_as_the_address() -> None:
    address = "juan.trabajo@gmail.com"
    for written in (
        f"{address}<mailto:{address}>",
        f"{address} <mailto:{address}>",
        f"<mailto:{address}>",
        f"mailto:{address}",
        f"<{address}>",
    ):
        [command] = parse_commands(f"#participante {written}\nSu correo del trabajo.").commands
        assert command.address == address, written
    # A link to another address than the one shown is not guessed at.
    parsed = parse_commands(f"#participante {address}<mailto:otro@gmail.com>")
    assert not parsed.commands and parsed.problems[0].problem == "bad_address"


def test_a_period_after_a_command_is_a_sentence_end() -> None:
    for line, kind in (("#cerrar.", CommandKind.CLOSE), ("#nota.", CommandKind.NOTE)):
        [command] = parse_commands(f"{line}\nListo").commands
        assert command.kind is kind


def test_what_a_phone_customer_was_not_told() -> None:
    def untold(reply: str, *, cancelled: bool) -> list[str]:
        return casework.untold_changes(parse_commands(reply).commands, visit_cancelled=cancelled)

    assert untold("#cerrar", cancelled=True) == ["visit_cancelled"]
    assert untold("#cerrar", cancelled=False) == []
    assert untold("#visita cancelar", cancelled=True) == ["visit_cancelled"]
    assert untold("#resolver procedente\nListo.", cancelled=True) == [
        "resolve",
        "visit_cancelled",
    ]
    # A visit moved: the new one is what to tell.
    assert untold(f"#visita {ahead(3)}", cancelled=False) == ["visit"]


# --- End to end ---


def test_closing_a_phone_case_tells_the_agent_the_visit_is_off(desk: Desk) -> None:
    folio = desk.open_phone_case()
    [notice] = desk.to(NOTIFY)
    desk.agent_reply(notice, f"#visita {ahead(3)} 10:00")
    before = len(desk.to(AGENT))
    desk.agent_reply(notice, "#cerrar\nSe cierra.")
    assert desk.case(folio)["visit"] is None
    [told] = [text(m) for m in desk.to(AGENT)[before:]]
    assert "la cancelación de la visita" in told and "no se le avisó" in told
    # "#visita cancelar" is told as a cancellation, not as "la visita quedó registrada".
    desk.cli("cases", "reopen", folio)
    desk.agent_reply(notice, f"#visita {ahead(4)} 11:00")
    before = len(desk.to(AGENT))
    desk.agent_reply(notice, "#visita cancelar")
    [told] = [text(m) for m in desk.to(AGENT)[before:]]
    assert "la cancelación de la visita" in told and "la visita quedó registrada" not in told
    # From the command line too.
    desk.agent_reply(notice, f"#visita {ahead(5)} 12:00")
    code, _, err = desk.cli("cases", "close", folio)
    assert code == 0 and "cancelled visit" in err and "call them" in err


def test_a_visit_today_with_no_time_is_not_cancelled_by_the_next(desk: Desk) -> None:
    desk.open_case(subject="Sin internet", body="Desde ayer no tengo internet.")
    [notice] = desk.to(NOTIFY)
    today = datetime.now(ZoneInfo("America/Mexico_City")).date()
    # Set directly: "#visita <today>" is refused after 21:00.
    store = Store.open(load_settings(desk.cli.config).database.url, auto_upgrade=False)
    with store.transaction() as session:
        session.execute(sa.update(Case).values(visit_date=today, visit_time=None))
    store.dispose()
    # The repair did not hold: another visit tomorrow. This morning's may have taken place.
    desk.agent_reply(notice, f"#visita {today + timedelta(days=1)} 10:00")
    body = text(desk.last_to(CUSTOMER))
    assert "programamos una visita" in body.lower() or "visita" in body
    assert "queda cancelada" not in body


def test_a_case_an_agent_opened_is_not_acknowledged_as_the_customers_message(
    desk: Desk,
) -> None:
    agent_writes_to_rosa(desk)
    [ack] = desk.to(ROSA)
    body = text(ack)
    assert "Recibimos su mensaje" not in body
    assert "Registramos su reporte «Su reporte de esta mañana»" in body
    # Greeted by the name the agent wrote.
    assert body.startswith("Hola, Rosa Díaz:")


# --- What the notices say ---


@pytest.mark.parametrize("language", ["es", "en"])
def test_the_quarantine_notice_gives_the_commands_and_warns_against_a_second_folio(
    language: str,
) -> None:
    # Registering it by hand and then retrying it gave the customer two folios.
    body = render_body("quarantined", language, template_context("quarantined")).text
    assert "mailcase messages retry 7 --mailbox contacto" in body
    assert "mailcase messages dismiss 7 --mailbox contacto" in body
    assert "sudo -u mailcase" in body
    assert ("segundo folio" if language == "es" else "second folio") in body


@pytest.mark.parametrize("language", ["es", "en"])
def test_the_phone_notice_names_each_thing_the_customer_was_not_told(language: str) -> None:
    def told(*untold: str) -> str:
        ctx = template_context("not_relayed", reason="no_customer", untold=list(untold))
        return render_body("not_relayed", language, ctx).text.split("\n\n", 1)[0]

    if language == "es":
        assert "la cancelación de la visita que tenía programada quedó registrada" in told(
            "visit_cancelled"
        )
        assert "la resolución y la cancelación de la visita" in told("resolve", "visit_cancelled")
        assert "quedaron registradas en el caso, pero no se le avisaron" in told("resolve", "visit")
    else:
        assert "the cancellation of the visit they had scheduled was recorded" in told(
            "visit_cancelled"
        )
        assert "the resolution and the visit were recorded" in told("resolve", "visit")
