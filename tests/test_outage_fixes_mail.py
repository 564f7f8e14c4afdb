"""Mass outages, reviewed: what the agents and customers are told around ``#masivo``.

A report waiting for its customer stops waiting when it joins an outage (and cannot be
made to wait while its main case is open); ``#masivo aviso`` that reaches no report's
customer is reported to the agent; a phone report's cancelled visit is named; the agents'
footer and notifications say what is sent and what is an outage; the customer's
``outage_joined`` notice gives their own folio only; the main case's history records a
report that left. Through real Dovecot and SMTP servers, as tests/test_outage.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from helpers import AGENT, mail
from sqlmodel import col
from test_agents import CUSTOMER, Desk, ahead, text
from test_outage import ANA, CAUSE, NEWS, _report, desk
from test_templates_all import context

from mailcase.casework import command_problems
from mailcase.commands import parse_commands
from mailcase.config import load_settings
from mailcase.models import Case
from mailcase.render import render_body
from mailcase.store import Store

__all__ = ["desk"]  # the fixture, from test_outage

NOW = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


def _expire_wait(desk: Desk, folio: str) -> None:
    """The case's wait for its customer, if any, ran out an hour ago."""
    store = Store.open(load_settings(desk.cli.config).database.url, auto_upgrade=False)
    try:
        with store.transaction() as session:
            session.execute(
                sa.update(Case)
                .where(col(Case.folio) == folio, col(Case.pending_until).is_not(None))
                .values(pending_until=datetime.now(UTC) - timedelta(hours=1))
            )
    finally:
        store.dispose()


# --- a report waits for nobody ------------------------------------------------------------


def test_pendiente_on_a_report_of_an_open_outage_is_a_problem() -> None:
    parsed = parse_commands("#pendiente 2\n¿Nos envía una foto del módem?")
    problems = command_problems(parsed.commands, parsed.text, "open", NOW, outage_open=True)
    assert problems == [("#pendiente 2", "pending_outage")]
    assert command_problems(parsed.commands, parsed.text, "open", NOW) == []
    stop = parse_commands("#pendiente no")
    assert command_problems(stop.commands, stop.text, "open", NOW, outage_open=True) == []


@pytest.mark.parametrize(
    ("language", "sentence"),
    [
        ("es", "este caso es un reporte de una falla general que sigue abierta"),
        ("en", "this case is a report of an outage still open"),
    ],
)
def test_command_error_says_a_report_does_not_wait(language: str, sentence: str) -> None:
    problems = [{"line": "#pendiente", "problem": "pending_outage"}]
    body = render_body("command_error", language, context("command_error", problems=problems))
    assert sentence in body.text


@pytest.mark.integration
def test_a_waiting_case_made_a_report_waits_no_more_and_is_told_of_the_repair(
    desk: Desk,
) -> None:
    main = _report(desk, f"Juan Pérez <{CUSTOMER}>")
    ana = _report(desk, f"Ana López <{ANA}>")
    desk.agent_reply(desk.notification(ana), "#pendiente 2\n¿Nos envía una foto del módem?")
    assert desk.case(ana)["pending_until"] is not None

    desk.agent_reply(desk.notification(ana), f"#masivo {main}")

    case = desk.case(ana)
    assert (case["outage"], case["pending_until"]) == (main, None)
    assert any(
        m["text"].startswith("no longer waiting for the customer: a report of the outage")
        for m in case["messages"]
    )
    _expire_wait(desk, ana)  # nothing to expire: two days pass, the outage still worked
    desk.cli.poll()
    assert desk.case(ana)["status"] == "open"
    assert not any("no tuvimos respuesta" in text(m) for m in desk.to(ANA))
    assert desk.cli("cases", "resolve", main, "--outcome", "valid", "--cause", CAUSE)[0] == 0
    assert any(CAUSE in text(m) for m in desk.to(ANA))


@pytest.mark.integration
def test_a_report_of_an_open_outage_is_not_made_to_wait(desk: Desk) -> None:
    main = _report(desk, f"Juan Pérez <{CUSTOMER}>")
    ana = _report(desk, f"Ana López <{ANA}>")
    assert desk.cli("cases", "outage", ana, "--of", main, "--no-notice")[0] == 0

    desk.agent_reply(desk.notification(ana), "#pendiente 2\n¿Nos envía una foto del módem?")
    code, _, err = desk.cli("cases", "pending", ana, "--days", "2")

    assert desk.case(ana)["pending_until"] is None
    assert any("falla general que sigue abierta" in text(m) for m in desk.to(AGENT))
    assert not any("foto del módem" in text(m) for m in desk.to(ANA))
    assert code != 0 and f"case {ana} is a report of the outage {main}, still open" in err
    assert len(err.strip().splitlines()) == 1
    # Out of the outage, the case waits as any other.
    assert desk.cli("cases", "outage", ana, "--clear")[0] == 0
    assert desk.cli("cases", "pending", ana, "--days", "2")[0] == 0


