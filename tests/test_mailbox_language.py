"""A mailbox's own notice language (``[mailboxes.NAME] language``): the cases opened
from it keep it for every notice, agents hear of its caseless mail in it, and
``cases open --language`` chooses another."""

from __future__ import annotations

import os
import types
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from helpers import INFO, NOTIFY, Cli, mail, write_config
from servers import Dovecot, SmtpSink

from mailcase.config import load_settings
from mailcase.errors import EXIT_CONFIG, ConfigError

CUSTOMER = "juan.perez@example.com"
CUSTOMER_EN = "john.smith@example.com"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No MAILCASE_* variable of the developer's shell leaks into these tests."""
    for name in list(os.environ):
        if name.startswith("MAILCASE_"):
            monkeypatch.delenv(name)


def _english_info(config: Path) -> Path:
    """``config`` (as :func:`write_config` writes it) with ``language = "en"`` for info."""
    text = config.read_text(encoding="utf-8")
    assert text.count('username = "info"\n') == 1
    config.write_text(text.replace('username = "info"\n', 'username = "info"\nlanguage = "en"\n'))
    return config


def _offline_config(tmp_path: Path, **kw: Any) -> Path:
    """A config whose servers are never contacted (closed ports)."""
    servers: Any = types.SimpleNamespace(port=1, ssl_port=2, users={"contacto": "x", "info": "y"})
    return write_config(tmp_path, servers, types.SimpleNamespace(port=3), **kw)  # type: ignore[arg-type]


# --- Configuration ---


def test_a_mailbox_language_defaults_to_the_installations(tmp_path: Path) -> None:
    settings = load_settings(_english_info(_offline_config(tmp_path)))
    assert settings.mailboxes["contacto"].language is None
    assert settings.language_of("contacto") == "es"  # notices.language
    assert settings.language_of("info") == "en"
    assert settings.language_of("gone") == "es"  # a mailbox taken out of the config

    english = load_settings(_offline_config(tmp_path, language="en"))
    assert english.language_of("contacto") == english.language_of("info") == "en"


def test_a_mailbox_language_can_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAILCASE_MAILBOXES__CONTACTO__LANGUAGE", "en")
    assert load_settings(_offline_config(tmp_path)).language_of("contacto") == "en"


@pytest.mark.parametrize("value", ['"fr"', '"ES"', '""', "1"])
def test_a_bad_mailbox_language_is_refused_naming_the_key(tmp_path: Path, value: str) -> None:
    config = _offline_config(tmp_path)
    text = config.read_text(encoding="utf-8")
    config.write_text(
        text.replace('username = "info"\n', f'username = "info"\nlanguage = {value}\n')
    )
    with pytest.raises(ConfigError) as refused:
        load_settings(config)
    message = str(refused.value)
    assert message.startswith("bad value for mailboxes.info.language: "), message
    assert str(config) in message and "'es'" in message and "'en'" in message


# --- Through the servers ---


def _text(message: EmailMessage) -> str:
    body = message.get_body(("plain",))
    assert body is not None
    return " ".join(str(body.get_content()).split())


def _to(sink: SmtpSink, rcpt: str) -> list[EmailMessage]:
    return [m.message for m in sink.messages if m.rcpt_tos == [rcpt]]


