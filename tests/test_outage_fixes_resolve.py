"""Resolving an outage's main case, fixed (ninth review round): no deadlock with an agent's
mail on one of its reports (PostgreSQL), a `cases resolve` that met one anyway runs again,
the agent who resolves the main case by mail owns its reports too, and `cases resolve`
names its phone reports' cancelled visits and its reports' notices it could not send.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from helpers import AGENT, Cli, mail, point_smtp_at_a_closed_port, write_config
from servers import Dovecot, SmtpSink
from test_agents import AREAS, CUSTOMER, Desk, ahead, text
from test_outage import ANA, CAUSE, desk
from test_owner import LUIS, _two_agents

from mailcase import casework, cli_cases, service
from mailcase.cli import main as cli_main
from mailcase.config import load_settings
from mailcase.imap import FetchedMessage
from mailcase.models import Case, Disposition
from mailcase.store import utcnow

__all__ = ["desk"]  # the fixture, from test_outage

ROSA = "rosa@example.com"


@pytest.fixture
def pg_desk(tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, pg_url: str) -> Desk:
    config = write_config(tmp_path, mailboxes, sink, notify=True, extra=AREAS, db_url=pg_url)
    d = Desk(Cli(config, capsys), mailboxes, sink, tmp_path)
    d.url = pg_url  # type: ignore[attr-defined]
    return d


def _agent_raw(notice: EmailMessage, body: str) -> bytes:
    """An agent's reply to ``notice``, as Desk.agent_reply writes it, not delivered."""
    quoted = "\n".join("> " + line for line in text(notice).splitlines())
    return mail(
        sender=f"Ana Técnica <{AGENT}>",
        to=str(notice["Reply-To"]),
        subject=f"Re: {notice['Subject']}",
        body=f"{body}\n\nEl jue, 26 nov 2026, Soporte escribió:\n{quoted}",
        headers={
            "In-Reply-To": notice["Message-ID"].strip(),
            "References": notice["Message-ID"].strip(),
        },
    )


def _outage(desk: Desk) -> tuple[str, str]:
    """A main case (Juan's) and Ana's report of it: their folios."""
    main = desk.open_case(sender=f"Juan <{CUSTOMER}>", subject="Sin internet", body="x")
    ana = desk.open_case(sender=f"Ana <{ANA}>", subject="Sin internet", body="y")
    assert desk.cli("cases", "outage", ana, "--of", main, "--no-notice")[0] == 0
    return main, ana


def _resolve_argv(desk: Desk, main: str) -> list[str]:
    """`mailcase cases resolve MAIN` as upheld, for cli.main."""
    config = str(desk.cli.config)
    return ["--config", config, "cases", "resolve", main, "--outcome", "valid", "--cause", CAUSE]


def _pause_resolving(
    monkeypatch: pytest.MonkeyPatch, main: str
) -> tuple[threading.Event, threading.Event, list[str]]:
    """Resolving ``main`` stops, the main case locked, before it locks its reports, until
    the second event is set (the first time only); the list counts the attempts."""
    reached, release = threading.Event(), threading.Event()
    attempts: list[str] = []
    real = casework.open_reports

    def paused(session: Any, case: Case) -> list[Case]:
        if case.folio == main:
            attempts.append(case.folio)
            if not release.is_set():
                reached.set()
                assert release.wait(20)
        return real(session, case)

    monkeypatch.setattr(casework, "open_reports", paused)
    return reached, release, attempts


def _race(first: Callable[[], Any], second: Callable[[], Any], reached: threading.Event,
          release: threading.Event) -> dict[str, Any]:  # fmt: skip
    """Run ``first`` until it pauses (``reached``), then ``second`` until it waits for a
    lock, then let ``first`` go on; what each returned or raised."""
    results: dict[str, Any] = {}

    def run(key: str, call: Callable[[], Any]) -> None:
        try:
            results[key] = call()
        except Exception as exc:  # the test reports it
            results[key] = repr(exc)[:400]

    a = threading.Thread(target=run, args=("first", first))
    a.start()
    assert reached.wait(20)
    b = threading.Thread(target=run, args=("second", second))
    b.start()
    time.sleep(1.5)  # the second waits for a lock (deadlock_timeout is 1 s)
    release.set()
    a.join(30)
    b.join(30)
    return results


# --- 1. no deadlock between resolving a main case and an agent's mail on its report ------


