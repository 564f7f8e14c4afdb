"""The case procedure as customers and agents live it: the area that must answer hears
every follow-up, a resolution does not leave a visit booked, and the reopening window
the resolution promised holds."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from email.message import EmailMessage
from zoneinfo import ZoneInfo

from helpers import NOTIFY, mail
from test_agents import AGENT, CUSTOMER, Desk, desk, text

__all__ = ["desk"]  # the fixture, shared with test_agents

REDES = "redes@internet-plarey.com.mx"


def test_the_area_a_case_was_routed_to_hears_the_customers_follow_ups(desk: Desk) -> None:
    folio = desk.open_case()
    [notification] = desk.to(NOTIFY)
    desk.agent_reply(notification, "#area redes\nRevisar nodo 4.")
    assert len(desk.to(REDES)) == 1
    desk.deliver(mail(subject=f"Re: [Folio {folio}] Sin servicio", body="Ahora tampoco hay TV."))
    update = desk.last_to(REDES)
    assert len(desk.to(REDES)) == 2 and folio in update["Subject"]
    assert "Ahora tampoco hay TV." in text(update)
    assert "Ahora tampoco hay TV." in text(desk.last_to(NOTIFY))  # the general list too


def test_a_reopening_reply_and_a_close_keep_the_reopening_window_the_resolution_promised(
    desk: Desk,
) -> None:
    folio = desk.open_case()
    [notification] = desk.to(NOTIFY)
    desk.agent_reply(notification, "#resolver procedente\nSe cambió el módem dañado.")
    subject = f"Re: [Folio {folio}] Sin servicio"
    # More than thanks (thanks alone leave the case resolved): it reopens the case.
    desk.deliver(mail(subject=subject, body="¡Muchas gracias! ¿El módem nuevo tiene garantía?"))
    assert desk.case(folio)["status"] == "open"
    desk.agent_reply(desk.last_to(NOTIFY), "#cerrar")
    assert desk.case(folio)["status"] == "closed"
    # Days later, within cases.reopen_days of the resolution: the same folio, reopened.
    desk.deliver(mail(subject=subject, body="Otra vez me quedé sin internet."))
    assert desk.case(folio)["status"] == "open"
    assert [c["folio"] for c in desk.cli.json("cases", "list")] == [folio]


def _visit_in_five_days(desk: Desk) -> tuple[str, EmailMessage]:
    folio = desk.open_case()
    [notification] = desk.to(NOTIFY)
    day = (date.today() + timedelta(days=5)).isoformat()
    desk.agent_reply(notification, f"#visita {day} 10:00")
    assert desk.case(folio)["visit"] == {"date": day, "time": "10:00"}
    return folio, notification


def test_a_resolution_cancels_a_visit_still_ahead_and_says_so(desk: Desk) -> None:
    # Fixed remotely before the technician's day: the customer must not wait at home.
    folio, notification = _visit_in_five_days(desk)
    desk.agent_reply(notification, "#resolver procedente\nSe reinició el equipo de forma remota.")
    case = desk.case(folio)
    assert case["status"] == "resolved" and not case["visit"]
    resolution = text(desk.last_to(CUSTOMER))
    assert "PROCEDENTE" in resolution
    assert "ya no es necesaria: queda cancelada" in resolution and "a las 10:00" in resolution


def test_closing_a_case_with_a_visit_ahead_tells_the_customer_it_is_off(desk: Desk) -> None:
    folio, notification = _visit_in_five_days(desk)
    desk.agent_reply(notification, "#cerrar")
    assert desk.case(folio)["status"] == "closed" and not desk.case(folio)["visit"]
    cancelled = desk.last_to(CUSTOMER)
    assert folio in cancelled["Subject"]
    assert "queda cancelada" in text(cancelled) and "a las 10:00" in text(cancelled)


def test_closing_a_case_whose_visit_took_place_tells_nobody(desk: Desk) -> None:
    folio, notification = _visit_in_five_days(desk)
    store_visit(desk, folio, date.today() - timedelta(days=3))
    to_customer = len(desk.to(CUSTOMER))
    desk.agent_reply(notification, "#cerrar")
    assert len(desk.to(CUSTOMER)) == to_customer
    assert desk.case(folio)["visit"]  # it took place: kept on the case


def store_visit(desk: Desk, folio: str, day: date) -> None:
    """Set the case's visit to ``day``, with no time, as if scheduled earlier."""
    import sqlalchemy as sa
    from sqlmodel import col

    from mailcase.config import load_settings
    from mailcase.models import Case
    from mailcase.store import Store

    store = Store.open(load_settings(desk.cli.config).database.url, auto_upgrade=False)
    with store.transaction() as session:
        session.execute(
            sa.update(Case).where(col(Case.folio) == folio).values(visit_date=day, visit_time=None)
        )
    store.dispose()


OUTLOOK_SIGNATURE = "Ana Técnica\nSoporte técnico | Internet Plarey\nTel. 800 123 4567 ext. 214"


