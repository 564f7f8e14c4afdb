"""A case's type: complaint (queja), question (consulta), clarification (aclaración) or
cancellation (cancelación), as Zammad's ticket type, OTRS/Znuny's ticket type and
osTicket's help topic classify a ticket.

Agents set it by mail (``#tipo`` / ``#type``) or with ``mailcase cases type``;
``mailcase report`` counts the period's cases by it. Nothing guesses it from the
customer's words. Unit tests of the parser, the figures and the templates, then
the mail command through real Dovecot and SMTP servers, the command line and the
migration on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from helpers import AGENT, Cli, installation_at, mail, write_config
from servers import Dovecot, SmtpSink
from test_agents import AREAS, CUSTOMER, Desk, text
from test_templates_all import context

from mailcase.casework import command_problems
from mailcase.commands import (
    COMMAND_FORMS,
    Command,
    CommandKind,
    CommandProblem,
    parse_case_type,
    parse_commands,
)
from mailcase.models import CaseType
from mailcase.render import render_body
from mailcase.report import TYPES, CaseGroup, Period, build_report, report_json, report_lines

MX = ZoneInfo("America/Mexico_City")
JUAN = "Juan Pérez <juan.perez@example.com>"


# --- parsing ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "case_type"),
    [
        ("#tipo queja", "complaint"),
        ("#tipo consulta", "question"),
        ("#tipo aclaracion", "clarification"),
        ("#tipo cancelacion", "cancellation"),
        ("#type complaint", "complaint"),
        ("#type question", "question"),
        ("#type clarification", "clarification"),
        ("#type cancellation", "cancellation"),
        # Either vocabulary under either name, folded as the other commands are.
        ("#tipo complaint", "complaint"),
        ("#type consulta", "question"),
        ("#Tipo Aclaración", "clarification"),
        ("#TIPO CANCELACIÓN", "cancellation"),
        ("#tipo aclaracio\u0301n", "clarification"),  # a combining accent (macOS)
        ("#Type Question.", "question"),
        ("#tipo: queja", "complaint"),
    ],
)
def test_tipo_and_type_read_both_vocabularies(line: str, case_type: str) -> None:
    parsed = parse_commands(f"{line}\nCobro doble en noviembre.")
    assert parsed.problems == ()
    assert parsed.commands == (Command(CommandKind.TYPE, case_type=case_type, line=line),)
    assert parsed.text == "Cobro doble en noviembre."


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("#tipo", "missing_type"),
        ("#type", "missing_type"),
        ("#tipo reclamo", "bad_type"),
        ("#type bill", "bad_type"),
        ("#tipo no queja", "bad_type"),  # never read as its opposite
        ("#tipo queja consulta", "unexpected_argument"),
        ("#tipo queja por cobro", "unexpected_argument"),  # the words go on the next line
    ],
)
def test_a_missing_or_unknown_type_is_a_problem(line: str, problem: str) -> None:
    parsed = parse_commands(line)
    assert parsed.commands == ()
    assert parsed.problems == (CommandProblem(line, problem),)


def test_a_type_command_below_the_text_is_misplaced() -> None:
    parsed = parse_commands("Buenas tardes.\n#tipo queja")
    assert parsed.problems == (CommandProblem("#tipo queja", "misplaced_command"),)


def test_the_command_line_reads_types_as_the_mail_command_does() -> None:
    assert parse_case_type("Aclaración") == "clarification"
    assert parse_case_type(" cancellation ") == "cancellation"
    assert parse_case_type("reclamo") is None
    assert parse_case_type("") is None


def test_the_help_footer_names_the_command_in_both_languages() -> None:
    [form] = [f for f in COMMAND_FORMS if "#tipo" in f]
    assert "#type" in form
    for word in ("queja", "consulta", "aclaracion", "cancelacion", *TYPES):
        assert word in form


def test_the_report_lists_every_type_the_model_has() -> None:
    assert tuple(CaseType) == TYPES


def test_a_type_goes_with_other_commands_on_any_case() -> None:
    now = datetime.now(MX)
    [tipo] = parse_commands("#tipo queja").commands
    close, reopen = (c for c in parse_commands("#cerrar\n#reabrir").commands)
    [resolve] = parse_commands("#resolver procedente").commands
    assert command_problems([close, tipo], "", "open", now) == []
    assert command_problems([tipo, resolve], "Se cambió el conector.", "open", now) == []
    assert command_problems([tipo], "", "closed", now) == []  # classified after closing too
    assert command_problems([tipo, tipo], "", "open", now) == [("#tipo queja", "repeated")]
    assert command_problems([reopen, tipo], "", "closed", now) == []


# --- the figures --------------------------------------------------------------------------


def _group(count: int, case_type: str | None, **fields: Any) -> CaseGroup:
    values: dict[str, Any] = {
        "channel": "mail",
        "mailbox": "contacto",
        "area": None,
        "status": "open",
        "outcome": None,
        "merged": False,
        "visit": False,
        "has_address": True,
    }
    values.update(fields)
    return CaseGroup(count=count, type=case_type, **values)


def test_the_report_counts_the_opened_cases_by_type() -> None:
    period = Period(date(2026, 10, 1), date(2026, 10, 31), MX)
    figures = build_report(
        period,
        [
            _group(3, "complaint"),
            _group(1, "complaint", status="resolved", outcome="valid"),
            _group(2, "clarification", channel="phone", has_address=False),
            _group(4, None),
            _group(5, "question", merged=True),  # a report written twice: only "merged"
        ],
        [],
        [],
        generated_at=datetime(2026, 11, 28, 12, 0, tzinfo=UTC),
    )
    assert figures.by_type == {
        "complaint": 4,
        "question": 0,
        "clarification": 2,
        "cancellation": 0,
    }
    assert figures.no_type == 4
    assert figures.opened == sum(figures.by_type.values()) + figures.no_type
    opened = report_json(figures)["opened"]
    assert opened["by_type"] == figures.by_type
    assert opened["no_type"] == 4
    lines = report_lines(figures)
    assert any(line.split() == ["by", "type:", "complaint", "4"] for line in lines)
    assert any(line.split() == ["by", "type:", "(not", "classified)", "4"] for line in lines)


# --- the templates ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("language", "case_type", "line"),
    [
        ("es", "complaint", "Tipo:     Queja"),
        ("es", "clarification", "Tipo:     Aclaración"),
        ("en", "cancellation", "Type:        Cancellation"),
        ("en", "question", "Type:        Question"),
    ],
)
def test_the_agents_notification_shows_the_type_when_set(
    language: str, case_type: str, line: str
) -> None:
    shown = render_body(
        "agent_notification", language, context("agent_notification", case_type=case_type)
    )
    assert line in shown.text.splitlines()
    unset = render_body("agent_notification", language, context("agent_notification"))
    assert not any(row.startswith(("Tipo:", "Type:")) for row in unset.text.splitlines())
    assert ("#tipo" if language == "es" else "#type") in unset.text  # the help footer


@pytest.mark.parametrize(
    ("language", "problem", "sentence"),
    [
        ("es", "missing_type", "falta el tipo de reporte: escriba queja, consulta"),
        ("es", "bad_type", "el tipo debe ser una sola palabra: queja, consulta, aclaracion"),
        ("en", "missing_type", "the kind of report is missing: write complaint, question"),
        ("en", "bad_type", "the kind must be one word: complaint, question, clarification"),
    ],
)
def test_command_error_says_what_is_wrong_with_a_type(
    language: str, problem: str, sentence: str
) -> None:
    problems = [{"line": "#tipo reclamo", "problem": problem}]
    body = render_body("command_error", language, context("command_error", problems=problems))
    assert sentence in body.text


# --- by mail ------------------------------------------------------------------------------


@pytest.fixture
def desk(tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str) -> Desk:
    config = write_config(tmp_path, mailboxes, sink, notify=True, extra=AREAS, db_url=db_url)
    return Desk(Cli(config, capsys), mailboxes, sink, tmp_path)


@pytest.mark.integration
def test_an_agent_sets_the_type_by_mail(desk: Desk) -> None:
    folio = desk.open_case(sender=JUAN, subject="Cobro doble", body="Me cobraron dos veces.")
    notice = desk.notification(folio)
    assert "Tipo:" not in text(notice)  # not classified yet: nothing guessed
    assert "#tipo queja|consulta|aclaracion|cancelacion" in text(notice)
    told = len(desk.to(CUSTOMER))

    desk.agent_reply(notice, "#Tipo Aclaración\nRevisar con cobranza el cargo de noviembre.")

    case = desk.case(folio)
    assert case["type"] == "clarification"
    note, system = case["messages"][-2:]  # the reply is recorded, then what it did
    assert (system["kind"], system["text"]) == ("system", "type set to clarification")
    assert system["from"] == AGENT
    assert (note["kind"], note["text"]) == ("note", "Revisar con cobranza el cargo de noviembre.")
    assert len(desk.to(CUSTOMER)) == told  # the rest is a note: nothing relayed
    # The agents' next notice of the case says its type.
    desk.deliver(
        mail(sender=JUAN, subject=f"RE: [Folio {folio}] Cobro doble", body="¿Ya lo revisaron?")
    )
    assert "Tipo:     Aclaración" in text(desk.notification(folio)).splitlines()
    # The same type again changes and records nothing.
    entries = len(desk.case(folio)["messages"])
    desk.agent_reply(desk.notification(folio), "#type clarification\nSigue igual.")
    assert [m["kind"] for m in desk.case(folio)["messages"][entries:]] == ["note"]


@pytest.mark.integration
def test_the_type_goes_with_other_commands(desk: Desk) -> None:
    folio = desk.open_case(sender=JUAN, subject="Sin internet", body="No tengo internet.")
    desk.agent_reply(
        desk.notification(folio), "#tipo queja\n#area redes\nRevisar el nodo de la colonia."
    )
    case = desk.case(folio)
    assert (case["type"], case["area"]) == ("complaint", "redes")
    told = len(desk.to(CUSTOMER))
    desk.agent_reply(
        desk.notification(folio),
        "#resolver procedente\n#tipo cancelacion\nSe cambió el conector del poste.",
    )
    case = desk.case(folio)
    assert (case["type"], case["status"], case["outcome"]) == ("cancellation", "resolved", "valid")
    [resolution] = desk.to(CUSTOMER)[told:]  # the causes still reach the customer
    assert "Se cambió el conector del poste." in text(resolution)


@pytest.mark.integration
def test_a_bad_type_by_mail_runs_nothing_and_tells_the_agent(desk: Desk) -> None:
    folio = desk.open_case(sender=JUAN, subject="Sin internet", body="No tengo internet.")
    told = len(desk.to(CUSTOMER))

    desk.agent_reply(desk.notification(folio), "#tipo reclamo\n#cerrar\nYa quedó.")

    case = desk.case(folio)
    assert (case["type"], case["status"]) == (None, "open")
    assert len(desk.to(CUSTOMER)) == told
    error = desk.last_to(AGENT)
    body = text(error)
    assert "#tipo reclamo" in body
    assert "el tipo debe ser una sola palabra: queja, consulta, aclaracion o cancelacion." in body
    assert "#tipo queja|consulta|aclaracion|cancelacion" in body  # the valid forms


# --- the command line ---------------------------------------------------------------------


@pytest.fixture
def cli(tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str) -> Cli:
    return Cli(write_config(tmp_path, mailboxes, sink, db_url=db_url), capsys)


def _phone_case(cli: Cli, *options: str) -> str:
    code, out, err = cli(
        "cases", "open", "--channel", "phone", "--subject", "Llamada", "--text", "Llamó.",
        *options, "--json",
    )  # fmt: skip
    assert code == 0, err
    return str(json.loads(out)["folio"])


@pytest.mark.integration
def test_the_command_line_sets_lists_and_shows_the_type(cli: Cli) -> None:
    question = _phone_case(cli, "--type", "consulta")
    untyped = _phone_case(cli)
    assert cli.json("cases", "show", question)["type"] == "question"
    assert cli.json("cases", "show", question)["messages"][-1]["text"] == "type set to question"
    assert cli.json("cases", "show", untyped)["type"] is None

    code, out, err = cli("cases", "type", untyped, "--type", "Cancelación")
    assert (code, out.strip(), err) == (0, f"{untyped}: type set to cancellation", "")
    code, out, _ = cli("cases", "type", untyped, "--type", "cancellation")
    assert (code, out.strip()) == (0, f"{untyped}: already of type cancellation")
    assert [m["text"] for m in cli.json("cases", "show", untyped)["messages"]].count(
        "type set to cancellation"
    ) == 1

    listed = {c["folio"]: c["type"] for c in cli.json("cases", "list")}
    assert listed == {question: "question", untyped: "cancellation"}
    assert [c["folio"] for c in cli.json("cases", "list", "--type", "question")] == [question]
    assert [c["folio"] for c in cli.json("cases", "list", "--type", "cancelacion")] == [untyped]
    assert cli.json("cases", "list", "--type", "complaint") == []
    code, out, _ = cli("cases", "show", question)
    assert "type:        question" in out.splitlines()

    for refused in (("type", question, "--type", "reclamo"), ("list", "--type", "reclamo")):
        with pytest.raises(SystemExit) as exited:  # argparse's usage error
            cli("cases", *refused)
        assert exited.value.code == 2
        err = cli.capsys.readouterr().err
        assert "'reclamo' is not a case type (complaint or queja" in err
        assert "Traceback" not in err
    assert cli("cases", "type", "PLR-2026-999999", "--type", "queja")[0] == 4


@pytest.mark.integration
def test_merged_and_erased_cases_take_no_type(cli: Cli) -> None:
    first = _phone_case(cli, "--customer", "rosa@example.com")
    second = _phone_case(cli, "--customer", "rosa@example.com")
    assert cli("cases", "merge", second, "--into", first, "--no-notice")[0] == 0
    code, _, err = cli("cases", "type", second, "--type", "queja")
    assert code != 0
    assert f"case {second} was merged into {first}: work on {first}" in err
    assert cli.json("cases", "show", second)["type"] is None

    assert cli("cases", "close", first)[0] == 0  # an open case's customer is not forgotten
    code, _, err = cli("customers", "forget", "rosa@example.com", "--yes")
    assert code == 0, err
    code, _, err = cli("cases", "type", first, "--type", "queja")
    assert code == 2
    assert "its customer's data was erased" in err
    assert cli.json("cases", "show", first)["type"] is None


@pytest.mark.integration
def test_the_report_counts_cases_by_type(cli: Cli) -> None:
    complaint = _phone_case(cli, "--type", "queja")
    _phone_case(cli, "--type", "complaint")
    _phone_case(cli, "--type", "aclaracion")
    _phone_case(cli)
    merged = _phone_case(cli, "--customer", "rosa@example.com", "--type", "consulta")
    stays = _phone_case(cli, "--customer", "rosa@example.com")
    assert cli("cases", "merge", merged, "--into", stays, "--no-notice")[0] == 0
    assert cli("cases", "resolve", complaint, "--outcome", "valid", "--cause", "Listo.")[0] == 0

    today = datetime.now(MX).date()
    days = ["--from", str(today - timedelta(days=1)), "--to", str(today + timedelta(days=1))]
    opened = cli.json("report", *days)["opened"]

    assert opened["total"] == 5
    assert opened["by_type"] == {
        "complaint": 2,
        # The merged case's type went to the case that stays, which the report counts
        # (a classified report merged into an unclassified one lost its type).
        "question": 1,
        "clarification": 1,
        "cancellation": 0,
    }
    assert opened["no_type"] == 1
    assert cli.json("cases", "show", stays)["type"] == "question"


# --- the migration ------------------------------------------------------------------------


def test_migration_0010_upgrades_a_database_with_cases(db_url: str) -> None:
    # As 0009's test: every installation has cases whose messages refer to them, and a
    # migration that copied the cases table would be refused by the store's foreign keys.
    import sqlalchemy as sa
    from alembic import command

    from mailcase.store import SCHEMA_HEAD, Store, alembic_config

    installation_at(db_url, "0009")

    store = Store.open(db_url, auto_upgrade=True)
    try:
        with store.reading() as conn:
            rows = conn.execute(sa.text("SELECT folio, type FROM cases")).all()
            texts = conn.execute(sa.text("SELECT text FROM case_messages")).scalars().all()
        assert store.revisions() == (SCHEMA_HEAD, SCHEMA_HEAD)
    finally:
        store.dispose()
    assert [tuple(r) for r in rows] == [("PLR-2026-000001", None)]
    assert texts == ["hola"]
    # And back, with the data, and up again (alembic's own connection).
    command.downgrade(alembic_config(db_url), "0009")
    command.upgrade(alembic_config(db_url), "head")
