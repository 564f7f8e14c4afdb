"""Waiting for the customer, with automatic closing: ``#pendiente [DÍAS]`` / ``#pending``
and ``mailcase cases pending``, as Zammad's "pending close" state and OTRS/Znuny's
"pending auto close" do.

An agent asks the customer something (the text below ``#pendiente`` is relayed to
them) and the case waits ``cases.pending_days`` (or the days written) for the
answer: the customer's message ends the wait; silence closes the case unresolved,
and the customer is told. A waiting case earns no reminder. Unit tests of the
parser, the rules and the templates, then the mail command through real Dovecot
and SMTP servers, the command line and the migration on SQLite and PostgreSQL.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from helpers import AGENT, NOTIFY, Cli, installation_at, json_events, mail, write_config
from servers import Dovecot, SmtpSink
from sqlmodel import col, select
from test_agents import AREAS, CUSTOMER, Desk, ahead, text
from test_templates_all import context

from mailcase.casework import command_problems
from mailcase.commands import (
    COMMAND_FORMS,
    PENDING_MAX_DAYS,
    Command,
    CommandKind,
    CommandProblem,
    parse_commands,
    parse_days,
)
from mailcase.config import load_settings
from mailcase.models import Case
from mailcase.render import render_body
from mailcase.store import Store, as_utc

MX = ZoneInfo("America/Mexico_City")
QUESTION = "¿Nos puede enviar una foto de las luces del módem?"

# --- parsing ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "days"),
    [
        ("#pendiente", None),
        ("#pending", None),
        ("#pendiente 3", 3),
        ("#pending 14", 14),
        ("#Pendiente: 10", 10),
        ("#PENDIENTE 7 días", 7),  # as people write it
        ("#pendiente 7 dias.", 7),
        ("#pending 1 day", 1),
        ("#pending 90 days", 90),
    ],
)
def test_pendiente_and_pending_read_the_days(line: str, days: int | None) -> None:
    parsed = parse_commands(f"{line}\n{QUESTION}")
    assert parsed.problems == ()
    assert parsed.commands == (Command(CommandKind.PENDING, days=days, line=line),)
    assert parsed.text == QUESTION


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("#pendiente mañana", "bad_days"),
        ("#pendiente 0", "bad_days"),
        ("#pendiente 91", "bad_days"),
        ("#pendiente -3", "bad_days"),
        ("#pendiente +3", "bad_days"),
        ("#pendiente ٧", "bad_days"),  # an Arabic-Indic seven: int() reads it, no agent means it
        ("#pendiente siete", "bad_days"),
        ("#pendiente 7 semanas", "unexpected_argument"),
        ("#pending 7 days please", "unexpected_argument"),
    ],
)
def test_days_that_are_not_1_to_90_are_a_problem(line: str, problem: str) -> None:
    parsed = parse_commands(line)
    assert parsed.commands == ()
    assert parsed.problems == (CommandProblem(line, problem),)


def test_the_command_line_reads_days_as_the_mail_command_does() -> None:
    assert parse_days("7") == 7
    assert parse_days(f"{PENDING_MAX_DAYS}") == PENDING_MAX_DAYS
    assert [parse_days(w) for w in ("0", "91", "", "x", "1.5", "٣")] == [None] * 6


def test_a_pending_command_below_the_text_is_misplaced() -> None:
    parsed = parse_commands(f"{QUESTION}\n#pendiente")
    assert parsed.commands == ()
    assert parsed.problems == (CommandProblem("#pendiente", "misplaced_command"),)


def test_the_help_footer_names_the_command_in_both_languages() -> None:
    assert "#pendiente [DIAS] | no / #pending [DAYS] | off" in COMMAND_FORMS


@pytest.mark.parametrize(
    "line", ["#pendiente no", "#pending off", "#Pendiente: No.", "#pending end"]
)
def test_pendiente_no_ends_the_wait(line: str) -> None:
    parsed = parse_commands(f"{line}\nEl cliente llamó: la luz LOS está en rojo.")
    assert parsed.problems == ()
    assert parsed.commands == (Command(CommandKind.PENDING, stop=True, line=line),)


def test_pendiente_no_takes_nothing_after_it() -> None:
    parsed = parse_commands("#pendiente no gracias")
    assert parsed.problems == (CommandProblem("#pendiente no gracias", "unexpected_argument"),)


# --- the rules of one reply ---------------------------------------------------------------


def _commands(text: str) -> list[Command]:
    parsed = parse_commands(text)
    assert parsed.problems == ()
    return list(parsed.commands)


def test_pending_goes_with_type_area_participant_and_reopen() -> None:
    now = datetime.now(MX)
    ok = "#pendiente 5\n#tipo queja\n#area redes\n#participante rosa@example.com"
    assert command_problems(_commands(ok), QUESTION, "open", now) == []
    assert command_problems(_commands("#pendiente"), "", "open", now) == []  # asked already
    # Reopened by the same reply, then made to wait.
    assert command_problems(_commands("#reabrir\n#pendiente"), QUESTION, "closed", now) == []


@pytest.mark.parametrize(
    "other",
    [
        "#resolver procedente",
        "#cerrar",
        "#nota",
        f"#visita {ahead(3)} 10:00",
        "#visita cancelar",
    ],
)
def test_pending_conflicts_with_settling_noting_and_visits_in_either_order(other: str) -> None:
    now = datetime.now(MX)
    cancelling = other == "#visita cancelar"  # which needs a visit ahead
    after = _commands(f"{other}\n#pendiente")
    assert command_problems(after, QUESTION, "open", now, visit_ahead=cancelling) == [
        ("#pendiente", "pending_conflict")
    ]
    before = _commands(f"#pendiente\n{other}")
    # Read before the cancelling line, #pendiente meets the visit still ahead too.
    first = [("#pendiente", "pending_visit")] if cancelling else []
    assert command_problems(before, QUESTION, "open", now, visit_ahead=cancelling) == [
        *first,
        (other, "pending_conflict"),
    ]


def test_a_case_with_a_visit_ahead_does_not_wait() -> None:
    # The next step is ours: the wait's end would cancel the visit and tell the customer
    # they did not answer.
    now = datetime.now(MX)
    problems = command_problems(_commands("#pendiente 3"), QUESTION, "open", now, visit_ahead=True)
    assert problems == [("#pendiente 3", "pending_visit")]


def test_ending_a_wait_goes_with_anything_on_any_case() -> None:
    # Nothing is relayed, nothing waits: a note, a resolution, a visit are all fine.
    now = datetime.now(MX)
    for other in ("#nota", "#resolver procedente", f"#visita {ahead(3)} 10:00", "#cerrar"):
        reply = _commands(f"#pendiente no\n{other}")
        assert command_problems(reply, QUESTION, "open", now, visit_ahead=True) == [], other
    stop = _commands("#pending off")
    assert command_problems(stop, "", "closed", now) == []


def test_pending_and_merge_is_refused() -> None:
    now = datetime.now(MX)
    for reply in ("#pendiente\n#fusionar PLR-2026-000001", "#fusionar PLR-2026-000001\n#pendiente"):
        problems = command_problems(_commands(reply), "", "open", now)
        assert problems and {code for _, code in problems} <= {"merge_alone", "pending_conflict"}


def test_only_an_open_case_waits() -> None:
    now = datetime.now(MX)
    pending = _commands("#pendiente")
    assert command_problems(pending, QUESTION, "closed", now) == [("#pendiente", "case_closed")]
    assert command_problems(pending, QUESTION, "resolved", now) == [("#pendiente", "case_resolved")]
    twice = _commands("#pendiente\n#pending 3")
    assert command_problems(twice, QUESTION, "open", now) == [("#pending 3", "repeated")]


# --- the templates ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("language", "sentences"),
    [
        (
            "es",
            [
                "no tuvimos respuesta en 7 días, así que lo dimos por cerrado",
                "Si el problema continúa, responda a este correo",
                "También puede llamarnos al 800 123 4567.",
            ],
        ),
        (
            "en",
            [
                "had no answer in 7 days, so we have closed it",
                "If the problem continues, reply to this message",
                "You can also call us on 800 123 4567.",
            ],
        ),
    ],
)
def test_the_closing_notice_says_why_and_how_to_come_back(
    language: str, sentences: list[str]
) -> None:
    body = render_body("closed_no_answer", language, context("closed_no_answer"))
    assert body.html is not None
    for sentence in sentences:
        assert sentence in body.text
        assert sentence in body.html
    one = render_body("closed_no_answer", language, context("closed_no_answer", days=1)).text
    assert ("en 1 día," if language == "es" else "in 1 day,") in one


@pytest.mark.parametrize(
    ("language", "problem", "sentence"),
    [
        ("es", "bad_days", "los días de espera van en números, del 1 al 90"),
        ("es", "pending_conflict", "#pendiente no va con #resolver, #cerrar, #nota, #fusionar"),
        ("en", "bad_days", "the days to wait are a number from 1 to 90"),
        ("en", "pending_conflict", "#pending does not go with #resolve, #close, #note, #merge"),
        ("es", "pending_visit", "este caso tiene una visita técnica pendiente: el siguiente"),
        ("en", "pending_visit", "this case has a home visit ahead: the next step is ours"),
    ],
)
def test_command_error_says_what_is_wrong_with_a_wait(
    language: str, problem: str, sentence: str
) -> None:
    problems = [{"line": "#pendiente", "problem": problem}]
    body = render_body("command_error", language, context("command_error", problems=problems))
    assert sentence in body.text


# --- by mail ------------------------------------------------------------------------------


@pytest.fixture
def desk(tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str) -> Desk:
    config = write_config(tmp_path, mailboxes, sink, notify=True, extra=AREAS, db_url=db_url)
    return Desk(Cli(config, capsys), mailboxes, sink, tmp_path)


def _until(case: dict[str, Any]) -> datetime | None:
    value = case["pending_until"]
    return datetime.fromisoformat(value) if value else None


def _about(moment: datetime | None, days: int) -> bool:
    assert moment is not None
    return abs(moment - datetime.now(UTC) - timedelta(days=days)) < timedelta(minutes=2)


def _customer_writes(desk: Desk, folio: str, body: str, **kw: Any) -> None:
    desk.deliver(mail(subject=f"Re: [Folio {folio}] Sin servicio", body=body, **kw))


def _expire(desk: Desk, folio: str) -> None:
    """Move ``folio``'s deadline an hour back, behind mailcase's back (as the close-stale
    tests move ``resolved_at``), on whichever database the test runs."""
    store = Store.open(load_settings(desk.cli.config).database.url, auto_upgrade=False)
    with store.transaction() as session:
        session.execute(
            sa.update(Case)
            .where(col(Case.folio) == folio)
            .values(pending_until=datetime.now(UTC) - timedelta(hours=1))
        )
    store.dispose()


PHOTO = ("luces.jpg", "image/jpeg", bytes.fromhex("ffd8ffe000104a464946") + b"\x00" * 64)


@pytest.mark.integration
def test_pendiente_relays_the_question_and_makes_the_case_wait(desk: Desk) -> None:
    folio = desk.open_case(subject="Sin servicio", body="No tengo internet.")
    assert _until(desk.case(folio)) is None
    told = len(desk.to(CUSTOMER))

    desk.agent_reply(
        desk.notification(folio),
        f"#pendiente\n#tipo queja\n\nBuenas tardes, don Juan:\n\n{QUESTION}",
        attachments=[PHOTO],
    )

    case = desk.case(folio)
    assert (case["status"], case["type"]) == ("open", "complaint")
    assert _about(_until(case), 7)  # [cases] pending_days
    [question] = desk.to(CUSTOMER)[told:]  # relayed as a plain reply is, files too
    assert QUESTION in text(question) and "#pendiente" not in text(question)
    assert [p.get_filename() for p in question.iter_attachments()] == ["luces.jpg"]
    reply = [m for m in case["messages"] if m["from"] == AGENT and m["direction"] == "in"]
    assert reply[0]["kind"] == "agent"  # the agent's words reached the customer: not a note
    assert QUESTION in reply[0]["text"]
    systems = [m["text"].split(", until ")[0] for m in reply if m["kind"] == "system"]
    assert systems == [
        "waiting for the customer for 7 day(s)",
        "type set to complaint",
        f"owner set to {AGENT}",  # the agent who asked follows the case up (auto_assign)
    ]
    assert not [m for m in desk.to(AGENT) if "no se envió" in text(m)]  # nothing held back

    # Again, with the days and no text: a new deadline, nothing relayed, nobody told.
    told, to_agent = len(desk.to(CUSTOMER)), len(desk.to(AGENT))
    desk.agent_reply(desk.notification(folio), "#pending 3")
    assert _about(_until(desk.case(folio)), 3)
    assert (len(desk.to(CUSTOMER)), len(desk.to(AGENT))) == (told, to_agent)

    # An agent's plain reply keeps the wait.
    desk.agent_reply(desk.notification(folio), "Le recuerdo la foto, por favor.")
    assert "Le recuerdo la foto" in text(desk.last_to(CUSTOMER))
    assert _about(_until(desk.case(folio)), 3)


@pytest.mark.integration
def test_the_customers_answer_ends_the_wait_and_reaches_the_agents(desk: Desk) -> None:
    folio = desk.open_case(subject="Sin servicio", body="No tengo internet.")
    desk.agent_reply(desk.notification(folio), f"#pendiente 5\n{QUESTION}")
    assert _until(desk.case(folio)) is not None
    notified = len(desk.to(NOTIFY))

    _customer_writes(desk, folio, "Ya le mando la foto: la luz LOS está en rojo.")

    case = desk.case(folio)
    assert (case["status"], case["pending_until"]) == ("open", None)
    systems = [m["text"] for m in case["messages"] if m["kind"] == "system"]
    assert systems[-1] == f"no longer waiting for the customer: {CUSTOMER} wrote"
    assert len(desk.to(NOTIFY)) == notified + 1
    assert "la luz LOS está en rojo" in text(desk.last_to(NOTIFY))


@pytest.mark.integration
def test_a_participants_answer_ends_the_wait_too(desk: Desk) -> None:
    folio = desk.open_case(subject="Sin servicio", body="No tengo internet.")
    desk.agent_reply(desk.notification(folio), "#participante rosa@example.com")
    desk.agent_reply(desk.notification(folio), f"#pendiente\n{QUESTION}")
    _customer_writes(desk, folio, "Soy su esposa: la luz está en rojo.", sender="rosa@example.com")
    assert desk.case(folio)["pending_until"] is None


@pytest.mark.integration
def test_silence_closes_the_case_unresolved_and_tells_the_customer(desk: Desk) -> None:
    folio = desk.open_case(subject="Sin servicio", body="No tengo internet.")
    other = desk.open_case(sender="Rosa <rosa@example.com>", subject="Lento", body="Va lento.")
    desk.agent_reply(desk.notification(folio), f"#pendiente 4\n{QUESTION}")
    desk.agent_reply(desk.notification(other), f"#pendiente\n{QUESTION}")
    desk.cli.poll()  # the check runs at the end of every poll: nothing has expired yet
    assert desk.case(folio)["status"] == "open"
    told = len(desk.to(CUSTOMER))

    _expire(desk, folio)
    desk.cli.poll()

    case = desk.case(folio)
    assert (case["status"], case["outcome"], case["pending_until"]) == ("closed", None, None)
    assert case["closed_at"] is not None
    systems = [m["text"] for m in case["messages"] if m["kind"] == "system"]
    assert systems[-1] == "closed: no answer from the customer within 4 days"
    assert case["messages"][-1]["kind"] == "notice"  # the closing notice, recorded
    [notice] = desk.to(CUSTOMER)[told:]
    body = text(notice)
    assert folio in str(notice["Subject"]) and folio in body
    assert "no tuvimos respuesta en 4 días, así que lo dimos por cerrado" in body
    assert "Si el problema continúa, responda a este correo" in body
    assert desk.case(other)["status"] == "open"  # its wait goes on

    today = datetime.now(MX).date()
    days = ["--from", str(today - timedelta(days=1)), "--to", str(today + timedelta(days=1))]
    report = desk.cli.json("report", *days)
    assert (report["closed_without_resolution"], report["open"]) == (1, 1)
    assert report["resolved"]["total"] == 0

    # The customer answers the closing notice: a new case, linked to this one (the rule
    # for a closed, unresolved case).
    desk.deliver(
        mail(
            subject=f"Re: {notice['Subject']}",
            body="Sigo sin internet.",
            headers={"In-Reply-To": notice["Message-ID"], "References": notice["Message-ID"]},
        )
    )
    folios = [c["folio"] for c in desk.cli.json("cases", "list")]
    assert len(folios) == 3
    [new] = [f for f in folios if f not in (folio, other)]
    assert folio in desk.case(new)["related"]
    assert desk.case(folio)["status"] == "closed"


@pytest.mark.integration
def test_an_answer_read_after_the_deadline_but_before_the_check_keeps_the_case(
    desk: Desk,
) -> None:
    # A poll reads the mailboxes first and closes stale cases at its end: the customer's
    # answer in that poll is read first, and the case is theirs again, not closed.
    folio = desk.open_case(subject="Sin servicio", body="No tengo internet.")
    desk.agent_reply(desk.notification(folio), f"#pendiente\n{QUESTION}")
    _expire(desk, folio)
    told = len(desk.to(CUSTOMER))
    _customer_writes(desk, folio, "Perdón la demora: la luz está en rojo.")
    case = desk.case(folio)
    assert (case["status"], case["pending_until"]) == ("open", None)
    assert len(desk.to(CUSTOMER)) == told  # no closing notice


@pytest.mark.integration
def test_a_pending_case_is_never_unanswered(desk: Desk) -> None:
    folio = desk.open_case(subject="Sin servicio", body="No tengo internet.")
    # No text below: the agent asked already (by phone, say): nothing answers the
    # customer's message, yet the next word is theirs.
    desk.agent_reply(desk.notification(folio), "#pendiente")
    store = Store.open(load_settings(desk.cli.config).database.url, auto_upgrade=False)
    then = datetime.now(UTC) - timedelta(hours=30)
    with store.transaction() as session:
        session.execute(sa.update(Case).values(last_customer_at=then))
    store.dispose()
    assert desk.cli.json("cases", "list", "--unanswered") == []
    assert desk.cli.json("cases", "remind") == []

    # The customer's answer makes it the agents' again.
    _customer_writes(desk, folio, "Aquí está la foto.")
    assert [c["folio"] for c in desk.cli.json("cases", "list", "--unanswered")] == [folio]


@pytest.mark.integration
def test_pendiente_with_a_conflicting_command_runs_nothing(desk: Desk) -> None:
    folio = desk.open_case(subject="Sin servicio", body="No tengo internet.")
    told = len(desk.to(CUSTOMER))

    desk.agent_reply(desk.notification(folio), f"#pendiente\n#cerrar\n{QUESTION}")

    case = desk.case(folio)
    assert (case["status"], case["pending_until"]) == ("open", None)
    assert len(desk.to(CUSTOMER)) == told
    error = text(desk.last_to(AGENT))
    assert "#cerrar\n    → #pendiente no va con #resolver, #cerrar, #nota" in error


@pytest.mark.integration
def test_a_resolved_case_is_reopened_before_it_waits(desk: Desk) -> None:
    folio = desk.open_case(subject="Sin servicio", body="No tengo internet.")
    assert desk.cli("cases", "resolve", folio, "--outcome", "valid", "--cause", "Listo.")[0] == 0
    told = len(desk.to(CUSTOMER))
    desk.agent_reply(desk.notification(folio), f"#pendiente\n{QUESTION}")
    assert desk.case(folio)["pending_until"] is None
    assert len(desk.to(CUSTOMER)) == told
    assert "el caso ya está resuelto" in text(desk.last_to(AGENT))

    desk.agent_reply(desk.notification(folio), f"#reabrir\n#pendiente\n{QUESTION}")
    case = desk.case(folio)
    assert case["status"] == "open" and _about(_until(case), 7)
    assert QUESTION in text(desk.last_to(CUSTOMER))


# --- the command line ---------------------------------------------------------------------


@pytest.mark.integration
def test_the_command_line_sets_lists_shows_and_clears_the_wait(desk: Desk) -> None:
    cli = desk.cli
    waiting = desk.open_case(subject="Sin servicio", body="No tengo internet.")
    other = desk.open_case(sender="Rosa <rosa@example.com>", subject="Lento", body="Va lento.")
    told = len(desk.to(CUSTOMER))

    code, out, err = cli("cases", "pending", waiting, "--days", "10")
    assert code == 0, err
    assert out.startswith(f"{waiting}: waiting for the customer until ")
    assert out.strip().endswith("(10 day(s))")
    assert len(desk.to(CUSTOMER)) == told  # the command line relays nothing
    assert _about(_until(cli.json("cases", "show", waiting)), 10)
    assert cli.json("cases", "show", other)["pending_until"] is None
    listed = {c["folio"]: c["pending_until"] for c in cli.json("cases", "list")}
    assert listed[other] is None and listed[waiting] is not None
    assert [c["folio"] for c in cli.json("cases", "list", "--pending")] == [waiting]
    code, out, _ = cli("cases", "list", "--pending")
    assert "PENDING_UNTIL" in out.splitlines()[0] and other not in out
    code, out, _ = cli("cases", "show", waiting)
    assert any(line.startswith("pending_until: 20") for line in out.splitlines())

    assert cli("cases", "pending", other)[0] == 0  # cases.pending_days
    assert _about(_until(cli.json("cases", "show", other)), 7)

    code, out, _ = cli("cases", "pending", waiting, "--clear")
    assert (code, out.strip()) == (0, f"{waiting}: no longer waiting for the customer")
    code, out, _ = cli("cases", "pending", waiting, "--clear")
    assert (code, out.strip()) == (0, f"{waiting}: not waiting for the customer")
    assert cli.json("cases", "show", waiting)["pending_until"] is None
    assert cli.json("cases", "show", waiting)["status"] == "open"
    assert [c["folio"] for c in cli.json("cases", "list", "--pending")] == [other]

    for days in ("0", "91", "siete"):
        with pytest.raises(SystemExit) as exited:  # argparse's usage error
            cli("cases", "pending", waiting, "--days", days)
        assert exited.value.code == 2
        assert "is not a number of days from 1 to 90" in cli.capsys.readouterr().err
    code, _, err = cli("cases", "list", "--pending", "--unanswered")
    assert code == 2 and "--pending and --unanswered list different cases" in err


@pytest.mark.integration
def test_resolving_closing_and_merging_end_the_wait(desk: Desk) -> None:
    cli = desk.cli
    resolved = desk.open_case(subject="Sin servicio", body="No tengo internet.")
    closed = desk.open_case(sender="Rosa <rosa@example.com>", subject="Lento", body="Lento.")
    first = desk.open_case(sender="Luis <luis@example.com>", subject="Corte", body="Corte.")
    second = desk.open_case(sender="Luis <luis@example.com>", subject="Corte 2", body="Igual.")
    for folio in (resolved, closed, first, second):
        assert cli("cases", "pending", folio)[0] == 0
    assert cli("cases", "resolve", resolved, "--outcome", "valid", "--cause", "Listo.")[0] == 0
    assert cli("cases", "close", closed)[0] == 0
    assert cli("cases", "merge", second, "--into", first, "--no-notice")[0] == 0
    for folio in (resolved, closed, first, second):
        assert cli.json("cases", "show", folio)["pending_until"] is None, folio
    assert cli.json("cases", "list", "--pending") == []
    # A closed case does not wait: reopen it first.
    code, _, err = cli("cases", "pending", closed)
    assert code != 0 and f"case {closed} is closed: reopen it first" in err
    code, _, err = cli("cases", "pending", second)
    assert code != 0 and f"case {second} was merged into {first}" in err
    # Nothing closes later for a wait that ended.
    for folio in (resolved, first):
        _expire_if_set(desk, folio)
    desk.cli.poll()
    assert cli.json("cases", "show", first)["status"] == "open"
    assert cli.json("cases", "show", resolved)["status"] == "resolved"


def _expire_if_set(desk: Desk, folio: str) -> None:
    store = Store.open(load_settings(desk.cli.config).database.url, auto_upgrade=False)
    with store.transaction() as session:
        session.execute(
            sa.update(Case)
            .where(col(Case.folio) == folio, col(Case.pending_until).is_not(None))
            .values(pending_until=datetime.now(UTC) - timedelta(hours=1))
        )
    store.dispose()


# --- the configuration --------------------------------------------------------------------


def test_pending_days_has_a_default_and_bounds(tmp_path: Path) -> None:
    from mailcase.config import CasesSettings

    assert CasesSettings().pending_days == 7
    assert CasesSettings(pending_days=90).pending_days == 90
    for wrong in (0, 91):
        with pytest.raises(ValueError, match="pending_days"):
            CasesSettings(pending_days=wrong)


# --- the migration ------------------------------------------------------------------------


def test_migration_0012_upgrades_a_database_with_cases(db_url: str) -> None:
    # As 0010's test: every installation has cases whose messages refer to them, and a
    # migration that copied the cases table would be refused by the store's foreign keys.
    from alembic import command

    from mailcase.store import SCHEMA_HEAD, alembic_config

    installation_at(db_url, "0011")

    store = Store.open(db_url, auto_upgrade=True)
    try:
        with store.reading() as conn:
            rows = conn.execute(sa.text("SELECT folio, pending_until FROM cases")).all()
            texts = conn.execute(sa.text("SELECT text FROM case_messages")).scalars().all()
        assert store.revisions() == (SCHEMA_HEAD, SCHEMA_HEAD)
        # The column takes a deadline and gives it back as an aware UTC time.
        deadline = datetime(2026, 12, 5, 10, 0, tzinfo=UTC)
        with store.transaction() as session:
            session.execute(sa.update(Case).values(pending_until=deadline))
        with store.read_session() as session:
            case = session.exec(select(Case)).one()
            assert as_utc(case.pending_until) == deadline
    finally:
        store.dispose()
    assert [tuple(r) for r in rows] == [("PLR-2026-000001", None)]
    assert texts == ["hola"]
    # And back, with the data, and up again (alembic's own connection).
    command.downgrade(alembic_config(db_url), "0011")
    command.upgrade(alembic_config(db_url), "head")


@pytest.mark.integration
def test_an_agent_who_asks_and_takes_the_case_in_one_reply(desk: Desk) -> None:
    # #asignar makes the rest a note, #pendiente relays it: together, the question
    # still reaches the customer, and the agent owns the case that waits.
    folio = desk.open_case(subject="Sin servicio", body="No tengo internet.")
    told = len(desk.to(CUSTOMER))
    desk.agent_reply(desk.notification(folio), f"#asignar yo\n#pendiente 3\n\n{QUESTION}")
    case = desk.case(folio)
    assert case["owner"] == AGENT
    assert _about(_until(case), 3)
    [question] = desk.to(CUSTOMER)[told:]
    assert QUESTION in text(question) and "#asignar" not in text(question)


# --- no close before every mailbox was read through ---------------------------------------


def _no_answer_notices(desk: Desk) -> list[EmailMessage]:
    return [m for m in desk.to(CUSTOMER) if "no tuvimos respuesta" in text(m)]


def _read_before_deadline(desk: Desk, when: datetime | None = None) -> None:
    """Make every mailbox's latest complete read start at ``when`` (default: two hours
    ago, before the deadlines ``_expire`` sets), behind mailcase's back."""
    from mailcase.models import Checkpoint

    when = when or datetime.now(UTC) - timedelta(hours=2)
    store = Store.open(load_settings(desk.cli.config).database.url, auto_upgrade=False)
    with store.transaction() as session:
        session.execute(sa.update(Checkpoint).values(last_poll_at=when))
    store.dispose()


