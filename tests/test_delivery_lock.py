"""On SQLite two processes that deliver at once send each notice once (mailcase.runlock)."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from helpers import json_events, point_smtp_at_a_closed_port, run_process, write_config
from servers import Dovecot, SmtpSink

from mailcase import runlock
from mailcase.config import load_settings
from mailcase.outbox import deliver_outbox
from mailcase.store import Store


def _queue_phone_cases(config: Path, count: int) -> None:
    for i in range(count):
        done = run_process(
            config, "cases", "open", "--channel", "phone",
            "--customer", f"cliente{i}@example.com", "--subject", f"Falla {i}",
            "--text", "Sin servicio desde ayer.",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr


def test_two_processes_delivering_at_once_send_each_notice_once(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink
) -> None:
    config = write_config(tmp_path, mailboxes, sink)
    point_smtp_at_a_closed_port(config, sink)
    _queue_phone_cases(config, 6)  # six acknowledgements, queued: SMTP is down
    config = write_config(tmp_path, mailboxes, sink)
    requeued = run_process(config, "outbox", "retry", "--all")
    assert requeued.returncode == 0, requeued.stderr
    # Each DATA takes 0.4 s, so the first process is still sending when the second starts.
    sink.hang(0.4, count=20)
    command = [sys.executable, "-m", "mailcase", "--config", str(config), "cases", "note"]
    first = subprocess.Popen(
        [*command, "PLR-2026-000001", "--text", "nota a"], stderr=subprocess.PIPE, text=True
    )
    sink.wait_for(1, timeout=20)
    second = subprocess.Popen(
        [*command, "PLR-2026-000002", "--text", "nota b"], stderr=subprocess.PIPE, text=True
    )
    _, first_err = first.communicate(timeout=60)
    _, second_err = second.communicate(timeout=60)
    assert first.returncode == 0 and second.returncode == 0, first_err + second_err

    sent = Counter(m.message["Message-ID"] for m in sink.messages)
    assert len(sent) == 6
    assert set(sent.values()) == {1}, sent
    # The second waited for the first, then found nothing left to send.
    events = [e["event"] for e in json_events(second_err)]
    assert "notice_sent" not in events


def test_a_run_that_finds_the_outbox_held_sends_nothing_and_says_so(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runlock, "WAIT_SECONDS", 0.3)
    config = write_config(tmp_path, mailboxes, sink)
    point_smtp_at_a_closed_port(config, sink)
    _queue_phone_cases(config, 1)
    config = write_config(tmp_path, mailboxes, sink)
    run_process(config, "outbox", "retry", "--all")
    settings = load_settings(config)
    with Store.open(settings.database.url, auto_upgrade=False) as store:
        assert store.delivery_lock == tmp_path / "mailcase.db-deliver"
        with runlock.held(store.delivery_lock) as taken:
            assert taken
            with runlock.held(store.delivery_lock, wait=0.2) as again:
                assert not again  # flock: a second open description is refused, even here
            report = deliver_outbox(store, settings)  # waits its 0.3 s, then gives up
        assert report.busy and report.sent == 0
        assert sink.messages == []
        report = deliver_outbox(store, settings)  # released: delivered now
        assert report.sent == 1 and not report.busy
    assert len(sink.messages) == 1


def test_postgresql_needs_no_lock_file(pg_url: str) -> None:
    with Store.open(pg_url, auto_upgrade=False) as store:
        assert store.delivery_lock is None


def test_a_run_in_progress_sends_what_is_queued_meanwhile(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink
) -> None:
    # Another process, finding the run's lock held, leaves its notices to the run:
    # they became due after the run started, and must not wait for the next run.
    from datetime import timedelta

    import sqlalchemy as sa

    from mailcase.models import Notice
    from mailcase.outbox import _pages
    from mailcase.store import utcnow

    config = write_config(tmp_path, mailboxes, sink)
    point_smtp_at_a_closed_port(config, sink)
    _queue_phone_cases(config, 2)
    settings = load_settings(config)
    started = utcnow() - timedelta(minutes=5)
    with Store.open(settings.database.url, auto_upgrade=False) as store:
        with store.transaction() as session:
            ids = sorted(n for n in session.exec(sa.select(Notice.id)).scalars() if n)
            due = {ids[0]: started - timedelta(minutes=1), ids[1]: utcnow()}  # queued later
            for notice_id, at in due.items():
                session.execute(
                    sa.update(Notice).where(Notice.id == notice_id).values(next_attempt_at=at)
                )
        assert list(_pages(store, started, [ids[0]])) == ids