# --- "#masivo aviso" that reaches nobody is reported ----------------------------------------


def _with_relay_limit(desk: Desk, per_hour: int) -> None:
    config = desk.cli.config
    limit = f"[limits]\nmax_relays_per_case_per_hour = {per_hour}\n[notices]\n"
    config.write_text(config.read_text().replace("[notices]\n", limit, 1))


@pytest.mark.integration
def test_masivo_aviso_names_each_report_whose_customer_it_did_not_reach(desk: Desk) -> None:
    _with_relay_limit(desk, 1)
    main = _report(desk, f"Juan Pérez <{CUSTOMER}>")
    ana = _report(desk, f"Ana López <{ANA}>")
    phone = desk.open_phone_case()
    for report in (ana, phone):
        assert desk.cli("cases", "outage", report, "--of", main, "--no-notice")[0] == 0
    desk.agent_reply(desk.notification(ana), "Estamos revisando su línea.")  # Ana's one relay
    told = len(desk.to(AGENT))

    desk.agent_reply(desk.notification(main), f"#masivo aviso\n{NEWS}")

    assert any(NEWS in text(m) for m in desk.to(CUSTOMER))
    assert not any(NEWS in text(m) for m in desk.to(ANA))  # held: a loop, most likely
    back = {str(m["Subject"]): text(m) for m in desk.to(AGENT)[told:]}
    [held] = [t for s, t in back.items() if ana in s]
    assert f"no se envió al cliente del caso {ana}, uno de sus reportes" in held
    [call] = [t for s, t in back.items() if phone in s]
    assert f"El caso {phone}, reporte de la falla general del caso {main}" in call
    assert not any(main in s for s in back)  # the main case's customer got it


@pytest.mark.integration
def test_masivo_aviso_on_a_phone_main_case_says_only_who_was_not_reached(desk: Desk) -> None:
    ana = _report(desk, f"Ana López <{ANA}>")
    main = desk.open_phone_case()  # the outage followed in a case the desk opened
    phone = desk.open_phone_case()
    for report in (ana, phone):
        code, _, err = desk.cli("cases", "outage", report, "--of", main, "--no-notice")
        assert code == 0, (report, main, err)
    told = len(desk.to(AGENT))

    desk.agent_reply(desk.notification(main), f"#masivo aviso\n{NEWS}")

    assert any(NEWS in text(m) for m in desk.to(ANA))
    # Not "your reply reached nobody" on the main case: it reached Ana. The phone report
    # is named, to be called.
    [call] = desk.to(AGENT)[told:]
    assert phone in str(call["Subject"])
    assert f"El caso {phone}, reporte de la falla general del caso {main}" in text(call)


@pytest.mark.integration
def test_an_empty_masivo_aviso_tells_the_agent_nothing_was_sent(desk: Desk) -> None:
    main = _report(desk, f"Juan Pérez <{CUSTOMER}>")
    ana = _report(desk, f"Ana López <{ANA}>")
    assert desk.cli("cases", "outage", ana, "--of", main, "--no-notice")[0] == 0
    sent = len(desk.sink.messages)

    desk.agent_reply(desk.notification(main), "#masivo aviso")

    [back] = [m.message for m in desk.sink.messages[sent:]]
    assert back["To"] == AGENT and main in str(back["Subject"])
    assert f"Su respuesta sobre el caso {main} no traía texto nuevo" in text(back)


# --- a phone report's cancelled visit -------------------------------------------------------


@pytest.mark.integration
def test_a_phone_reports_cancelled_visit_is_named_when_its_outage_is_resolved_by_mail(
    desk: Desk,
) -> None:
    main = _report(desk, f"Juan Pérez <{CUSTOMER}>")
    phone = desk.open_phone_case()
    day = ahead(3).isoformat()
    assert desk.cli("cases", "visit", phone, "--date", day, "--time", "10:00")[0] == 0
    assert desk.cli("cases", "outage", phone, "--of", main)[0] == 0
    told = len(desk.to(AGENT))

    desk.agent_reply(desk.notification(main), f"#resolver procedente\n{CAUSE}")

    assert desk.case(phone)["visit"] is None
    [call] = [m for m in desk.to(AGENT)[told:] if phone in str(m["Subject"])]
    assert (
        "la resolución y la cancelación de la visita que tenía programada quedaron registradas"
        in text(call)
    )


