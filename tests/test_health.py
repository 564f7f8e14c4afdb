"""`mailcase check` and `mailcase status` against the real servers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers import Cli, mail, write_config
from servers import Dovecot, SmtpSink, free_port

pytestmark = pytest.mark.integration


def test_check_passes_with_every_peer_up_and_sends_nothing(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    cli = Cli(write_config(tmp_path, mailboxes, sink), capsys)
    code, out, err = cli("check")
    assert code == 0, out + err
    lines = out.splitlines()
    assert lines[0].split() == ["CHECK", "RESULT", "DETAIL"]
    rows = {line.split("  ")[0].strip(): line for line in lines[1:]}
    assert set(rows) == {"config", "database", "mailbox contacto", "mailbox info", "smtp"}
    assert all(" ok " in row for row in rows.values())
    assert "IDLE supported" in rows["mailbox contacto"]
    assert sink.messages == []
    assert "contacto-secret" not in out + err


def test_check_names_each_failure_on_its_own_line(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    config = write_config(tmp_path, mailboxes, sink)
    config.write_text(config.read_text().replace(f"port = {sink.port}", f"port = {free_port()}"))
    cli = Cli(config, capsys)
    mailboxes.set_password("info", "otra")
    code, out, err = cli("check")
    assert code == 1
    failures = [line for line in err.splitlines() if line.startswith("mailcase:")]
    assert len(failures) == 2
    assert any("mailbox info" in f and "login refused" in f for f in failures)
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
