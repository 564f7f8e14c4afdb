"""Prometheus metrics: recorded by a real poll, served over HTTP."""

from __future__ import annotations

import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers import Cli, DaemonProcess, mail, write_config
from servers import Dovecot, SmtpSink, free_port

from mailcase import metrics
from mailcase.config import load_settings
from mailcase.models import Checkpoint
from mailcase.store import Store, utcnow

pytestmark = pytest.mark.integration


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def value(text: str, line_prefix: str) -> float:
    [line] = [x for x in text.splitlines() if x.startswith(line_prefix + " ")]
    return float(line.rsplit(" ", 1)[1])


def test_metrics_count_messages_cases_notices_and_errors(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    port = free_port()
    server = metrics.serve(f"127.0.0.1:{port}")
    try:
        before = scrape(port)
        cli = Cli(write_config(tmp_path, mailboxes, sink), capsys)
        mailboxes.append("contacto", mail())
        mailboxes.append("contacto", mail(headers={"Auto-Submitted": "auto-replied"}))
        mailboxes.set_password("info", "otra")
        assert cli("poll")[0] == 1
        after = scrape(port)
    finally:
        server.shutdown()
        server.server_close()

    def delta(name: str) -> float:
        old = value(before, name) if (name + " ") in before else 0.0
        return value(after, name) - old

    assert delta('mailcase_messages_total{disposition="new_case",mailbox="contacto"}') == 1
    assert delta('mailcase_messages_total{disposition="auto_reply",mailbox="contacto"}') == 1
    assert delta('mailcase_cases_opened_total{mailbox="contacto"}') == 1
    assert delta('mailcase_notices_total{outcome="sent"}') == 1
    assert delta('mailcase_errors_total{mailbox="info",protocol="imap"}') == 1
    assert 'mailcase_poll_duration_seconds_count{mailbox="contacto"}' in after
    assert value(after, 'mailcase_seconds_since_last_successful_poll{mailbox="contacto"}') < 60
    assert "mailcase_notices_queued 0.0" in after


def test_a_mailbox_broken_across_a_restart_keeps_its_seconds_since_success(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    # The value lived in the process only: after a restart a mailbox that kept
    # failing had no series at all, and an alert on "too long" never fired.
    port = free_port()
    config = write_config(
        tmp_path, mailboxes, sink, extra=f'[metrics]\nlisten = "127.0.0.1:{port}"'
    )
    Cli(config, capsys).poll()  # both mailboxes succeed once: their checkpoints say when
    with (
        Store.open(load_settings(config).database.url, auto_upgrade=False) as store,
        store.transaction() as session,
    ):
        checkpoint = session.get(Checkpoint, "info")
        assert checkpoint is not None and checkpoint.last_poll_at is not None
        checkpoint.last_poll_at = utcnow() - timedelta(hours=2)  # as if down since then
        session.add(checkpoint)
    mailboxes.set_password("info", "otra")  # and broken now
    with DaemonProcess(config, tmp_path / "daemon.log") as daemon:
        daemon.wait_for_event("mailbox_failed", timeout=30, where=lambda e: e["mailbox"] == "info")
        daemon.wait_for_event("daemon_ready", timeout=30)
        body = scrape(port)
        assert daemon.stop() == 0
    series = [x for x in body.splitlines() if x.startswith("mailcase_seconds_since_last")]
    assert any('mailbox="info"' in x for x in series), series
    since = value(body, 'mailcase_seconds_since_last_successful_poll{mailbox="info"}')
    assert 2 * 3600 <= since < 2 * 3600 + 300
    assert value(body, 'mailcase_seconds_since_last_successful_poll{mailbox="contacto"}') < 60
