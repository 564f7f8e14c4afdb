"""``mailcase run`` as a real process: it polls on schedule and stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
from helpers import Cli, DaemonProcess, json_events, mail, write_config
from servers import Dovecot, Postgres, SmtpSink

import mailcase
from mailcase.config import load_settings
from mailcase.daemon import Daemon
from mailcase.outbox import DeliveryAlongside
from mailcase.service import Runtime, poll_mailbox
from mailcase.store import utcnow

pytestmark = pytest.mark.integration


def _events(stderr: str) -> list[dict[str, Any]]:
    return json_events(stderr)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_daemon_polls_delivers_and_exits_zero_on_signal(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, sig: signal.Signals
) -> None:
    config = write_config(tmp_path, mailboxes, sink)
    mailboxes.append("contacto", mail(subject="Primer reporte"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailcase", "--config", str(config), "run"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        sink.wait_for(1, timeout=20)
        # New mail while it runs is picked up by the next scheduled poll (5 s).
        mailboxes.append("info", mail(subject="Segundo reporte", to="info@internet-plarey.com.mx"))
        sink.wait_for(2, timeout=20)
    finally:
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    events = _events(err)
    names = [e["event"] for e in events]
    assert "daemon_started" in names and names[-1] == "daemon_stopped"
    (started,) = [e for e in events if e["event"] == "daemon_started"]
    assert started["version"] == mailcase.__version__ and started["database"] == "sqlite"
    assert started["mailboxes"] == ["contacto", "info"]
    ingested = [e for e in events if e["event"] == "message_ingested"]
    assert {e["mailbox"] for e in ingested} == {"contacto", "info"}
    for e in ingested:
        assert {"mailbox", "uid", "message_id", "folio", "disposition"} <= e.keys()
    assert "contacto-secret" not in err and "Hola" not in err  # no passwords, no bodies
    cases = Cli(config, capsys).json("cases", "list")
    assert len(cases) == 2
    assert {e["folio"] for e in ingested} == {c["folio"] for c in cases}


def test_daemon_keeps_running_when_a_mailbox_fails(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink
) -> None:
    config = write_config(tmp_path, mailboxes, sink)
    mailboxes.set_password("info", "otra-clave")  # the config keeps the old one
    mailboxes.append("contacto", mail())
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailcase", "--config", str(config), "run"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        sink.wait_for(1, timeout=20)
        time.sleep(0.5)
        assert proc.poll() is None  # still running
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    failures = [e for e in _events(err) if e["event"] == "mailbox_failed"]
    assert failures and failures[0]["mailbox"] == "info", err
    assert "login refused" in failures[0]["error"]


def test_idle_gets_new_mail_acknowledged_within_seconds(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink
) -> None:
    config = write_config(tmp_path, mailboxes, sink)
    # A long interval: only IDLE can explain a quick acknowledgement.
    config.write_text(config.read_text().replace("interval_seconds = 5", "interval_seconds = 300"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailcase", "--config", str(config), "run"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    latencies = []
    try:
        time.sleep(2)  # first poll done, watchers idling
        for i in range(3):
            sent = time.monotonic()
            mailboxes.append("contacto", mail(sender=f"c{i}@example.com", subject=f"IDLE {i}"))
            sink.wait_for(i + 1, timeout=15)
            latencies.append(time.monotonic() - sent)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 0
    # Generous for a loaded CI machine; bench/ingest.py measures the strict target.
    assert max(latencies) < 5, latencies


def test_backoff_counts_from_the_failure_and_moves_the_schedule(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink
) -> None:
    """A connect that takes seconds to fail must not shorten the announced wait."""
    with socket.create_server(("127.0.0.1", 0)) as slow:
        port = slow.getsockname()[1]

        def hang_up_late() -> None:  # accepts, says nothing, hangs up 1.5 s later
            conn, _ = slow.accept()
            time.sleep(1.5)
            conn.close()

        threading.Thread(target=hang_up_late, daemon=True).start()
        config = write_config(tmp_path, mailboxes, sink)
        info = f'port = {mailboxes.port}\nsecurity = "none"\nusername = "info"'
        assert info in config.read_text()
        config.write_text(
            config.read_text().replace(info, info.replace(str(mailboxes.port), str(port)))
        )
        rt = Runtime.open(load_settings(config))
        daemon = Daemon(rt)
        daemon.scheduler.add_job(daemon.poll, "interval", seconds=5, args=["info"], id="poll:info")
        daemon.scheduler.start(paused=True)
        try:
            assert daemon._poll("info") == "failed"
            failed_at = utcnow()
            retry_at = daemon.health["info"].retry_at
            assert retry_at is not None
            # poll.interval_seconds is 5 in the test config: the first wait is 5 s from now.
            assert retry_at >= failed_at + timedelta(seconds=4.5)  # the old way: 3.5 s
            job = daemon.scheduler.get_job("poll:info")
            assert job is not None and job.next_run_time == retry_at
            # An early wake-up (IDLE) inside the wait is skipped, not another attempt.
            assert daemon._poll("info") is None
        finally:
            daemon.scheduler.shutdown(wait=False)
            rt.store.dispose()


def test_poll_delivers_acknowledgements_while_it_still_ingests(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink
) -> None:
    """``mailcase poll`` does not hold a backlog's acknowledgements until the last message."""
    config = write_config(tmp_path, mailboxes, sink)
    mailboxes.append("contacto", mail(subject="Primero"))
    rt = Runtime.open(load_settings(config))
    try:
        with DeliveryAlongside(rt.store, rt.settings, pause=0.05):
            poll_mailbox(rt, "contacto")
            # Still inside: the acknowledgement must not wait for the context to end.
            sink.wait_for(1, timeout=10)
            mailboxes.append("contacto", mail(subject="Segundo", sender="otra@example.com"))
            poll_mailbox(rt, "contacto")
            sink.wait_for(2, timeout=10)
        assert len(sink.messages) == 2  # and nothing twice on the way out
    finally:
        rt.store.dispose()


