"""TLS for real: IMAPS against Dovecot, STARTTLS and implicit TLS against an aiosmtpd sink.

Every server here has a self-signed certificate: trusted only through the ``ca_file`` of
the mailbox or of ``[smtp]``. Without it the certificate is refused, nothing is read or
sent, and nothing ever goes over plain text instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import CONTACTO, Cli, mail, run_process, write_config
from servers import Dovecot, SmtpSink, make_self_signed_cert

pytestmark = pytest.mark.integration


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("mailcase:")]


# --- IMAP over TLS (Dovecot's IMAPS port) ----------------------------------------------------


def test_imaps_with_the_mailbox_ca_file_is_read(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    assert mailboxes.ssl_port is not None and mailboxes.ca_file is not None
    config = write_config(
        tmp_path, mailboxes, sink, contacto_security="tls", contacto_ca_file=mailboxes.ca_file
    )
    mailboxes.append("contacto", mail(subject="Por TLS"))
    result = run_process(config, "poll")
    assert result.returncode == 0, result.stderr
    assert error_lines(result.stderr) == []
    cli = Cli(config, capsys)
    assert [(r["mailbox"], r["disposition"]) for r in cli.json("messages", "list")] == [
        ("contacto", "new_case")
    ]
    [case] = cli.json("cases", "list")
    assert case["subject"] == "Por TLS"
    assert len(sink.messages) == 1


def test_imaps_without_ca_file_refuses_the_certificate_and_reads_nothing(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    config = write_config(tmp_path, mailboxes, sink, contacto_security="tls")
    uid = mailboxes.append("contacto", mail(subject="Por TLS"))
    result = run_process(config, "poll")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    [line] = error_lines(result.stderr)
    assert line.startswith(
        f"mailcase: mailbox contacto: cannot connect to 127.0.0.1:{mailboxes.ssl_port}"
    )
    assert "certificate verify failed" in line
    cli = Cli(config, capsys)
    assert cli.json("messages", "list") == []
    assert cli.json("cases", "list") == []
    assert sink.messages == []
    assert mailboxes.fetch_flags("contacto")[uid] == ()  # not even marked seen


# --- SMTP over TLS ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smtp_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate (its own CA) and key for the TLS sinks."""
    return make_self_signed_cert(tmp_path_factory.mktemp("smtp-tls"))


@pytest.fixture(params=["starttls", "tls"])
def tls_sink(request: pytest.FixtureRequest, smtp_cert: tuple[Path, Path]) -> Iterator[SmtpSink]:
    """A sink speaking STARTTLS ("starttls") or TLS from the first byte ("tls")."""
    cert, key = smtp_cert
    with SmtpSink(tls_cert=cert, tls_key=key, implicit_tls=request.param == "tls") as server:
        yield server


def security_of(sink: SmtpSink) -> str:
    return "tls" if sink.implicit_tls else "starttls"


def test_smtp_over_tls_with_ca_file_delivers_the_acknowledgement(
    tmp_path: Path,
    mailboxes: Dovecot,
    tls_sink: SmtpSink,
    smtp_cert: tuple[Path, Path],
    capsys: Any,
) -> None:
    config = write_config(
        tmp_path,
        mailboxes,
        tls_sink,
        smtp_security=security_of(tls_sink),
        smtp_ca_file=smtp_cert[0],
    )
    mailboxes.append("contacto", mail())
    cli = Cli(config, capsys)
    cli.poll()
    [sent] = tls_sink.wait_for(1)
    assert sent.tls
    assert sent.rcpt_tos == ["juan.perez@example.com"] and sent.mail_from == CONTACTO
    [row] = cli.json("outbox", "list")
    assert (row["kind"], row["status"]) == ("acknowledgement", "sent")


def test_smtp_over_tls_without_ca_file_keeps_the_notice_queued(
    tmp_path: Path, mailboxes: Dovecot, tls_sink: SmtpSink, capsys: Any
) -> None:
    config = write_config(tmp_path, mailboxes, tls_sink, smtp_security=security_of(tls_sink))
    mailboxes.append("contacto", mail())
    cli = Cli(config, capsys)
    code, _, err = cli("poll")
    assert code == 0, err  # the mailbox was read; the notice waits
    assert len(cli.json("cases", "list")) == 1
    [row] = cli.json("outbox", "list")
    assert (row["status"], row["attempts"]) == ("queued", 1)
    assert "cannot connect" in row["last_error"]
    assert "certificate verify failed" in row["last_error"]
    # Never sent in clear instead: the sink received nothing at all.
    assert tls_sink.messages == []
