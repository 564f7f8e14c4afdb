"""SMTP faults injected for real: server down, 4xx, 5xx, time-out, TLS failure."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers import NOTIFY, Cli, mail, write_config
from servers import Dovecot, SmtpSink

from mailcase.config import load_settings
from mailcase.outbox import deliver_outbox
from mailcase.store import Store, utcnow

pytestmark = pytest.mark.integration


def setup(
    tmp_path: Path, imap: Dovecot, sink: SmtpSink, capsys: Any, db_url: str, extra: str = ""
) -> Cli:
    return Cli(write_config(tmp_path, imap, sink, extra=extra, db_url=db_url), capsys)


def outbox(cli: Cli) -> list[dict[str, Any]]:
    return cli.json("outbox", "list")  # type: ignore[no-any-return]


def test_server_down_keeps_notice_queued_then_sends_it_once(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str
) -> None:
    cli = setup(tmp_path, mailboxes, sink, capsys, db_url)
    mailboxes.append("contacto", mail())
    sink.stop()
    try:
        code, _, err = cli("poll")
        assert code == 0, err  # the mailboxes were read; the notice waits
        [row] = outbox(cli)
        assert row["status"] == "queued" and row["attempts"] == 1
        assert "cannot connect" in row["last_error"]
        assert row["next_attempt_at"] is not None
    finally:
        sink.start()
    cli.poll()  # not due yet: back-off
    assert sink.messages == []
    code, out, _ = cli("outbox", "retry", "--all")
    assert code == 0 and "1 notice" in out
    cli.poll()
    cli.poll()
    assert len(sink.messages) == 1
    assert outbox(cli)[0]["status"] == "sent"


def test_temporary_failure_is_retried_after_back_off(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str
) -> None:
    cli = setup(tmp_path, mailboxes, sink, capsys, db_url)
    mailboxes.append("contacto", mail())
    sink.fail_next(451, "4.3.0 Try again later")
    cli.poll()
    [row] = outbox(cli)
    assert row["status"] == "queued" and "451" in row["last_error"]
    settings = load_settings(cli.config)
    store = Store.open(settings.database.url, auto_upgrade=False)
    # Not due a moment later; due once the back-off (about a minute) has passed.
    assert deliver_outbox(store, settings).sent == 0
    report = deliver_outbox(store, settings, now=utcnow() + timedelta(minutes=2))
    assert report.sent == 1
    assert deliver_outbox(store, settings, now=utcnow() + timedelta(hours=2)).sent == 0
    assert len(sink.messages) == 1


def test_permanent_failure_is_recorded_on_the_case(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str
) -> None:
    cli = setup(tmp_path, mailboxes, sink, capsys, db_url)
    mailboxes.append("contacto", mail())
    sink.fail_next(550, "5.1.1 No such user")
    cli.poll()
    [row] = outbox(cli)
    assert row["status"] == "failed" and "550" in row["last_error"]
    folio = cli.json("cases", "list")[0]["folio"]
    system = [m for m in cli.json("cases", "show", folio)["messages"] if m["kind"] == "system"]
    assert len(system) == 1 and "550" in system[0]["text"]
    cli.poll()
    assert sink.messages == []  # failed for good: never retried by itself
    code, _, _ = cli("outbox", "retry", str(row["id"]))
    assert code == 0
    cli.poll()
    assert len(sink.messages) == 1


def test_timeout_defers_the_notice(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str
) -> None:
    cli = setup(tmp_path, mailboxes, sink, capsys, db_url)
    cfg = cli.config.read_text().replace(
        f"port = {sink.port}\n", f"port = {sink.port}\ntimeout_seconds = 1\n"
    )
    cli.config.write_text(cfg)
    mailboxes.append("contacto", mail())
    sink.hang(3)
    code, _, err = cli("poll")
    assert code == 0, err
    [row] = outbox(cli)
    assert row["status"] == "queued" and row["attempts"] == 1
    assert sink.messages == []


def test_tls_failure_defers_and_never_falls_back_to_plain_text(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str
) -> None:
    cli = setup(tmp_path, mailboxes, sink, capsys, db_url)
    # The sink speaks plain SMTP: a TLS handshake with it fails.
    cli.config.write_text(
        cli.config.read_text().replace(
            f'port = {sink.port}\nsecurity = "none"', f'port = {sink.port}\nsecurity = "tls"'
        )
    )
    mailboxes.append("contacto", mail())
    code, _, err = cli("poll")
    assert code == 0, err
    [row] = outbox(cli)
    assert row["status"] == "queued" and "cannot connect" in row["last_error"]
    assert sink.messages == []


def test_notice_expires_after_retry_window(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str
) -> None:
    cli = setup(tmp_path, mailboxes, sink, capsys, db_url)
    mailboxes.append("contacto", mail())
    sink.fail_next(451, "4.3.0 Try again later", count=5)
    cli.poll()
    settings = load_settings(cli.config)
    store = Store.open(settings.database.url, auto_upgrade=False)
    report = deliver_outbox(store, settings, now=utcnow() + timedelta(hours=73))
    assert report.failed == 1
    assert outbox(cli)[0]["status"] == "failed"


def test_outbox_list_shows_no_secrets(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str
) -> None:
    cli = setup(tmp_path, mailboxes, sink, capsys, db_url)
    mailboxes.append("contacto", mail())
    cli.poll()
    code, out, err = cli("outbox", "list", "--json")
    assert code == 0
    assert "contacto-secret" not in out + err
    [row] = outbox(cli)
    assert set(row) >= {"id", "folio", "kind", "status", "to", "attempts", "last_error"}
    assert row["status"] == "sent"
    sent = sink.messages[0]
    assert hashlib.sha256(sent.data).hexdigest()  # delivered bytes exist


def test_permanent_failure_tells_the_agents_once(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str
) -> None:
    cli = Cli(write_config(tmp_path, mailboxes, sink, notify=True, db_url=db_url), capsys)
    mailboxes.append("contacto", mail())
    sink.fail_next(550, "5.1.1 No such user")  # the acknowledgement, sent first
    cli.poll()
    ack = next(n for n in outbox(cli) if n["kind"] == "acknowledgement")
    assert ack["status"] == "failed"
    cli.poll()  # the agents' notice of the failure goes out

    def told() -> int:
        return sum(
            "No se pudo entregar el acuse de recibo" in m.message.get_body(("plain",)).get_content()
            for m in sink.messages
            if m.rcpt_tos == [NOTIFY]
        )

    assert told() == 1
    sink.fail_next(550, "5.1.1 No such user")
    assert cli("outbox", "retry", str(ack["id"]))[0] == 0
    cli.poll()
    cli.poll()
    assert told() == 1  # once, however often it fails
