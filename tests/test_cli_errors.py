"""Against the real Dovecot and SMTP sink: non-ASCII passwords, a mailbox leased elsewhere,
and the status table's backlog errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers import Cli, mail, write_config
from servers import Dovecot, SmtpSink

from mailcase import leases
from mailcase.imap import ImapMailbox
from mailcase.store import Store

pytestmark = pytest.mark.integration

UTF8_PASSWORD = "contraseña-secreta"


def error_lines(err: str) -> list[str]:
    """The command's own lines on stderr; nothing else may be there but JSON log events."""
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("mailcase: ")]


# --- 1: a password that is not ASCII ----------------------------------------------------------


def test_a_non_ascii_imap_password_logs_in(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    mailboxes.append("contacto", mail())  # the fixture's own client logs in with LOGIN: first
    mailboxes.set_password("contacto", UTF8_PASSWORD)
    cli = Cli(write_config(tmp_path, mailboxes, sink), capsys)
    assert cli("db", "upgrade")[0] == 0  # `check` reads the database, never creates it
    code, out, err = cli("check")
    assert code == 0, out + err
    code, _, err = cli("poll")
    assert code == 0, err
    assert len(cli.json("cases", "list")) == 1
    assert UTF8_PASSWORD not in out + err


def test_a_non_ascii_smtp_password_is_sent_as_utf8(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    smtp = f'username = "mesa"\npassword = "{UTF8_PASSWORD}"'
    cli = Cli(write_config(tmp_path, mailboxes, sink, smtp_extra=smtp), capsys)
    mailboxes.append("contacto", mail())
    code, _, err = cli("poll")
    assert code == 0, err
    assert len(sink.messages) == 1  # the acknowledgement
    assert sink.messages[0].auth_login == "mesa"
    assert sink.messages[0].auth_password == UTF8_PASSWORD
    assert cli("check")[0] == 0


def test_a_wrong_non_ascii_password_is_a_refused_login_recorded_in_status(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    config = write_config(tmp_path, mailboxes, sink)
    text = config.read_text()
    config.write_text(text.replace(mailboxes.users["info"], "contraseña-mala"))
    cli = Cli(config, capsys)
    code, _, err = cli("poll")
    assert code == 1
    assert error_lines(err) == [
        f"mailcase: mailbox info: login refused for info at 127.0.0.1:{mailboxes.port}"
    ]
    report = cli.json("status")
    info = next(b for b in report["mailboxes"] if b["mailbox"] == "info")
    assert info["consecutive_failures"] == 1 and "login refused" in info["last_error"]
    assert "contraseña-mala" not in err


def test_without_auth_plain_a_non_ascii_password_is_one_sentence(
    tmp_path: Path,
    mailboxes: Dovecot,
    sink: SmtpSink,
    capsys: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mailboxes.set_password("contacto", UTF8_PASSWORD)
    real = ImapMailbox.has_capability

    def no_plain(self: ImapMailbox, name: str) -> bool:
        return name != "AUTH=PLAIN" and real(self, name)

    monkeypatch.setattr(ImapMailbox, "has_capability", no_plain)
    cli = Cli(write_config(tmp_path, mailboxes, sink), capsys)
    code, _, err = cli("poll")
    assert code == 1
    assert error_lines(err) == [
        f"mailcase: mailbox contacto: cannot log in as contacto at 127.0.0.1:{mailboxes.port}: "
        "the password is not ASCII and the server does not offer AUTH=PLAIN, which would "
        "carry it as UTF-8"
    ]
    assert UTF8_PASSWORD not in err


# --- 10: a mailbox another instance holds; the status table's backlog errors ---------------------


def test_poll_says_which_mailbox_another_instance_holds_and_exits_0(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    cli = Cli(write_config(tmp_path, mailboxes, sink), capsys)
    store = Store.open(f"sqlite:///{tmp_path}/mailcase.db", auto_upgrade=True)
    assert leases.acquire(store, "info", "otro-host:1:abc")
    store.dispose()
    mailboxes.append("info", mail(to="info@internet-plarey.com.mx"))
    code, _, err = cli("poll")
    assert code == 0, err
    assert error_lines(err) == [
        "mailcase: mailbox info skipped: another instance is polling it (lease held)"
    ]
    assert cli.json("cases", "list") == []  # info was not read here


def test_status_table_shows_why_a_backlog_is_unknown(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    cli = Cli(write_config(tmp_path, mailboxes, sink), capsys)
    cli.poll()
    code, out, _ = cli("status")
    assert code == 0 and "BACKLOG_ERROR" not in out  # every backlog known: no such column
    mailboxes.set_password("info", "otra")
    code, out, _ = cli("status")
    assert code == 0
    header, *rows = out.split("\n\n")[0].splitlines()
    assert header.split()[-1] == "BACKLOG_ERROR"
    info = next(row for row in rows if row.startswith("info"))
    assert info.endswith(f"mailbox info: login refused for info at 127.0.0.1:{mailboxes.port}")


# --- a command's change is committed before its notices go out -------------------------------


def test_a_command_whose_notices_cannot_go_out_now_still_succeeds(
    tmp_path: Path,
    mailboxes: Dovecot,
    sink: SmtpSink,
    capsys: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The README's SMTP password as a systemd credential: an admin's shell has no
    # $CREDENTIALS_DIRECTORY. Reported as a failure, the command would be run again,
    # opening a second case.
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    config = write_config(
        tmp_path, mailboxes, sink,
        smtp_extra='username = "contacto"\npassword_credential = "smtp.pw"',
    )  # fmt: skip
    cli = Cli(config, capsys)
    code, out, err = cli(
        "cases", "open", "--channel", "phone", "--customer", "juan@example.com",
        "--subject", "Llamada", "--text", "Sin servicio.",
    )  # fmt: skip
    assert code == 0, err
    assert out.strip() == "PLR-2026-000001: open done"
    [line] = error_lines(err)
    assert line.startswith("mailcase: notices stay queued for the daemon: ")
    assert "smtp.pw" in line and "CREDENTIALS_DIRECTORY" in line
    assert [n["status"] for n in cli.json("outbox", "list")] == ["queued"]
    assert len(cli.json("cases", "list")) == 1
    assert sink.messages == []