# --- what the agents are told ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("language", "sent", "note"),
    [
        (
            "es",
            [
                "#pendiente, es la pregunta que se le envía",
                "#respuesta,\nse le envía con la respuesta predefinida",
                "#masivo aviso, se envía al cliente de\neste caso y al de cada reporte abierto",
            ],
            "(#nota, #visita, #area, #tipo, #asignar, #cerrar, #reabrir, #fusionar, #masivo FOLIO)",
        ),
        (
            "en",
            [
                "#pending, it is the question sent to them",
                "#reply, it is sent to them with the canned reply below it",
                "#outage update, it is sent\nto this case's customer and to the customer of each",
            ],
            "(#note, #visit, #route, #type, #assign, #close, #reopen, #merge,\n#outage FOLIO)",
        ),
    ],
)
def test_the_footer_says_which_commands_send_their_text(
    language: str, sent: list[str], note: str
) -> None:
    footer = render_body("agent_notification", language, context("agent_notification")).text
    for words in sent:
        assert words in footer
    assert note in footer


@pytest.mark.parametrize(
    ("language", "report", "main"),
    [
        (
            "es",
            "Falla general: reporte del caso PLR-2026-000045 (trabaje ese caso",
            "Falla general: caso principal, 3 reportes",
        ),
        (
            "en",
            "Outage:   report of case PLR-2026-000045 (work that case",
            "Outage:   main case, 3 reports",
        ),
    ],
)
def test_the_notification_says_a_case_is_a_report_or_the_main_case(
    language: str, report: str, main: str
) -> None:
    def body(**changes: Any) -> str:
        return render_body(
            "agent_notification", language, context("agent_notification", **changes)
        ).text

    assert report in body(outage="PLR-2026-000045")
    assert main in body(outage_reports=3)
    assert ("1 reporte " if language == "es" else "1 report ") in body(outage_reports=1)
    plain = body()
    assert "Falla general:" not in plain and "Outage:" not in plain


@pytest.mark.integration
def test_a_reports_notification_names_its_main_case_and_the_main_case_counts_its_reports(
    desk: Desk,
) -> None:
    main = _report(desk, f"Juan Pérez <{CUSTOMER}>")
    ana = _report(desk, f"Ana López <{ANA}>")
    desk.agent_reply(desk.notification(ana), f"#masivo {main}")
    desk.deliver(
        mail(
            sender=f"Ana López <{ANA}>",
            subject=f"Re: [Folio {ana}] Sin internet",
            body="Sigo sin servicio, ya van 6 horas.",
        )
    )
    assert f"Falla general: reporte del caso {main} (trabaje ese caso" in text(
        desk.notification(ana)
    )
    desk.deliver(
        mail(
            sender=f"Juan Pérez <{CUSTOMER}>",
            subject=f"Re: [Folio {main}] Sin internet",
            body="¿Y?",
        )
    )
    assert "Falla general: caso principal, 1 reporte " in text(desk.notification(main))


# --- what the customer is told --------------------------------------------------------------


@pytest.mark.integration
def test_the_customer_made_a_report_is_given_their_own_folio_only(desk: Desk) -> None:
    main = _report(desk, f"Juan Pérez <{CUSTOMER}>")
    ana = _report(desk, f"Ana López <{ANA}>")

    desk.agent_reply(desk.notification(ana), f"#masivo {main}")

    [joined] = [m for m in desk.to(ANA) if "falla general" in text(m)]
    html = joined.get_body(("html",))
    assert html is not None
    for body in (text(joined), str(html.get_content())):
        assert ana in body and main not in body
    assert ana in str(joined["Subject"]) and main not in str(joined["Subject"])


# --- the main case's history ----------------------------------------------------------------


def _history(desk: Desk, folio: str) -> list[str]:
    return [m["text"] for m in desk.case(folio)["messages"] if m["kind"] == "system"]


@pytest.mark.integration
def test_the_old_main_case_records_a_report_that_left_or_moved(desk: Desk) -> None:
    main = _report(desk, f"Juan Pérez <{CUSTOMER}>")
    other = _report(desk, "Luis Mora <luis.mora@example.com>")
    ana = _report(desk, f"Ana López <{ANA}>")
    assert desk.cli("cases", "outage", ana, "--of", main, "--no-notice")[0] == 0

    assert desk.cli("cases", "outage", ana, "--of", other, "--no-notice")[0] == 0  # moves
    assert f"case {ana} is no longer a report of this outage: moved to {other}" in _history(
        desk, main
    )

    assert desk.cli("cases", "outage", ana, "--clear")[0] == 0
    assert f"case {ana} is no longer a report of this outage" in _history(desk, other)

    desk.agent_reply(desk.notification(ana), f"#masivo {main}")
    desk.agent_reply(desk.notification(ana), "#masivo no")
    assert _history(desk, main).count(f"case {ana} is no longer a report of this outage") == 1
