"""Acknowledgements answer strangers: they must not carry a stranger's text far."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers import Cli, mail, write_config
from servers import Dovecot, SmtpSink

from mailcase.folio import SUBJECT_ECHO_CHARS, clip, tagged_subject
from mailcase.notices import echoable_name


def test_subjects_are_clipped_and_names_with_links_left_out() -> None:
    assert clip("Sin servicio") == "Sin servicio"
    long = "GANE DINERO YA visite http://spam.example/x " * 400
    assert len(clip(long)) == SUBJECT_ECHO_CHARS and clip(long).endswith("…")
    tagged = tagged_subject("PLR-2026-000001", long)
    assert tagged.startswith("[Folio PLR-2026-000001] GANE") and len(tagged) < 150
    assert echoable_name("Juan Pérez") == "Juan Pérez"
    for spam in (
        "Felicidades! cobre su premio en http://spam.example",
        "visite www.spam.example",
        "premio@spam.example",
        "x" * 61,
    ):
        assert echoable_name(spam) == ""


@pytest.mark.integration
def test_a_spammers_subject_and_name_are_not_relayed_by_the_acknowledgement(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    cli = Cli(write_config(tmp_path, mailboxes, sink), capsys)
    subject = "GANE DINERO YA visite http://spam.example/x " * 400
    mailboxes.append(
        "contacto",
        mail(
            sender='"Felicidades! cobre su premio en http://spam.example" <victima@example.com>',
            subject=subject,
        ),
    )
    cli.poll()
    [ack] = [m.message for m in sink.messages]
    assert len(str(ack["Subject"])) < 150
    body = ack.get_body(("plain",))
    assert body is not None
    text = str(body.get_content())
    assert text.startswith("Hola:")
    assert text.count("http://spam.example") <= 3  # the clipped subject, not 400 copies
    # The case keeps everything the customer wrote.
    [case] = cli.json("cases", "list")
    assert cli.json("cases", "show", case["folio"])["subject"] == " ".join(subject.split())


def test_one_mailbox_is_one_address_however_it_is_spelt() -> None:
    # Each spelling counted apart, a forger sent six acknowledgements past a cap of five.
    from mailcase.inbound import parse_inbound

    def sender(from_field: str) -> str:
        raw = f"From: {from_field}\r\nTo: contacto@x.mx\r\nSubject: hola\r\n\r\nhola\r\n"
        return parse_inbound(raw.encode()).sender

    assert sender('"victim"@gmail.com') == "victim@gmail.com"
    assert sender("Victim <victim@Gmail.com.>") == "victim@gmail.com"
    assert sender('"a.b"@example.com') == "a.b@example.com"
    assert sender('"a..b"@example.com') == '"a..b"@example.com'  # needs them
