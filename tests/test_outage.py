"""Mass outages ("falla general"): many customers' reports followed and resolved as one.

A fibre is cut in one neighbourhood and thirty customers write within the hour. One
case, the main case, follows the failure; the others are its reports (``#masivo FOLIO``
/ ``#outage FOLIO``, ``mailcase cases outage FOLIO --of MAIN``), as OTRS/Znuny ITSM's
master and slave tickets and Request Tracker's parent and child links. Resolving the
main case resolves each open report, each customer told under their own folio. Unit
tests of the parser and the rules, then the mail commands through real Dovecot and SMTP
servers, the command line, reminders, merges and the migration on SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from helpers import AGENT, Cli, installation_at, write_config
from servers import Dovecot, SmtpSink
from test_agents import AREAS, CUSTOMER, Desk, ahead, text
from test_templates_all import context

from mailcase.casework import command_problems
from mailcase.commands import COMMAND_FORMS, Command, CommandKind, CommandProblem, parse_commands
from mailcase.merging import merge_problem
from mailcase.models import Case, CaseStatus
from mailcase.outages import outage_problem
from mailcase.render import render_body
from mailcase.store import Store

MX = ZoneInfo("America/Mexico_City")
NOW = datetime(2026, 11, 26, 10, 0, tzinfo=MX)
MAIN = "PLR-2026-000001"
CAUSE = "Se reparó la fibra cortada en la colonia Centro."

NEWS = "Estimamos restablecer el servicio hoy a las 18:00."

ANA = "ana.lopez@example.com"
LUIS = "luis.mora@example.com"

# --- parsing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "folio"),
    [
        (f"#masivo {MAIN}", MAIN),
        (f"#outage {MAIN}", MAIN),
        (f"#Masivo: {MAIN}", MAIN),
        ("#MASIVO PLR 2026 1", "PLR 2026 1"),  # as written: the service reads the folio
    ],
)
def test_masivo_and_outage_read_the_main_cases_folio(line: str, folio: str) -> None:
    parsed = parse_commands(f"{line}\nFalla general en la colonia.")
    assert parsed.problems == ()
    assert parsed.commands == (Command(CommandKind.OUTAGE, folio=folio, line=line),)
    assert parsed.text == "Falla general en la colonia."


@pytest.mark.parametrize("line", ["#masivo no", "#outage off", "#Masivo No.", "#outage cancel"])
def test_masivo_no_and_outage_off_take_the_case_out(line: str) -> None:
    parsed = parse_commands(line)
    assert parsed.problems == ()
    assert parsed.commands == (Command(CommandKind.OUTAGE, stop=True, line=line),)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("#masivo", "missing_folio"),
        ("#outage", "missing_folio"),
        ("#masivo no ya", "unexpected_argument"),
    ],
)
def test_a_malformed_masivo_is_a_problem(line: str, problem: str) -> None:
    assert parse_commands(line).problems == (CommandProblem(line, problem),)


@pytest.mark.parametrize("line", ["#masivo aviso", "#outage update", "#Masivo Aviso:"])
def test_masivo_aviso_and_outage_update_read_news_of_the_outage(line: str) -> None:
    parsed = parse_commands(f"{line}\n{NEWS}")
    assert parsed.problems == ()
    assert parsed.commands == (Command(CommandKind.OUTAGE, update=True, line=line),)
    assert parsed.text == NEWS
    assert parse_commands("#masivo aviso ya").problems == (
        CommandProblem("#masivo aviso ya", "unexpected_argument"),
    )


def test_the_help_footer_lists_masivo() -> None:
    assert "#masivo FOLIO | no | aviso / #outage FOLIO | off | update" in COMMAND_FORMS


# --- the rules ----------------------------------------------------------------------------


def _commands(block: str) -> tuple[Command, ...]:
    parsed = parse_commands(block)
    assert parsed.problems == ()
    return parsed.commands


@pytest.mark.parametrize(
    ("block", "status", "codes"),
    [
        (f"#masivo {MAIN}", CaseStatus.OPEN, []),
        (f"#masivo {MAIN}", CaseStatus.CLOSED, ["case_closed"]),
        (f"#masivo {MAIN}", CaseStatus.RESOLVED, ["case_resolved"]),
        (f"#reabrir\n#masivo {MAIN}", CaseStatus.CLOSED, []),
        ("#masivo no", CaseStatus.CLOSED, []),  # bookkeeping: any status
        (f"#cerrar\n#masivo {MAIN}", CaseStatus.OPEN, ["after_close"]),
        (f"#resolver procedente\n#masivo {MAIN}", CaseStatus.OPEN, ["after_resolve"]),
        (f"#pendiente\n#masivo {MAIN}", CaseStatus.OPEN, ["pending_conflict"]),
        (f"#masivo {MAIN}\n#masivo no", CaseStatus.OPEN, ["repeated"]),
        (f"#masivo {MAIN}\n#area redes\n#asignar yo", CaseStatus.OPEN, []),
        ("#masivo aviso", CaseStatus.OPEN, []),
        ("#masivo aviso\n#asignar yo", CaseStatus.OPEN, []),
        ("#masivo aviso", CaseStatus.CLOSED, ["case_closed"]),
        ("#masivo aviso\n#nota", CaseStatus.OPEN, ["update_conflict"]),
        ("#resolver procedente\n#masivo aviso", CaseStatus.OPEN, ["update_conflict"]),
        ("#masivo aviso\n#cerrar", CaseStatus.OPEN, ["update_conflict"]),
        ("#masivo aviso\n#pendiente", CaseStatus.OPEN, ["pending_conflict"]),
    ],
)
def test_masivo_joins_an_open_case_only(block: str, status: str, codes: list[str]) -> None:
    problems = command_problems(_commands(block), "causas", status, NOW)
    assert [code for _, code in problems] == codes


def _case(case_id: int, **fields: Any) -> Case:
    return Case(
        id=case_id,
        folio=f"PLR-2026-{case_id:06d}",
        customer=f"c{case_id}@example.com",
        mailbox="contacto",
        created_at=NOW,
        updated_at=NOW,
        **fields,
    )


@pytest.mark.parametrize(
    ("case", "main", "case_is_main", "code"),
    [
        (_case(2), _case(1), False, None),
        (_case(1), _case(1), False, "outage_same_case"),
        (_case(2), _case(1, outage_id=9), False, "outage_chain"),
        (_case(2), _case(1), True, "outage_main"),
        (_case(2), _case(1, status=CaseStatus.CLOSED), False, "outage_closed"),
        (_case(2), _case(1, status=CaseStatus.RESOLVED), False, "outage_resolved"),
    ],
)
def test_outage_problem(case: Case, main: Case, case_is_main: bool, code: str | None) -> None:
    assert outage_problem(case, main, case_is_main=case_is_main) == code


@pytest.mark.parametrize(
    ("source", "target", "source_is_main", "target_is_main", "code"),
    [
        (_case(2), _case(3), False, False, None),
        (_case(2, outage_id=1), _case(3), False, False, None),  # the target takes the link
        (_case(2, outage_id=1), _case(1), False, True, None),  # a report into its main case
        (_case(2, outage_id=1), _case(3, outage_id=1), False, False, None),
        (_case(2, outage_id=1), _case(3, outage_id=9), False, False, "merge_outage"),
        (_case(2, outage_id=1), _case(3), False, True, "merge_outage"),  # it would chain
        (_case(2), _case(3, outage_id=9), True, False, "merge_outage"),
        (_case(2), _case(3), True, True, None),  # the reports move to the case that stays
    ],
)
def test_merge_problem_of_outages(
    source: Case, target: Case, source_is_main: bool, target_is_main: bool, code: str | None
) -> None:
    source.customer = target.customer = CUSTOMER  # one customer's cases
    problem = merge_problem(
        source, target, NOW, source_is_main=source_is_main, target_is_main=target_is_main
    )
    assert problem == code


@pytest.mark.parametrize(
    ("language", "words"),
    [
        ("es", "forma parte de una falla general en su zona, que ya estamos atendiendo."),
        ("en", "is part of a general failure in your area, which we are already working on."),
    ],
)
def test_the_outage_joined_notice_names_the_customers_own_folio_only(
    language: str, words: str
) -> None:
    body = render_body("outage_joined", language, context("outage_joined"))
    assert body.html is not None
    assert words in body.text
    assert "PLR-2026-000123" in body.text and "PLR-2026-000123" in body.html


# --- by mail, through the real servers ------------------------------------------------------


@pytest.fixture
def desk(tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str) -> Desk:
    config = write_config(tmp_path, mailboxes, sink, notify=True, extra=AREAS, db_url=db_url)
    return Desk(Cli(config, capsys), mailboxes, sink, tmp_path)


def _report(desk: Desk, sender: str, body: str = "No tengo internet.") -> str:
    return desk.open_case(sender=sender, subject="Sin internet", body=body)


def _resolutions(desk: Desk, rcpt: str) -> list[EmailMessage]:
    return [m for m in desk.to(rcpt) if "procedente" in text(m).lower() and CAUSE in text(m)]


@pytest.mark.integration
def test_reports_joined_by_mail_are_resolved_with_the_main_case_each_under_its_folio(
    desk: Desk,
) -> None:
    main = _report(desk, f"Juan Pérez <{CUSTOMER}>")
    ana = _report(desk, f"Ana López <{ANA}>")
    luis = _report(desk, f"Luis Mora <{LUIS}>", body="Sin servicio desde las 9.")
    closed = _report(desk, "Rosa <rosa@example.com>")

    desk.agent_reply(desk.notification(ana), f"#masivo {main}\nFibra cortada en la Centro.")
    desk.agent_reply(desk.notification(luis), f"#outage {main}")
    desk.agent_reply(desk.notification(closed), f"#masivo {main}")
    assert desk.cli("cases", "close", closed)[0] == 0

    # Each report's customer was told, under their own folio, which case follows the failure.
    [joined] = [m for m in desk.to(ANA) if "falla general" in text(m)]
    assert ana in str(joined["Subject"]) and main not in text(joined)
    assert "Fibra cortada" not in text(joined)  # the agent's words are a note
    assert desk.case(ana)["outage"] == main
    assert desk.case(main)["outage_reports"] == [ana, luis, closed]
    assert "report of the outage " + main in [m["text"] for m in desk.case(ana)["messages"]]

    desk.agent_reply(desk.notification(main), f"#resolver procedente\n{CAUSE}")

    for folio, customer in ((main, CUSTOMER), (ana, ANA), (luis, LUIS)):
        [resolution] = _resolutions(desk, customer)
        assert f"[Folio {folio}]" in str(resolution["Subject"])
        case = desk.case(folio)
        assert (case["status"], case["outcome"], case["cause"]) == ("resolved", "valid", CAUSE)
    assert f"resolved with the outage {main}" in [m["text"] for m in desk.case(luis)["messages"]]
    # A report closed already is left alone: no resolution, no notice.
    assert desk.case(closed)["status"] == "closed"
    assert _resolutions(desk, "rosa@example.com") == []


@pytest.mark.integration
def test_a_resolved_report_ends_its_wait_and_cancels_its_visit(desk: Desk) -> None:
    main = _report(desk, f"Juan Pérez <{CUSTOMER}>")
    ana = _report(desk, f"Ana López <{ANA}>")
    assert (
        desk.cli("cases", "visit", ana, "--date", ahead(3).isoformat(), "--time", "10:00")[0] == 0
    )
    assert desk.cli("cases", "outage", ana, "--of", main, "--no-notice")[0] == 0

    code, out, err = desk.cli("cases", "resolve", main, "--outcome", "invalid", "--cause", CAUSE)

    assert code == 0, err
    assert out.splitlines() == [
        f"{main}: resolve done",
        f"{main}: resolved with it, the reports of its outage: {ana}",
    ]
    case = desk.case(ana)
    assert (case["status"], case["outcome"], case["visit"]) == ("resolved", "invalid", None)
    [resolution] = [m for m in desk.to(ANA) if CAUSE in text(m)]
    assert "ya no es necesaria: queda cancelada" in text(resolution)


@pytest.mark.integration
def test_a_problem_with_masivo_runs_nothing_and_tells_the_agent(desk: Desk) -> None:
    main = _report(desk, f"Juan Pérez <{CUSTOMER}>")
    ana = _report(desk, f"Ana López <{ANA}>")
    desk.cli("cases", "resolve", main, "--outcome", "valid", "--cause", CAUSE)

    desk.agent_reply(desk.notification(ana), f"#masivo {main}")
    desk.agent_reply(desk.notification(ana), "#masivo PLR-2026-000999")

    errors = [text(m) for m in desk.to(AGENT)]
    assert any("ya está resuelto" in t and "#masivo" in t for t in errors)
    assert any("no hay un caso con ese folio" in t for t in errors)
    assert desk.case(ana)["outage"] is None


@pytest.mark.integration
def test_masivo_aviso_relays_the_news_to_every_open_reports_customer(desk: Desk) -> None:
    main = _report(desk, f"Juan Pérez <{CUSTOMER}>")
    ana = _report(desk, f"Ana López <{ANA}>")
    rosa = _report(desk, "Rosa <rosa@example.com>")
    for report in (ana, rosa):
        assert desk.cli("cases", "outage", report, "--of", main, "--no-notice")[0] == 0
    assert desk.cli("cases", "close", rosa)[0] == 0

    desk.agent_reply(desk.notification(main), f"#masivo aviso\n{NEWS}")

    for folio, customer in ((main, CUSTOMER), (ana, ANA)):
        [news] = [m for m in desk.to(customer) if NEWS in text(m)]
        assert f"[Folio {folio}]" in str(news["Subject"])
        assert "#masivo" not in text(news)
    assert not any(NEWS in text(m) for m in desk.to("rosa@example.com"))  # closed: left alone
    assert desk.case(main)["status"] == "open"

    # On a case that is no main case: nothing is sent, and the agent is told why.
    desk.agent_reply(desk.notification(ana), f"#outage update\n{NEWS} (2)")
    assert not any(f"{NEWS} (2)" in text(m) for m in [x.message for x in desk.sink.messages])
    assert any("no es el caso principal" in text(m) for m in desk.to(AGENT))


# --- the command line ---------------------------------------------------------------------


@pytest.mark.integration
def test_cases_outage_links_lists_and_clears(desk: Desk) -> None:
    main = _report(desk, f"Juan Pérez <{CUSTOMER}>")
    ana = _report(desk, f"Ana López <{ANA}>")
    luis = _report(desk, f"Luis Mora <{LUIS}>")
    told = len(desk.to(ANA))

    code, out, err = desk.cli("cases", "outage", ana, "--of", main)
    assert (code, out) == (0, f"{ana}: report of the outage {main}\n"), err
    assert desk.cli("cases", "outage", luis, "--of", main, "--no-notice")[0] == 0
    history = len(desk.case(ana)["messages"])
    assert desk.cli("cases", "outage", ana, "--of", main)[1] == (
        f"{ana}: already a report of the outage {main}\n"
    )
    assert len(desk.case(ana)["messages"]) == history  # nothing recorded again

    # The customer of ana was told once; luis's, with --no-notice, never.
    assert len([m for m in desk.to(ANA)[told:] if "falla general" in text(m)]) == 1
    assert not any("falla general" in text(m) for m in desk.to(LUIS))

    listed = desk.cli.json("cases", "list", "--outage", main)
    assert [c["folio"] for c in listed] == [luis, ana]
    assert {c["folio"]: c["outage"] for c in desk.cli.json("cases", "list")} == {
        main: None, ana: main, luis: main,
    }  # fmt: skip
    assert desk.case(main)["outage_reports"] == [ana, luis]
    assert desk.case(ana)["outage_reports"] == []
    shown = desk.cli("cases", "show", main)[1]
    assert f"outage_reports: {ana}, {luis}" in shown

    code, out, _ = desk.cli("cases", "outage", ana, "--clear")
    assert (code, out) == (0, f"{ana}: no longer a report of an outage\n")
    assert desk.cli("cases", "outage", ana, "--clear")[1] == f"{ana}: not a report of an outage\n"
    assert desk.case(ana)["outage"] is None
    texts = [m["text"] for m in desk.case(ana)["messages"]]
    assert texts.count(f"no longer a report of the outage {main}") == 1


@pytest.mark.integration
def test_cases_outage_refusals_change_nothing(desk: Desk) -> None:
    main = _report(desk, f"Juan Pérez <{CUSTOMER}>")
    ana = _report(desk, f"Ana López <{ANA}>")
    luis = _report(desk, f"Luis Mora <{LUIS}>")
    rosa = _report(desk, "Rosa <rosa@example.com>")
    assert desk.cli("cases", "outage", ana, "--of", main)[0] == 0

    refusals = [
        ((luis, luis), f"case {luis} cannot be a report of its own outage"),
        ((luis, ana), f"case {ana} is itself a report of the outage {main}"),  # no chains
        ((main, luis), f"case {main} is the main case of an outage"),
    ]
    assert desk.cli("cases", "close", rosa)[0] == 0
    refusals.append(((rosa, main), f"case {rosa} is closed: reopen it first"))
    for (folio, of), sentence in refusals:
        code, out, err = desk.cli("cases", "outage", folio, "--of", of)
        assert (code, out) == (1, ""), err
        assert sentence in err and err.count("\n") == 1
    assert desk.cli("cases", "outage", luis, "--of", "PLR-2026-000999")[0] == 4

    assert desk.cli("cases", "resolve", main, "--outcome", "valid", "--cause", CAUSE)[0] == 0
    code, _, err = desk.cli("cases", "outage", luis, "--of", main)
    assert code == 1 and f"case {main} is already resolved: reopen it" in err
    assert desk.cli("cases", "reopen", main)[0] == 0  # the reports are not reopened
    assert desk.case(ana)["status"] == "resolved"
    assert desk.cli("cases", "close", main)[0] == 0
    code, _, err = desk.cli("cases", "outage", luis, "--of", main)
    assert code == 1 and f"case {main} is closed: reopen it" in err
    assert desk.case(luis)["outage"] is None


@pytest.mark.integration
def test_a_merge_takes_the_outage_along(desk: Desk) -> None:
    main = _report(desk, f"Juan Pérez <{CUSTOMER}>")
    again = _report(desk, f"Juan Pérez <{CUSTOMER}>", body="Sigo sin internet.")
    ana = _report(desk, f"Ana López <{ANA}>")
    ana_again = _report(desk, f"Ana López <{ANA}>", body="¿Ya saben algo?")
    assert desk.cli("cases", "outage", ana, "--of", main, "--no-notice")[0] == 0

    # A report merged into another case of its customer: that case becomes the report.
    assert desk.cli("cases", "merge", ana, "--into", ana_again, "--no-notice")[0] == 0
    assert desk.case(ana_again)["outage"] == main
    assert desk.case(ana)["outage"] is None
    # The main case merged into another: its reports follow it.
    assert desk.cli("cases", "merge", main, "--into", again, "--no-notice")[0] == 0
    assert desk.case(again)["outage_reports"] == [ana_again]
    assert desk.case(ana_again)["outage"] == again


@pytest.mark.integration
def test_a_main_case_does_not_merge_into_a_report(desk: Desk) -> None:
    main = _report(desk, f"Juan Pérez <{CUSTOMER}>")
    other = _report(desk, f"Juan Pérez <{CUSTOMER}>", body="Otra cosa.")
    ana = _report(desk, f"Ana López <{ANA}>")
    big = _report(desk, f"Luis Mora <{LUIS}>")
    assert desk.cli("cases", "outage", ana, "--of", main, "--no-notice")[0] == 0
    assert desk.cli("cases", "outage", other, "--of", big, "--no-notice")[0] == 0

    code, _, err = desk.cli("cases", "merge", main, "--into", other)

    assert code == 1 and "belong to different outages" in err
    assert desk.case(main)["merged_into"] is None


@pytest.mark.integration
def test_a_report_earns_no_reminder_while_its_main_case_is_open(desk: Desk) -> None:
    main = _report(desk, f"Juan Pérez <{CUSTOMER}>")
    ana = _report(desk, f"Ana López <{ANA}>")

    def unanswered() -> set[str]:
        return {c["folio"] for c in desk.cli.json("cases", "list", "--unanswered")}

    assert unanswered() == {main, ana}
    assert desk.cli("cases", "outage", ana, "--of", main, "--no-notice")[0] == 0
    assert unanswered() == {main}  # the main case is reminded as usual
    # Closed without a resolution: the report is worked on its own again.
    assert desk.cli("cases", "close", main)[0] == 0
    assert unanswered() == {ana}
    assert [
        c["folio"] for c in desk.cli.json("cases", "list", "--unanswered", "--outage", main)
    ] == [ana]


@pytest.mark.integration
def test_a_phone_report_resolved_with_its_outage_is_named_to_call(desk: Desk) -> None:
    main = _report(desk, f"Juan Pérez <{CUSTOMER}>")
    phone = desk.open_phone_case()
    assert desk.cli("cases", "outage", phone, "--of", main)[0] == 0

    code, _, err = desk.cli("cases", "resolve", main, "--outcome", "valid", "--cause", CAUSE)

    assert code == 0
    assert f"reports {phone} have no customer mail address" in err
    assert desk.case(phone)["status"] == "resolved"


@pytest.mark.integration
def test_an_agent_resolving_by_mail_is_told_to_call_a_phone_reports_customer(desk: Desk) -> None:
    main = _report(desk, f"Juan Pérez <{CUSTOMER}>")
    phone = desk.open_phone_case()
    assert desk.cli("cases", "outage", phone, "--of", main)[0] == 0
    told = len(desk.to(AGENT))

    desk.agent_reply(desk.notification(main), f"#resolver procedente\n{CAUSE}")

    assert desk.case(phone)["status"] == "resolved"
    [call] = desk.to(AGENT)[told:]
    assert phone in str(call["Subject"])
    assert f"El caso {phone} no tiene correo del cliente" in text(call)


# --- the migration ------------------------------------------------------------------------


def test_migration_0014_upgrades_a_database_with_cases(db_url: str) -> None:
    # As 0011-0013's tests: an installation with a case whose message refers to it upgrades
    # in place (a copied cases table would be refused by the store's foreign keys).
    from alembic import command

    from mailcase.store import SCHEMA_HEAD, alembic_config

    installation_at(db_url, "0013")
    store = Store.open(db_url, auto_upgrade=True)
    try:
        assert store.revisions() == (SCHEMA_HEAD, SCHEMA_HEAD)
        with store.reading() as conn:
            rows = conn.execute(sa.text("SELECT folio, outage_id FROM cases")).all()
            texts = conn.execute(sa.text("SELECT text FROM case_messages")).scalars().all()
            indexes = {i["name"] for i in sa.inspect(conn).get_indexes("cases")}
        assert "ix_cases_outage_id" in indexes
    finally:
        store.dispose()
    assert [tuple(r) for r in rows] == [("PLR-2026-000001", None)]
    assert texts == ["hola"]
    command.downgrade(alembic_config(db_url), "0013")
    command.upgrade(alembic_config(db_url), "head")


def test_the_outage_index_is_partial() -> None:
    # As merged_into_id's: a new case (no outage) costs the index nothing.
    [index] = [i for i in Case.__table__.indexes if i.name == "ix_cases_outage_id"]  # type: ignore[attr-defined]
    assert str(index.dialect_options["sqlite"]["where"]) == "outage_id IS NOT NULL"
    assert str(index.dialect_options["postgresql"]["where"]) == "outage_id IS NOT NULL"