@pytest.mark.integration
def test_an_english_and_a_spanish_mailbox_each_answer_in_their_language(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str
) -> None:
    cli = Cli(
        _english_info(write_config(tmp_path, mailboxes, sink, notify=True, db_url=db_url)), capsys
    )
    mailboxes.append("contacto", mail(sender=CUSTOMER, subject="Sin servicio"))
    mailboxes.append("info", mail(sender=CUSTOMER_EN, to=INFO, subject="No service"))
    cli.poll()

    [spanish] = _to(sink, CUSTOMER)
    [english] = _to(sink, CUSTOMER_EN)
    assert spanish["Content-Language"] == "es-MX" and english["Content-Language"] == "en"
    assert "Recibimos su mensaje «Sin servicio»" in _text(spanish)
    assert 'We received your message "No service"' in _text(english)
    assert english["From"].addresses[0].addr_spec == INFO
    cases = {c["customer"]: c["folio"] for c in cli.json("cases", "list")}
    assert cli.json("cases", "show", cases[CUSTOMER])["language"] == "es"
    assert cli.json("cases", "show", cases[CUSTOMER_EN])["language"] == "en"
    # The agents hear of each case in its language.
    told = {m["Subject"]: m["Content-Language"] for m in _to(sink, NOTIFY)}
    assert sorted(told.values()) == ["en", "es-MX"]

    # The English customer's reply reaches the Spanish mailbox: the case keeps its
    # language, for the agents' notice as for the resolution.
    folio = cases[CUSTOMER_EN]
    mailboxes.append(
        "contacto", mail(sender=CUSTOMER_EN, subject=f"Re: [Folio {folio}] No service")
    )
    before = len(_to(sink, NOTIFY))
    cli.poll()
    [update] = _to(sink, NOTIFY)[before:]
    assert update["Content-Language"] == "en"
    assert f"The customer wrote again on case {folio}" in _text(update)
    code, _, err = cli(
        "cases", "resolve", folio, "--outcome", "valid", "--cause", "A cut fibre, repaired."
    )
    assert code == 0, err
    resolution = _to(sink, CUSTOMER_EN)[-1]
    assert resolution["Content-Language"] == "en" and "A cut fibre, repaired." in _text(resolution)


@pytest.mark.integration
def test_the_quarantine_of_a_mailboxs_mail_is_told_in_the_mailboxs_language(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    config = write_config(
        tmp_path, mailboxes, sink, extra="[limits]\nmax_mime_parts = 3\n", notify=True
    )
    cli = Cli(_english_info(config), capsys)
    files = [(f"f{i}.png", "image/png", b"x" * 10 + bytes([i])) for i in range(5)]
    mailboxes.append("info", mail(sender=CUSTOMER_EN, to=INFO, subject="Photos", attachments=files))
    mailboxes.append("contacto", mail(sender=CUSTOMER, subject="Fotos", attachments=files))
    cli.poll()
    reasons = {r["mailbox"]: r["reason"] for r in cli.json("messages", "list")}
    told = {m["Content-Language"]: m for m in _to(sink, NOTIFY)}
    assert told["en"]["Subject"] == 'Mail quarantined: "Photos"'
    assert f"Reason: {reasons['info']}" in _text(told["en"])
    assert told["es-MX"]["Subject"] == "Correo en cuarentena: «Fotos»"
    assert "partes MIME, más que el límite de 3" in _text(told["es-MX"])


@pytest.mark.integration
def test_cases_open_takes_the_mailboxs_language_unless_told_another(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    cli = Cli(_english_info(write_config(tmp_path, mailboxes, sink)), capsys)

    def opened(customer: str, *options: str) -> tuple[str, EmailMessage]:
        code, out, err = cli(
            "cases", "open", "--channel", "phone", "--customer", customer,
            "--subject", "Llamada", "--text", "Sin servicio.", "--json", *options,
        )  # fmt: skip
        assert code == 0, err
        language = str(cli.json("cases", "show", out.split('"')[3])["language"])
        [ack] = _to(sink, customer)
        return language, ack

    language, ack = opened("a@example.com")  # the first mailbox (contacto): notices.language
    assert language == "es" and ack["Content-Language"] == "es-MX"
    language, ack = opened("b@example.com", "--mailbox", "info")
    assert language == "en" and ack["Content-Language"] == "en"
    assert "We registered your report" in _text(ack)
    language, ack = opened("c@example.com", "--mailbox", "info", "--language", "es")
    assert language == "es" and "Registramos su reporte" in _text(ack)
    language, ack = opened("d@example.com", "--language", "en")
    assert language == "en" and ack["From"].addresses[0].addr_spec != INFO

    with pytest.raises(SystemExit) as refused:  # argparse's usage error
        cli(
            "cases",
            "open",
            "--channel",
            "phone",
            "--subject",
            "S",
            "--text",
            "T",
            "--language",
            "fr",
        )
    err = capsys.readouterr().err
    assert refused.value.code == EXIT_CONFIG and "--language" in err and "Traceback" not in err
