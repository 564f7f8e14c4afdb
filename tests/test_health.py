"""`mailcase check` and `mailcase status` against the real servers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from alembic import command
from helpers import Cli, cli_with_smtp_down, mail, write_config
from servers import Dovecot, Postgres, SmtpSink

from mailcase.store import SCHEMA_HEAD, alembic_config

pytestmark = pytest.mark.integration


def test_check_passes_with_every_peer_up_and_sends_nothing(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    cli = Cli(write_config(tmp_path, mailboxes, sink), capsys)
    assert cli("db", "upgrade")[0] == 0  # `check` reads the database, never creates it
    code, out, err = cli("check")
    assert code == 0, out + err
    lines = out.splitlines()
    assert lines[0].split() == ["CHECK", "RESULT", "DETAIL"]
    rows = {line.split("  ")[0].strip(): line for line in lines[1:]}
    assert set(rows) == {
        "config",
        "secrets",
        "database",
        "storage",
        "templates",
        "replies",
        "mailbox contacto",
        "mailbox info",
        "smtp",
    }
    assert all(" ok " in row for row in rows.values())
    assert "IDLE supported" in rows["mailbox contacto"]
    assert "2 canned replies render: formas-de-pago, reinicio-modem" in rows["replies"]
    assert sink.messages == []
    assert "contacto-secret" not in out + err


def test_check_names_each_failure_on_its_own_line(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    cli = cli_with_smtp_down(tmp_path, mailboxes, sink, capsys)
    assert cli("db", "upgrade")[0] == 0
    mailboxes.set_password("info", "otra")
    code, out, err = cli("check")
    assert code == 1
    failures = [line for line in err.splitlines() if line.startswith("mailcase:")]
    assert len(failures) == 2
    assert any("mailbox info" in f and "login refused" in f for f in failures)
    assert all(f.count("mailbox info") <= 1 for f in failures), failures  # named once
    info_row = next(line for line in out.splitlines() if line.startswith("mailbox info"))
    assert info_row.count("mailbox info") == 1, info_row
    assert any(f.startswith("mailcase: smtp failed") for f in failures)
    assert "FAILED" in out and "info-secret" not in out + err and "otra" not in out + err


def test_status_reports_polls_errors_backlog_and_outbox(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    cli = Cli(write_config(tmp_path, mailboxes, sink), capsys)
    mailboxes.set_password("info", "otra")
    mailboxes.append("contacto", mail())
    assert cli("poll")[0] == 1  # contacto read, info refused
    mailboxes.append("contacto", mail(subject="Todavía no leído"))
    report = cli.json("status")
    boxes = {b["mailbox"]: b for b in report["mailboxes"]}
    assert boxes["contacto"]["backlog"] == 1
    assert boxes["contacto"]["last_success_at"] is not None
    assert boxes["contacto"]["consecutive_failures"] == 0
    assert boxes["info"]["consecutive_failures"] == 1
    assert "login refused" in boxes["info"]["last_error"]
    assert "login refused" in boxes["info"]["backlog_error"]
    assert report["outbox"] == {"queued": 0, "sent": 1, "failed": 0, "suppressed": 0}
    assert report["cases"]["open"] == 1
    offline = cli.json("status", "--offline")
    assert offline["mailboxes"][0]["backlog"] is None
    code, out, _ = cli("status")
    assert code == 0 and "contacto" in out and "outbox: queued 0, sent 1" in out
    assert report["quarantined"] == 0 and "quarantined:" not in out


def test_status_says_when_quarantined_mail_waits_for_a_person(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    # Depth 1: a message with an attachment (multipart/mixed, depth 2) is refused.
    cli = Cli(write_config(tmp_path, mailboxes, sink, extra="[limits]\nmax_mime_depth = 1"), capsys)
    mailboxes.append("contacto", mail(attachments=[("foto.jpg", "image/jpeg", b"\xff\xd8")]))
    mailboxes.append("contacto", mail(sender="otra@example.com"))
    cli.poll()
    assert cli.json("status", "--offline")["quarantined"] == 1
    code, out, _ = cli("status", "--offline")
    assert code == 0
    assert (
        "quarantined: 1 message(s) wait for a person "
        "(mailcase messages list --disposition quarantined)"
    ) in out.splitlines()


def test_check_and_db_current_show_a_database_not_yet_upgraded_and_leave_it_so(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, postgres: Postgres
) -> None:
    # SQLite upgrades itself at start (database.auto_upgrade's default): only said, not done.
    (tmp_path / "lite").mkdir()
    cli = Cli(write_config(tmp_path / "lite", mailboxes, sink), capsys)
    command.upgrade(alembic_config(f"sqlite:///{tmp_path / 'lite' / 'mailcase.db'}"), "0005")
    code, out, err = cli("check")
    assert code == 0, out + err
    [row] = [line for line in out.splitlines() if line.startswith("database")]
    assert " ok " in row and f"schema at revision 0005; upgrades itself to {SCHEMA_HEAD}" in row
    code, out, err = cli("db", "current")  # and `check` left it so
    assert (code, out.strip()) == (0, f"database revision 0005: needs upgrade to {SCHEMA_HEAD}")
    assert cli("db", "upgrade")[1].strip() == f"database is at revision {SCHEMA_HEAD} (latest)"
    assert cli("db", "current")[1].strip() == f"database revision {SCHEMA_HEAD}: up to date"
    expected = f"database revision none: needs upgrade to {SCHEMA_HEAD}"
    # PostgreSQL is upgraded by the admin: a failure that says what to run.
    postgres.create_database("not_upgraded")
    try:
        url = postgres.url("not_upgraded")
        (tmp_path / "pg").mkdir()
        cli = Cli(write_config(tmp_path / "pg", mailboxes, sink, db_url=url), capsys)
        code, out, err = cli("check")
        assert code == 1
        [failure] = [line for line in err.splitlines() if line.startswith("mailcase:")]
        assert failure.startswith("mailcase: database failed")
        assert failure.endswith("run `mailcase db upgrade`")
        assert cli("db", "current")[1].strip() == expected  # shown, not refused
    finally:
        postgres.drop_database("not_upgraded")
