"""Sixth review round, the command line. Each test failed before its fix."""

from __future__ import annotations

import errno
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import Cli, mail, offline_runtime, write_config
from servers import Dovecot, SmtpSink

from mailcase import cli as cli_module
from mailcase.config import load_settings
from mailcase.errors import PermanentDeliveryError
from mailcase.smtp import SmtpConnection

pytestmark = pytest.mark.integration

JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 40


@pytest.fixture
def cli(tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any) -> Cli:
    cli = Cli(write_config(tmp_path, mailboxes, sink), capsys)
    mailboxes.append(
        "contacto",
        mail(
            sender="Ana Ruiz <ana.ruiz@example.com>",
            subject="Sin señal 📶 desde ayer",
            body="El módem parpadea 🔴.\n" + "Otra línea.\n" * 30,
            attachments=[("foto módem.jpg", "image/jpeg", JPEG)],
        ),
    )
    cli.poll()
    return cli


def _folio(cli: Cli) -> str:
    [case] = cli.json("cases", "list")
    folio: str = case["folio"]
    return folio


def _last_line(err: str) -> str:
    lines = [line for line in err.splitlines() if not line.startswith("{")]  # JSON logs
    assert len(lines) == 1, err
    return lines[0]


def test_a_failed_attachment_write_leaves_no_file(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A full disk left a truncated file, said "[Errno 28] No space left on device"
    # without naming it, and the retry then failed as "[Errno 17] File exists".
    folio = _folio(cli)
    target = tmp_path / "foto.jpg"
    real_fdopen = os.fdopen

    class FullDisk(io.RawIOBase):
        def __init__(self, fd: int) -> None:
            self.file = real_fdopen(fd, "wb")

        def write(self, data: Any) -> int:
            self.file.write(bytes(data)[:100])  # part written, then the disk is full
            self.file.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def close(self) -> None:
            self.file.close()
            super().close()

    with monkeypatch.context() as patched:
        patched.setattr(os, "fdopen", lambda fd, mode="r": FullDisk(fd))
        code, _, err = cli("cases", "attachment", folio, "1", "--output", str(target))
    assert code == 1
    assert _last_line(err) == f"mailcase: cannot write {target}: No space left on device"
    assert not target.exists()
    code, _, err = cli("cases", "attachment", folio, "1", "--output", str(target))
    assert code == 0, err
    assert target.read_bytes() == JPEG


def test_attachment_output_that_is_a_directory_or_a_file_is_a_usage_error(
    cli: Cli, tmp_path: Path
) -> None:
    folio = _folio(cli)
    code, _, err = cli("cases", "attachment", folio, "1", "--output", str(tmp_path))
    assert code == 2
    assert _last_line(err) == f"mailcase: --output {tmp_path} is a directory: give a file name"
    existing = tmp_path / "keep.txt"
    existing.write_text("keep")
    code, _, err = cli("cases", "attachment", folio, "1", "--output", str(existing))
    assert code == 2
    assert (
        _last_line(err)
        == f"mailcase: --output {existing} exists: mailcase never writes over a file"
    )
    assert existing.read_text() == "keep"


@pytest.mark.parametrize(
    "command",
    [("cases", "show", "{folio}"), ("status", "--offline"), ("cases", "list"), ("check",)],
)
def test_a_latin1_terminal_gets_question_marks_not_a_traceback(
    cli: Cli, command: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    # es_MX.ISO-8859-1: "→", "…" and the customer's emoji raised UnicodeEncodeError.
    folio = _folio(cli)
    raw = io.BytesIO()
    latin1 = io.TextIOWrapper(raw, encoding="latin-1")
    monkeypatch.setattr(sys, "stdout", latin1)
    code = cli_module.main(["--config", str(cli.config), *(a.format(folio=folio) for a in command)])
    latin1.flush()
    assert code == 0
    if command[0] == "cases":
        printed = raw.getvalue().decode("latin-1")
        assert "Sin señal ? desde ayer" in printed


@pytest.mark.parametrize(
    ("command", "option"),
    [
        (("cases", "list", "--limit", "9223372036854775807"), "--limit"),
        (("messages", "list", "--limit", "99999999999999999999"), "--limit"),
        (("outbox", "list", "--limit", "1000000001"), "--limit"),
        (("outbox", "retry", "99999999999999999999"), "id"),
        (("messages", "show", "99999999999999999999", "--mailbox", "contacto"), "uid"),
        (("messages", "retry", "9223372036854775808", "--mailbox", "contacto"), "uid"),
        (("messages", "dismiss", "99999999999999999999", "--mailbox", "contacto"), "uid"),
    ],
)
def test_numbers_the_database_cannot_hold_are_usage_errors(
    cli: Cli, capsys: Any, command: tuple[str, ...], option: str
) -> None:
    # An OverflowError traceback, exit 1.
    with pytest.raises(SystemExit) as exited:
        cli(*command)
    assert exited.value.code == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith(f"mailcase: argument {option}: ") and "is not a whole number" in last
    # The largest the database holds is a message that is not there, as before.
    if command[:2] == ("messages", "show"):
        code, _, err = cli("messages", "show", "9223372036854775807", "--mailbox", "contacto")
        assert code == 4 and "no message 9223372036854775807" in err


def test_a_closed_stdout_is_not_a_traceback(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    # `mailcase cases list >&-`: Python's sys.stdout is None; entry() called its flush().
    monkeypatch.setattr(sys, "stdout", None)
    monkeypatch.setattr(sys.modules["atexit"], "_run_exitfuncs", lambda: None)
    exits: list[int] = []
    monkeypatch.setattr(os, "_exit", exits.append)
    for args in (["cases", "list"], ["cases", "list", "--json"]):
        monkeypatch.setattr(sys, "argv", ["mailcase", "--config", str(cli.config), *args])
        cli_module.entry()
    assert exits == [0, 0]


def test_json_keys_are_there_when_nothing_failed(cli: Cli) -> None:
    # backlog_error only when a mailbox failed; stored only when the file was unreadable.
    for box in cli.json("status")["mailboxes"]:
        assert "backlog_error" in box and box["backlog_error"] is None
    [entry] = cli.json("messages", "list")
    shown = cli.json("messages", "show", str(entry["uid"]), "--mailbox", "contacto")
    assert "stored" in shown and shown["stored"] is None
    code, out, _ = cli("messages", "show", str(entry["uid"]), "--mailbox", "contacto")
    assert code == 0 and "stored" not in out  # the table says only what went wrong


def test_messages_list_reads_a_mailbox_name_as_configured(cli: Cli) -> None:
    # "Contacto" (or a name nobody configured) listed nothing, exit 0.
    everything = cli.json("messages", "list", "--mailbox", "contacto")
    assert len(everything) == 1
    assert cli.json("messages", "list", "--mailbox", "Contacto") == everything
    code, out, err = cli("messages", "list", "--mailbox", "ventas")
    assert code == 2 and out == ""
    assert _last_line(err) == (
        "mailcase: no mailbox named 'ventas' in the configuration or the ledger "
        "(mailboxes: contacto, info)"
    )
    # A mailbox taken out of the configuration still lists what was fetched from it.
    config = cli.config.read_text()
    cli.config.write_text(config.replace("[mailboxes.contacto]", "[mailboxes.contacto_old]"))
    code, out, err = cli("messages", "list", "--mailbox", "contacto", "--json")
    assert code == 0, err
    assert [m["uid"] for m in json.loads(out)] == [m["uid"] for m in everything]


def test_an_smtp_server_without_auth_is_a_clear_permanent_failure(
    tmp_path: Path, mailboxes: Dovecot, capsys: Any
) -> None:
    # Postfix on 587 before STARTTLS, with security = "none": smtplib's
    # SMTPNotSupportedError was "cannot connect", retried for 72 hours.
    plain = SmtpSink(auth=False)
    plain.start()
    try:
        login = 'username = "relay@internet-plarey.com.mx"\npassword = "relay-secret-5521"'
        config = write_config(tmp_path, mailboxes, plain, smtp_extra=login)
        with pytest.raises(PermanentDeliveryError) as refused:
            SmtpConnection(load_settings(config).smtp).__enter__()
        assert 'offers no AUTH on this connection (set security = "starttls" or "tls")' in str(
            refused.value
        )
        code, out, _ = Cli(config, capsys)("check")
        assert code != 0
        [smtp] = [line for line in out.splitlines() if line.startswith("smtp")]
        assert "offers no AUTH on this connection" in smtp and "cannot connect" not in smtp
    finally:
        plain.stop()


def test_outbox_retry_all_does_not_count_what_the_sent_log_says_went_out(
    tmp_path: Path, capsys: Any
) -> None:
    # Right after a delivery run, notices already sent but not yet folded from the sent
    # log were counted as queued again ("31 notice(s) queued" when 8 had gone out).
    from sqlmodel import select

    from mailcase import service
    from mailcase.imap import FetchedMessage
    from mailcase.models import Notice
    from mailcase.store import utcnow

    rt = offline_runtime(tmp_path)
    service.ingest_message(rt, "contacto", 1, FetchedMessage(1, mail(), utcnow()))
    with rt.store.read_session() as session:
        [ack] = session.exec(select(Notice)).all()
    assert ack.id is not None and rt.store.sent_log is not None
    rt.store.sent_log.append(ack.id, utcnow())  # what a delivery run records as it sends
    rt.store.dispose()
    cli = Cli(tmp_path / "mailcase.toml", capsys)
    code, out, err = cli("outbox", "retry", "--all")
    assert (code, out) == (0, "0 notice(s) queued for delivery\n"), err
    assert [n["status"] for n in cli.json("outbox", "list")] == ["sent"]
