"""A case's owner: the agent responsible for it, as Zammad's and OTRS/Znuny's owner,
Request Tracker's Owner, osTicket's assigned agent and FreeScout's assignee.

Agents set it by mail (``#asignar`` / ``#assign``) or with ``mailcase cases assign``;
an unowned case takes the agent whose reply first answers the customer
(``cases.auto_assign``). The owner shows in the agents' notices and hears of the
case's reminder. Unit tests of the parser, the command checks and the templates,
then the mail command through real Dovecot and SMTP servers, auto-assignment, the
command line, merges, erasure, reminders and migration 0011 on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from helpers import (
    AGENT,
    CONTACTO,
    FOLIO,
    NOTIFY,
    Cli,
    installation_at,
    json_events,
    mail,
    write_config,
)
from servers import Dovecot, SmtpSink
from sqlmodel import col
from test_agents import AREAS, CUSTOMER, Desk, text
from test_config import ISSUE_CONFIG, write
from test_templates_all import context

from mailcase.casework import command_problems
from mailcase.commands import (
    COMMAND_FORMS,
    CONFIG_PROBLEM_CODES,
    Command,
    CommandKind,
    CommandProblem,
    parse_commands,
)
from mailcase.config import load_settings
from mailcase.models import Case
from mailcase.render import render_body
from mailcase.store import Store

MX = ZoneInfo("America/Mexico_City")
LUIS = "luis.soporte@internet-plarey.com.mx"
ANA = f"Ana Técnica <{AGENT}>"
LUIS_FROM = f"Luis Soporte <{LUIS}>"
JUAN = "Juan Pérez <juan.perez@example.com>"


# --- parsing ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("#asignar ana@example.com", {"owner": "ana@example.com"}),
        ("#assign ana@example.com", {"owner": "ana@example.com"}),
        # Capitals as phones type them; the address as stored (lower case).
        ("#Asignar Ana@Example.COM", {"owner": "ana@example.com"}),
        ("#asignar <ana@example.com>", {"owner": "ana@example.com"}),
        ("#asignar mailto:ana@example.com", {"owner": "ana@example.com"}),
        ("#asignar ana@example.com<mailto:ana@example.com>", {"owner": "ana@example.com"}),
        ("#asignar a ana@example.com", {"owner": "ana@example.com"}),  # as it is said
        ("#assign to ana@example.com", {"owner": "ana@example.com"}),
        ("#asignar yo", {"myself": True}),
        ("#assign me", {"myself": True}),
        ("#asignar a mí", {"myself": True}),
        ("#Assign: Me.", {"myself": True}),
        ("#asignar nadie", {"nobody": True}),
        ("#assign none", {"nobody": True}),
        ("#ASIGNAR NADIE", {"nobody": True}),
        # Either vocabulary under either name, as for #tipo.
        ("#assign nadie", {"nobody": True}),
        ("#asignar me", {"myself": True}),
    ],
)
def test_asignar_and_assign_read_an_agent_me_or_none(line: str, expected: dict[str, Any]) -> None:
    parsed = parse_commands(f"{line}\nLe doy seguimiento yo.")
    assert parsed.problems == ()
    assert parsed.commands == (Command(CommandKind.ASSIGN, line=line, **expected),)
    assert parsed.text == "Le doy seguimiento yo."


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("#asignar", "missing_owner"),
        ("#assign", "missing_owner"),
        ("#asignar ana", "bad_owner"),  # a name is not an address
        ("#asignar ana@", "bad_owner"),
        ("#asignar ana@example.com luis@example.com", "bad_owner"),  # one owner
        ("#asignar a", "bad_owner"),
        ("#asignar yo mismo", "unexpected_argument"),  # the words go on the next line
        ("#assign none today", "unexpected_argument"),
    ],
)
def test_a_missing_or_bad_owner_is_a_problem(line: str, problem: str) -> None:
    parsed = parse_commands(line)
    assert parsed.commands == ()
    assert parsed.problems == (CommandProblem(line, problem),)


def test_an_assign_command_below_the_text_is_misplaced() -> None:
    parsed = parse_commands("Buenas tardes.\n#asignar yo")
    assert parsed.problems == (CommandProblem("#asignar yo", "misplaced_command"),)


def test_the_help_footer_names_the_command_in_both_languages() -> None:
    [form] = [f for f in COMMAND_FORMS if "#asignar" in f]
    assert form == "#asignar CORREO|yo|nadie / #assign ADDRESS|me|none"
    assert "unknown_agent" in CONFIG_PROBLEM_CODES  # found by the service, as unknown_area


def test_an_assignment_goes_with_other_commands_on_any_case() -> None:
    now = datetime.now(MX)
    [assign] = parse_commands("#asignar yo").commands
    close, reopen = parse_commands("#cerrar\n#reabrir").commands
    [resolve] = parse_commands("#resolver procedente").commands
    [merge] = parse_commands("#fusionar PLR-2026-000001").commands
    assert command_problems([close, assign], "", "open", now) == []
    assert command_problems([assign, resolve], "Se cambió el conector.", "open", now) == []
    assert command_problems([assign], "", "closed", now) == []
    assert command_problems([assign], "", "resolved", now) == []
    assert command_problems([reopen, assign], "", "closed", now) == []
    assert command_problems([assign, assign], "", "open", now) == [("#asignar yo", "repeated")]
    # #fusionar goes alone (or with #nota), as with #tipo.
    assert command_problems([merge, assign], "", "open", now) == [
        ("#fusionar PLR-2026-000001", "merge_alone")
    ]


# --- configuration ------------------------------------------------------------------------


def test_auto_assign_is_on_by_default_and_can_be_turned_off(tmp_path: Path) -> None:
    example = load_settings(Path(__file__).resolve().parents[1] / "config/mailcase.example.toml")
    assert example.cases.auto_assign is True
    assert load_settings(write(tmp_path, ISSUE_CONFIG)).cases.auto_assign is True
    off = load_settings(write(tmp_path, ISSUE_CONFIG + "\n[cases]\nauto_assign = false\n"))
    assert off.cases.auto_assign is False


# --- the templates ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("language", "line"),
    [("es", "Responsable: ana@example.com"), ("en", "Owner:       ana@example.com")],
)
@pytest.mark.parametrize("kind", ["agent_notification", "reminder"])
def test_the_agents_notices_show_the_owner_when_set(kind: str, language: str, line: str) -> None:
    shown = render_body(kind, language, context(kind, owner="ana@example.com"))
    assert line in shown.text.splitlines()
    unset = render_body(kind, language, context(kind, owner=""))
    assert not any(row.startswith(("Responsable:", "Owner:")) for row in unset.text.splitlines())
    assert ("#asignar" if language == "es" else "#assign") in unset.text  # the help


@pytest.mark.parametrize(
    ("language", "problem", "sentence"),
    [
        ("es", "missing_owner", "falta a quién: escriba el correo de un agente, yo o nadie"),
        ("es", "bad_owner", "escriba un solo correo completo de un agente, o yo, o nadie"),
        ("es", "unknown_agent", "ese correo no es de ningún agente (agents.addresses)"),
        ("en", "missing_owner", "whom is missing: write an agent's address, me or none"),
        ("en", "bad_owner", "write one whole address of an agent, or me, or none"),
        ("en", "unknown_agent", "that address is no agent's (agents.addresses)"),
    ],
)
def test_command_error_says_what_is_wrong_with_an_owner(
    language: str, problem: str, sentence: str
) -> None:
    problems = [{"line": "#asignar pedro", "problem": problem}]
    body = render_body(
        "command_error",
        language,
        context("command_error", problems=problems, about_agents=problem == "unknown_agent"),
    )
    assert sentence in body.text
    listed = {"es": "Agentes: ", "en": "Agents: "}[language]
    shown = [row for row in body.text.splitlines() if row.startswith(listed)]
    # The agents are listed only when an #asignar named someone who is not one.
    assert len(shown) == (1 if problem == "unknown_agent" else 0)


# --- by mail ------------------------------------------------------------------------------


def _two_agents(path: Path, extra: str = "") -> Path:
    """The config of write_config, with Luis as a second agent (and ``extra`` appended)."""
    config = path.read_text(encoding="utf-8")
    one = f'addresses = ["{AGENT}"]'
    assert one in config
    path.write_text(config.replace(one, f'addresses = ["{AGENT}", "{LUIS}"]') + extra, "utf-8")
    return path


def _desk(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str, extra: str = ""
) -> Desk:
    config = write_config(tmp_path, mailboxes, sink, notify=True, extra=AREAS, db_url=db_url)
    return Desk(Cli(_two_agents(config, extra), capsys), mailboxes, sink, tmp_path)


@pytest.fixture
def desk(tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str) -> Desk:
    return _desk(tmp_path, mailboxes, sink, capsys, db_url)


def _system(case: dict[str, Any]) -> list[str]:
    return [m["text"] for m in case["messages"] if m["kind"] == "system"]


@pytest.mark.integration
def test_an_agent_assigns_the_case_by_mail(desk: Desk) -> None:
    folio = desk.open_case(sender=JUAN, subject="Sin internet", body="No tengo internet.")
    notice = desk.notification(folio)
    assert "Responsable:" not in text(notice)  # nobody owns a new case
    assert "#asignar CORREO|yo|nadie / #assign ADDRESS|me|none" in text(notice)
    assert desk.case(folio)["owner"] is None
    told = len(desk.to(CUSTOMER))

    desk.agent_reply(notice, f"#Asignar {LUIS.upper()}\nLuis conoce el nodo de esa colonia.")

    case = desk.case(folio)
    assert case["owner"] == LUIS
    # The reply is recorded, then what it did, then the notice telling Luis.
    note, system, to_luis = case["messages"][-3:]
    assert (system["kind"], system["text"], system["from"]) == (
        "system",
        f"owner set to {LUIS}",
        AGENT,
    )
    assert (note["kind"], note["text"]) == ("note", "Luis conoce el nodo de esa colonia.")
    assert (to_luis["kind"], to_luis["to"]) == ("notice", LUIS)
    assert len(desk.to(CUSTOMER)) == told  # the rest is a note: nothing relayed
    # The agents' next notice of the case names the owner.
    desk.deliver(mail(sender=JUAN, subject=f"RE: [Folio {folio}] Sin internet", body="¿Y?"))
    assert f"Responsable: {LUIS}" in text(desk.notification(folio)).splitlines()

    # The same owner again changes and records nothing.
    entries = len(desk.case(folio)["messages"])
    desk.agent_reply(desk.notification(folio), f"#assign {LUIS}\nSigue con Luis.")
    assert [m["kind"] for m in desk.case(folio)["messages"][entries:]] == ["note"]

    # "#asignar yo": the agent who writes; "#asignar nadie": nobody.
    desk.agent_reply(desk.notification(folio), "#asignar yo\nMejor lo veo yo.")
    assert desk.case(folio)["owner"] == AGENT
    desk.agent_reply(desk.notification(folio), "#assign none\nQue lo tome quien pueda.")
    case = desk.case(folio)
    assert case["owner"] is None
    assert _system(case)[-2:] == [f"owner set to {AGENT}", "owner cleared"]
    assert len(desk.to(CUSTOMER)) == told


@pytest.mark.integration
def test_the_owner_goes_with_other_commands_and_on_a_closed_case(desk: Desk) -> None:
    folio = desk.open_case(sender=JUAN, subject="Sin internet", body="No tengo internet.")
    desk.agent_reply(
        desk.notification(folio),
        "#tipo queja\n#asignar luis.soporte@internet-plarey.com.mx\n#area redes\nVer nodo.",
    )
    case = desk.case(folio)
    assert (case["type"], case["owner"], case["area"]) == ("complaint", LUIS, "redes")
    # The area's notice of the routing names the owner too.
    routed = [m for m in desk.to("redes@internet-plarey.com.mx") if folio in str(m["Subject"])]
    assert f"Responsable: {LUIS}" in text(routed[-1]).splitlines()

    assert desk.cli("cases", "close", folio)[0] == 0
    desk.agent_reply(desk.notification(folio), "#asignar yo\nLo reviso aunque esté cerrado.")
    case = desk.case(folio)
    assert (case["status"], case["owner"]) == ("closed", AGENT)


@pytest.mark.integration
def test_an_owner_who_is_no_agent_runs_nothing_and_tells_the_agent(desk: Desk) -> None:
    folio = desk.open_case(sender=JUAN, subject="Sin internet", body="No tengo internet.")
    told = len(desk.to(CUSTOMER))

    desk.agent_reply(desk.notification(folio), "#asignar pedro@example.com\n#cerrar\nYa quedó.")

    case = desk.case(folio)
    assert (case["owner"], case["status"]) == (None, "open")
    assert len(desk.to(CUSTOMER)) == told
    body = text(desk.last_to(AGENT))
    assert "#asignar pedro@example.com" in body  # the line
    assert "ese correo no es de ningún agente (agents.addresses)" in body
    assert f"Agentes: {AGENT}, {LUIS}" in body.splitlines()
    assert "#asignar CORREO|yo|nadie / #assign ADDRESS|me|none" in body  # the valid forms

    desk.agent_reply(desk.notification(folio), "#asignar pedro\nYa quedó.")
    body = text(desk.last_to(AGENT))
    assert "escriba un solo correo completo de un agente, o yo, o nadie" in body
    assert "Agentes:" not in body
    assert desk.case(folio)["owner"] is None


# --- auto-assignment ----------------------------------------------------------------------


@pytest.mark.integration
def test_the_agent_whose_reply_first_answers_the_customer_owns_the_case(desk: Desk) -> None:
    folio = desk.open_case(sender=JUAN, subject="Sin internet", body="No tengo internet.")
    # A note answers nobody: the case stays unowned.
    desk.agent_reply(desk.notification(folio), "#nota\nRevisar el nodo.")
    assert desk.case(folio)["owner"] is None

    desk.agent_reply(
        desk.notification(folio), "Buenas tardes, hoy pasa un técnico.", sender=LUIS_FROM
    )
    assert "hoy pasa un técnico" in text(desk.last_to(CUSTOMER))  # relayed
    case = desk.case(folio)
    assert case["owner"] == LUIS
    assert _system(case)[-1] == f"owner set to {LUIS}"
    assert case["messages"][-1]["from"] == LUIS

    # Another agent's answer later leaves the owner as it is.
    desk.agent_reply(desk.notification(folio), "Complemento: llevará un módem nuevo.")
    case = desk.case(folio)
    assert case["owner"] == LUIS
    assert _system(case).count(f"owner set to {AGENT}") == 0


@pytest.mark.integration
def test_a_case_whose_owner_left_the_desk_takes_the_agent_who_answers(desk: Desk) -> None:
    folio = desk.open_case(sender=JUAN, subject="Sin internet", body="No tengo internet.")
    assert desk.cli("cases", "assign", folio, "--to", LUIS)[0] == 0
    # Luis left: taken out of agents.addresses. His case is nobody's now.
    config = desk.cli.config
    both = f'addresses = ["{AGENT}", "{LUIS}"]'
    config.write_text(config.read_text("utf-8").replace(both, f'addresses = ["{AGENT}"]'), "utf-8")
    desk.agent_reply(desk.notification(folio), "Buenas tardes, hoy pasa un técnico.")
    assert "hoy pasa un técnico" in text(desk.last_to(CUSTOMER))
    case = desk.case(folio)
    assert case["owner"] == AGENT
    assert _system(case)[-1] == f"owner set to {AGENT}"


@pytest.mark.integration
def test_a_resolution_or_a_visit_by_mail_assigns_an_unowned_case(desk: Desk) -> None:
    resolved = desk.open_case(sender=JUAN, subject="Sin internet", body="No tengo internet.")
    desk.agent_reply(
        desk.notification(resolved), "#resolver procedente\nSe cambió el conector.",
        sender=LUIS_FROM,
    )  # fmt: skip
    assert desk.case(resolved)["owner"] == LUIS

    visited = desk.open_case(sender="Rosa <rosa@example.com>", subject="Lento", body="Lento.")
    day = (datetime.now(MX) + timedelta(days=3)).date().isoformat()
    desk.agent_reply(desk.notification(visited), f"#visita {day} 10:00\nLlevar escalera.")
    assert desk.case(visited)["owner"] == AGENT

    # Said in the same reply who follows it up: that stands (nobody, here).
    cleared = desk.open_case(sender="Eva <eva@example.com>", subject="Cobro", body="Cobro.")
    desk.agent_reply(
        desk.notification(cleared),
        "#asignar nadie\n#resolver improcedente\nEl cobro es correcto.",
    )
    case = desk.case(cleared)
    assert (case["status"], case["owner"]) == ("resolved", None)
    assert not any(t.startswith("owner set") for t in _system(case))


@pytest.mark.integration
def test_an_agent_writing_straight_to_the_customer_becomes_the_owner(desk: Desk) -> None:
    folio = desk.open_case(sender=JUAN, subject="Sin internet", body="No tengo internet.")
    desk.agent_reply(
        desk.notification(folio), "Le escribo directamente.", sender=LUIS_FROM,
        to=f"{CUSTOMER}, {CONTACTO}",
    )  # fmt: skip
    assert desk.case(folio)["owner"] == LUIS


# --- the new owner is told ---------------------------------------------------------------


def _assigned(desk: Desk, rcpt: str) -> list[EmailMessage]:
    return [m for m in desk.to(rcpt) if text(m).startswith("Le asignaron el caso")]


@pytest.mark.parametrize(
    ("language", "first", "noted"),
    [
        ("es", "Le asignaron el caso", "Nota de quien lo asignó:\nLuis, es de tu zona."),
        ("en", "was assigned to you", "Note from whoever assigned it:\nLuis, es de tu zona."),
    ],
)
def test_the_assigned_notice_shows_the_case_and_the_note(
    language: str, first: str, noted: str
) -> None:
    body = render_body("assigned", language, context("assigned"))
    assert first in body.text.splitlines()[0]
    for shown in (FOLIO, "juan.perez@example.com", "Sin servicio de internet", noted):
        assert shown in body.text
    assert "Ya reinicié el módem." in body.text  # the customer's latest message
    assert ("#asignar" if language == "es" else "#assign") in body.text  # the help
    phone = render_body("assigned", language, context("assigned", customer="", note=""))
    assert ("sin correo" if language == "es" else "no mail address") in phone.text
    assert "Nota de quien" not in phone.text and "Note from" not in phone.text


@pytest.mark.integration
def test_an_agent_assigned_by_someone_else_is_told(desk: Desk) -> None:
    folio = desk.open_case(sender=JUAN, subject="Sin internet", body="No tengo internet.")
    notification = desk.notification(folio)
    desk.agent_reply(notification, f"#asignar {LUIS}\nLuis, es de tu zona.")

    [told] = _assigned(desk, LUIS)
    assert folio in str(told["Subject"])
    body = text(told)
    for shown in (f"Folio:    {folio}", CUSTOMER, "Asunto:   Sin internet", "No tengo internet."):
        assert shown in body
    assert f"Asignado por: {AGENT}" in body.splitlines()
    assert "Nota de quien lo asignó:\nLuis, es de tu zona." in body
    # In the case's thread, replyable as its notification is.
    assert notification["Message-ID"].strip() in str(told["References"])
    assert str(told["Reply-To"]) == CONTACTO
    assert not any("Le asignaron" in text(m) for m in desk.to(CUSTOMER))

    # Luis answers it: his words are for Ana ("Enterado, le llamo"), kept as a note, never
    # the customer's (eighth review round: they reached the customer as the desk's reply).
    to_customer = len(desk.to(CUSTOMER))
    desk.agent_reply(told, "Enterado Ana, le llamo en la tarde.", sender=LUIS_FROM)
    assert len(desk.to(CUSTOMER)) == to_customer
    notes = [m for m in desk.case(folio)["messages"] if m["kind"] == "note"]
    assert "Enterado Ana" in notes[-1]["text"]
    assert desk.case(folio)["owner"] == LUIS
    # To the customer, he replies to the case's notification.
    desk.agent_reply(desk.notification(folio), "Hoy paso a revisar su nodo.", sender=LUIS_FROM)
    assert "Hoy paso a revisar" in text(desk.last_to(CUSTOMER))

    # Taking a case oneself, or clearing it, tells nobody.
    desk.agent_reply(desk.notification(folio), "#asignar yo\nMejor lo veo yo.")
    desk.agent_reply(desk.notification(folio), "#asignar nadie\nQue lo tome quien pueda.")
    assert _assigned(desk, AGENT) == [] and len(_assigned(desk, LUIS)) == 1

    # The command line tells the agent it names.
    assert desk.cli("cases", "assign", folio, "--to", AGENT)[0] == 0
    [by_cli] = _assigned(desk, AGENT)
    assert "Asignado por: cli:" in text(by_cli)
    assert "Nota de quien" not in text(by_cli)

    # A closed case is followed up by nobody: its new owner is not told.
    assert desk.cli("cases", "close", folio)[0] == 0
    assert desk.cli("cases", "assign", folio, "--to", LUIS)[0] == 0
    assert len(_assigned(desk, LUIS)) == 1


@pytest.mark.integration
def test_the_agent_who_takes_a_case_by_answering_is_not_told(desk: Desk) -> None:
    folio = desk.open_case(sender=JUAN, subject="Sin internet", body="No tengo internet.")
    desk.agent_reply(desk.notification(folio), "Buenas tardes, hoy pasa un técnico.")
    assert desk.case(folio)["owner"] == AGENT
    assert _assigned(desk, AGENT) == []


@pytest.mark.integration
def test_the_assigned_notices_are_capped_as_the_agents_notices_are(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str
) -> None:
    extra = "\n[limits]\nmax_agent_notices_per_case_per_hour = 1\n"
    desk = _desk(tmp_path, mailboxes, sink, capsys, db_url, extra)
    folio = desk.open_case(sender=JUAN, subject="Sin internet", body="No tengo internet.")
    for owner in (LUIS, AGENT, LUIS, AGENT, LUIS):
        assert desk.cli("cases", "assign", folio, "--to", owner)[0] == 0
    assert desk.case(folio)["owner"] == LUIS
    assert len(_assigned(desk, LUIS)) == 1  # once an hour per case, as the cap says
    assert len(_assigned(desk, AGENT)) == 1


# --- words for others, the mailbox only in copy -------------------------------------------


@pytest.mark.parametrize(
    ("language", "sentence"),
    [
        ("es", "iba dirigido a otras personas, con el buzón de soporte solo en copia"),
        ("en", "was addressed to others, with the support mailbox only in copy"),
    ],
)
def test_not_relayed_says_a_message_to_others_was_kept_as_a_note(
    language: str, sentence: str
) -> None:
    body = render_body("not_relayed", language, context("not_relayed", reason="copied"))
    assert sentence in body.text
    assert "contacto@internet-plarey.com.mx" in body.text  # where to write to the customer
    assert ("se envió al cliente, sin" if language == "es" else "was sent to the") not in (
        body.text
    )


def _kept_as_a_note(desk: Desk, folio: str, words: str) -> None:
    """``words`` are on the case as a note, the agent was told, nobody owns the case."""
    case = desk.case(folio)
    assert [m["kind"] for m in case["messages"] if words in m["text"]] == ["note"]
    assert case["owner"] is None
    told = text(desk.last_to(AGENT))
    assert "iba dirigido a otras personas, con el buzón de soporte solo en copia" in told


@pytest.mark.integration
def test_a_reply_to_a_colleague_with_the_mailbox_in_cc_is_a_note(desk: Desk) -> None:
    folio = desk.open_case(sender=JUAN, subject="Sin internet", body="No tengo internet.")
    told = len(desk.to(CUSTOMER))
    desk.agent_reply(
        desk.notification(folio), "Luis, te lo paso: es de tu zona, yo no puedo.",
        to=LUIS_FROM, headers={"Cc": CONTACTO},
    )  # fmt: skip
    assert len(desk.to(CUSTOMER)) == told  # nothing relayed
    _kept_as_a_note(desk, folio, "te lo paso")

    # A reply to the notification itself, the mailbox its recipient, still goes out.
    desk.agent_reply(desk.notification(folio), "Buenas tardes, hoy pasa un técnico.")
    assert "hoy pasa un técnico" in text(desk.last_to(CUSTOMER))
    assert desk.case(folio)["owner"] == AGENT


@pytest.mark.integration
def test_a_notification_forwarded_to_a_contractor_with_the_mailbox_in_cc_is_a_note(
    desk: Desk,
) -> None:
    folio = desk.open_case(sender=JUAN, subject="Sin internet", body="No tengo internet.")
    told = len(desk.to(CUSTOMER))
    notice = desk.notification(folio)
    forward = "\n".join(
        [
            "Pedro, ¿puedes pasar hoy? Gracias.",
            "",
            "---------- Forwarded message ---------",
            f"From: Soporte <{CONTACTO}>",
            f"Subject: {notice['Subject']}",
            "",
            text(notice),
        ]
    )
    desk.deliver(
        mail(
            sender=ANA, to="Pedro Técnico <pedro@contratista.example>",
            subject=f"Fwd: {notice['Subject']}", body=forward,
            headers={"Cc": CONTACTO, "References": notice["Message-ID"].strip()},
        )
    )  # fmt: skip
    assert len(desk.to(CUSTOMER)) == told
    _kept_as_a_note(desk, folio, "Pedro, ¿puedes pasar hoy?")


@pytest.mark.integration
def test_a_reply_to_the_mailbox_under_an_alias_still_reaches_the_customer(desk: Desk) -> None:
    # ayuda@ delivered into the same mailbox (an alias, an old address): no mailbox of
    # ours named in To or Cc is no mail "to others", and was relayed before that rule.
    folio = desk.open_case(sender=JUAN, subject="Sin internet", body="No tengo internet.")
    desk.agent_reply(
        desk.notification(folio), "Buenas tardes, hoy pasa un técnico.",
        to="Soporte <ayuda@internet-plarey.com.mx>",
    )  # fmt: skip
    assert "hoy pasa un técnico" in text(desk.last_to(CUSTOMER))
    assert desk.case(folio)["owner"] == AGENT


@pytest.mark.integration
def test_an_answer_to_a_participant_with_the_mailbox_in_cc_is_no_note(desk: Desk) -> None:
    # María, whom Juan copied, is the customer's side: an answer to her is an answer.
    maria = "maria.perez@example.com"
    folio = desk.open_case(
        sender=JUAN, subject="Sin internet", body="No tengo internet.", headers={"Cc": maria}
    )
    desk.agent_reply(
        desk.notification(folio), "María, hoy pasa un técnico.",
        to=f"María <{maria}>", headers={"Cc": CONTACTO},
    )  # fmt: skip
    case = desk.case(folio)
    assert next(m["kind"] for m in case["messages"] if "hoy pasa" in m["text"]) == "agent"
    assert case["owner"] == AGENT
    assert not any("iba dirigido a otras personas" in text(m) for m in desk.to(AGENT))


@pytest.mark.integration
def test_commands_in_a_mail_to_a_colleague_run(desk: Desk) -> None:
    folio = desk.open_case(sender=JUAN, subject="Sin internet", body="No tengo internet.")
    told = len(desk.to(CUSTOMER))
    desk.agent_reply(
        desk.notification(folio), f"#asignar {LUIS}\nLuis, es de tu zona.",
        to=LUIS_FROM, headers={"Cc": CONTACTO},
    )  # fmt: skip
    case = desk.case(folio)
    assert case["owner"] == LUIS  # typed on purpose: it runs
    # Kept as a note, which the notice telling Luis he owns the case shows him.
    assert [m["kind"] for m in case["messages"] if "tu zona" in m["text"]] == ["note", "notice"]
    assert len(desk.to(CUSTOMER)) == told
    # A resolution typed to a colleague is a resolution: the customer gets it.
    desk.agent_reply(
        desk.notification(folio), "#resolver procedente\nSe cambió el conector.",
        to=LUIS_FROM, headers={"Cc": CONTACTO},
    )  # fmt: skip
    assert desk.case(folio)["status"] == "resolved"
    assert "Se cambió el conector." in text(desk.last_to(CUSTOMER))


_AUTHENTICATED = {
    "Authentication-Results": "mx.internet-plarey.com.mx; "
    "dkim=pass header.d=internet-plarey.com.mx; spf=pass "
    f"smtp.mailfrom={AGENT}"
}


def _trusting(desk: Desk) -> Desk:
    """``desk`` with the receiving server's Authentication-Results trusted (agents may open
    cases by mail)."""
    config = desk.cli.config
    trusted = 'trusted_authserv_ids = ["mx.internet-plarey.com.mx"]\n[web_form]'
    config.write_text(config.read_text("utf-8").replace("[web_form]", trusted), "utf-8")
    return desk


@pytest.mark.integration
def test_an_agent_who_opens_a_case_by_writing_to_the_customer_owns_it(desk: Desk) -> None:
    _trusting(desk).deliver(
        mail(
            sender=ANA, to="Rosa <rosa@example.com>", subject="Su reporte telefónico",
            body="Buenas tardes, le escribo por su reporte.",
            headers={**_AUTHENTICATED, "Cc": CONTACTO},
        )
    )  # fmt: skip
    [opened] = desk.cli.json("cases", "list")
    case = desk.case(opened["folio"])
    assert (case["customer"], case["owner"]) == ("rosa@example.com", AGENT)
    assert _system(case) == [f"owner set to {AGENT}"]
    notice = desk.notification(opened["folio"])
    assert f"Responsable: {AGENT}" in text(notice).splitlines()

    # A forward of a customer's mail answers nobody: the case stays unowned.
    forward = "\n".join(
        [
            "Les paso el correo de Eva.",
            "",
            "---------- Forwarded message ---------",
            "From: Eva <eva@example.com>",
            "Subject: Cobro doble",
            "",
            "Me cobraron dos veces.",
        ]
    )
    desk.deliver(mail(sender=ANA, subject="Fwd: Cobro doble", body=forward, headers=_AUTHENTICATED))
    [eva] = [c for c in desk.cli.json("cases", "list") if c["customer"] == "eva@example.com"]
    assert eva["owner"] is None


@pytest.mark.integration
def test_the_command_line_assigns_nobody_by_itself(desk: Desk) -> None:
    folio = desk.open_case(sender=JUAN, subject="Sin internet", body="No tengo internet.")
    code, _, err = desk.cli("cases", "resolve", folio, "--outcome", "valid", "--cause", "Listo.")
    assert code == 0, err
    assert desk.case(folio)["owner"] is None  # no agent identity: no owner


@pytest.mark.integration
def test_auto_assign_off_leaves_the_owner_to_the_agents(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str
) -> None:
    desk = _desk(tmp_path, mailboxes, sink, capsys, db_url, "\n[cases]\nauto_assign = false\n")
    folio = desk.open_case(sender=JUAN, subject="Sin internet", body="No tengo internet.")
    desk.agent_reply(desk.notification(folio), "Buenas tardes, hoy pasa un técnico.")
    assert "hoy pasa un técnico" in text(desk.last_to(CUSTOMER))
    assert desk.case(folio)["owner"] is None
    desk.agent_reply(desk.notification(folio), "#asignar yo\nLo sigo yo.")
    assert desk.case(folio)["owner"] == AGENT


# --- the command line ---------------------------------------------------------------------


@pytest.fixture
def cli(tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str) -> Cli:
    return Cli(_two_agents(write_config(tmp_path, mailboxes, sink, db_url=db_url)), capsys)


def _phone_case(cli: Cli, *options: str) -> str:
    code, out, err = cli(
        "cases", "open", "--channel", "phone", "--subject", "Llamada", "--text", "Llamó.",
        *options, "--json",
    )  # fmt: skip
    assert code == 0, err
    return str(json.loads(out)["folio"])


@pytest.mark.integration
def test_the_command_line_assigns_lists_and_shows_the_owner(cli: Cli) -> None:
    ana_s, luis_s, nobody_s = _phone_case(cli), _phone_case(cli), _phone_case(cli)
    assert cli.json("cases", "show", ana_s)["owner"] is None

    code, out, err = cli("cases", "assign", ana_s, "--to", f"Ana <{AGENT.upper()}>")
    assert (code, out.strip()) == (0, f"{ana_s}: owner set to {AGENT}")
    # Only the log of the notice telling the agent (sent by the command): no error.
    assert [e["event"] for e in json_events(err)] == ["notice_sent"]
    code, out, _ = cli("cases", "assign", ana_s, "--to", AGENT)
    assert (code, out.strip()) == (0, f"{ana_s}: already owned by {AGENT}")
    assert cli("cases", "assign", luis_s, "--to", LUIS)[0] == 0
    shown = cli.json("cases", "show", ana_s)
    assert shown["owner"] == AGENT
    assert [m["text"] for m in shown["messages"]].count(f"owner set to {AGENT}") == 1
    system, to_ana = shown["messages"][-2:]  # recorded, then the agent told
    assert system["from"].startswith("cli:")
    assert (to_ana["kind"], to_ana["to"]) == ("notice", AGENT)

    listed = {c["folio"]: c["owner"] for c in cli.json("cases", "list")}
    assert listed == {ana_s: AGENT, luis_s: LUIS, nobody_s: None}
    assert [c["folio"] for c in cli.json("cases", "list", "--owner", LUIS.upper())] == [luis_s]
    assert [c["folio"] for c in cli.json("cases", "list", "--owner", "none")] == [nobody_s]
    assert cli.json("cases", "list", "--owner", "nadie@example.com") == []
    code, out, _ = cli("cases", "list", "--owner", AGENT)
    header, row = out.splitlines()
    assert "OWNER" in header.split() and AGENT in row.split()
    code, out, _ = cli("cases", "show", luis_s)
    assert f"owner:       {LUIS}" in out.splitlines()
    code, out, _ = cli("cases", "show", nobody_s)
    assert "owner:       -" in out.splitlines()

    code, out, _ = cli("cases", "assign", luis_s, "--none")
    assert (code, out.strip()) == (0, f"{luis_s}: owner cleared")
    code, out, _ = cli("cases", "assign", luis_s, "--none")
    assert (code, out.strip()) == (0, f"{luis_s}: already unowned")
    assert cli.json("cases", "show", luis_s)["messages"][-1]["text"] == "owner cleared"
    assert sorted(c["folio"] for c in cli.json("cases", "list", "--owner", "none")) == sorted(
        [luis_s, nobody_s]
    )

    # Only an agent owns a case: refused with one sentence, nothing changed.
    code, out, err = cli("cases", "assign", nobody_s, "--to", "pedro@example.com")
    assert code == 2 and out == ""
    assert err.strip() == (
        f"mailcase: --to pedro@example.com is not an agent's address "
        f"(agents.addresses: {AGENT}, {LUIS})"
    )
    assert cli.json("cases", "show", nobody_s)["owner"] is None
    assert cli("cases", "assign", "PLR-2026-999999", "--to", AGENT)[0] == 4
    with pytest.raises(SystemExit) as exited:  # argparse: one of --to and --none
        cli("cases", "assign", nobody_s)
    assert exited.value.code == 2


def _age(cli: Cli, days: int) -> None:
    """Make every case, message and notice ``days`` old (as if written then)."""
    store = Store.open(load_settings(cli.config).database.url, auto_upgrade=False)
    then = datetime.now(UTC) - timedelta(days=days)
    with store.transaction() as session:
        session.execute(sa.update(Case).values(created_at=then, updated_at=then, closed_at=then))
        session.execute(sa.text("UPDATE case_messages SET date = :t"), {"t": then})
        session.execute(sa.text("UPDATE notices SET created_at = :t"), {"t": then})
    store.dispose()


@pytest.mark.integration
@pytest.mark.parametrize(
    "change", [("assign", "--to", AGENT), ("assign", "--none"), ("type", "--type", "complaint")]
)
def test_an_owner_or_a_type_is_no_activity_of_the_customer(
    cli: Cli, change: tuple[str, ...]
) -> None:
    folio = _phone_case(cli, "--customer", "rosa@example.com")
    if change[1] == "--none":
        assert cli("cases", "assign", folio, "--to", LUIS)[0] == 0
    assert cli("cases", "close", folio)[0] == 0
    _age(cli, 400)
    before = cli.json("cases", "show", folio)["updated_at"]
    purge = ("customers", "purge", "--inactive-days", "365")
    assert cli.json(*purge)["addresses"] == ["rosa@example.com"]

    code, _, err = cli("cases", change[0], folio, *change[1:])
    assert code == 0, err

    # Retention by age still finds the customer inactive: their clock did not restart.
    assert cli.json("cases", "show", folio)["updated_at"] == before
    assert cli.json(*purge)["addresses"] == ["rosa@example.com"]


@pytest.mark.integration
def test_a_merge_keeps_the_owner_or_takes_the_merged_ones(cli: Cli) -> None:
    owned = _phone_case(cli, "--customer", "rosa@example.com")
    unowned = _phone_case(cli, "--customer", "rosa@example.com")
    assert cli("cases", "assign", owned, "--to", LUIS)[0] == 0
    assert cli("cases", "merge", owned, "--into", unowned, "--no-notice")[0] == 0
    stays = cli.json("cases", "show", unowned)
    assert stays["owner"] == LUIS  # it had none: the merged case's owner follows it up
    assert _system(stays)[-1] == f"owner set to {LUIS}"

    first = _phone_case(cli, "--customer", "eva@example.com")
    second = _phone_case(cli, "--customer", "eva@example.com")
    assert cli("cases", "assign", first, "--to", AGENT)[0] == 0
    assert cli("cases", "assign", second, "--to", LUIS)[0] == 0
    assert cli("cases", "merge", second, "--into", first, "--no-notice")[0] == 0
    assert cli.json("cases", "show", first)["owner"] == AGENT  # its own stays

    # A merged case takes no owner any more (work on the one that answers for it).
    code, _, err = cli("cases", "assign", second, "--to", AGENT)
    assert code != 0
    assert f"case {second} was merged into {first}: work on {first}" in err


@pytest.mark.integration
def test_erasure_keeps_the_owner_and_an_erased_case_takes_none(cli: Cli) -> None:
    folio = _phone_case(cli, "--customer", "rosa@example.com")
    assert cli("cases", "assign", folio, "--to", AGENT)[0] == 0
    assert cli("cases", "close", folio)[0] == 0
    code, _, err = cli("customers", "forget", "rosa@example.com", "--yes")
    assert code == 0, err
    # The owner is an agent's address, not the customer's data.
    assert cli.json("cases", "show", folio)["owner"] == AGENT
    code, _, err = cli("cases", "assign", folio, "--none")
    assert code == 2
    assert "its customer's data was erased" in err
    assert cli.json("cases", "show", folio)["owner"] == AGENT


# --- reminders ----------------------------------------------------------------------------


def _wait_back(desk: Desk, hours: float) -> None:
    """Set every case's customer's latest message ``hours`` back (as test_reminders does)."""
    store = Store.open(load_settings(desk.cli.config).database.url, auto_upgrade=False)
    then = datetime.now(UTC) - timedelta(hours=hours)
    with store.transaction() as session:
        session.execute(
            sa.update(Case)
            .where(col(Case.last_customer_at).is_not(None))
            .values(last_customer_at=then)
        )
    store.dispose()


def _reminders(desk: Desk, rcpt: str) -> list[EmailMessage]:
    return [m for m in desk.to(rcpt) if text(m).startswith("Recordatorio")]


@pytest.mark.integration
def test_the_reminder_of_an_unanswered_case_reaches_its_owner(desk: Desk) -> None:
    owned = desk.open_case(sender=JUAN, subject="Sin internet", body="No tengo internet.")
    unowned = desk.open_case(sender="Rosa <rosa@example.com>", subject="Lento", body="Lento.")
    # Assigned with a note: no answer to the customer, who still waits.
    desk.agent_reply(desk.notification(owned), f"#asignar {LUIS}\nLuis lo ve mañana.")
    _wait_back(desk, 25)

    assert sorted(desk.cli.json("cases", "remind")) == sorted([owned, unowned])
    [to_owner] = _reminders(desk, LUIS)  # the owner's case only, once
    assert owned in str(to_owner["Subject"])
    assert f"Responsable: {LUIS}" in text(to_owner).splitlines()
    assert len(_reminders(desk, NOTIFY)) == 2  # the list still hears of both
    assert _reminders(desk, AGENT) == []
    # The owner answers the reminder itself: relayed to the customer, as any agent's.
    desk.agent_reply(to_owner, "Buenas tardes, mañana temprano lo reviso.", sender=LUIS_FROM)
    assert "mañana temprano" in text(desk.last_to(CUSTOMER))


@pytest.mark.integration
def test_an_owner_no_longer_an_agent_is_not_reminded(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str
) -> None:
    desk = _desk(tmp_path, mailboxes, sink, capsys, db_url)
    folio = desk.open_case(sender=JUAN, subject="Sin internet", body="No tengo internet.")
    assert desk.cli("cases", "assign", folio, "--to", LUIS)[0] == 0
    # Luis left the desk: taken out of agents.addresses; his old cases keep his name.
    config = desk.cli.config
    both = f'addresses = ["{AGENT}", "{LUIS}"]'
    config.write_text(config.read_text("utf-8").replace(both, f'addresses = ["{AGENT}"]'), "utf-8")
    _wait_back(desk, 25)
    assert desk.cli.json("cases", "remind") == [folio]
    assert _reminders(desk, LUIS) == []
    assert len(_reminders(desk, NOTIFY)) == 1
    assert [c["folio"] for c in desk.cli.json("cases", "list", "--owner", LUIS)] == [folio]


# --- the migration ------------------------------------------------------------------------


def test_migration_0011_upgrades_a_database_with_cases(db_url: str) -> None:
    # As 0010's test: every installation has cases whose messages refer to them, and a
    # migration that copied the cases table would be refused by the store's foreign keys.
    from alembic import command

    from mailcase.store import SCHEMA_HEAD, alembic_config

    installation_at(db_url, "0010")

    store = Store.open(db_url, auto_upgrade=True)  # through 0011, to the head
    try:
        with store.reading() as conn:
            rows = conn.execute(sa.text("SELECT folio, type, owner FROM cases")).all()
            texts = conn.execute(sa.text("SELECT text FROM case_messages")).scalars().all()
        assert store.revisions() == (SCHEMA_HEAD, SCHEMA_HEAD)
    finally:
        store.dispose()
    assert [tuple(r) for r in rows] == [("PLR-2026-000001", None, None)]
    assert texts == ["hola"]
    # And back, with the data, and up again (alembic's own connection).
    command.downgrade(alembic_config(db_url), "0010")
    command.upgrade(alembic_config(db_url), "head")
