"""``#spam``: an agent marks a case that spam opened (the filter missed it).

The case is closed with nothing sent to the customer, counted in no figure of the
report but ``spam``, and its sender's new mail is set aside as a filter's verdict
would be, until the mark is undone. Unit tests of the parser, the rules, triage and
the figures; then the mail command, the command line and the migration through real
Dovecot and SMTP servers, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from helpers import AGENT, CONTACTO, INFO, WEB, Cli, installation_at, mail, write_config
from servers import Dovecot, SmtpSink
from test_agents import AREAS, Desk, ahead, text
from test_report import group, report
from test_triage import CASE, CUSTOMER, NO_FACTS, decide, inbound

from mailcase.casework import command_problems, spam_problem
from mailcase.classify import classify
from mailcase.commands import Command, CommandKind, parse_commands
from mailcase.models import Case, Disposition
from mailcase.report import report_json, report_lines
from mailcase.store import Store
from mailcase.triage import CaseRef, Facts, triage

MX = ZoneInfo("America/Mexico_City")
NOW = datetime(2026, 11, 27, 10, 0, tzinfo=MX)
SPAMMER = "ofertas@promo.example.net"
REDES = "redes@internet-plarey.com.mx"  # the area's notify (test_agents.AREAS)

# --- parsing ------------------------------------------------------------------------------


@pytest.mark.parametrize("line", ["#spam", "#Spam.", "#SPAM:", "#correo-basura"])
def test_spam_is_read_in_either_spelling(line: str) -> None:
    parsed = parse_commands(f"{line}\nPublicidad de un desconocido.")
    assert parsed.problems == ()
    assert parsed.commands == (Command(CommandKind.SPAM, line=line),)
    assert parsed.text == "Publicidad de un desconocido."


@pytest.mark.parametrize("line", ["#spam no", "#spam off", "#Spam No.", "#correo-basura no"])
def test_spam_no_undoes_the_mark(line: str) -> None:
    parsed = parse_commands(line)
    assert parsed.commands == (Command(CommandKind.SPAM, stop=True, line=line),)


@pytest.mark.parametrize("line", ["#spam si", "#spam no ya", "#spam publicidad"])
def test_spam_takes_no_other_word(line: str) -> None:
    parsed = parse_commands(line)
    assert parsed.commands == ()
    assert [p.problem for p in parsed.problems] == ["unexpected_argument"]


# --- the rules ----------------------------------------------------------------------------


def _problems(reply: str, *, spam: bool = False) -> list[str]:
    parsed = parse_commands(reply)
    assert not parsed.problems, parsed.problems
    found = command_problems(parsed.commands, parsed.text, "open", NOW, spam=spam)
    return [code for _, code in found]


def test_spam_goes_alone_or_with_a_note() -> None:
    assert _problems("#spam\nPublicidad.") == []
    assert _problems("#nota\n#spam\nPublicidad.") == []
    assert _problems("#spam no\n#nota\nEra un cliente.") == []
    assert _problems("#spam\n#resolver procedente\nListo.") == ["spam_alone"]
    assert _problems("#tipo queja\n#spam") == ["spam_alone"]
    assert _problems("#spam no\n#reabrir") == ["spam_alone"]


def test_a_case_marked_spam_is_not_reopened() -> None:
    assert _problems("#reabrir", spam=True) == ["reopen_spam"]
    assert _problems("#reabrir") == []


def test_only_a_case_opened_by_mail_and_of_no_outage_is_spam() -> None:
    def case(**fields: Any) -> Case:
        values: dict[str, Any] = {"folio": "PLR-2026-000001", "customer": CUSTOMER}
        return Case(mailbox="contacto", created_at=NOW, updated_at=NOW, **(values | fields))

    assert spam_problem(case()) is None
    assert spam_problem(case(channel="phone", customer="")) == "spam_channel"
    assert spam_problem(case(channel="web")) == "spam_channel"
    assert spam_problem(case(outage_id=7)) == "spam_outage"
    assert spam_problem(case(), is_main=True) == "spam_main"


# --- triage -------------------------------------------------------------------------------

MARKED = CaseRef(id=3, folio="PLR-2026-000003", customer=CUSTOMER, status="closed", spam=True)
BLOCKED = "sender's case PLR-2026-000003 was marked spam"


def test_mail_following_a_case_marked_spam_is_set_aside() -> None:
    for facts in (Facts(by_reference=MARKED), Facts(by_folio=(MARKED,))):
        decision = decide(inbound(subject="Re: [Folio PLR-2026-000003] Gane dinero"), facts)
        assert decision.disposition is Disposition.SPAM
        assert decision.reason == "follows case PLR-2026-000003, marked spam"
        assert decision.case is None and not decision.open_case and not decision.acknowledge


def test_a_customers_case_that_is_not_spam_still_takes_their_mail() -> None:
    # The thread of the spam case, the subject naming their real one: it joins that one.
    decision = decide(inbound(subject="Re: [Folio PLR-2026-000001]"), Facts(
        by_reference=MARKED, by_folio=(CASE,)
    ))  # fmt: skip
    assert (decision.disposition, decision.case) == (Disposition.FOLLOW_UP, CASE)


def test_the_agents_verdict_sets_a_new_mail_aside_as_a_filters_does() -> None:
    def blocked(facts: Facts = NO_FACTS) -> Any:
        new = inbound(subject="Otra oferta")
        return triage(new, classify(new), facts, spam=BLOCKED)

    decision = blocked()
    assert (decision.disposition, decision.reason) == (Disposition.SPAM, BLOCKED)
    # Naming the spam case's folio in the text is no customer's report of their own.
    assert blocked(Facts(in_text=(MARKED,))).disposition is Disposition.SPAM
    # A reply of theirs that follows a case that is not spam is theirs: a new case, linked.
    closed = CaseRef(id=1, folio=CASE.folio, customer=CUSTOMER, status="closed")
    decision = blocked(Facts(by_reference=closed))
    assert decision.disposition is Disposition.NEW_CASE and decision.related == (CASE.folio,)


# --- the figures --------------------------------------------------------------------------


def test_spam_cases_are_counted_only_as_spam() -> None:
    figures = report(
        [
            group(1, status="resolved", outcome="valid"),
            group(2, status="closed", spam=True),
            group(1, status="closed", outcome="invalid", spam=True, visit=True),
            group(1, status="closed", merged=True, spam=True),  # merged: only as merged
        ],
        mailboxes=["contacto"],
    )
    assert (figures.spam, figures.merged, figures.opened) == (3, 1, 1)
    assert figures.by_mailbox == {"contacto": 1}
    assert (figures.resolved, figures.invalid, figures.closed_without_resolution) == (1, 0, 0)
    assert figures.visits == 0
    assert report_json(figures)["spam"] == 3
    [line] = [line for line in report_lines(figures) if line.startswith("marked spam")]
    assert line.split() == ["marked", "spam", "3"]


# --- through a real poll ------------------------------------------------------------------


@pytest.fixture
def desk(tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str) -> Desk:
    config = write_config(tmp_path, mailboxes, sink, notify=True, extra=AREAS, db_url=db_url)
    return Desk(Cli(config, capsys), mailboxes, sink, tmp_path)


def _spam(subject: str = "Gane dinero desde casa", **kw: Any) -> bytes:
    return mail(sender=f"Ofertas <{SPAMMER}>", subject=subject, body="Oferta limitada.", **kw)


def _spam_case(desk: Desk) -> str:
    """A spam the filter missed opens a case, acknowledged; its folio."""
    folio = desk.open_case(sender=f"Ofertas <{SPAMMER}>", subject="Gane dinero desde casa")
    assert len(desk.to(SPAMMER)) == 1
    return folio


def _ledger(desk: Desk) -> dict[str, Any]:
    return desk.cli.json("messages", "list")[-1]  # type: ignore[no-any-return]


def _today() -> list[str]:
    today = str(datetime.now(MX).date())
    return ["--from", today, "--to", today]


@pytest.mark.integration
def test_an_agents_spam_closes_the_case_unsaid_and_sets_the_senders_new_mail_aside(
    desk: Desk,
) -> None:
    folio = _spam_case(desk)
    sent = len(desk.sink.messages)

    desk.agent_reply(desk.notification(folio), "#spam\nPublicidad de un desconocido.")

    # Nothing reached anybody: the customer (the forged sender), nor the agent.
    assert len(desk.sink.messages) == sent
    shown = desk.case(folio)
    assert (shown["status"], shown["spam"]) == ("closed", True) and shown["spam_at"]
    texts = [(m["kind"], m["text"]) for m in shown["messages"]]
    assert ("system", f"marked spam by {AGENT}") in texts
    assert ("note", "Publicidad de un desconocido.") in texts
    assert desk.cli.json("cases", "list")[0]["spam"] is True
    # Out of the figures, counted as spam.
    figures = desk.cli.json("report", *_today())
    assert figures["spam"] == 1 and figures["opened"]["total"] == 0
    assert figures["closed_without_resolution"] == 0 and figures["first_answer"]["unanswered"] == 0
    code, out, _ = desk.cli("report", *_today())
    assert code == 0 and re.search(r"^marked spam +1$", out, re.MULTILINE), out

    # The sender's next mail opens nothing, is answered by nobody and told to nobody.
    desk.deliver(_spam("Otra oferta irresistible"))
    row = _ledger(desk)
    assert (row["disposition"], row["folio"]) == ("spam", None)
    assert row["reason"] == f"sender's case {folio} was marked spam"
    # A reply to its acknowledgement neither: set aside, the case unchanged.
    ack = desk.to(SPAMMER)[0]
    messages = len(desk.case(folio)["messages"])
    desk.deliver(_spam(f"Re: {ack['Subject']}", headers={"In-Reply-To": ack["Message-ID"]}))
    row = _ledger(desk)
    assert (row["disposition"], row["folio"]) == ("spam", None)
    assert row["reason"] == f"follows case {folio}, marked spam"
    assert len(desk.case(folio)["messages"]) == messages
    assert len(desk.cli.json("cases", "list")) == 1
    assert len(desk.sink.messages) == sent
    # Another customer is not touched by it.
    desk.deliver(mail(subject="Sin internet"))
    assert _ledger(desk)["disposition"] == "new_case"


@pytest.mark.integration
def test_undoing_the_mark_lifts_the_block_and_a_release_still_opens_the_case(desk: Desk) -> None:
    folio = _spam_case(desk)
    code, out, err = desk.cli("cases", "spam", folio)
    assert (code, out.strip()) == (0, f"{folio}: marked spam"), err
    assert desk.cli("cases", "spam", folio)[1].strip() == f"{folio}: already marked spam"
    # Reopened only once it is spam no more.
    code, _, err = desk.cli("cases", "reopen", folio)
    assert code == 1 and f"case {folio} is marked spam: undo it first" in err

    desk.deliver(_spam("Otra oferta"))
    uid = _ledger(desk)["uid"]
    assert _ledger(desk)["disposition"] == "spam"
    # A person's release passes no verdict: the case opens, acknowledged.
    code, out, err = desk.cli("messages", "release", str(uid), "--mailbox", "contacto")
    assert code == 0 and out.strip().endswith(": new_case"), err
    assert len(desk.to(SPAMMER)) == 2

    code, out, err = desk.cli("cases", "spam", folio, "--undo")
    assert (code, out.strip()) == (0, f"{folio}: spam mark removed"), err
    assert desk.cli("cases", "spam", folio, "--undo")[1].strip() == f"{folio}: not marked spam"
    shown = desk.case(folio)
    assert (shown["status"], shown["spam"], shown["spam_at"]) == ("closed", False, None)
    assert any(re.fullmatch(r"spam mark removed by cli:\S+", m["text"]) for m in shown["messages"])
    assert desk.cli.json("report", *_today())["spam"] == 0

    desk.deliver(_spam("Tercera oferta"))
    assert _ledger(desk)["disposition"] == "new_case"
    assert len(desk.to(SPAMMER)) == 3


@pytest.mark.integration
def test_a_visit_ahead_is_cancelled_without_a_word_to_the_customer(desk: Desk) -> None:
    folio = _spam_case(desk)
    assert desk.cli("cases", "route", folio, "--area", "redes")[0] == 0
    day = str(ahead(3))
    assert desk.cli("cases", "visit", folio, "--date", day, "--time", "10:00")[0] == 0
    told, area = len(desk.to(SPAMMER)), len(desk.to(REDES))  # the visit's notices

    desk.agent_reply(desk.notification(folio), "#spam")

    # Not even queued for the customer; the area hears of it: no technician goes out.
    assert len(desk.to(SPAMMER)) == told
    kinds = [(n["kind"], n["to"]) for n in desk.cli.json("outbox", "list")]
    assert ("visit_cancelled", SPAMMER) not in kinds
    [cancelled] = desk.to(REDES)[area:]
    assert folio in str(cancelled["Subject"])
    shown = desk.case(folio)
    assert shown["visit"] is None and shown["status"] == "closed"
    assert any(m["text"] == f"home visit of {day} 10:00 cancelled" for m in shown["messages"])


@pytest.mark.integration
def test_spam_with_another_command_or_on_a_phone_case_is_refused(desk: Desk) -> None:
    folio = _spam_case(desk)
    desk.agent_reply(desk.notification(folio), "#spam\n#tipo queja")
    [error] = desk.to(AGENT)
    assert "#spam va solo en su respuesta" in text(error)
    assert desk.case(folio)["status"] == "open" and desk.case(folio)["spam"] is False

    phone = desk.open_phone_case()
    code, _, err = desk.cli("cases", "spam", phone)
    assert code == 1 and f"case {phone} was not opened by mail (channel phone)" in err


@pytest.mark.integration
def test_an_acknowledgement_not_sent_yet_is_never_sent(desk: Desk) -> None:
    desk.sink.fail_next(451, "4.3.0 try again later")  # the acknowledgement, queued first
    desk.deliver(_spam())
    [case] = desk.cli.json("cases", "list")
    assert desk.to(SPAMMER) == []

    assert desk.cli("cases", "spam", case["folio"])[0] == 0
    assert desk.cli("outbox", "retry", "--all")[0] == 0
    desk.cli.poll()

    assert desk.to(SPAMMER) == []
    [ack] = [n for n in desk.cli.json("outbox", "list") if n["kind"] == "acknowledgement"]
    assert (ack["status"], ack["last_error"]) == (
        "suppressed",
        "not sent: the case was marked spam",
    )


@pytest.mark.integration
def test_copies_of_a_blocked_senders_mail_are_set_aside_once(desk: Desk) -> None:
    folio = _spam_case(desk)
    assert desk.cli("cases", "spam", folio)[0] == 0
    raw = _spam("Oferta para los dos buzones", to=f"{CONTACTO}, {INFO}")
    [uid] = desk.imap.append_many("contacto", [raw])
    desk.imap.append("info", raw)
    desk.cli.poll()
    rows = desk.cli.json("messages", "list")[-2:]
    assert {r["mailbox"]: r["disposition"] for r in rows} == {
        "contacto": "spam",
        "info": "duplicate",
    }
    # Released, one case, its copy following it, as for a filter's spam.
    code, _, err = desk.cli("messages", "release", str(uid), "--mailbox", "contacto")
    assert code == 0, err
    folios = {r["folio"] for r in desk.cli.json("messages", "list")[-2:]}
    assert len(folios) == 1 and None not in folios and folio not in folios


@pytest.mark.integration
def test_a_web_forms_own_address_is_never_blocked(desk: Desk) -> None:
    # A form that sends no usable Reply-To files everyone's mail under its own address.
    desk.deliver(mail(sender=f"Formulario <{WEB}>", subject="Gane dinero desde casa"))
    [case] = desk.cli.json("cases", "list")
    assert case["customer"] == WEB
    assert desk.cli("cases", "spam", case["folio"])[0] == 0

    desk.deliver(mail(sender=f"Formulario <{WEB}>", subject="Sin servicio en mi casa"))

    assert _ledger(desk)["disposition"] == "new_case"


@pytest.mark.integration
def test_a_reply_that_would_reopen_a_case_marked_spam_meanwhile_is_set_aside(
    desk: Desk, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mailcase import service

    folio = _spam_case(desk)
    code, _, err = desk.cli("cases", "resolve", folio, "--outcome", "invalid", "--cause", "No.")
    assert code == 0, err
    assert desk.cli("cases", "spam", folio)[0] == 0
    # Triage reads the case as it was before the mark (another session marked it between
    # triage and the lock, on PostgreSQL): a reply within the reopen window reopens it.
    real, stale = service.case_ref, [True]

    def before_the_mark(session: Any, case: Case) -> CaseRef:
        ref = real(session, case)
        if stale and ref.spam:
            stale.clear()
            return replace(ref, spam=False)
        return ref

    monkeypatch.setattr(service, "case_ref", before_the_mark)
    ack = desk.to(SPAMMER)[0]

    desk.deliver(_spam(f"Re: {ack['Subject']}", headers={"In-Reply-To": ack["Message-ID"]}))

    assert not stale  # the stale reading was made
    row = _ledger(desk)
    assert (row["disposition"], row["reason"]) == ("spam", f"follows case {folio}, marked spam")
    assert desk.case(folio)["status"] == "closed"


@pytest.mark.integration
def test_spam_on_a_report_of_an_outage_is_refused_by_mail(desk: Desk) -> None:
    main = desk.open_case(subject="Sin internet en la colonia Centro")
    report = _spam_case(desk)
    assert desk.cli("cases", "outage", report, "--of", main, "--no-notice")[0] == 0

    desk.agent_reply(desk.notification(report), "#spam")

    [error] = desk.to(AGENT)
    assert "este caso es un reporte de una falla general: sáquelo primero" in text(error)
    assert desk.case(report)["spam"] is False
    assert desk.cli("messages", "list", "--disposition", "quarantined", "--json")[1] == "[]\n"


def test_migration_0015_upgrades_a_database_with_cases(db_url: str) -> None:
    # As 0014's test: an installation with a case whose message refers to it upgrades in
    # place on both backends, its case not spam.
    from alembic import command

    from mailcase.store import SCHEMA_HEAD, alembic_config

    installation_at(db_url, "0014")
    store = Store.open(db_url, auto_upgrade=True)
    try:
        assert store.revisions() == (SCHEMA_HEAD, SCHEMA_HEAD)
        with store.reading() as conn:
            rows = conn.execute(sa.text("SELECT folio, spam_at FROM cases")).all()
            texts = conn.execute(sa.text("SELECT text FROM case_messages")).scalars().all()
            indexes = {i["name"] for i in sa.inspect(conn).get_indexes("cases")}
        assert "ix_cases_spam_customer" in indexes
    finally:
        store.dispose()
    assert [tuple(r) for r in rows] == [("PLR-2026-000001", None)]
    assert texts == ["hola"]
    command.downgrade(alembic_config(db_url), "0014")
    command.upgrade(alembic_config(db_url), "head")


def test_the_spam_index_is_partial() -> None:
    # As outage_id's: a new case (not spam) costs the index nothing.
    [index] = [i for i in Case.__table__.indexes if i.name == "ix_cases_spam_customer"]  # type: ignore[attr-defined]
    assert str(index.dialect_options["sqlite"]["where"]) == "spam_at IS NOT NULL"
    assert str(index.dialect_options["postgresql"]["where"]) == "spam_at IS NOT NULL"


# Third review's findings, each reproduced before its fix.


@pytest.mark.integration
def test_a_case_marked_spam_is_not_merged(desk: Desk) -> None:
    # Merged, its mark could never be undone, and its sender would stay blocked for good.
    legit = desk.open_case(sender=f"Ofertas <{SPAMMER}>", subject="Sin internet")
    desk.deliver(_spam())
    marked = desk.cli.json("cases", "list")[0]["folio"]
    assert desk.cli("cases", "spam", marked)[0] == 0
    code, out, err = desk.cli("cases", "merge", marked, "--into", legit)
    assert (code, out) == (1, "")
    assert f"case {marked} is marked spam: undo the mark first" in err
    assert desk.case(marked)["merged_into"] is None
    # By mail too: a command error, nothing merged.
    notice = desk.notification(marked)
    desk.agent_reply(notice, f"#fusionar {legit}")
    assert desk.case(marked)["merged_into"] is None


@pytest.mark.integration
def test_an_agents_reply_on_a_case_marked_spam_reaches_nobody(desk: Desk) -> None:
    # Resolved before the mark, the case would take replies within cases.reopen_days.
    desk.deliver(_spam())
    folio = desk.cli.json("cases", "list")[0]["folio"]
    notice = desk.notification(folio)
    code, _, err = desk.cli("cases", "resolve", folio, "--outcome", "invalid", "--cause", "No.")
    assert code == 0, err
    desk.agent_reply(notice, "#spam")
    sent = len(desk.to(SPAMMER))
    desk.agent_reply(notice, "Gracias por escribirnos, le atendemos enseguida.")
    desk.agent_reply(notice, "#respuesta reinicio-modem")
    assert len(desk.to(SPAMMER)) == sent
    told = [m for m in desk.to(AGENT) if "marcado como correo basura" in text(m)]
    assert len(told) == 2


@pytest.mark.integration
def test_a_failed_acknowledgement_of_a_case_marked_spam_is_never_retried(desk: Desk) -> None:
    desk.sink.fail_next(550, "5.7.1 relay policy")
    desk.deliver(_spam())
    [case] = desk.cli.json("cases", "list")
    assert desk.cli("cases", "spam", case["folio"])[0] == 0
    [ack] = [n for n in desk.cli.json("outbox", "list") if n["kind"] == "acknowledgement"]
    assert ack["status"] == "suppressed"
    assert desk.cli("outbox", "retry", "--all")[0] == 0
    code, out, _ = desk.cli("outbox", "retry", str(ack["id"]))
    assert code == 0 and out.strip() == "0 notice(s) queued for delivery"
    desk.cli.poll()
    assert desk.to(SPAMMER) == []
    # Undone, the mark no longer stands in the way of a retry.
    assert desk.cli("cases", "spam", case["folio"], "--undo")[0] == 0
    code, out, _ = desk.cli("outbox", "retry", str(ack["id"]))
    assert out.strip() == "1 notice(s) queued for delivery"