def _answer(folio: str) -> bytes:
    return mail(subject=f"Re: [Folio {folio}] Sin servicio", body="La luz LOS está en rojo.")


@pytest.mark.integration
def test_an_answer_arriving_between_select_and_search_is_not_taken_as_read(
    desk: Desk, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The answer reaches an empty folder after SELECT (whose EXISTS of 0 spares the
    # SEARCH), and the deadline passes then: the poll's read-through time was taken
    # after that moment, the case closed "for no answer" and the answer opened a new case.
    from mailcase import refusals

    folio = desk.open_case(subject="Sin servicio", body="No tengo internet.")
    desk.agent_reply(desk.notification(folio), f"#pendiente 2\n{QUESTION}")
    real = refusals.given_up
    arrived: list[bool] = []

    def answer_meanwhile(store: Any, name: str, uidvalidity: int) -> Any:
        # Runs after SELECT and before the search: the moment the window is open.
        if name == "contacto" and not arrived:
            arrived.append(True)
            desk.imap.append("contacto", _answer(folio))
            time.sleep(0.01)  # the deadline falls after the poll began, and before now
            store_ = Store.open(load_settings(desk.cli.config).database.url, auto_upgrade=False)
            with store_.transaction() as session:
                session.execute(
                    sa.update(Case)
                    .where(col(Case.folio) == folio)
                    .values(pending_until=datetime.now(UTC))
                )
            store_.dispose()
        return real(store, name, uidvalidity)

    monkeypatch.setattr(refusals, "given_up", answer_meanwhile)
    desk.cli.poll()
    assert arrived and desk.case(folio)["status"] == "open"
    assert _no_answer_notices(desk) == []
    monkeypatch.setattr(refusals, "given_up", real)
    desk.cli.poll()  # the answer is read now: the wait ends, no second case
    assert desk.case(folio)["pending_until"] is None
    assert len(desk.cli.json("cases", "list")) == 1


@pytest.mark.integration
def test_a_mailbox_unread_since_the_deadline_holds_the_close_until_it_is_read(
    desk: Desk,
) -> None:
    # The customer answered in time, to the other address of the company; that mailbox
    # cannot be read when the deadline passes (a changed password, an IMAP outage):
    # `mailcase poll` fails for it, and closes nothing for want of an answer.
    folio = desk.open_case(subject="Sin servicio", body="No tengo internet.")
    desk.agent_reply(desk.notification(folio), f"#pendiente 2\n{QUESTION}")
    desk.imap.append("info", _answer(folio))
    _expire(desk, folio)
    _read_before_deadline(desk)
    config = desk.cli.config.read_text()
    password = f'password = "{desk.imap.users["info"]}"'
    desk.cli.config.write_text(config.replace(password, 'password = "wrong"'))
    code, _, err = desk.cli("poll")
    assert code == 1 and "info" in err
    case = desk.case(folio)
    assert (case["status"], _until(case) is not None) == ("open", True)
    assert not _no_answer_notices(desk)
    # The admin is told what the unread mailbox holds up, and which mailbox it is.
    [held] = [e for e in json_events(err) if e.get("event") == "pending_close_deferred"]
    assert (held["folios"], held["mailboxes"], held["level"]) == ([folio], ["info"], "warning")

    desk.cli.config.write_text(config)
    code, _, err = desk.cli("poll")  # read at last: the answer ends the wait
    assert code == 0, err
    assert not [e for e in json_events(err) if e.get("event") == "pending_close_deferred"]
    case = desk.case(folio)
    assert (case["status"], case["pending_until"]) == ("open", None)
    assert [c["folio"] for c in desk.cli.json("cases", "list")] == [folio]
    assert not _no_answer_notices(desk)


@pytest.mark.integration
def test_the_check_closes_only_once_every_mailbox_was_read_after_the_deadline(
    desk: Desk,
) -> None:
    # The hourly check with no poll before it (the daemon's own job): a mailbox whose
    # latest read began before the deadline may hold the answer; read after it, none.
    from mailcase import waits

    folio = desk.open_case(subject="Sin servicio", body="No tengo internet.")
    desk.agent_reply(desk.notification(folio), f"#pendiente 2\n{QUESTION}")
    _expire(desk, folio)
    _read_before_deadline(desk)
    settings = load_settings(desk.cli.config)
    store = Store.open(settings.database.url, auto_upgrade=False)
    try:
        with store.transaction() as session:
            assert waits.close_stale_cases(session, settings, datetime.now(UTC)) == []
            # Both mailboxes' latest reads began before the deadline: both hold it open.
            held = waits.closings_waiting_for_mail(session, settings, datetime.now(UTC))
            assert held == ([folio], ["contacto", "info"])
            # A minute after the deadline (an hour ago, _expire) the next poll may settle
            # it yet: no warning naming healthy mailboxes.
            soon = datetime.now(UTC) - timedelta(minutes=59)
            assert waits.closings_waiting_for_mail(session, settings, soon) == ([], [])
        _read_before_deadline(desk, datetime.now(UTC) - timedelta(minutes=1))
        with store.transaction() as session:
            assert waits.close_stale_cases(session, settings, datetime.now(UTC)) == [folio]
            held = waits.closings_waiting_for_mail(session, settings, datetime.now(UTC))
            assert held == ([], [])
    finally:
        store.dispose()


@pytest.mark.integration
def test_the_daemon_reads_the_mailboxes_before_it_closes_a_case_unanswered(
    desk: Desk, tmp_path: Path
) -> None:
    # The answer came while the daemon was stopped (a maintenance window, a crash):
    # its first polls read it before the hourly check runs.
    from helpers import DaemonProcess

    folio = desk.open_case(subject="Sin servicio", body="No tengo internet.")
    desk.agent_reply(desk.notification(folio), f"#pendiente 2\n{QUESTION}")
    _expire(desk, folio)
    desk.imap.append("contacto", _answer(folio))
    with DaemonProcess(desk.cli.config, tmp_path / "daemon.log") as daemon:
        daemon.wait_for_event("daemon_ready", timeout=30)
        daemon.wait_for_event("outbox_delivered", timeout=30)
        daemon.stop()
    case = desk.case(folio)
    assert (case["status"], case["pending_until"]) == ("open", None)
    assert [c["folio"] for c in desk.cli.json("cases", "list")] == [folio]
    assert not _no_answer_notices(desk)


# --- a home visit is the company's next step ------------------------------------------------


@pytest.mark.integration
def test_booking_a_visit_ends_the_wait(desk: Desk) -> None:
    # The customer answered by phone; the agent books the visit by mail, or on the command
    # line: the case waits on us now, and nothing closes it (nor cancels the visit) later.
    by_mail = desk.open_case(subject="Sin servicio", body="No tengo internet.")
    by_cli = desk.open_case(sender="Rosa <rosa@example.com>", subject="Lento", body="Lento.")
    desk.agent_reply(desk.notification(by_mail), f"#pendiente 2\n{QUESTION}")
    assert desk.cli("cases", "pending", by_cli, "--days", "2")[0] == 0
    desk.agent_reply(desk.notification(by_mail), f"#visita {ahead(5)} 10:00")
    code, _, err = desk.cli("cases", "visit", by_cli, "--date", str(ahead(5)), "--time", "11:00")
    assert code == 0, err
    for folio in (by_mail, by_cli):
        case = desk.case(folio)
        assert case["pending_until"] is None, folio
        systems = [m["text"] for m in case["messages"] if m["kind"] == "system"]
        assert systems[-1] == "no longer waiting for the customer: a home visit was booked"
    _expire_if_set(desk, by_mail)
    desk.cli.poll()
    assert desk.case(by_mail)["status"] == "open"
    assert desk.case(by_mail)["visit"] is not None
    assert not _no_answer_notices(desk)


@pytest.mark.integration
def test_a_case_with_a_visit_ahead_is_refused_a_wait(desk: Desk) -> None:
    folio = desk.open_case(subject="Sin servicio", body="No tengo internet.")
    desk.agent_reply(desk.notification(folio), f"#visita {ahead(6)} 10:00")
    told = len(desk.to(CUSTOMER))
    desk.agent_reply(desk.notification(folio), "#pendiente 2\n¿Habrá alguien en casa?")
    assert desk.case(folio)["pending_until"] is None
    assert len(desk.to(CUSTOMER)) == told  # nothing relayed: no command ran
    error = text(desk.last_to(AGENT))
    assert "este caso tiene una visita técnica pendiente" in error
    code, _, err = desk.cli("cases", "pending", folio)
    assert code != 0 and f"case {folio} has a home visit ahead" in err
    assert desk.case(folio)["pending_until"] is None


# --- a question that reached nobody starts no wait ------------------------------------------


@pytest.mark.integration
def test_a_held_question_starts_no_wait(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    limit = "[limits]\nmax_relays_per_case_per_hour = 1\n"
    config = write_config(tmp_path, mailboxes, sink, notify=True, extra=AREAS + limit)
    desk = Desk(Cli(config, capsys), mailboxes, sink, tmp_path)
    folio = desk.open_case(subject="Sin servicio", body="No tengo internet.")
    desk.agent_reply(desk.notification(folio), "Estamos revisando su caso.")
    told = len(desk.to(CUSTOMER))
    desk.agent_reply(desk.notification(folio), f"#pendiente 2\n{QUESTION}")
    assert len(desk.to(CUSTOMER)) == told  # held by the relay cap
    case = desk.case(folio)
    assert case["pending_until"] is None
    systems = [m["text"] for m in case["messages"] if m["kind"] == "system"]
    assert (
        systems[-1] == "no longer waiting for the customer: the question did not reach the customer"
    )
    notice = text(desk.last_to(AGENT))
    assert "no se envió al cliente: el caso ya tuvo muchas respuestas" in notice
    assert "el caso no quedó esperando su respuesta (#pendiente no se aplicó)" in notice


@pytest.mark.integration
def test_a_phone_case_waits_only_when_asked_already_and_pendiente_no_ends_it(desk: Desk) -> None:
    folio = desk.open_phone_case()
    desk.agent_reply(desk.notification(folio), f"#pendiente 2\n{QUESTION}")
    assert desk.case(folio)["pending_until"] is None  # the question reached nobody
    notice = text(desk.last_to(AGENT))
    assert "no tiene correo del cliente" in notice and "no quedó esperando" in notice
    # Asked by phone: "#pendiente" with nothing below it waits, as on any case.
    desk.agent_reply(desk.notification(folio), "#pendiente 2")
    assert _about(_until(desk.case(folio)), 2)
    # The customer calls back: a note keeps the wait, "#pendiente no" ends it.
    desk.agent_reply(desk.notification(folio), "#nota El cliente llamó: la luz LOS está roja.")
    assert _until(desk.case(folio)) is not None
    desk.agent_reply(desk.notification(folio), "#pendiente no\nLlamó: la luz LOS está roja.")
    case = desk.case(folio)
    assert case["pending_until"] is None
    assert [m for m in case["messages"] if m["kind"] == "note"][-1]["text"] == (
        "Llamó: la luz LOS está roja."
    )
    systems = [m["text"] for m in case["messages"] if m["kind"] == "system"]
    assert systems[-1] == "no longer waiting for the customer"
    _expire_if_set(desk, folio)
    desk.cli.poll()
    assert desk.case(folio)["status"] == "open"


@pytest.mark.integration
def test_a_question_that_reaches_nobody_keeps_a_wait_already_running(desk: Desk) -> None:
    # Asked by phone, the case waits; a later "#pendiente" with text reaches nobody (no
    # address): it ended the running wait, and the case then never closed by itself.
    folio = desk.open_phone_case()
    desk.agent_reply(desk.notification(folio), "#pendiente 5")
    before = desk.case(folio)["pending_until"]
    desk.agent_reply(desk.notification(folio), f"#pendiente 2\n{QUESTION}")
    case = desk.case(folio)
    assert case["pending_until"] == before
    systems = [m["text"].split(", until ")[0] for m in case["messages"] if m["kind"] == "system"]
    assert systems[-2:] == [
        "the new deadline does not stand: the question did not reach the customer",
        "waiting for the customer for 5 day(s)",  # the wait put back, with its own days
    ]


@pytest.mark.integration
def test_pending_off_on_a_mail_case_relays_nothing(desk: Desk) -> None:
    folio = desk.open_case(subject="Sin servicio", body="No tengo internet.")
    desk.agent_reply(desk.notification(folio), f"#pendiente 2\n{QUESTION}")
    told = len(desk.to(CUSTOMER))
    desk.agent_reply(desk.notification(folio), "#pending off\nHe answered by phone.")
    assert desk.case(folio)["pending_until"] is None
    assert len(desk.to(CUSTOMER)) == told


# --- an answer in a new mail --------------------------------------------------------------


@pytest.mark.integration
def test_an_answer_in_a_new_mail_naming_the_folio_ends_the_wait(desk: Desk) -> None:
    # Not a reply: a new mail that names the folio opens a case linked to the waiting one.
    # The customer answered there, so the waiting case is not closed "for no answer".
    folio = desk.open_case(subject="Sin servicio", body="No tengo internet.")
    desk.agent_reply(desk.notification(folio), f"#pendiente 2\n{QUESTION}")
    desk.deliver(mail(subject="Foto del módem", body=f"Sobre mi reporte {folio}: LOS en rojo."))
    [new] = [c["folio"] for c in desk.cli.json("cases", "list") if c["folio"] != folio]
    assert folio in desk.case(new)["related"]
    case = desk.case(folio)
    assert case["pending_until"] is None
    systems = [m["text"] for m in case["messages"] if m["kind"] == "system"]
    assert systems[-1] == f"no longer waiting for the customer: the customer wrote, see {new}"
    _expire_if_set(desk, folio)
    desk.cli.poll()
    assert desk.case(folio)["status"] == "open"
    assert not _no_answer_notices(desk)


@pytest.mark.integration
def test_a_stranger_naming_the_folio_does_not_end_the_wait(desk: Desk) -> None:
    folio = desk.open_case(subject="Sin servicio", body="No tengo internet.")
    desk.agent_reply(desk.notification(folio), f"#pendiente 2\n{QUESTION}")
    desk.deliver(
        mail(sender="Rosa <rosa@example.com>", subject="Otro", body=f"Como el {folio}: sin red.")
    )
    assert len(desk.cli.json("cases", "list")) == 2
    assert _until(desk.case(folio)) is not None


# --- a no-answer close is unresolved ------------------------------------------------------


@pytest.mark.integration
def test_a_reopened_case_closed_for_no_answer_loses_its_old_resolution(desk: Desk) -> None:
    folio = desk.open_case(subject="Sin servicio", body="No tengo internet.")
    assert desk.cli("cases", "resolve", folio, "--outcome", "valid", "--cause", "Listo.")[0] == 0
    _customer_writes(desk, folio, "Sigue sin funcionar.")  # reopens it
    desk.agent_reply(desk.notification(folio), f"#pendiente 2\n{QUESTION}")
    _expire(desk, folio)
    desk.cli.poll()
    case = desk.case(folio)
    assert (case["status"], case["outcome"], case["cause"]) == ("closed", None, None)
    texts = [m["text"] for m in case["messages"]]
    assert "Listo." in texts  # the resolution's record stays in the history
    assert (
        texts.count(
            "closed: no answer from the customer within 2 days; "
            "the earlier resolution (valid) no longer stands"
        )
        == 1
    )
    today = datetime.now(MX).date()
    days = ["--from", str(today - timedelta(days=1)), "--to", str(today + timedelta(days=1))]
    report = desk.cli.json("report", *days)
    assert (report["closed_without_resolution"], report["resolved"]["total"]) == (1, 0)
    # The notice promised a new case to a reply, not the old one reopened.
    [notice] = _no_answer_notices(desk)
    desk.deliver(
        mail(
            subject=f"Re: {notice['Subject']}",
            body="Sigo sin internet.",
            headers={"In-Reply-To": notice["Message-ID"], "References": notice["Message-ID"]},
        )
    )
    assert len(desk.cli.json("cases", "list")) == 2
    assert desk.case(folio)["status"] == "closed"


# --- an answer there before the no-answer close, read after it ------------------------------


def test_an_answer_that_arrived_before_the_no_answer_close_reopens_the_case() -> None:
    from test_triage import AGENTS, OWN, inbound
    from test_triage import CUSTOMER as SENDER

    from mailcase.classify import classify
    from mailcase.models import Disposition
    from mailcase.triage import CaseRef, Facts, triage

    closed = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    case = CaseRef(
        id=1, folio="PLR-2026-000001", customer=SENDER, status="closed",
        closed_unanswered_at=closed,
    )  # fmt: skip
    answer = inbound(subject="Re: [Folio PLR-2026-000001] Sin servicio")

    def decide(arrived: datetime) -> Any:
        facts = Facts(by_folio=(case,))
        return triage(
            answer, classify(answer), facts, own_addresses=OWN, agent_addresses=AGENTS,
            now=arrived,
        )  # fmt: skip

    before = decide(closed - timedelta(minutes=5))
    assert (before.disposition, before.case, before.reopen) == (Disposition.FOLLOW_UP, case, True)
    after = decide(closed + timedelta(minutes=5))  # as the closing notice says: a new case
    assert after.open_case and after.related == (case.folio,)


@pytest.mark.integration
def test_an_answer_read_after_the_no_answer_close_but_there_before_it_reopens(desk: Desk) -> None:
    # A quarantined answer retried, say: it reached the server before the case closed.
    folio = desk.open_case(subject="Sin servicio", body="No tengo internet.")
    desk.agent_reply(desk.notification(folio), f"#pendiente 2\n{QUESTION}")
    question = desk.last_to(CUSTOMER)
    _expire(desk, folio)
    desk.cli.poll()
    assert desk.case(folio)["status"] == "closed"
    desk.imap.append(
        "contacto",
        mail(
            subject=f"Re: {question['Subject']}",
            body="La luz LOS está en rojo.",
            headers={"In-Reply-To": question["Message-ID"], "References": question["Message-ID"]},
        ),
        internal_date=datetime.now(UTC) - timedelta(minutes=10),
    )
    desk.cli.poll()
    assert [c["folio"] for c in desk.cli.json("cases", "list")] == [folio]
    case = desk.case(folio)
    assert (case["status"], case["pending_until"]) == ("open", None)
    assert [m["text"] for m in case["messages"] if m["kind"] == "system"][-1] == "case reopened"