@pytest.mark.integration
@pytest.mark.parametrize("command", ["#masivo {main}", "#fusionar {main}"])
def test_cases_resolve_and_a_mail_on_its_report_naming_it_do_not_deadlock(
    pg_desk: Desk, capsys: Any, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    desk = pg_desk
    main, ana = _outage(desk)
    raw = _agent_raw(desk.notification(ana), command.format(main=main))
    reached, release, attempts = _pause_resolving(monkeypatch, main)
    rt = service.Runtime.open(load_settings(desk.cli.config))
    try:
        results = _race(
            lambda: cli_main(_resolve_argv(desk, main)),
            lambda: service.ingest_message(rt, "contacto", 1, FetchedMessage(900, raw, utcnow())),
            reached,
            release,
        )
    finally:
        rt.store.dispose()
    err = capsys.readouterr().err
    assert "deadlock" not in err + str(results)
    # The mail waited for the main case, and found the report resolved with it.
    assert results == {"first": 0, "second": Disposition.FOLLOW_UP}
    assert attempts == [main], "cases resolve ran once: nothing collided"
    assert desk.case(main)["status"] == desk.case(ana)["status"] == "resolved"


@pytest.mark.integration
def test_resolver_on_a_main_case_and_masivo_on_its_report_by_two_instances(
    pg_desk: Desk, monkeypatch: pytest.MonkeyPatch
) -> None:
    desk = pg_desk
    main, ana = _outage(desk)
    resolve_raw = _agent_raw(desk.notification(main), f"#resolver procedente\n{CAUSE}")
    join_raw = _agent_raw(desk.notification(ana), f"#masivo {main}")
    reached, release, _ = _pause_resolving(monkeypatch, main)
    settings = load_settings(desk.cli.config)
    rt1, rt2 = service.Runtime.open(settings), service.Runtime.open(settings)
    try:
        results = _race(
            lambda: service.ingest_message(
                rt1, "contacto", 1, FetchedMessage(901, resolve_raw, utcnow())
            ),
            lambda: service.ingest_message(
                rt2, "contacto", 1, FetchedMessage(902, join_raw, utcnow())
            ),
            reached,
            release,
        )
    finally:
        rt1.store.dispose()
        rt2.store.dispose()
    # Not a DatabaseRefusal (a deadlock) for either: both ran on their first reading.
    assert results == {"first": Disposition.FOLLOW_UP, "second": Disposition.FOLLOW_UP}
    assert desk.case(main)["status"] == desk.case(ana)["status"] == "resolved"


@pytest.mark.integration
def test_cases_outage_of_a_report_already_of_it_waits_for_the_resolution(
    pg_desk: Desk, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cases outage R --of MAIN` locks the main case first, as resolving it does, whatever
    their ids (here the report is the older case): no deadlock for either to retry."""
    desk = pg_desk
    ana = desk.open_case(sender=f"Ana <{ANA}>", subject="Sin internet", body="y")
    main = desk.open_case(sender=f"Juan <{CUSTOMER}>", subject="Sin internet", body="x")
    assert desk.cli("cases", "outage", ana, "--of", main, "--no-notice")[0] == 0
    reached, release, _ = _pause_resolving(monkeypatch, main)
    runs: list[str] = []
    real = cli_cases._case_change

    def counted(args: Any, settings: Any) -> int:
        runs.append(args.action)
        return real(args, settings)

    monkeypatch.setattr(cli_cases, "_case_change", counted)
    config = str(desk.cli.config)
    results = _race(
        lambda: cli_main(_resolve_argv(desk, main)),
        lambda: cli_main(["--config", config, "cases", "outage", ana, "--of", main]),
        reached,
        release,
    )
    # The report waited, then was refused as resolved (reopen it first): no deadlock.
    assert results == {"first": 0, "second": 1}
    assert "is already resolved" in capsys.readouterr().err
    assert sorted(runs) == ["outage", "resolve"], "a deadlock made one of them run again"
    assert desk.case(ana)["status"] == "resolved"


def _lock_report_then_main(url: str, report: str, main: str, holding: threading.Event,
                           done: threading.Event) -> None:  # fmt: skip
    """Another session: locks ``report``, then (once ``holding`` is set) ``main``, and
    commits when ``done`` is set. Its own deadlock check waits 30 s: the other side's
    (1 s) finds the cycle first, and is the one rolled back."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("SET LOCAL deadlock_timeout = '30s'"))
            lock = "SELECT id FROM cases WHERE folio = :f FOR UPDATE"
            conn.execute(sa.text(lock), {"f": report})
            assert holding.wait(20)
            conn.execute(sa.text(lock), {"f": main})
            assert done.wait(30)
    finally:
        engine.dispose()


@pytest.mark.integration
def test_cases_resolve_runs_again_after_a_deadlock(
    pg_desk: Desk, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deadlock the lock order cannot rule out (another program, a session locking a
    report, then its main case): `cases resolve`, rolled back, runs once more."""
    desk = pg_desk
    main, ana = _outage(desk)
    reached, release, attempts = _pause_resolving(monkeypatch, main)
    holding, done = threading.Event(), threading.Event()
    url = desk.url  # type: ignore[attr-defined]
    other = threading.Thread(target=_lock_report_then_main, args=(url, ana, main, holding, done))
    other.start()
    time.sleep(0.5)  # the report is locked
    results: dict[str, Any] = {}

    def resolve() -> None:
        results["cli"] = cli_main(_resolve_argv(desk, main))

    first = threading.Thread(target=resolve)
    first.start()
    assert reached.wait(20)  # the main case locked
    release.set()
    time.sleep(0.3)  # cases resolve waits for the report
    holding.set()  # the other session waits for the main case: a cycle
    time.sleep(2)  # cases resolve found it (1 s), rolled back, and waits again
    done.set()
    other.join(30)
    first.join(30)
    err = capsys.readouterr().err
    assert results["cli"] == 0, err
    assert "deadlock" not in err
    assert attempts == [main, main]
    assert desk.case(ana)["status"] == "resolved"


def test_a_second_deadlock_is_one_sentence_saying_to_run_it_again(
    desk: Desk, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    phone = desk.open_phone_case()
    capsys.readouterr()

    class Deadlock(Exception):
        sqlstate = "40P01"

    def deadlocked(*args: Any, **kwargs: Any) -> Any:
        raise sa.exc.OperationalError("SELECT", {}, Deadlock("deadlock detected"))

    monkeypatch.setattr(casework, "resolve", deadlocked)
    code, _, err = desk.cli("cases", "resolve", phone, "--outcome", "valid", "--cause", CAUSE)
    assert code == 3
    assert "collided with another change" in err and "run it again" in err
    assert "unavailable" not in err


# --- 2. the agent resolving the main case by mail owns its reports -----------------------


@pytest.mark.integration
def test_reports_resolved_through_the_main_case_by_mail_take_its_agent_as_owner(
    desk: Desk,
) -> None:
    _two_agents(desk.cli.config)
    main, ana = _outage(desk)
    rosa = desk.open_case(sender=f"Rosa <{ROSA}>", subject="Sin internet", body="z")
    assert desk.cli("cases", "outage", rosa, "--of", main, "--no-notice")[0] == 0
    assert desk.cli("cases", "assign", rosa, "--to", LUIS)[0] == 0
    desk.agent_reply(desk.notification(main), f"#resolver procedente\n{CAUSE}")
    assert desk.case(ana)["status"] == "resolved"
    assert desk.case(main)["owner"] == desk.case(ana)["owner"] == AGENT
    assert desk.case(rosa)["owner"] == LUIS  # owned already: kept
    assert "owner set to " + AGENT in [m["text"] for m in desk.case(ana)["messages"]]


@pytest.mark.integration
def test_a_resolution_with_asignar_gives_its_reports_no_owner(desk: Desk) -> None:
    _two_agents(desk.cli.config)
    main, ana = _outage(desk)
    desk.agent_reply(desk.notification(main), f"#resolver procedente\n#asignar {LUIS}\n{CAUSE}")
    assert desk.case(main)["owner"] == LUIS
    assert desk.case(ana)["status"] == "resolved"
    assert desk.case(ana)["owner"] is None


# --- 3. what `cases resolve MAIN` says of its reports ------------------------------------


def _phone_with_visit(desk: Desk) -> str:
    phone = desk.open_phone_case()
    code, _, err = desk.cli(
        "cases", "visit", phone, "--date", ahead(3).isoformat(), "--time", "9:00"
    )
    assert code == 0, err
    return phone


@pytest.mark.integration
def test_cases_resolve_main_names_the_cancelled_visits_of_its_phone_reports(desk: Desk) -> None:
    main = desk.open_case(sender=f"Juan <{CUSTOMER}>", subject="Sin internet", body="x")
    visited = _phone_with_visit(desk)
    plain = desk.open_phone_case()
    for report in (visited, plain):
        assert desk.cli("cases", "outage", report, "--of", main)[0] == 0
    code, _, err = desk.cli("cases", "resolve", main, "--outcome", "valid", "--cause", CAUSE)
    assert code == 0, err
    assert desk.case(visited)["visit"] is None
    assert (
        f"mailcase: reports {visited} have no customer mail address: their customers were "
        "not told of the resolution and the cancelled visit; call them"
    ) in err
    assert (
        f"mailcase: reports {plain} have no customer mail address: their customers were "
        "not told of the resolution; call them"
    ) in err


@pytest.mark.integration
def test_cases_resolve_main_names_the_unsent_notices_of_its_reports(desk: Desk) -> None:
    main, _ = _outage(desk)
    point_smtp_at_a_closed_port(desk.cli.config, desk.sink)
    code, _, err = desk.cli("cases", "resolve", main, "--outcome", "valid", "--cause", CAUSE)
    assert code == 0, err
    unsent = [line for line in err.splitlines() if line.startswith("mailcase: the notice")]
    assert len(unsent) == 1, err
    assert CUSTOMER in unsent[0] and ANA in unsent[0]
