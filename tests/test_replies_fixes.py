"""Canned replies: fixes from the ninth review round.

``#respuesta`` refused beside ``#masivo aviso`` (its text is rendered for one case), a
canned reply whose file does not render told to the agent instead of stopping the
mailbox or quarantining the reply, Latin-1 files as one sentence, the canned text of a
reply written straight to the customer, ``#asignar nadie`` kept, and the shipped texts
one line per paragraph.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from helpers import AGENT, CONTACTO, Cli, mail, write_config
from servers import Dovecot, SmtpSink
from test_agents import AREAS, CUSTOMER, Desk, text
from test_replies import _NO_COMPANY, CASE_CONTEXT, LANGUAGES, SHIPPED, _offline_config, _problems

from mailcase.config import load_settings
from mailcase.errors import ConfigError, TemplateError
from mailcase.health import check_canned_replies, check_templates
from mailcase.render import compile_error, environment, render_named
from mailcase.replies import render_reply

ANA = "ana.lopez@example.com"
MINE = "Buenas tardes, don Juan: le comparto los pasos."
LATIN1 = "Cobertura en su colonia: sí.\n".encode("latin-1")


def _override(tmp_path: Path, files: dict[str, bytes]) -> Path:
    override = tmp_path / "tpl"
    override.mkdir(exist_ok=True)
    for relative, data in files.items():
        path = override / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return override


# --- the rules of one reply ---------------------------------------------------------------


def test_respuesta_does_not_go_with_masivo_aviso() -> None:
    # Rendered for the main case, the canned text would give every report's customer the
    # main case's folio and its customer's name.
    assert _problems("#masivo aviso\n#respuesta reinicio-modem") == ["reply_conflict"]
    assert _problems("#reply reinicio-modem\n#outage update") == ["reply_conflict"]
    # "#masivo FOLIO" (joining an outage) is not news to anyone else: the rule is aviso's.
    assert "reply_conflict" not in _problems("#respuesta reinicio-modem\n#masivo no")


# --- files that do not render -------------------------------------------------------------


def test_a_latin1_template_is_one_sentence_naming_its_file(tmp_path: Path, capsys: Any) -> None:
    override = _override(
        tmp_path, {"replies/es/cobertura.txt.j2": LATIN1, "es/acknowledgement.txt.j2": LATIN1}
    )
    reply = override / "replies" / "es" / "cobertura.txt.j2"
    env = environment(override)
    assert compile_error(env, "replies/es/cobertura.txt.j2") == (
        f"template {reply} is not UTF-8 text: save it as UTF-8"
    )
    for fresh in (False, True):
        with pytest.raises(TemplateError, match="is not UTF-8 text"):
            render_named(
                "replies/es/cobertura.txt.j2", CASE_CONTEXT, override=override, fresh=fresh
            )
    config = _offline_config(tmp_path, override)
    settings = load_settings(config)
    with pytest.raises(ConfigError, match=f"{reply} is not UTF-8 text"):
        check_canned_replies(settings)
    # A notice's override too: the templates row fails, naming it.
    with pytest.raises(ConfigError, match=r"acknowledgement\.txt\.j2 is not UTF-8 text"):
        check_templates(settings)
    code, out, err = Cli(config, capsys)("replies", "show", "cobertura")
    assert code != 0 and out == ""
    assert err.count("\n") == 1 and str(reply) in err and "Traceback" not in err


def test_check_renders_each_reply_for_a_case_without_a_name(tmp_path: Path) -> None:
    # Fine for "Juan Pérez", an IndexError for a phone case or a customer with no name.
    override = _override(
        tmp_path, {"replies/es/saludo.txt.j2": b"Hola, {{ customer_name.split()[0] }}.\n"}
    )
    with pytest.raises(ConfigError, match=r"replies/es/saludo\.txt\.j2"):
        check_canned_replies(load_settings(_offline_config(tmp_path, override)))


# --- the shipped texts --------------------------------------------------------------------


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("name", SHIPPED)
def test_the_shipped_replies_are_one_line_per_paragraph(name: str, language: str) -> None:
    # The HTML part turns each line break into <br>: a sentence wrapped in the file was
    # broken in two in every mail reader showing HTML.
    for company in (CASE_CONTEXT["company"], _NO_COMPANY):
        rendered = render_reply(name, language, {**CASE_CONTEXT, "company": company})
        assert rendered is not None
        for line in rendered.text.splitlines():
            assert line == "" or line[-1] in ".:", line


@pytest.mark.parametrize("language", LANGUAGES)
def test_formas_de_pago_claims_nothing_the_isp_may_not_do(language: str) -> None:
    with_office = render_reply("formas-de-pago", language, CASE_CONTEXT)
    bare = render_reply("formas-de-pago", language, {**CASE_CONTEXT, "company": _NO_COMPANY})
    assert with_office is not None and bare is not None
    office = {"es": "En nuestra oficina", "en": "At our office"}[language]
    assert office in with_office.text and "Av. Juárez 1" in with_office.text
    assert office not in bare.text  # no office named without an address
    for claim in ("recibo", "referencia", "bill", "reference", "número de cliente"):
        assert claim not in with_office.text


# --- by mail ------------------------------------------------------------------------------


@pytest.fixture
def desk(tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any) -> Desk:
    config = write_config(tmp_path, mailboxes, sink, notify=True, extra=AREAS)
    return Desk(Cli(config, capsys), mailboxes, sink, tmp_path)


def _desk_with(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, files: dict[str, bytes]
) -> Desk:
    override = _override(tmp_path, files)
    extra = AREAS + f'\n[templates]\ndirectory = "{override}"\n'
    config = write_config(tmp_path, mailboxes, sink, notify=True, extra=extra)
    return Desk(Cli(config, capsys), mailboxes, sink, tmp_path)


@pytest.mark.integration
def test_masivo_aviso_with_respuesta_is_refused_and_reaches_no_report(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    falla = b"Estimado(a) {{ customer_name }}: su folio {{ folio }}.\n"
    desk = _desk_with(tmp_path, mailboxes, sink, capsys, {"replies/es/falla.txt.j2": falla})
    main = desk.open_case(sender=f"Juan Pérez <{CUSTOMER}>", subject="Sin internet", body="x")
    ana = desk.open_case(sender=f"Ana López <{ANA}>", subject="Sin internet", body="y")
    assert desk.cli("cases", "outage", ana, "--of", main, "--no-notice")[0] == 0
    told = len(desk.to(ANA)), len(desk.to(CUSTOMER))
    desk.agent_reply(desk.notification(main), "#masivo aviso\n#respuesta falla\nMientras tanto:")
    assert (len(desk.to(ANA)), len(desk.to(CUSTOMER))) == told  # Juan's name reached no one
    error = text(desk.last_to(AGENT))
    assert "#respuesta falla\n" in error and "ni #masivo aviso" in error


@pytest.mark.integration
@pytest.mark.parametrize(
    "source",
    [
        b"Cubrimos su colonia {% if %}\n",  # a typo
        b"Hola {{ nombre }}, cubrimos su colonia.\n",  # a name no case has
        LATIN1,  # saved by a Windows editor
        b"Hola, {{ customer_name.split()[0] }}: cubrimos su colonia.\n",  # no name
    ],
)
def test_a_reply_file_that_does_not_render_is_told_to_the_agent_and_the_poll_goes_on(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, source: bytes
) -> None:
    desk = _desk_with(tmp_path, mailboxes, sink, capsys, {})
    # A customer who wrote with no display name: customer_name is "".
    folio = desk.open_case(sender=CUSTOMER, subject="Sin servicio", body="No tengo internet.")
    notice = desk.notification(folio)
    told = len(desk.to(CUSTOMER))
    # The admin saves a new canned reply while the daemon runs.
    broken = tmp_path / "tpl" / "replies" / "es" / "cobertura.txt.j2"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(source)
    time.sleep(2.1)  # render.TEMPLATE_RECHECK_SECONDS: the new name is offered
    quoted = "\n".join("> " + line for line in text(notice).splitlines())
    mailboxes.append(
        "contacto",
        mail(
            sender=f"Ana Técnica <{AGENT}>",
            subject=f"Re: {notice['Subject']}",
            body=f"#respuesta cobertura\n#tipo consulta\n{MINE}\n\n{quoted}",
            headers={
                "In-Reply-To": notice["Message-ID"].strip(),
                "References": notice["Message-ID"].strip(),
            },
        ),
    )
    mailboxes.append("contacto", mail(sender="Rosa <rosa@example.com>", subject="Plan"))
    code, _, err = desk.cli("poll")
    assert code == 0, err
    assert len(desk.cli.json("cases", "list")) == 2  # the mail after it was read
    ledger = desk.cli.json("messages", "list")
    assert "quarantined" not in {entry["disposition"] for entry in ledger}
    assert len(desk.to(CUSTOMER)) == told and desk.case(folio)["type"] is None  # nothing ran
    error = text(desk.last_to(AGENT))
    assert "#respuesta cobertura\n" in error and "avise a un administrador" in error
    # The admin learns which file from the log: a warning, without a traceback.
    [warning] = [line for line in err.splitlines() if "canned_reply_broken" in line]
    assert "warning" in warning and str(broken) in warning and "Traceback" not in err


@pytest.mark.integration
def test_written_straight_to_the_customer_the_canned_text_is_relayed_alone(desk: Desk) -> None:
    folio = desk.open_case(subject="Sin servicio", body="No tengo internet.")
    told, agent_told = len(desk.to(CUSTOMER)), len(desk.to(AGENT))
    desk.agent_reply(
        desk.notification(folio),
        f"#respuesta reinicio-modem\n{MINE}",
        to=CUSTOMER,
        headers={"Cc": CONTACTO},
    )
    [relayed] = desk.to(CUSTOMER)[told:]  # the agent's own words came from the agent
    body = text(relayed)
    assert body.startswith("Para reiniciar su módem") and MINE not in body
    assert f"Su reporte es el folio {folio}." in body
    assert len(desk.to(AGENT)) == agent_told  # nothing to tell the agent
    case = desk.case(folio)
    assert case["owner"] == AGENT
    mine = [m for m in case["messages"] if m["from"] == AGENT and m["direction"] == "in"]
    assert (mine[0]["kind"], mine[0]["text"]) == ("agent", MINE)


@pytest.mark.integration
def test_asignar_nadie_with_respuesta_leaves_the_case_nobodys(desk: Desk) -> None:
    folio = desk.open_case(subject="Sin servicio", body="No tengo internet.")
    told = len(desk.to(CUSTOMER))
    desk.agent_reply(desk.notification(folio), "#asignar nadie\n#respuesta reinicio-modem")
    assert len(desk.to(CUSTOMER)) == told + 1  # relayed
    assert desk.case(folio)["owner"] is None


@pytest.mark.integration
def test_a_held_canned_reply_sent_straight_says_only_the_canned_reply_is_missing(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    # The agent's own mail reached the customer from the agent; only the canned steps,
    # relayed by mailcase, were held. "Send your reply again" had them write twice.
    config = write_config(
        tmp_path, mailboxes, sink, notify=True,
        extra=AREAS + "\n[limits]\nmax_relays_per_case_per_hour = 1\n",
    )  # fmt: skip
    desk = Desk(Cli(config, capsys), mailboxes, sink, tmp_path)
    folio = desk.open_case(subject="Sin servicio", body="No tengo internet.")
    desk.agent_reply(desk.notification(folio), "Buenas tardes, ya lo revisamos.")  # the one
    agent_told = len(desk.to(AGENT))
    desk.agent_reply(
        desk.notification(folio),
        f"#respuesta reinicio-modem\n{MINE}",
        to=CUSTOMER,
        headers={"Cc": CONTACTO},
    )
    [notice] = desk.to(AGENT)[agent_told:]
    body = text(notice)
    assert "sí le llegó" in body and "«reinicio-modem» no se le envió" in body
    assert "#respuesta reinicio-modem" in body and "No reenvíe su correo" in body


@pytest.mark.parametrize(
    ("language", "line"),
    [
        ("es", "la respuesta predefinida «reinicio-modem» no se le envió"),
        ("en", 'the canned reply "reinicio-modem" was not sent'),
    ],
)
def test_the_held_canned_reply_notice_in_both_languages(language: str, line: str) -> None:
    from test_templates_all import context

    from mailcase.render import render_body

    body = render_body(
        "not_relayed", language, context("not_relayed", reason="held", canned_only="reinicio-modem")
    ).text
    assert line in body