def test_an_agents_outlook_signature_is_never_the_causes_sent_to_the_customer(
    desk: Desk,
) -> None:
    # Outlook adds its signature with no "-- " above it: under a bare "#resolver"
    # it had passed as the causes, and the customer read the agent's phone extension.
    folio = desk.open_case()
    [notification] = desk.to(NOTIFY)
    desk.agent_reply(notification, f"Mañana lo llamamos.\n\n{OUTLOOK_SIGNATURE}")
    desk.agent_reply(notification, f"#resolver procedente\n\n{OUTLOOK_SIGNATURE}")
    assert desk.case(folio)["status"] == "open"
    assert "faltan las causas" in text(desk.last_to("ana.tecnica@internet-plarey.com.mx"))
    desk.agent_reply(
        notification, f"#resolver procedente\nSe cambió el módem dañado.\n\n{OUTLOOK_SIGNATURE}"
    )
    case = desk.case(folio)
    assert case["status"] == "resolved" and case["cause"] == "Se cambió el módem dañado."


def test_giving_the_time_of_a_visit_cancels_nothing(desk: Desk) -> None:
    folio = desk.open_case()
    [notification] = desk.to(NOTIFY)
    day = (date.today() + timedelta(days=5)).isoformat()
    desk.agent_reply(notification, f"#visita {day}")
    desk.agent_reply(notification, f"#visita {day} 10:00")
    told = text(desk.last_to(CUSTOMER))
    assert "cancelada" not in told and "10:00" in told
    assert desk.case(folio)["visit"] == {"date": day, "time": "10:00"}


def test_a_resolution_on_the_day_of_a_visit_with_no_time_cancels_nothing(desk: Desk) -> None:
    # The technician came this morning; the agent resolves in the afternoon.
    folio = desk.open_case()
    [notification] = desk.to(NOTIFY)
    store_visit(desk, folio, datetime.now(ZoneInfo("America/Mexico_City")).date())
    desk.agent_reply(notification, "#resolver procedente\nSe cambió el módem dañado.")
    resolution = text(desk.last_to(CUSTOMER))
    assert "PROCEDENTE" in resolution and "cancelada" not in resolution
    assert desk.case(folio)["visit"]  # it took place: kept on the case


def test_the_area_and_the_general_list_each_have_their_own_per_case_allowance(
    desk: Desk,
) -> None:
    # limits.max_agent_notices_per_case_per_hour (10) had counted both recipients
    # together: five follow-ups of a routed case, and then neither heard a word.
    folio = desk.open_case()
    [notification] = desk.to(NOTIFY)
    desk.agent_reply(notification, "#area redes\nRevisar nodo 4.")
    for n in range(6):
        desk.deliver(mail(subject=f"Re: [Folio {folio}] Sin servicio", body=f"Dato {n}."))
    assert len(desk.to(NOTIFY)) == 1 + 6
    assert len(desk.to(REDES)) == 1 + 6


def test_an_agent_cancels_a_visit_by_mail_or_from_the_command_line(desk: Desk) -> None:
    folio, notification = _visit_in_five_days(desk)
    desk.agent_reply(notification, "#visita cancelar\nEl cliente ya no la necesita.")
    assert not desk.case(folio)["visit"] and desk.case(folio)["status"] == "open"
    cancelled = text(desk.last_to(CUSTOMER))
    assert "queda cancelada" in cancelled and "a las 10:00" in cancelled
    # Nothing left to cancel: said, by mail and on the command line.
    desk.agent_reply(notification, "#visita cancelar")
    assert "no tiene una visita pendiente" in text(desk.last_to(AGENT))
    code, _, err = desk.cli("cases", "visit", folio, "--cancel")
    assert code == 1 and err.strip() == f"mailcase: case {folio} has no home visit ahead to cancel"
    day = (date.today() + timedelta(days=6)).isoformat()
    assert desk.cli("cases", "visit", folio, "--date", day, "--time", "12:00")[0] == 0
    to_customer = len(desk.to(CUSTOMER))
    code, _, err = desk.cli("cases", "visit", folio, "--cancel")
    assert code == 0, err
    assert len(desk.to(CUSTOMER)) == to_customer + 1
    assert "queda cancelada" in text(desk.last_to(CUSTOMER))


WORK = "juan.perez@empresa.example"


def test_an_agent_lets_the_customers_work_address_write_on_the_case(desk: Desk) -> None:
    # Every peer has a way: a customer writing from a second address had opened a
    # new case each time, and agents could not join them.
    folio = desk.open_case()
    [notification] = desk.to(NOTIFY)
    desk.agent_reply(notification, f"#participante <{WORK.upper()}>\nEs su correo del trabajo.")
    last_two = desk.case(folio)["messages"][-2:]
    assert [m["kind"] for m in last_two] == ["note", "system"]
    assert last_two[1]["text"] == f"participant {WORK} added"
    subject = f"Re: [Folio {folio}] Sin servicio"
    desk.deliver(mail(sender=f"Juan Pérez <{WORK}>", subject=subject, body="Sigo sin señal."))
    assert [c["folio"] for c in desk.cli.json("cases", "list")] == [folio]
    assert "Sigo sin señal." in text(desk.last_to(NOTIFY))
    # Not an address of ours, an agent's or the customer's own: said, by mail and CLI.
    desk.agent_reply(notification, f"#participante {CUSTOMER}")
    assert "es del propio sistema de casos, de un agente o del mismo cliente" in text(
        desk.last_to(AGENT)
    )
    code, _, err = desk.cli("cases", "participant", folio, "--add", NOTIFY)
    assert code == 1 and err.startswith(f"mailcase: {NOTIFY} cannot be a participant of case")
    code, _, err = desk.cli("cases", "participant", folio, "--add", "vecina@example.net")
    assert code == 0, err
