"""Merging a case into another: `mailcase cases merge FOLIO --into FOLIO`.

One report written twice (a customer who writes again under a new subject, a
phone call about a mail already in) becomes one case, as Zammad, OTRS and
Request Tracker merge tickets. Runs on SQLite and PostgreSQL, against real
Dovecot and SMTP servers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    AGENT,
    Cli,
    installation_at,
    mail,
    offline_runtime,
    pause_after_triage,
    write_config,
)
from servers import Dovecot, SmtpSink
from test_agents import CUSTOMER, Desk, text

pytestmark = pytest.mark.integration

JUAN = "Juan Pérez <juan.perez@example.com>"
JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8


@pytest.fixture
def cli(tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str) -> Cli:
    return Cli(write_config(tmp_path, mailboxes, sink, db_url=db_url), capsys)


def _write(cli: Cli, mailboxes: Dovecot, **fields: Any) -> None:
    mailboxes.append("contacto", mail(**fields))
    cli.poll()


def _folios(cli: Cli) -> list[str]:
    """Folios, oldest first."""
    return [case["folio"] for case in reversed(cli.json("cases", "list"))]


def _two_reports(cli: Cli, mailboxes: Dovecot) -> tuple[str, str]:
    _write(cli, mailboxes, sender=JUAN, subject="Sin internet", body="No tengo internet.")
    _write(
        cli,
        mailboxes,
        sender=JUAN,
        subject="Sigo sin servicio",
        body="Les escribí ayer, el módem sigue en rojo.",
        attachments=[("modem.jpg", "image/jpeg", JPEG)],
    )
    first, second = _folios(cli)
    return first, second


def _to(sink: SmtpSink, address: str) -> list[Any]:
    return [m.message for m in sink.messages if address in m.rcpt_tos]


def test_merge_moves_the_report_and_tells_the_customer_the_folio_that_follows(
    cli: Cli, mailboxes: Dovecot, sink: SmtpSink
) -> None:
    first, second = _two_reports(cli, mailboxes)
    acks = len(sink.messages)

    code, out, err = cli("cases", "merge", second, "--into", first)

    assert code == 0, err
    assert out.strip() == f"{second}: merged into {first}"
    merged = cli.json("cases", "show", second)
    assert merged["status"] == "closed"
    assert merged["merged_into"] == first
    assert [m["text"] for m in merged["messages"]] == [f"case merged into {first}"]
    kept = cli.json("cases", "show", first)
    assert kept["status"] == "open"
    assert kept["merged_into"] is None
    assert kept["related"] == [second]
    texts = [m["text"] for m in kept["messages"]]
    assert any("módem sigue en rojo" in t for t in texts)  # the second report, moved
    assert texts[-2] == f"case {second} merged into this case"
    assert kept["messages"][-1]["kind"] == "notice"  # the customer's, below
    # Its file went with it: cases attachment of the case that stays finds it.
    assert [a["filename"] for m in kept["messages"] for a in m["attachments"]] == ["modem.jpg"]
    assert cli("cases", "attachment", first, "1", "--output", str(cli.config.parent / "f"))[0] == 0
    assert (cli.config.parent / "f").read_bytes() == JPEG
    # The listing says which case answers for the merged one.
    listed = {c["folio"]: c["merged_into"] for c in cli.json("cases", "list")}
    assert listed == {first: None, second: first}
    # The customer is told, under the subject they wrote, which folio follows it.
    sink.wait_for(acks + 1)
    [notice] = [m.message for m in sink.messages[acks:]]
    assert notice["To"].addresses[0].addr_spec == "juan.perez@example.com"
    assert notice["Subject"] == f"[Folio {first}] Sigo sin servicio"
    text = notice.get_body(("plain",)).get_content()
    assert f"Su reporte con folio {second}" in text
    assert f"los atenderemos juntos con el folio {first}" in text
    assert notice.get_body(("html",)) is not None


def test_mail_naming_the_merged_folio_joins_the_case_that_stays(
    cli: Cli, mailboxes: Dovecot, sink: SmtpSink
) -> None:
    first, second = _two_reports(cli, mailboxes)
    assert cli("cases", "merge", second, "--into", first, "--no-notice")[0] == 0
    sent = len(sink.messages)

    _write(
        cli,
        mailboxes,
        sender=JUAN,
        subject=f"RE: [Folio {second}] Sigo sin servicio",
        body="Ya reinicié el módem y nada.",
    )

    assert _folios(cli) == [first, second]  # no new case
    kept = cli.json("cases", "show", first)
    assert kept["messages"][-1]["text"].startswith("Ya reinicié el módem y nada.")
    assert cli.json("cases", "show", second)["messages"][-1]["kind"] == "system"
    assert len(sink.messages) == sent  # a follow-up: no second acknowledgement, no notice


def test_a_reply_to_a_merged_cases_acknowledgement_joins_the_case_that_stays(
    cli: Cli, mailboxes: Dovecot, sink: SmtpSink
) -> None:
    # Threading by headers alone (the subject rewritten by the customer's client).
    first, second = _two_reports(cli, mailboxes)
    [ack] = [m.message for m in sink.messages if second in str(m.message["Subject"])]
    assert cli("cases", "merge", second, "--into", first, "--no-notice")[0] == 0

    _write(
        cli,
        mailboxes,
        sender=JUAN,
        subject="Otra cosa",
        body="Olvidé decirles que la luz LOS está en rojo.",
        headers={"In-Reply-To": ack["Message-ID"], "References": ack["Message-ID"]},
    )

    assert _folios(cli) == [first, second]
    assert "luz LOS" in cli.json("cases", "show", first)["messages"][-1]["text"]


def test_a_chain_of_merges_answers_with_the_last_case(cli: Cli, mailboxes: Dovecot) -> None:
    first, second = _two_reports(cli, mailboxes)
    _write(cli, mailboxes, sender=JUAN, subject="Tercera vez", body="Nadie me responde.")
    third = _folios(cli)[-1]
    assert cli("cases", "merge", first, "--into", second, "--no-notice")[0] == 0
    assert cli("cases", "merge", second, "--into", third, "--no-notice")[0] == 0

    _write(cli, mailboxes, sender=JUAN, subject=f"Re: [Folio {first}] Sin internet", body="¿Y?")

    assert len(_folios(cli)) == 3
    assert cli.json("cases", "show", first)["merged_into"] == third
    shown = cli.json("cases", "show", third)
    assert shown["messages"][-1]["text"].startswith("¿Y?")
    assert "No tengo internet." in [m["text"] for m in shown["messages"]]
    # Work on a merged case goes to the case that answers for it, said by name.
    code, _, err = cli("cases", "note", first, "--text", "llamé al cliente")
    assert code == 1
    assert f"case {first} was merged into {third}: work on {third}" in err


def test_a_phone_report_without_an_address_takes_the_customer_of_the_mail(
    cli: Cli, mailboxes: Dovecot
) -> None:
    code, out, err = cli(
        "cases", "open", "--channel", "phone", "--name", "Juan Pérez",
        "--subject", "Llamó: sin internet", "--text", "Sin servicio desde ayer.", "--json",
    )  # fmt: skip
    assert code == 0, err
    phone = json.loads(out)["folio"]
    _write(cli, mailboxes, sender=JUAN, subject="Sin internet", body="Les llamé hace rato.")
    # By its customer: mail is dated by its arrival, to the second (IMAP INTERNALDATE),
    # so it may list before the phone case registered within the same second.
    [by_mail] = [
        c["folio"] for c in cli.json("cases", "list", "--customer", "juan.perez@example.com")
    ]

    assert cli("cases", "merge", by_mail, "--into", phone)[0] == 0

    assert cli.json("cases", "show", phone)["customer"] == "juan.perez@example.com"
    # The customer now belongs to the phone case: their mail with its folio joins it.
    _write(cli, mailboxes, sender=JUAN, subject=f"[Folio {phone}] Sin internet", body="¿Vienen?")
    assert len(_folios(cli)) == 2
    assert cli.json("cases", "show", phone)["messages"][-1]["text"].startswith("¿Vienen?")


def test_a_phone_report_merged_into_the_mail_case_tells_the_customer_nothing(
    cli: Cli, mailboxes: Dovecot, sink: SmtpSink
) -> None:
    # The merged phone report takes the mail case's customer (so that erasure finds it);
    # it had none of its own, and its subject is the agent's words: "Cliente molesto,
    # amenaza con Profeco" went to the customer as the merge notice's subject.
    _write(cli, mailboxes, sender=JUAN, subject="Sin internet", body="No tengo internet.")
    [by_mail] = [c["folio"] for c in cli.json("cases", "list")]
    code, out, err = cli(
        "cases", "open", "--channel", "phone", "--subject", "Cliente molesto, amenaza con Profeco",
        "--text", "Llamó muy molesto.", "--json",
    )  # fmt: skip
    assert code == 0, err
    phone = json.loads(out)["folio"]
    sent = len(sink.messages)

    assert cli("cases", "merge", phone, "--into", by_mail)[0] == 0

    assert len(sink.messages) == sent
    assert cli.json("cases", "show", phone)["customer"] == "juan.perez@example.com"


def test_participants_of_the_merged_case_may_write_on_the_case_that_stays(
    cli: Cli, mailboxes: Dovecot
) -> None:
    first, second = _two_reports(cli, mailboxes)
    assert cli("cases", "participant", second, "--add", "oficina@example.com")[0] == 0
    assert cli("cases", "merge", second, "--into", first, "--no-notice")[0] == 0

    _write(
        cli,
        mailboxes,
        sender="Oficina <oficina@example.com>",
        subject=f"Re: [Folio {first}] Sin internet",
        body="Aquí en la oficina tampoco hay servicio.",
    )

    assert len(_folios(cli)) == 2
    last = cli.json("cases", "show", first)["messages"][-1]
    assert last["from"] == "oficina@example.com"
    assert last["kind"] == "customer"


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("self", "cannot be merged into itself"),
        ("other_customer", "are different customers' reports"),
        ("into_closed", "is closed: reopen it"),
        ("into_resolved", "is already resolved: reopen it"),
        ("merged", "was merged into"),
        ("visit", "has a home visit ahead"),
    ],
)
def test_a_refused_merge_says_why_and_changes_nothing(
    cli: Cli, mailboxes: Dovecot, sink: SmtpSink, setup: str, expected: str
) -> None:
    first, second = _two_reports(cli, mailboxes)
    source, target = second, first
    if setup == "self":
        target = second
    elif setup == "other_customer":
        _write(cli, mailboxes, sender="Ana <ana@example.com>", subject="Sin luz", body="Nada.")
        source = _folios(cli)[-1]
    elif setup == "into_closed":
        assert cli("cases", "close", first)[0] == 0
    elif setup == "into_resolved":
        assert cli("cases", "resolve", first, "--outcome", "valid", "--cause", "Antena.")[0] == 0
    elif setup == "merged":
        _write(cli, mailboxes, sender=JUAN, subject="Tercera", body="Hola.")
        third = _folios(cli)[-1]
        assert cli("cases", "merge", third, "--into", first, "--no-notice")[0] == 0
        target = third
    elif setup == "visit":
        assert cli("cases", "visit", second, "--date", "2099-01-01")[0] == 1  # too far: refused
        assert cli("cases", "visit", second, "--date", _in_days(3), "--time", "10:00")[0] == 0
    before = {f: cli.json("cases", "show", f) for f in _folios(cli)}
    sent = len(sink.messages)

    code, out, err = cli("cases", "merge", source, "--into", target)

    assert code == 1
    assert out == ""
    assert expected in err
    assert len([line for line in err.splitlines() if line.strip()]) == 1
    assert {f: cli.json("cases", "show", f) for f in _folios(cli)} == before
    assert len(sink.messages) == sent


def test_no_notice_for_a_report_already_settled_nor_when_told_not_to(
    cli: Cli, mailboxes: Dovecot, sink: SmtpSink
) -> None:
    first, second = _two_reports(cli, mailboxes)
    _write(cli, mailboxes, sender=JUAN, subject="Tercera", body="Hola.")
    third = _folios(cli)[-1]
    assert cli("cases", "close", second)[0] == 0
    sent = len(sink.messages)

    assert cli("cases", "merge", second, "--into", first)[0] == 0  # closed: settled
    assert cli("cases", "merge", third, "--into", first, "--no-notice")[0] == 0

    assert len(sink.messages) == sent


def test_an_unknown_target_is_not_found(cli: Cli, mailboxes: Dovecot) -> None:
    first, _ = _two_reports(cli, mailboxes)
    code, _, err = cli("cases", "merge", first, "--into", "PLR-2026-999999")
    assert code == 4
    assert "no case with folio PLR-2026-999999" in err


def test_english_notice(tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any) -> None:
    cli = Cli(write_config(tmp_path, mailboxes, sink, language="en"), capsys)
    first, second = _two_reports(cli, mailboxes)
    sent = len(sink.messages)
    assert cli("cases", "merge", second, "--into", first)[0] == 0
    sink.wait_for(sent + 1)
    text = sink.messages[-1].message.get_body(("plain",)).get_content()
    assert f"we will handle them together under folio {first}" in text


def _in_days(days: int) -> str:
    from datetime import datetime, timedelta
    from zoneinfo import ZoneInfo

    return (datetime.now(ZoneInfo("America/Mexico_City")) + timedelta(days=days)).date().isoformat()


# -- by mail: "#fusionar FOLIO" in an agent's reply ------------------------------------


@pytest.fixture
def desk(tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str) -> Desk:
    config = write_config(tmp_path, mailboxes, sink, notify=True, db_url=db_url)
    return Desk(Cli(config, capsys), mailboxes, sink, tmp_path)


def test_an_agent_merges_by_mail(desk: Desk) -> None:
    first = desk.open_case(sender=JUAN, subject="Sin internet", body="No tengo internet.")
    second = desk.open_case(sender=JUAN, subject="Sigo igual", body="El módem sigue en rojo.")
    told = len(desk.to(CUSTOMER))

    desk.agent_reply(
        desk.notification(second),
        f"#fusionar {first.replace('-', ' ')}\nEscribió dos veces por lo mismo.",
    )

    merged = desk.case(second)
    assert merged["merged_into"] == first
    kept = desk.case(first)
    texts = [m["text"] for m in kept["messages"]]
    assert "El módem sigue en rojo." in texts
    # The agent's words are a note on the case that stays, never sent to the customer.
    [note] = [m for m in kept["messages"] if m["kind"] == "note"]
    assert note["text"] == "Escribió dos veces por lo mismo."
    [merged_notice] = desk.to(CUSTOMER)[told:]
    assert f"los atenderemos juntos con el folio {first}" in text(merged_notice)
    # The agent's later reply to the merged case's notification works on the case
    # that stays (its signed Message-ID names the merged case).
    desk.agent_reply(desk.notification(second), "#nota\nLlamé al cliente.")
    assert desk.case(first)["messages"][-1]["text"] == "Llamé al cliente."
    assert len(desk.case(second)["messages"]) == 1


@pytest.mark.parametrize(
    ("command", "problem"),
    [
        ("#fusionar", "falta el folio del caso"),
        ("#fusionar PLR-2026-999999", "no hay un caso con ese folio"),
        ("#fusionar {second}", "ese es el folio de este mismo caso"),
        ("#fusionar {other}", "ese caso es de otro cliente"),
        ("#fusionar {first}\n#cerrar", "#fusionar va solo en su respuesta"),
    ],
)
def test_a_merge_by_mail_that_cannot_run_is_explained(
    desk: Desk, command: str, problem: str
) -> None:
    first = desk.open_case(sender=JUAN, subject="Sin internet", body="No tengo internet.")
    second = desk.open_case(sender=JUAN, subject="Sigo igual", body="El módem sigue en rojo.")
    other = desk.open_case(sender="Ana <ana@example.com>", subject="Sin luz", body="Nada.")
    notice = desk.notification(second)

    desk.agent_reply(notice, command.format(first=first, second=second, other=other))

    error = desk.last_to(AGENT)
    assert "no se aplicó" in text(error)
    assert problem in text(error)
    assert desk.case(second)["merged_into"] is None
    assert desk.case(second)["status"] == "open"


def test_an_agents_reply_triaged_before_a_merge_commits_goes_to_the_case_that_stays(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Triage read case B; `cases merge B --into A` committed before the reply locked B
    # (PostgreSQL: another session). The agent's note must not stay on the merged,
    # closed case, where nobody looks: it is decided again, and lands on A.
    import threading

    from sqlmodel import select

    from mailcase import merging, service
    from mailcase.imap import FetchedMessage
    from mailcase.models import Case, CaseMessage, Notice
    from mailcase.store import case_by_folio, utcnow

    rt = offline_runtime(tmp_path, pg_url, notify=True)
    for uid, subject in ((1, "Sin internet"), (2, "Sigo igual")):
        raw = mail(sender=JUAN, subject=subject)
        assert service.ingest_message(rt, "contacto", uid, FetchedMessage(uid, raw, utcnow()))
    with rt.store.read_session() as session:
        first, second = session.exec(select(Case.folio).order_by(Case.id)).all()
        notice_id = session.exec(
            select(Notice.message_id)
            .join(Case, Case.id == Notice.case_id)  # type: ignore[arg-type]
            .where(Case.folio == second, Notice.kind == "agent_notification")
        ).one()
    in_triage, go_on = pause_after_triage(monkeypatch)
    reply = mail(
        sender=f"Ana <{AGENT}>",
        subject=f"Re: [Folio {second}] Sigo igual",
        body="#nota\nLe llamé: es el mismo problema.",
        headers={"In-Reply-To": notice_id, "References": notice_id},
    )
    out: list[str] = []
    worker = threading.Thread(
        target=lambda: out.append(
            service.ingest_message(rt, "contacto", 3, FetchedMessage(3, reply, utcnow()))
        )
    )
    worker.start()
    try:
        assert in_triage.wait(20)
        with rt.store.transaction() as session:  # what `mailcase cases merge` does
            source = case_by_folio(session, second, for_update=True)
            target = case_by_folio(session, first, for_update=True)
            assert source is not None and target is not None
            merging.merge(session, rt.settings, source, target, by="cli:ana")
    finally:
        go_on.set()
        worker.join(20)
    with rt.store.read_session() as session:
        notes = session.exec(
            select(Case.folio)
            .join(CaseMessage, CaseMessage.case_id == Case.id)  # type: ignore[arg-type]
            .where(CaseMessage.kind == "note")
        ).all()
    rt.store.dispose()
    assert out == ["follow_up"]
    assert notes == [first]


def test_migration_0009_upgrades_a_database_with_cases(db_url: str) -> None:
    # Every installation has cases whose messages refer to them: on SQLite the first
    # version of 0009 copied the cases table and dropped the old one, which the store's
    # PRAGMA foreign_keys=ON refused ("FOREIGN KEY constraint failed"): the daemon could
    # not start after the upgrade. Migrated here through Store.open, as the daemon does.
    import sqlalchemy as sa
    from alembic import command

    from mailcase.store import Store, alembic_config

    installation_at(db_url, "0008")

    store = Store.open(db_url, auto_upgrade=True)
    try:
        with store.reading() as conn:
            rows = conn.execute(sa.text("SELECT folio, merged_into_id FROM cases")).all()
            texts = conn.execute(sa.text("SELECT text FROM case_messages")).scalars().all()
    finally:
        store.dispose()
    assert [tuple(r) for r in rows] == [("PLR-2026-000001", None)]
    assert texts == ["hola"]
    # And back, and up again (alembic's own connection, as `alembic downgrade` runs it).
    command.downgrade(alembic_config(db_url), "0008")
    command.upgrade(alembic_config(db_url), "head")


# -- seventh review round ---------------------------------------------------------------


def test_the_merging_replys_own_ledger_row_goes_with_the_case(desk: Desk) -> None:
    # Every ledger row of the merged case moved but the #fusionar mail's own, written
    # after the merge with the case it was triaged onto: `messages list` named the
    # merged folio for it.
    first = desk.open_case(sender=JUAN, subject="Sin internet", body="No tengo internet.")
    second = desk.open_case(sender=JUAN, subject="Sigo igual", body="El módem sigue en rojo.")
    desk.agent_reply(desk.notification(second), f"#fusionar {first}\nDuplicado.")
    assert desk.case(second)["merged_into"] == first
    assert [row["folio"] for row in desk.cli.json("messages", "list")] == [first, first, first]


def test_forgetting_the_customer_erases_a_phone_report_merged_into_their_case(
    desk: Desk,
) -> None:
    # The phone report's name and subject, typed by the agent, stayed after the
    # customer's right of cancellation: it had no address, so nothing tied it to them.
    code, out, err = desk.cli(
        "cases", "open", "--channel", "phone", "--name", "Juan Pérez Gómez",
        "--subject", "Juan Pérez Gómez, Calle Hidalgo 12: sin servicio",
        "--text", "Llamó, tel 55 1234 5678.", "--json",
    )  # fmt: skip
    assert code == 0, err
    phone = json.loads(out)["folio"]
    _, mid, _ = desk.cli(
        "cases", "open", "--channel", "phone", "--subject", "Otra llamada de Juan Pérez",
        "--text", "Volvió a llamar.", "--json",
    )  # fmt: skip
    middle = json.loads(mid)["folio"]
    desk.deliver(mail(sender=JUAN, subject="Sin internet", body="No tengo internet."))
    [mailed] = [c["folio"] for c in desk.cli.json("cases", "list", "--customer", CUSTOMER)]
    # A chain: the first phone report into the second, which then into the mail case.
    assert desk.cli("cases", "merge", phone, "--into", middle)[0] == 0
    assert desk.cli("cases", "merge", middle, "--into", mailed)[0] == 0
    assert desk.cli("cases", "close", mailed)[0] == 0

    code, out, err = desk.cli("customers", "forget", "juan.perez@example.com", "--yes", "--json")

    assert code == 0, err
    assert sorted(json.loads(out)["cases"]) == sorted([phone, middle, mailed])
    for folio in (phone, middle):
        assert "Juan" not in json.dumps(desk.case(folio), ensure_ascii=False)


def test_a_phone_case_takes_the_language_and_mailbox_of_the_mail_merged_into_it(
    desk: Desk,
) -> None:
    # The English desk's customer was told the merge, and later the resolution, in
    # Spanish and from contacto@: the phone case took their address only.
    from helpers import INFO

    config = desk.cli.config
    config.write_text(
        config.read_text().replace('username = "info"', 'username = "info"\nlanguage = "en"', 1)
    )
    code, out, err = desk.cli(
        "cases", "open", "--channel", "phone", "--subject", "Call: no service",
        "--text", "Customer called, left no address.", "--json",
    )  # fmt: skip
    assert code == 0, err
    phone = json.loads(out)["folio"]
    desk.imap.append(
        "info", mail(sender="John Smith <john@example.com>", to=INFO, subject="No internet")
    )
    desk.cli.poll()
    [mailed] = [
        c["folio"] for c in desk.cli.json("cases", "list", "--customer", "john@example.com")
    ]
    told = len(desk.to("john@example.com"))

    assert desk.cli("cases", "merge", mailed, "--into", phone)[0] == 0

    kept = desk.case(phone)
    assert (kept["customer"], kept["language"], kept["mailbox"]) == (
        "john@example.com", "en", "info",
    )  # fmt: skip
    [notice] = desk.to("john@example.com")[told:]
    assert notice["From"].addresses[0].addr_spec == INFO
    assert "we will handle them together" in text(notice)


def test_nothing_merges_into_an_erased_case(desk: Desk) -> None:
    # The refusal advised "reopen it first", which is refused for an erased case.
    erased = desk.open_case(sender=JUAN, subject="Sin internet", body="No tengo internet.")
    assert desk.cli("cases", "close", erased)[0] == 0
    assert desk.cli("customers", "forget", "juan.perez@example.com", "--yes")[0] == 0
    other = desk.open_case(sender="Ana <ana@example.com>", subject="Sin luz", body="Nada.")

    code, _, err = desk.cli("cases", "merge", other, "--into", erased)

    assert code == 2
    assert f"case {erased}: its customer's data was erased, nothing merges into it" in err
    # By mail: as a folio of no case.
    desk.agent_reply(desk.notification(other), f"#fusionar {erased}")
    assert "no hay un caso con ese folio" in text(desk.last_to(AGENT))
    assert desk.case(other)["merged_into"] is None


def test_crossed_merges_queue_instead_of_deadlocking(tmp_path: Path, pg_url: str) -> None:
    # `cases merge A --into B` and `cases merge B --into A` at once locked A and B in
    # opposite orders: PostgreSQL broke the deadlock and one command said "database
    # unavailable: deadlock detected". Both cases are locked in id order now: the
    # second waits for the first, then is refused as merged already.
    import threading

    from sqlmodel import select

    from mailcase import casework, cli_cases, merging, service
    from mailcase.imap import FetchedMessage
    from mailcase.models import Case
    from mailcase.store import utcnow

    rt = offline_runtime(tmp_path, pg_url)

    def run(source: str, into: str, start: threading.Barrier, outcomes: list[str]) -> None:
        start.wait(10)
        try:
            with rt.store.transaction() as session:
                found, target = cli_cases._merge_pair(session, rt.settings, source, into)
                assert found is not None and target is not None
                merging.merge(session, rt.settings, found, target, by="cli:x")
            outcomes.append("merged")
        except casework.CaseworkError as exc:
            outcomes.append("refused" if "merged into" in str(exc) else str(exc))
        except Exception as exc:  # a deadlock, most likely
            outcomes.append(f"{type(exc).__name__}: {exc}")

    try:
        for round_ in range(5):
            for uid in (2 * round_ + 1, 2 * round_ + 2):
                raw = mail(sender=JUAN, subject=f"Reporte {uid}")
                service.ingest_message(rt, "contacto", uid, FetchedMessage(uid, raw, utcnow()))
            with rt.store.read_session() as session:
                a, b = session.exec(select(Case.folio).order_by(Case.id)).all()[-2:]
            start = threading.Barrier(2)
            outcomes: list[str] = []
            threads = [
                threading.Thread(target=run, args=(*pair, start, outcomes))
                for pair in ((a, b), (b, a))
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            assert sorted(outcomes) == ["merged", "refused"], outcomes
    finally:
        rt.store.dispose()