def _children(pid: int) -> list[int]:
    """Child processes of ``pid``, whichever of its threads started them."""
    return [
        int(child)
        for listing in Path(f"/proc/{pid}/task").glob("*/children")
        for child in listing.read_text().split()
    ]


def test_sigterm_finishes_the_message_in_hand_and_leaves_the_rest(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    total = 200
    config = write_config(tmp_path, mailboxes, sink)
    with mailboxes.client("contacto") as client:
        for i in range(total):
            client.append("INBOX", mail(subject=f"Reporte {i}", sender=f"cliente{i}@example.com"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailcase", "--config", str(config), "run"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as systemd's cgroup
    )
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # the first message is in; the poll is mid-batch
            if '"message_ingested"' in line:
                break
        # A backlog of 200: the parser process is running too. systemd signals the whole
        # group; the child ignores it, and ends with its parent.
        children = _children(proc.pid)
        assert len(children) == 1
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:  # a failed assertion above: leave no daemon behind
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, err
    assert '"parser_process_unavailable"' not in err
    deadline = time.monotonic() + 10
    while Path(f"/proc/{children[0]}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{children[0]}").exists()  # no parser left behind
    cli = Cli(config, capsys)
    stopped_at = len(cli.json("messages", "list"))
    # It stopped after the message in hand instead of reading the whole backlog,
    # and what it did take is complete: a case per ledger row.
    assert 1 <= stopped_at < total
    assert len(cli.json("cases", "list")) == stopped_at
    cli.poll()  # the rest, exactly once
    assert len(cli.json("messages", "list")) == total
    assert len(cli.json("cases", "list")) == total
    assert len(sink.messages) == total


def test_a_mailbox_is_polled_once_at_a_time_and_requests_meanwhile_coalesce(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The schedule and the IDLE watcher both call Daemon.poll; _poll is
    # replaced by a slow stand-in that records overlap (the real one is
    # covered by the tests above): this checks the concurrency rule only.
    rt = Runtime.open(load_settings(write_config(tmp_path, mailboxes, sink)))
    daemon = Daemon(rt)
    running, overlap, runs = [0], [0], []
    lock = threading.Lock()

    def slow_poll(name: str) -> str:
        with lock:
            running[0] += 1
            overlap[0] = max(overlap[0], running[0])
        time.sleep(0.3)
        with lock:
            running[0] -= 1
            runs.append(name)
        return "ok"

    monkeypatch.setattr(daemon, "_poll", slow_poll)
    monkeypatch.setattr(daemon, "_report", lambda name, result: None)
    callers = [threading.Thread(target=daemon.poll, args=("contacto",)) for _ in range(6)]
    for caller in callers:
        caller.start()
        time.sleep(0.02)
    for caller in callers:
        caller.join(timeout=10)
    rt.store.dispose()
    assert overlap[0] == 1
    # The first call polls; the five that came during it make one more round.
    assert runs == ["contacto", "contacto"]


def test_a_delivery_requested_during_a_run_makes_it_go_round_again(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A poll that opened cases while the outbox run was past its query for due
    # notices: the scheduler skips a second instance of the job, so without the
    # repeat those acknowledgements waited for the next interval (4.8 s seen
    # under IDLE). deliver_outbox is a slow stand-in that counts its runs.
    rt = Runtime.open(load_settings(write_config(tmp_path, mailboxes, sink)))
    daemon = Daemon(rt)
    runs: list[float] = []
    started = threading.Event()

    def slow_delivery(store: Any, settings: Any, **_options: Any) -> Any:
        runs.append(time.monotonic())
        started.set()
        time.sleep(0.3)
        from mailcase.outbox import DeliveryReport

        return DeliveryReport()

    monkeypatch.setattr("mailcase.daemon.deliver_outbox", slow_delivery)
    scheduled = threading.Thread(target=daemon.deliver)  # the interval tick
    scheduled.start()
    assert started.wait(5)
    daemon.request_delivery()  # a poll's new cases, while the run is under way
    scheduled.join(timeout=10)
    rt.store.dispose()
    assert len(runs) == 2
    daemon.deliver()  # nothing pending: one run, and it returns
    assert len(runs) == 3


def test_daemon_rides_out_a_postgresql_restart(
    tmp_path: Path,
    mailboxes: Dovecot,
    sink: SmtpSink,
    postgres: Postgres,
    pg_url: str,
    capsys: Any,
) -> None:
    # `apt upgrade` restarts PostgreSQL under a running daemon: its pooled connections die.
    config = write_config(tmp_path, mailboxes, sink, db_url=pg_url)
    with DaemonProcess(config, tmp_path / "daemon.log") as daemon:
        mailboxes.append("contacto", mail(sender="antes@example.com"))
        sink.wait_for(1, timeout=20)
        postgres.restart()
        mailboxes.append("contacto", mail(sender="despues@example.com"))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(
            m.rcpt_tos == ["despues@example.com"] for m in sink.messages
        ):
            time.sleep(0.2)
        assert daemon.running
        assert daemon.stop() == 0
        log = daemon.text()
    answered = [m.rcpt_tos[0] for m in sink.messages]
    assert answered.count("despues@example.com") == 1
    # A notice sent as the server went down may go once more: its mark was lost with it.
    assert 1 <= answered.count("antes@example.com") <= 2
    ledger = Cli(config, capsys).json("messages", "list")
    assert [r["disposition"] for r in ledger] == ["new_case"] * 2
    # Expected trouble is one line: no traceback, nothing quarantined.
    assert "Traceback" not in log and "crashed" not in log


def test_closing_stale_cases_with_the_database_down_is_one_line(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, postgres: Postgres, pg_url: str
) -> None:
    # Expected trouble, like outbox_run_failed and mailbox_failed: no traceback.
    rt = Runtime.open(load_settings(write_config(tmp_path, mailboxes, sink, db_url=pg_url)))
    daemon = Daemon(rt)
    postgres.stop(fast=True)
    try:
        with structlog.testing.capture_logs() as logs:
            daemon.close_stale()
    finally:
        postgres.start()
        rt.store.dispose()
    assert [(e["event"], e["log_level"]) for e in logs] == [("close_stale_failed", "warning")]
    assert "exc_info" not in logs[0] and logs[0]["error"]
