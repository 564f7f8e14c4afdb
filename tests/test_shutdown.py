"""How ``mailcase run`` stops: SIGHUP does not stop it, SIGTERM stops it soon and loses nothing."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from helpers import Cli, DaemonProcess, mail, point_smtp_at_a_closed_port, write_config
from servers import Dovecot, SmtpSink

from mailcase import service
from mailcase.config import load_settings
from mailcase.daemon import Daemon
from mailcase.service import Runtime

pytestmark = pytest.mark.integration


def test_sighup_is_logged_and_the_daemon_goes_on(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink
) -> None:
    # Without a handler SIGHUP killed the daemon mid-message, and systemd counts
    # death by SIGHUP as clean: Restart=on-failure did not bring it back.
    config = write_config(tmp_path, mailboxes, sink)
    with DaemonProcess(config, tmp_path / "daemon.log") as daemon:
        daemon.wait_for_event("daemon_ready", timeout=30)
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_for_event("sighup_ignored")
        # Still at work: mail that comes after the signal is acknowledged.
        mailboxes.append("contacto", mail(subject="Después de SIGHUP"))
        sink.wait_for(1, timeout=20)
        assert daemon.stop() == 0
    names = [e["event"] for e in daemon.events()]
    assert names.count("sighup_ignored") == 1
    assert names.count("stopping") == 1 and names[-1] == "daemon_stopped"
    assert "Traceback" not in daemon.text()


def _queue_acknowledgements(
    config: Path, mailboxes: Dovecot, sink: SmtpSink, cli: Cli, count: int
) -> None:
    """``count`` acknowledgements queued and due now, none sent yet."""
    with mailboxes.client("contacto") as client:
        for i in range(count):
            client.append("INBOX", mail(subject=f"Reporte {i}", sender=f"cliente{i}@example.com"))
    good = config.read_text()
    point_smtp_at_a_closed_port(config, sink)
    cli.poll()  # ingests all; every acknowledgement is deferred
    config.write_text(good)
    code, out, err = cli("outbox", "retry", "--all")
    assert code == 0 and f"{count} notice(s) queued" in out, out + err
    assert sink.messages == []


def test_sigterm_ends_a_delivery_run_after_the_notice_in_hand(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, db_url: str, capsys: Any
) -> None:
    total = 40
    config = write_config(tmp_path, mailboxes, sink, db_url=db_url)
    cli = Cli(config, capsys)
    _queue_acknowledgements(config, mailboxes, sink, cli, total)
    sink.hang(0.5, count=total)  # a slow server: the whole queue would take 20 s
    with DaemonProcess(config, tmp_path / "daemon.log") as daemon:
        sink.wait_for(3, timeout=60)
        asked = time.monotonic()
        assert daemon.stop() == 0
        took = time.monotonic() - asked
    before = [m.rcpt_tos[0] for m in sink.messages]
    # The notice in hand (0.5 s) and the shutdown itself; not the rest of the queue
    # (before the fix: 18 s, and systemd's TimeoutStopSec= was no bound on it).
    assert took < 8, f"stopping took {took:.1f} s"
    assert 3 <= len(before) < total / 2
    (stopped,) = daemon.events("outbox_delivered")
    assert stopped["stopped"] is True and stopped["sent"] == len(before)
    # Marked sent (the sent log folded on SQLite); the rest queued as they were: not
    # attempted (one attempt: the refused connection above), so not put off either.
    listed = cli.json("outbox", "list")
    statuses = Counter(n["status"] for n in listed)
    assert statuses == {"sent": len(before), "queued": total - len(before)}, statuses
    assert {n["attempts"] for n in listed if n["status"] == "queued"} == {1}
    sink.clear()  # the next run, on a fast server
    cli.poll()
    after = [m.rcpt_tos[0] for m in sink.messages]
    everyone = Counter(before + after)
    assert len(everyone) == total and set(everyone.values()) == {1}  # each exactly once


def test_stop_waits_for_the_poll_an_idle_watcher_started(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    # IDLE polls on the watcher's own thread, which the scheduler's shutdown does
    # not wait for: the daemon used to give it 5 s, release the leases and exit
    # with the message half done.
    config = write_config(tmp_path, mailboxes, sink)
    # A long interval: the only poll after the first round is the one IDLE starts.
    config.write_text(config.read_text().replace("interval_seconds = 5", "interval_seconds = 300"))
    rt = Runtime.open(load_settings(config))
    daemon = Daemon(rt)
    real_ingest = service.ingest_message
    in_hand, finished = threading.Event(), threading.Event()
    ingested_on: list[str] = []

    def slow_ingest(*args: Any, **kwargs: Any) -> str:
        ingested_on.append(threading.current_thread().name)
        in_hand.set()
        rt.stop.wait(30)
        # A large message on a slow link: longer than the 5 s the daemon used to wait.
        time.sleep(6)
        result = real_ingest(*args, **kwargs)
        finished.set()
        return result

    monkeypatch.setattr(service, "ingest_message", slow_ingest)

    def new_mail_then_stop() -> None:
        try:
            deadline = time.monotonic() + 30
            # Ready, IDLE running, and the first round's polls (and their repeats) over:
            # the new mail can then only be polled by the IDLE watcher.
            while not (
                daemon.ready
                and all(w.ready.is_set() for w in daemon.watchers)
                and not any(poll.running for poll in daemon._polls.values())
            ):
                assert time.monotonic() < deadline, "the daemon did not get ready"
                time.sleep(0.05)
            mailboxes.append("contacto", mail(subject="Llega por IDLE"))
            in_hand.wait(20)
        finally:
            rt.stop.set()  # what SIGTERM's handler does; run() returns after it

    driver = threading.Thread(target=new_mail_then_stop)
    driver.start()
    try:
        daemon.run()
        returned_with_message_done = finished.is_set()
    finally:
        driver.join(30)
        finished.wait(30)  # before the store goes away, whatever happened
        rt.store.dispose()
    assert ingested_on == ["idle:contacto"]
    assert returned_with_message_done, "run() returned while IDLE's poll was mid-message"
    assert not any(w.is_alive() for w in daemon.watchers)
    with rt.store.reading() as conn:
        ledger = conn.exec_driver_sql("SELECT disposition FROM ledger").scalars().all()
    assert ledger == ["new_case"]
