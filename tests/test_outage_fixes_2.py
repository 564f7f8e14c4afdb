"""Mass outages, reviewed again: no case of an open outage is closed "no answer", the
agents' notification of a report says whether its main case is still worked, what
``#masivo aviso`` could not send every report is told, and two agents moving reports
crosswise between two outages do not fail a poll. Through real Dovecot and SMTP servers,
as tests/test_outage.py.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from helpers import AGENT, Cli, mail, write_config
from servers import Dovecot, SmtpSink
from test_agents import AREAS, CUSTOMER, Desk, text
from test_outage import ANA, CAUSE, NEWS, desk
from test_outage_fixes_mail import NOW, _expire_wait
from test_outage_fixes_resolve import _agent_raw, _race
from test_templates_all import context

from mailcase import agentmail, service
from mailcase.casework import command_problems
from mailcase.commands import parse_commands
from mailcase.config import load_settings
from mailcase.errors import DatabaseRefusal
from mailcase.imap import FetchedMessage
from mailcase.render import render_body
from mailcase.store import utcnow

__all__ = ["desk"]  # the fixture, from test_outage


def _outage(desk: Desk) -> tuple[str, str]:
    """A main case (Juan's) and one report of it (Ana's), nobody told."""
    main = desk.open_case(sender=f"Juan <{CUSTOMER}>", subject="Sin internet", body="x")
    ana = desk.open_case(sender=f"Ana <{ANA}>", subject="Sin internet", body="y")
    assert desk.cli("cases", "outage", ana, "--of", main, "--no-notice")[0] == 0
    return main, ana


# --- no case of an open outage is closed "no answer" ----------------------------------------


@pytest.mark.integration
def test_a_report_waiting_when_its_main_case_is_reopened_is_not_closed_mid_outage(
    desk: Desk,
) -> None:
    main, ana = _outage(desk)
    assert desk.cli("cases", "close", main)[0] == 0  # closed unresolved: Ana's is hers again
    assert desk.cli("cases", "pending", ana, "--days", "2")[0] == 0
    assert desk.cli("cases", "reopen", main)[0] == 0  # the outage is worked again

    _expire_wait(desk, ana)
    desk.cli.poll()

    assert desk.case(ana)["status"] == "open"
    assert not any("no tuvimos respuesta" in text(m) for m in desk.to(ANA))
    assert desk.cli("cases", "resolve", main, "--outcome", "valid", "--cause", CAUSE)[0] == 0
    assert desk.case(ana)["status"] == "resolved"
    assert desk.case(ana)["pending_until"] is None
    assert any(CAUSE in text(m) for m in desk.to(ANA))


def test_pendiente_on_a_main_case_with_open_reports_is_a_problem() -> None:
    parsed = parse_commands("#pendiente 2\n¿Nos envía una foto del módem?")
    problems = command_problems(parsed.commands, parsed.text, "open", NOW, reports_open=True)
    assert problems == [("#pendiente 2", "pending_main")]
    stop = parse_commands("#pendiente no")
    assert command_problems(stop.commands, stop.text, "open", NOW, reports_open=True) == []


@pytest.mark.parametrize(
    ("language", "sentence"),
    [
        ("es", "este caso es el caso principal de una falla general con reportes abiertos"),
        ("en", "this case is the main case of an outage with open reports"),
    ],
)
def test_command_error_says_a_main_case_does_not_wait(language: str, sentence: str) -> None:
    problems = [{"line": "#pendiente", "problem": "pending_main"}]
    body = render_body("command_error", language, context("command_error", problems=problems))
    assert sentence in body.text


@pytest.mark.integration
def test_a_main_case_with_open_reports_is_not_made_to_wait(desk: Desk) -> None:
    main, ana = _outage(desk)

    desk.agent_reply(desk.notification(main), "#pendiente 2\n¿Nos envía una foto del módem?")
    code, _, err = desk.cli("cases", "pending", main, "--days", "2")

    assert desk.case(main)["pending_until"] is None
    assert any("con reportes abiertos" in text(m) for m in desk.to(AGENT))
    assert not any("foto del módem" in text(m) for m in desk.to(CUSTOMER))
    assert code != 0 and f"case {main} is the main case of an outage with open reports" in err
    assert len(err.strip().splitlines()) == 1
    # Its reports settled, it waits as any other case.
    assert desk.cli("cases", "outage", ana, "--clear")[0] == 0
    assert desk.cli("cases", "pending", main, "--days", "2")[0] == 0


@pytest.mark.integration
def test_a_waiting_case_made_a_main_case_waits_no_more(desk: Desk) -> None:
    main = desk.open_case(sender=f"Juan <{CUSTOMER}>", subject="Sin internet", body="x")
    ana = desk.open_case(sender=f"Ana <{ANA}>", subject="Sin internet", body="y")
    assert desk.cli("cases", "pending", main, "--days", "2")[0] == 0

    desk.agent_reply(desk.notification(ana), f"#masivo {main}")

    assert desk.case(main)["pending_until"] is None
    _expire_wait(desk, main)
    desk.cli.poll()
    assert desk.case(main)["status"] == "open"


# --- the agents' notification of a report says whether its main case is worked --------------


@pytest.mark.parametrize(
    ("language", "working", "finished"),
    [
        (
            "es",
            "Falla general: reporte del caso PLR-2026-000045 (trabaje ese caso: al resolverlo",
            "Falla general: reporte de PLR-2026-000045 ({}): trabaje este caso",
        ),
        (
            "en",
            "Outage:   report of case PLR-2026-000045 (work that case: resolving it",
            "Outage:   report of PLR-2026-000045 ({}): work this case",
        ),
    ],
)
def test_a_reports_notification_says_work_the_main_case_only_while_it_is_open(
    language: str, working: str, finished: str
) -> None:
    def body(status: str) -> str:
        changes = {"outage": "PLR-2026-000045", "outage_status": status}
        return render_body(
            "agent_notification", language, context("agent_notification", **changes)
        ).text

    assert working in body("open")
    closed, resolved = ("cerrado", "resuelto") if language == "es" else ("closed", "resolved")
    assert finished.format(closed) in body("closed") and working not in body("closed")
    assert finished.format(resolved) in body("resolved")


@pytest.mark.integration
@pytest.mark.parametrize("how", ["close", "resolve"])
def test_a_reports_notification_of_a_finished_main_case_says_work_this_one(
    desk: Desk, how: str
) -> None:
    main, ana = _outage(desk)
    if how == "close":
        assert desk.cli("cases", "close", main)[0] == 0
    else:
        assert desk.cli("cases", "resolve", main, "--outcome", "valid", "--cause", CAUSE)[0] == 0
    desk.deliver(
        mail(sender=f"Ana <{ANA}>", subject=f"Re: [{ana}] Sin internet", body="Sigo sin servicio.")
    )

    note = text(desk.notification(ana))
    state = "cerrado" if how == "close" else "resuelto"
    lines = [ln for ln in note.splitlines() if ln.startswith("Falla general")]
    assert lines == [f"Falla general: reporte de {main} ({state}): trabaje este caso"]


# --- what "#masivo aviso" could not send every report is told -------------------------------


def _relay_limit_bytes(desk: Desk, limit: int) -> None:
    config = desk.cli.config
    config.write_text(
        config.read_text().replace(
            "[notices]\n", f"[notices]\nmax_relayed_attachment_bytes = {limit}\n", 1
        )
    )


@pytest.mark.integration
@pytest.mark.parametrize("phone_main", [True, False])
def test_an_avisos_file_over_the_limit_is_named_as_missing_for_every_customer(
    desk: Desk, phone_main: bool
) -> None:
    _relay_limit_bytes(desk, 20_000)
    ana = desk.open_case(sender=f"Ana <{ANA}>", subject="Sin internet", body="y")
    if phone_main:
        main = desk.open_phone_case()
    else:
        main = desk.open_case(sender=f"Juan <{CUSTOMER}>", subject="Sin internet", body="x")
    assert desk.cli("cases", "outage", ana, "--of", main, "--no-notice")[0] == 0
    told = len(desk.to(AGENT))
    big = b"%PDF-1.4\n" + b"0" * 60_000

    desk.agent_reply(
        desk.notification(main),
        f"#masivo aviso\n{NEWS}",
        attachments=[("mapa-zona.pdf", "application/pdf", big)],
    )

    [news] = [m for m in desk.to(ANA) if NEWS in text(m)]
    assert [p.get_filename() for p in news.iter_attachments()] == []
    [notice] = desk.to(AGENT)[told:]
    assert main in str(notice["Subject"])
    body = text(notice)
    assert "se envió a todos sus clientes" in body
    assert "Adjuntos no enviados: mapa-zona.pdf" in body
    assert "otro #masivo aviso" in body


@pytest.mark.parametrize(
    ("language", "sentence", "advice"),
    [
        ("es", "se envió a todos sus clientes", "envíe otro #masivo aviso"),
        ("en", "was sent to all its customers", "send another #outage update"),
    ],
)
def test_the_attachments_notice_of_an_aviso_speaks_of_every_customer(
    language: str, sentence: str, advice: str
) -> None:
    ctx = context("not_relayed", outage_news=True, withheld=[], attachments=["mapa.pdf"])
    body = render_body("not_relayed", language, ctx).text
    assert sentence in body and advice in body
    plain = render_body("not_relayed", language, context("not_relayed")).text
    assert sentence not in plain and advice not in plain


def _with_relay_limit(desk: Desk, per_hour: int) -> None:
    config = desk.cli.config
    limit = f"[limits]\nmax_relays_per_case_per_hour = {per_hour}\n[notices]\n"
    config.write_text(config.read_text().replace("[notices]\n", limit, 1))


@pytest.mark.integration
def test_a_reports_notice_of_an_aviso_it_missed_says_where_the_news_is_and_what_to_do(
    desk: Desk,
) -> None:
    _with_relay_limit(desk, 2)
    main = desk.open_case(sender=f"Juan <{CUSTOMER}>", subject="Sin internet", body="x")
    ana = desk.open_case(sender=f"Ana <{ANA}>", subject="Sin internet", body="y")
    phone = desk.open_phone_case()
    for report in (ana, phone):
        assert desk.cli("cases", "outage", report, "--of", main, "--no-notice")[0] == 0
    desk.agent_reply(desk.notification(ana), "Estamos revisando su línea.")  # Ana's relays
    desk.agent_reply(desk.notification(ana), "Seguimos revisando su línea.")
    told = len(desk.to(AGENT))

    desk.agent_reply(desk.notification(main), f"#masivo aviso\n{NEWS}")

    back = {str(m["Subject"]): text(m) for m in desk.to(AGENT)[told:]}
    [held] = [t for s, t in back.items() if ana in s]
    [call] = [t for s, t in back.items() if phone in s]
    assert f"El aviso quedó guardado en el caso {main}." in held
    assert "No envíe el aviso de nuevo" in held
    assert f"responda dentro de una hora a la notificación de este caso, {ana}" in held
    assert "envíe su respuesta de nuevo" not in held
    assert f"quedó guardado en el caso {main}." in call
    assert "Llame al cliente para darle la noticia." in call
    assert "quedó guardada en el caso." not in call


@pytest.mark.parametrize(
    ("language", "held", "call"),
    [
        ("es", "No envíe el aviso de nuevo", "Llame al cliente para darle la noticia."),
        ("en", "Do not send the update again", "Call the customer with the news."),
    ],
)
def test_not_relayed_words_a_reports_missed_aviso(language: str, held: str, call: str) -> None:
    def body(reason: str, main: str) -> str:
        ctx = context("not_relayed", reason=reason, outage_main=main)
        return render_body("not_relayed", language, ctx).text

    assert held in body("held", "PLR-2026-000001")
    assert "PLR-2026-000001" in body("held", "PLR-2026-000001")
    assert call in body("no_customer", "PLR-2026-000001")
    assert held not in body("held", "") and call not in body("no_customer", "")


# --- two agents moving reports crosswise between two outages (PostgreSQL) -------------------


@pytest.fixture
def pg_desk(tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, pg_url: str) -> Desk:
    config = write_config(tmp_path, mailboxes, sink, notify=True, extra=AREAS, db_url=pg_url)
    return Desk(Cli(config, capsys), mailboxes, sink, tmp_path)


@pytest.mark.integration
def test_crosswise_moves_between_two_outages_both_go_through(
    pg_desk: Desk, monkeypatch: pytest.MonkeyPatch
) -> None:
    """R1 of M1 gets "#masivo M2" while R2 of M2 gets "#masivo M1": each locks its main
    case, its report, then the other main case, a cycle PostgreSQL ends by rolling one
    back. That one runs again at once: no poll fails, and both moves are made."""
    desk = pg_desk
    m1 = desk.open_case(sender=f"Juan <{CUSTOMER}>", subject="Sin internet", body="x")
    r1 = desk.open_case(sender=f"Ana <{ANA}>", subject="Sin internet", body="y")
    m2 = desk.open_case(sender="Luis <luis@example.com>", subject="Sin internet", body="z")
    r2 = desk.open_case(sender="Rosa <rosa@example.com>", subject="Sin internet", body="w")
    assert desk.cli("cases", "outage", r1, "--of", m1, "--no-notice")[0] == 0
    assert desk.cli("cases", "outage", r2, "--of", m2, "--no-notice")[0] == 0
    raw1 = _agent_raw(desk.notification(r1), f"#masivo {m2}")
    raw2 = _agent_raw(desk.notification(r2), f"#masivo {m1}")

    reached, release = threading.Event(), threading.Event()
    real = agentmail._merge_target

    def paused(session: Any, settings: Any, command: Any) -> Any:
        if m2 in (command.folio or "") and not release.is_set():
            reached.set()  # the first holds M1 and R1 here
            assert release.wait(20)
        return real(session, settings, command)

    monkeypatch.setattr(agentmail, "_merge_target", paused)
    settings = load_settings(desk.cli.config)
    rt1, rt2 = service.Runtime.open(settings), service.Runtime.open(settings)

    def ingest(rt: Any, uid: int, raw: bytes) -> Callable[[], Any]:
        return lambda: service.ingest_message(rt, "contacto", 1, FetchedMessage(uid, raw, utcnow()))

    try:
        results = _race(ingest(rt1, 901, raw1), ingest(rt2, 902, raw2), reached, release)
    finally:
        rt1.store.dispose()
        rt2.store.dispose()
    assert results == {"first": "follow_up", "second": "follow_up"}
    assert (desk.case(r1)["outage"], desk.case(r2)["outage"]) == (m2, m1)


def test_a_deadlock_at_every_attempt_says_deadlock(
    desk: Desk, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Deadlock(Exception):
        sqlstate = "40P01"

    attempts: list[int] = []

    def deadlocked(*args: Any, **kwargs: Any) -> Any:
        attempts.append(1)
        raise sa.exc.OperationalError("SELECT", {}, Deadlock("deadlock detected"))

    monkeypatch.setattr(service, "_ingest", deadlocked)
    settings = load_settings(desk.cli.config)
    rt = service.Runtime.open(settings)
    raw = mail(sender=f"Ana <{ANA}>", subject="Sin internet", body="y")
    try:
        with pytest.raises(DatabaseRefusal) as raised:
            service.ingest_message(rt, "contacto", 1, FetchedMessage(903, raw, utcnow()))
    finally:
        rt.store.dispose()
    assert str(raised.value).startswith("deadlock while ingesting message 903 of mailbox")
    assert "unavailable" not in str(raised.value)
    assert len(attempts) == service._TRIAGE_ATTEMPTS
