"""Acknowledgements answer strangers: they must not carry a stranger's text far."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers import Cli, mail, write_config
from servers import Dovecot, SmtpSink

from mailcase.folio import SUBJECT_ECHO_CHARS, clip, echoable_subject, tagged_subject
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
        "Reclame su bono en bit.ly/bono-plarey",  # a bare domain is a link to a mail client
        "Gana un iPhone en premios-plarey.com",
        "//premio.example",  # what an unquoted "... en http://premio.example" parses to
    ):
        assert echoable_name(spam) == ""
    for name in ("J.R.R. Tolkien", "María S.A. de C.V.", "Ma. Guadalupe", "Ma.Guadalupe Ruiz"):
        assert echoable_name(name) == name


@pytest.mark.parametrize(
    ("subject", "echo"),
    [
        ("Cobre su premio en https://bit.ly/premio hoy", "Cobre su premio en […] hoy"),
        ("Gana un iPhone en premios-plarey.com", "Gana un iPhone en […]"),
        ("Reclame su bono en bit.ly/bono-plarey ya", "Reclame su bono en […] ya"),
        ("visite WWW.SPAM.EXAMPLE/x", "visite […]"),
        # Ordinary subjects are repeated whole.
        ("Falla en mi módem. Urgente", "Falla en mi módem. Urgente"),
        ("Sin internet desde el 20.11.2026 (v2.0)", "Sin internet desde el 20.11.2026 (v2.0)"),
        ("Cambio de plan a 50 Mb/s", "Cambio de plan a 50 Mb/s"),
        # File names and a missing space are not domains.
        ("No abre factura.pdf ni CFDI A123.xml", "No abre factura.pdf ni CFDI A123.xml"),
        ("Sin internet desde ayer.Favor de revisar", "Sin internet desde ayer.Favor de revisar"),
        ("PREMIOS.COM le regala", "[…] le regala"),
        ("Descargue premio.zip", "Descargue […]"),  # .zip is a domain ending too
    ],
)
def test_links_and_domains_in_an_echoed_subject_are_masked(subject: str, echo: str) -> None:
    assert echoable_subject(subject) == echo
    assert tagged_subject("PLR-2026-000001", f"RE: {subject}") == f"[Folio PLR-2026-000001] {echo}"


def test_masking_a_pathological_subject_stays_cheap() -> None:
    # Nothing is clipped before the mask looks: a megabyte of "a.a.a." must not take seconds.
    assert len(echoable_subject("a." * 500_000)) <= SUBJECT_ECHO_CHARS


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
    # Not one link reaches the victim: not in the subject, not in the body.
    assert "spam.example" not in str(ack["Subject"]) and "spam.example" not in text
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
