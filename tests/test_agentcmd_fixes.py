"""What agents do by mail, reviewed: a resolution's files, a join closed in the same
reply, a merge into a phone case, a wait put back, and a report moved between
outages. Each test failed before its fix."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from helpers import AGENT, Cli, write_config
from servers import Dovecot, SmtpSink
from test_agents import AREAS, CUSTOMER, Desk, text
from test_pending import _expire

from mailcase.casework import command_problems
from mailcase.commands import parse_commands

MX = ZoneInfo("America/Mexico_City")
NOW = datetime(2026, 11, 26, 10, 0, tzinfo=MX)
ANA = "ana.lopez@example.com"
PDF = b"%PDF-1.4\n" + bytes(range(256)) * 4
CAUSE = "Se cambió el módem dañado."


@pytest.fixture
def desk(tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str) -> Desk:
    config = write_config(tmp_path, mailboxes, sink, notify=True, extra=AREAS, db_url=db_url)
    return Desk(Cli(config, capsys), mailboxes, sink, tmp_path)


# --- #cerrar below #masivo FOLIO ----------------------------------------------------------


def test_close_below_a_join_is_refused() -> None:
    # The join told the customer they would hear when the failure is corrected; closed,
    # the report was skipped by the main case's resolution, and they never did.
    parsed = parse_commands("#masivo PLR-2026-000001\n#cerrar")
    assert command_problems(parsed.commands, "", "open", NOW) == [("#cerrar", "close_after_join")]
    # "#masivo no" is bookkeeping, and goes with "#cerrar".
    parsed = parse_commands("#masivo no\n#cerrar")
    assert command_problems(parsed.commands, "", "open", NOW) == []


@pytest.mark.integration
def test_a_join_then_close_by_mail_changes_nothing_and_tells_the_agent(desk: Desk) -> None:
    main = desk.open_case(subject="Sin internet", body="No tengo internet.")
    ana = desk.open_case(sender=f"Ana López <{ANA}>", subject="Sin internet", body="Nada.")
    told = len(desk.to(ANA))

    desk.agent_reply(desk.notification(ana), f"#masivo {main}\n#cerrar")

    case = desk.case(ana)
    assert (case["status"], case["outage"]) == ("open", None)
    assert desk.case(main)["outage_reports"] == []
    assert len(desk.to(ANA)) == told  # no outage_joined
    error = text(desk.last_to(AGENT))
    assert "No se ejecutó ningún comando" in error
    assert "#cerrar no va después de #masivo en la misma respuesta" in error


# --- a report moved from one main case to another -------------------------------------------


def _joined(desk: Desk, rcpt: str) -> int:
    return len([m for m in desk.to(rcpt) if "forma parte de una falla general" in text(m)])


@pytest.mark.integration
def test_a_report_moved_to_another_main_case_is_not_told_twice(desk: Desk) -> None:
    first = desk.open_case(subject="Sin internet", body="No tengo internet.")
    second = desk.open_case(sender="Luis <luis.mora@example.com>", subject="Sin luz", body="Nada.")
    ana = desk.open_case(sender=f"Ana López <{ANA}>", subject="Sin internet", body="Nada.")

    assert desk.cli("cases", "outage", ana, "--of", first)[0] == 0
    desk.agent_reply(desk.notification(ana), f"#masivo {second}")

    assert desk.case(ana)["outage"] == second
    assert _joined(desk, ANA) == 1
    history = [m["text"] for m in desk.case(first)["messages"]]
    assert f"case {ana} is no longer a report of this outage: moved to {second}" in history


# --- a wait put back, then closed at its deadline -------------------------------------------


@pytest.mark.integration
def test_a_wait_put_back_is_closed_with_its_own_days(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    # "#pendiente 7" reached the customer; "#pendiente 3", held by the relay cap, put the
    # 7-day deadline back, but the closing read the 3 days of the latest record: "no
    # tuvimos respuesta en 3 días" to a customer who had waited 7.
    limit = "[limits]\nmax_relays_per_case_per_hour = 1\n"
    config = write_config(tmp_path, mailboxes, sink, notify=True, extra=AREAS + limit)
    desk = Desk(Cli(config, capsys), mailboxes, sink, tmp_path)
    folio = desk.open_case(subject="Sin servicio", body="No tengo internet.")
    desk.agent_reply(desk.notification(folio), "#pendiente 7\n¿Qué luces tiene el módem?")
    waited = desk.case(folio)["pending_until"]
    told = len(desk.to(CUSTOMER))
    desk.agent_reply(desk.notification(folio), "#pendiente 3\n¿Ya reinició el módem?")
    assert len(desk.to(CUSTOMER)) == told  # held by the relay cap
    assert desk.case(folio)["pending_until"] == waited

    _expire(desk, folio)
    desk.cli.poll()

    case = desk.case(folio)
    assert case["status"] == "closed"
    systems = [m["text"] for m in case["messages"] if m["kind"] == "system"]
    assert "closed: no answer from the customer within 7 days" in systems
    closing = text(desk.last_to(CUSTOMER))
    assert "no tuvimos respuesta en 7 días" in closing


# --- a mail case merged into a phone case ---------------------------------------------------


@pytest.mark.integration
def test_a_phone_case_that_takes_the_customer_takes_their_subject(desk: Desk) -> None:
    # It took the customer's address, name, mailbox and language, but kept the agent's
    # internal subject: every notice to the customer from then on showed it.
    internal = "Cliente molesto, amenaza con Profeco"
    code, out, err = desk.cli(
        "cases", "open", "--channel", "phone", "--subject", internal,
        "--text", "Llamó muy molesto.", "--json",
    )  # fmt: skip
    assert code == 0, err
    phone = json.loads(out)["folio"]
    desk.open_case(subject="Sin internet", body="No tengo internet.")
    # By its customer: mail is dated by its arrival, to the second, so it may list
    # before the phone case opened within the same second.
    [by_mail] = [c["folio"] for c in desk.cli.json("cases", "list", "--customer", CUSTOMER)]

    assert desk.cli("cases", "merge", by_mail, "--into", phone)[0] == 0
    code, _, err = desk.cli("cases", "resolve", phone, "--outcome", "valid", "--cause", CAUSE)
    assert code == 0, err

    [resolution] = [m for m in desk.to(CUSTOMER) if CAUSE in text(m)]
    assert f"[Folio {phone}]" in str(resolution["Subject"])
    assert "Sin internet" in str(resolution["Subject"])
    assert internal not in str(resolution["Subject"]) and internal not in text(resolution)
    case = desk.case(phone)
    assert case["subject"] == "Sin internet"
    systems = [m["text"] for m in case["messages"] if m["kind"] == "system"]
    assert f"subject taken from {by_mail}: Sin internet (was: {internal})" in systems


# --- files attached to a #resolver reply ----------------------------------------------------


@pytest.mark.integration
def test_files_attached_to_a_resolution_go_to_the_customer_with_it(desk: Desk) -> None:
    # No reply is relayed with "#resolver" (its words are the causes): its files reached
    # nobody, and the agent was not told.
    folio = desk.open_case(subject="Sin internet", body="No tengo internet.")
    to_agent = len(desk.to(AGENT))
    desk.agent_reply(
        desk.notification(folio),
        f"#resolver procedente\n{CAUSE}",
        attachments=[("reporte técnico.pdf", "application/pdf", PDF)],
    )
    assert desk.case(folio)["status"] == "resolved"
    [resolution] = [m for m in desk.to(CUSTOMER) if CAUSE in text(m)]
    files = [(p.get_filename(), p.get_content()) for p in resolution.iter_attachments()]
    assert files == [("reporte técnico.pdf", PDF)]
    assert len(desk.to(AGENT)) == to_agent  # nothing to report back


@pytest.mark.integration
def test_a_resolutions_file_over_the_relay_limit_is_named_to_the_agent(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    config = write_config(tmp_path, mailboxes, sink, notify=True, extra=AREAS)
    limited = "[notices]\nmax_relayed_attachment_bytes = 2000\n"
    config.write_text(config.read_text().replace("[notices]\n", limited))
    desk = Desk(Cli(config, capsys), mailboxes, sink, tmp_path)
    folio = desk.open_case(subject="Sin internet", body="No tengo internet.")
    desk.agent_reply(
        desk.notification(folio),
        f"#resolver procedente\n{CAUSE}",
        attachments=[
            ("recibo.pdf", "application/pdf", PDF),
            ("fotos.zip", "application/zip", b"z" * 1500),
        ],
    )
    [resolution] = [m for m in desk.to(CUSTOMER) if CAUSE in text(m)]
    assert [p.get_filename() for p in resolution.iter_attachments()] == ["recibo.pdf"]
    told = text(desk.last_to(AGENT))
    assert "Adjuntos no enviados: fotos.zip" in told
