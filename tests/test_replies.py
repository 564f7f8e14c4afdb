"""Canned replies: ``#respuesta NOMBRE`` / ``#reply NAME`` and ``mailcase replies``.

An agent answers a common question with a shared text (Zammad's text modules,
OTRS/Znuny's templates, osTicket's canned responses, FreeScout's saved replies): the
customer gets the agent's own words, then the canned reply rendered in the case's
language, as one relayed reply. Unit tests of the parser, the rules of one reply and
the rendering (shipped files, overrides, broken overrides), the command line, then the
mail command through real Dovecot and SMTP servers on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import types
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jinja2
import pytest
from helpers import AGENT, COMPANY, FOLIO, Cli, write_config
from servers import Dovecot, SmtpSink
from test_agents import AREAS, CUSTOMER, Desk, text
from test_templates_all import context

from mailcase.casework import command_problems
from mailcase.commands import (
    COMMAND_FORMS,
    Command,
    CommandKind,
    CommandProblem,
    parse_commands,
    reply_key,
)
from mailcase.config import load_settings
from mailcase.errors import ConfigError, TemplateError
from mailcase.health import check_canned_replies, check_templates
from mailcase.notices import sample_context
from mailcase.render import render_body
from mailcase.replies import available, is_reply_template, render_reply

SHIPPED = ("formas-de-pago", "reinicio-modem")
LANGUAGES = ("es", "en")
# The context a canned reply is rendered with: a customer's case's (notices.base_context).
CASE_CONTEXT: dict[str, Any] = {
    "folio": FOLIO,
    "customer": "juan.perez@example.com",
    "customer_name": "Juan Pérez",
    "subject": "Sin servicio",
    "mailbox": "contacto",
    "mailbox_address": "contacto@internet-plarey.com.mx",
    "company": COMPANY,
    "commands": list(COMMAND_FORMS),
    "reopen_days": 7,
    "area": "",
    "channel": "mail",
    "area_name": "",
    "areas": [],
    "area_keys": [],
    "replies": list(SHIPPED),
}

# --- parsing ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "name"),
    [
        ("#respuesta reinicio-modem", "reinicio-modem"),
        ("#reply formas-de-pago", "formas-de-pago"),
        ("#Respuesta Reinicio-Módem", "reinicio-modem"),  # as typed on a phone
        ("#RESPUESTA: REINICIO-MODEM.", "reinicio-modem"),
        ("#reply wifi2", "wifi2"),
    ],
)
def test_respuesta_and_reply_read_the_name_folded(line: str, name: str) -> None:
    parsed = parse_commands(f"{line}\nBuenas tardes, don Juan:")
    assert parsed.problems == ()
    assert parsed.commands == (Command(CommandKind.REPLY, reply=name, line=line),)
    assert parsed.text == "Buenas tardes, don Juan:"


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("#respuesta", "missing_reply"),
        ("#reply", "missing_reply"),
        ("#respuesta reinicio modem", "bad_reply"),  # two words: one name
        ("#respuesta reinicio_modem", "bad_reply"),  # file names take "-" only
        ("#respuesta ../../es/relay", "bad_reply"),
    ],
)
def test_a_missing_or_malformed_name_is_a_problem(line: str, problem: str) -> None:
    parsed = parse_commands(line)
    assert parsed.commands == ()
    assert parsed.problems == (CommandProblem(line, problem),)


def test_reply_key_is_what_the_command_line_reads_too() -> None:
    assert reply_key(" Reinicio-Módem ") == "reinicio-modem"


def test_a_respuesta_below_the_text_is_misplaced() -> None:
    parsed = parse_commands("Buenas tardes:\n#respuesta reinicio-modem")
    assert parsed.problems == (CommandProblem("#respuesta reinicio-modem", "misplaced_command"),)


def test_the_help_footer_names_the_command_in_both_languages() -> None:
    assert "#respuesta NOMBRE / #reply NAME" in COMMAND_FORMS


# --- the rules of one reply ---------------------------------------------------------------


def _problems(block: str, status: str = "open") -> list[str]:
    parsed = parse_commands(f"{block}\nBuenas tardes.")
    assert parsed.problems == ()
    now = datetime.now(UTC)
    return [code for _, code in command_problems(parsed.commands, parsed.text, status, now)]


def test_respuesta_goes_with_type_area_assign_participant_reopen_and_pending() -> None:
    block = (
        "#reabrir\n#respuesta reinicio-modem\n#tipo consulta\n#area redes\n"
        "#asignar yo\n#participante rosa@example.com\n#pendiente 5"
    )
    assert _problems(block, "closed") == []


@pytest.mark.parametrize(
    "other", ["#nota", "#resolver procedente", "#cerrar", "#fusionar PLR-2026-000001", "#visita"]
)
def test_respuesta_conflicts_with_notes_settling_merging_and_visits(other: str) -> None:
    if other == "#visita":
        other = f"#visita {(datetime.now(UTC) + timedelta(days=9)).date()} 10:00"
    # "#fusionar" goes alone (merge_alone), whichever comes first.
    expected = "merge_alone" if other.startswith("#fusionar") else "reply_conflict"
    assert _problems(f"#respuesta reinicio-modem\n{other}") == [expected]
    assert expected in _problems(f"{other}\n#respuesta reinicio-modem")


def test_two_canned_replies_in_one_reply_are_refused() -> None:
    assert _problems("#respuesta reinicio-modem\n#reply formas-de-pago") == ["repeated"]


# --- rendering ----------------------------------------------------------------------------


def test_the_shipped_replies_exist_in_both_languages() -> None:
    replies = available(None)
    assert tuple(replies) == SHIPPED
    for reply in replies.values():
        assert reply.languages == LANGUAGES
        assert reply.source == "shipped"


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_reply_renders_with_a_cases_context(name: str, language: str) -> None:
    rendered = render_reply(name, language, CASE_CONTEXT)
    assert rendered is not None and rendered.language == language
    assert rendered.text.strip() == rendered.text and rendered.text
    assert "{{" not in rendered.text and "{%" not in rendered.text and "{#" not in rendered.text
    spanish = any(word in rendered.text for word in (" su ", " usted", "Puede", "Para "))
    assert spanish == (language == "es")
    # Without contact details or a company name it still reads (no stray punctuation).
    bare = render_reply(name, language, {**CASE_CONTEXT, "company": {**COMPANY} | _NO_COMPANY})
    assert bare is not None and "()" not in bare.text and " ," not in bare.text


_NO_COMPANY = {"name": "", "phone": "", "email": "", "website": "", "address": "", "hours": ""}


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("name", SHIPPED)
def test_a_shipped_reply_uses_only_what_every_case_has(name: str, language: str) -> None:
    # StrictUndefined: each name it uses must be in the case's context; "folio" and
    # "company" are (reinicio-modem names the folio, formas-de-pago the company).
    used = {"reinicio-modem": "folio", "formas-de-pago": "company"}[name]
    ctx = {k: v for k, v in CASE_CONTEXT.items() if k != used}
    with pytest.raises(TemplateError) as raised:
        render_reply(name, language, ctx)
    assert isinstance(raised.value.__cause__, jinja2.UndefinedError)
    assert used in str(raised.value)


def test_the_sample_context_is_a_cases_context(tmp_path: Path) -> None:
    settings = load_settings(_offline_config(tmp_path))
    sample = sample_context(settings, "en")
    assert set(CASE_CONTEXT) <= set(sample)
    assert sample["folio"].startswith("PLR-")


def test_an_admins_reply_of_the_same_name_wins_and_a_new_one_is_offered(tmp_path: Path) -> None:
    override = tmp_path / "tpl"
    (override / "replies" / "es").mkdir(parents=True)
    (override / "replies" / "es" / "reinicio-modem.txt.j2").write_text(
        "Desconecte el módem (folio {{ folio }}).\n", encoding="utf-8"
    )
    (override / "replies" / "es" / "cobertura.txt.j2").write_text("Cubrimos el centro.\n")
    (override / "replies" / "es" / "Mal_Nombre.txt.j2").write_text("x")  # not a reply name
    replies = available(override)
    assert list(replies) == ["cobertura", "formas-de-pago", "reinicio-modem"]
    assert dict(replies["reinicio-modem"].sources) == {"es": "admin", "en": "shipped"}
    assert replies["reinicio-modem"].source == "admin"
    assert replies["cobertura"].languages == ("es",)
    own = render_reply("reinicio-modem", "es", CASE_CONTEXT, override=override)
    assert own is not None and own.text == f"Desconecte el módem (folio {FOLIO})."
    shipped = render_reply("reinicio-modem", "en", CASE_CONTEXT, override=override)
    assert shipped is not None and shipped.text.startswith("To restart your modem")
    # Only in Spanish: an English case gets the Spanish text rather than nothing.
    fallback = render_reply("cobertura", "en", CASE_CONTEXT, override=override)
    assert fallback is not None and (fallback.language, fallback.text) == (
        "es",
        "Cubrimos el centro.",
    )
    assert render_reply("nada", "es", CASE_CONTEXT, override=override) is None
    assert is_reply_template("replies/es/cobertura.txt.j2")
    assert not is_reply_template("replies/es/Mal_Nombre.txt.j2")
    assert not is_reply_template("replies/fr/cobertura.txt.j2")


@pytest.mark.parametrize(
    ("source", "said"),
    [
        ("Hola {{ folio }\n", "line 1"),  # does not compile
        ("Hola {{ follio }}\n", "follio"),  # a name no case has
    ],
)
def test_a_broken_override_is_one_sentence_naming_its_file(
    tmp_path: Path, source: str, said: str
) -> None:
    override = tmp_path / "tpl"
    (override / "replies" / "en").mkdir(parents=True)
    broken = override / "replies" / "en" / "roto.txt.j2"
    broken.write_text(source, encoding="utf-8")
    with pytest.raises(TemplateError) as raised:
        render_reply("roto", "en", CASE_CONTEXT, override=override)
    message = str(raised.value)
    assert str(broken) in message and said in message and "\n" not in message


# --- notices to agents ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["agent_notification", "assigned", "reminder"])
@pytest.mark.parametrize(
    ("language", "footer"),
    [
        ("es", "Respuestas para #respuesta: formas-de-pago, reinicio-modem"),
        ("en", "Replies for #reply: formas-de-pago, reinicio-modem"),
    ],
)
def test_the_agents_help_footer_lists_the_replies(kind: str, language: str, footer: str) -> None:
    assert footer in render_body(kind, language, context(kind, replies=list(SHIPPED))).text
    assert footer.split(":")[0] not in render_body(kind, language, context(kind, replies=[])).text


@pytest.mark.parametrize(
    ("language", "listed"),
    [
        ("es", "Respuestas disponibles: formas-de-pago, reinicio-modem"),
        ("en", "Canned replies: formas-de-pago, reinicio-modem"),
    ],
)
def test_command_error_lists_the_replies_when_one_is_unknown(language: str, listed: str) -> None:
    unknown = [{"line": "#respuesta nada", "problem": "unknown_reply"}]
    ctx = context("command_error", problems=unknown, replies=list(SHIPPED), about_replies=True)
    assert listed in render_body("command_error", language, ctx).text
    ctx = context("command_error", problems=unknown, replies=[], about_replies=True)
    assert listed.split(":")[0] + ": n" in render_body("command_error", language, ctx).text
    other = [{"line": "#foo", "problem": "unknown"}]
    ctx = context("command_error", problems=other, replies=list(SHIPPED), about_replies=False)
    assert listed not in render_body("command_error", language, ctx).text


def test_base_context_offers_the_replies(tmp_path: Path) -> None:
    settings = load_settings(_offline_config(tmp_path))
    assert sample_context(settings, "es")["replies"] == list(SHIPPED)


# --- command line and check ---------------------------------------------------------------


def _offline_config(tmp_path: Path, override: Path | None = None) -> Path:
    """A config whose servers are never contacted (the replies need none)."""
    servers: Any = types.SimpleNamespace(port=1, ssl_port=2, users={"contacto": "x", "info": "y"})
    sink: Any = types.SimpleNamespace(port=3)
    extra = f'[templates]\ndirectory = "{override}"\n' if override else ""
    return write_config(tmp_path, servers, sink, extra=extra)


def test_replies_list_names_languages_and_source(tmp_path: Path, capsys: Any) -> None:
    override = tmp_path / "tpl"
    (override / "replies" / "en").mkdir(parents=True)
    (override / "replies" / "en" / "cobertura.txt.j2").write_text("We cover downtown.\n")
    cli = Cli(_offline_config(tmp_path, override), capsys)
    code, out, err = cli("replies", "list", "--json")
    assert (code, err) == (0, "")
    assert json.loads(out) == [
        {
            "name": "cobertura",
            "languages": ["en"],
            "source": "admin",
            "sources": {"en": "admin"},
        },
        {
            "name": "formas-de-pago",
            "languages": ["es", "en"],
            "source": "shipped",
            "sources": {"es": "shipped", "en": "shipped"},
        },
        {
            "name": "reinicio-modem",
            "languages": ["es", "en"],
            "source": "shipped",
            "sources": {"es": "shipped", "en": "shipped"},
        },
    ]
    code, out, _ = cli("replies", "list")
    assert code == 0
    assert out.split()[:3] == ["NAME", "LANGUAGES", "SOURCE"]
    assert "cobertura" in out and "es, en" in out and "admin" in out


def test_replies_show_renders_for_a_sample_case(tmp_path: Path, capsys: Any) -> None:
    override = tmp_path / "tpl"
    (override / "replies" / "es").mkdir(parents=True)
    (override / "replies" / "es" / "cobertura.txt.j2").write_text(
        "Estimado(a) {{ customer_name }}: su folio es {{ folio }}.\n"
    )
    cli = Cli(_offline_config(tmp_path, override), capsys)
    code, out, err = cli("replies", "show", "Reinicio-Módem")
    assert (code, err) == (0, "")
    assert out.startswith("Para reiniciar su módem") and "PLR-" in out
    code, out, _ = cli("replies", "show", "reinicio-modem", "--language", "en")
    assert code == 0 and out.startswith("To restart your modem")
    code, out, err = cli("replies", "show", "cobertura", "--language", "en")
    assert code == 0 and out.startswith("Estimado(a) Juan Pérez: su folio es PLR-")
    assert "no en text" in err
    code, out, err = cli("replies", "show", "nada")
    assert code != 0 and out == ""
    assert err.count("\n") == 1 and "nada" in err and "reinicio-modem" in err


def test_replies_show_and_check_name_a_broken_override(tmp_path: Path, capsys: Any) -> None:
    override = tmp_path / "tpl"
    (override / "replies" / "es").mkdir(parents=True)
    broken = override / "replies" / "es" / "reinicio-modem.txt.j2"
    broken.write_text("Hola {{ cliente }}\n", encoding="utf-8")
    config = _offline_config(tmp_path, override)
    code, out, err = Cli(config, capsys)("replies", "show", "reinicio-modem")
    assert code != 0 and out == ""
    assert err.count("\n") == 1 and str(broken) in err and "cliente" in err
    assert "Traceback" not in err
    settings = load_settings(config)
    with pytest.raises(ConfigError, match="cliente"):
        check_canned_replies(settings)
    # One row: the templates row takes an admin's replies as theirs, not as unknown files.
    assert "override" in check_templates(settings)


def test_check_renders_every_reply(tmp_path: Path) -> None:
    settings = load_settings(_offline_config(tmp_path))
    assert check_canned_replies(settings) == (
        "2 canned replies render: formas-de-pago, reinicio-modem"
    )


def test_check_templates_still_refuses_a_misnamed_reply(tmp_path: Path) -> None:
    override = tmp_path / "tpl"
    (override / "replies" / "es").mkdir(parents=True)
    (override / "replies" / "es" / "Cobertura.txt.j2").write_text("x")
    with pytest.raises(ConfigError, match=r"replies/es/Cobertura\.txt\.j2"):
        check_templates(load_settings(_offline_config(tmp_path, override)))


# --- by mail ------------------------------------------------------------------------------


@pytest.fixture
def desk(tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str) -> Desk:
    config = write_config(tmp_path, mailboxes, sink, notify=True, extra=AREAS, db_url=db_url)
    return Desk(Cli(config, capsys), mailboxes, sink, tmp_path)


MINE = "Buenas tardes, don Juan: le comparto los pasos que comentamos."


@pytest.mark.integration
def test_respuesta_relays_the_agents_words_then_the_canned_text(desk: Desk) -> None:
    folio = desk.open_case(subject="Sin servicio", body="No tengo internet.")
    told = len(desk.to(CUSTOMER))
    notification = desk.notification(folio)
    assert "Respuestas para #respuesta: formas-de-pago, reinicio-modem" in text(notification)

    desk.agent_reply(notification, f"#Respuesta Reinicio-Módem\n#tipo consulta\n\n{MINE}")

    [relayed] = desk.to(CUSTOMER)[told:]  # one message
    body = text(relayed)
    assert "#respuesta" not in body.lower()
    assert body.index(MINE) < body.index("Para reiniciar su módem")  # Spanish, below the words
    assert f"Su reporte es el folio {folio}." in body  # rendered for this case
    assert folio in relayed["Subject"]
    case = desk.case(folio)
    assert case["type"] == "question"
    reply = [m for m in case["messages"] if m["from"] == AGENT and m["direction"] == "in"]
    # Reached the customer, so not a note; the agent's own words are their message (the
    # signature their client adds is learnt from its end), the notice the whole text.
    assert (reply[0]["kind"], reply[0]["text"]) == ("agent", MINE)
    sent = [m for m in case["messages"] if m["kind"] == "notice" and m["to"] == CUSTOMER]
    assert MINE in sent[-1]["text"] and "Para reiniciar su módem" in sent[-1]["text"]
    assert case["owner"] == AGENT  # an answer, as a plain reply is

    # The canned reply alone, without words of the agent's.
    desk.agent_reply(desk.notification(folio), "#reply formas-de-pago")
    alone = text(desk.last_to(CUSTOMER))
    assert alone.startswith("Para pagar su servicio de Internet Plarey")


@pytest.mark.integration
def test_an_english_case_gets_the_english_text(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str
) -> None:
    config = write_config(
        tmp_path, mailboxes, sink, notify=True, extra=AREAS, db_url=db_url, language="en"
    )
    english = Desk(Cli(config, capsys), mailboxes, sink, tmp_path)
    folio = english.open_case(subject="No service", body="My internet is down.")
    notification = english.notification(folio)
    assert "Replies for #reply: formas-de-pago, reinicio-modem" in text(notification)
    english.agent_reply(notification, "#respuesta reinicio-modem\nGood afternoon, Mr Pérez.")
    body = text(english.last_to(CUSTOMER))
    assert body.index("Good afternoon") < body.index("To restart your modem")
    assert "Para reiniciar" not in body


@pytest.mark.integration
def test_an_unknown_reply_runs_nothing_and_lists_the_replies(desk: Desk) -> None:
    folio = desk.open_case(subject="Sin servicio", body="No tengo internet.")
    told = len(desk.to(CUSTOMER))
    desk.agent_reply(desk.notification(folio), f"#respuesta reinicio\n#tipo consulta\n{MINE}")
    assert len(desk.to(CUSTOMER)) == told  # nothing reached the customer
    assert desk.case(folio)["type"] is None  # nothing ran
    error = text(desk.last_to(AGENT))
    assert "#respuesta reinicio\n" in error
    assert "no hay una respuesta predefinida con ese nombre" in error
    assert "Respuestas disponibles: formas-de-pago, reinicio-modem" in error


@pytest.mark.integration
def test_with_pendiente_the_canned_text_is_the_question_and_the_case_waits(desk: Desk) -> None:
    folio = desk.open_case(subject="Sin servicio", body="No tengo internet.")
    told = len(desk.to(CUSTOMER))
    desk.agent_reply(desk.notification(folio), "#pendiente 5\n#respuesta reinicio-modem")
    [question] = desk.to(CUSTOMER)[told:]
    assert text(question).startswith("Para reiniciar su módem")
    until = desk.case(folio)["pending_until"]
    assert until is not None
    moment = datetime.fromisoformat(until)
    assert abs(moment - datetime.now(UTC) - timedelta(days=5)) < timedelta(minutes=2)


@pytest.mark.integration
def test_respuesta_with_a_note_is_refused(desk: Desk) -> None:
    folio = desk.open_case(subject="Sin servicio", body="No tengo internet.")
    told = len(desk.to(CUSTOMER))
    desk.agent_reply(desk.notification(folio), f"#nota\n#respuesta reinicio-modem\n{MINE}")
    assert len(desk.to(CUSTOMER)) == told
    assert "#respuesta no va con #nota" in text(desk.last_to(AGENT))


@pytest.mark.integration
def test_mailcase_check_fails_one_row_on_a_reply_that_does_not_render(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    override = tmp_path / "tpl"
    (override / "replies" / "en").mkdir(parents=True)
    broken = override / "replies" / "en" / "cobertura.txt.j2"
    broken.write_text("We cover {% if %}\n", encoding="utf-8")
    config = write_config(
        tmp_path, mailboxes, sink, extra=f'[templates]\ndirectory = "{override}"\n'
    )
    cli = Cli(config, capsys)
    assert cli("db", "upgrade")[0] == 0
    code, out, err = cli("check")
    assert code == 1
    failed = [line for line in out.splitlines() if "FAILED" in line]
    assert len(failed) == 1 and failed[0].startswith("replies")
    assert str(broken) in failed[0] and str(broken) in err
