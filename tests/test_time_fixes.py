"""Fifth review round, time: back-off that survives a long outage, IDLE that backs off
from a server refusing it, and the reopen window judged at the message's arrival.

Each test failed before its fix.
"""

from __future__ import annotations

import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from helpers import mail, offline_runtime
from sqlmodel import select

from mailcase import casework, daemon, service
from mailcase.config import MailboxSettings
from mailcase.daemon import MAX_BACKOFF, Daemon, backoff_delay
from mailcase.idle import IdleWatcher
from mailcase.imap import FetchedMessage
from mailcase.models import Case, Notice
from mailcase.outbox import deliver_outbox


def test_the_back_off_never_overflows() -> None:
    assert backoff_delay(60, 1) == timedelta(seconds=60)
    assert backoff_delay(60, 3) == timedelta(seconds=240)
    # timedelta * 2**41 overflowed after about 42 failures: nine hours of an outage.
    for failures in (5, 42, 1_000, 10**9):
        assert backoff_delay(60, failures) == MAX_BACKOFF
    assert backoff_delay(10**12, 50) == MAX_BACKOFF


def test_a_mailbox_failing_all_night_keeps_its_back_off(tmp_path: Path) -> None:
    rt = offline_runtime(tmp_path)  # IMAP on port 1: every poll fails at once
    daemon = Daemon(rt)
    health = daemon.health["contacto"]
    try:
        for _ in range(45):
            health.retry_at = None  # as if the wait had passed
            assert daemon._poll("contacto") == "failed"
            assert health.retry_at is not None
        # Still 15 minutes ahead: not polled at every interval again.
        assert health.retry_at - datetime.now(UTC) > MAX_BACKOFF - timedelta(seconds=30)
    finally:
        rt.store.dispose()


# --- IDLE against a server that accepts the login and refuses IDLE ---


class _FakeImap(socketserver.StreamRequestHandler):
    """A small IMAP server for behaviours Dovecot cannot be set to show: a folder of
    ``exists`` messages, and IDLE and NOOP answered as a subclass says."""

    exists = 0

    def handle(self) -> None:
        out = self.wfile
        out.write(b"* OK [CAPABILITY IMAP4rev1 IDLE] ready\r\n")
        for line in self.rfile:
            tag, _, rest = line.decode().rstrip("\r\n").partition(" ")
            command = rest.split(" ", 1)[0].upper()
            if command == "CAPABILITY":
                out.write(b"* CAPABILITY IMAP4rev1 IDLE\r\n%s OK done\r\n" % tag.encode())
            elif command == "LOGIN":
                self.logged_in()
                out.write(b"%s OK [CAPABILITY IMAP4rev1 IDLE] in\r\n" % tag.encode())
            elif command in ("SELECT", "EXAMINE"):
                out.write(
                    b"* %d EXISTS\r\n* OK [UIDVALIDITY 7] ok\r\n* FLAGS (\\Seen)\r\n"
                    b"%s OK [READ-WRITE] selected\r\n" % (self.exists, tag.encode())
                )
            elif command in ("IDLE", "NOOP"):
                if not self.answer(command, tag.encode()):
                    return
            elif command == "LOGOUT":
                out.write(b"* BYE bye\r\n%s OK bye\r\n" % tag.encode())
                return
            else:
                out.write(b"%s OK\r\n" % tag.encode())
            out.flush()

    def logged_in(self) -> None:
        """Called at each login."""

    def answer(self, command: str, tag: bytes) -> bool:
        """Answer IDLE or NOOP; False ends the session."""
        self.wfile.write(b"%s OK\r\n" % tag)
        return True


@contextmanager
def _watching(handler: type[_FakeImap], on_new_mail: Callable[[str], None]) -> Iterator[Any]:
    """An IdleWatcher of a mailbox on a server run by ``handler``, stopped afterwards."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    settings = MailboxSettings.model_validate(
        {
            "host": "127.0.0.1",
            "port": server.server_address[1],
            "security": "none",
            "username": "contacto",
            "password": "x",
            "address": "contacto@example.com",
        }
    )
    stop = threading.Event()
    watcher = IdleWatcher("contacto", settings, on_new_mail, stop)
    watcher.start()
    try:
        yield watcher
    finally:
        stop.set()
        watcher.join(5)
        server.shutdown()
        server.server_close()


def test_idle_refused_after_login_backs_off() -> None:
    logins: list[float] = []

    class RefusesIdle(_FakeImap):
        def logged_in(self) -> None:
            logins.append(time.monotonic())

        def answer(self, command: str, tag: bytes) -> bool:
            if command == "IDLE":  # seen from providers that cap IDLE sessions per account
                self.wfile.write(b"%s NO [LIMIT] too many IDLE sessions\r\n" % tag)
                return True
            return super().answer(command, tag)

    with _watching(RefusesIdle, lambda _name: None) as watcher:
        time.sleep(6.5)
    # Logins at 0, 1, 3 s (then 7): the back-off doubles. It was reset by every
    # login, so the watcher logged in once a second, for ever.
    assert 2 <= len(logins) <= 4, logins
    assert not watcher.is_alive()


def test_a_reply_that_arrived_within_the_reopen_window_reopens(tmp_path: Path) -> None:
    rt = offline_runtime(tmp_path)
    now = datetime.now(UTC)
    first = mail(message_id="<orig-1@example.com>")
    fetched = FetchedMessage(uid=1, raw=first, internal_date=now - timedelta(days=40))
    assert service.ingest_message(rt, "contacto", 1, fetched) == "new_case"
    with rt.store.transaction() as session:
        case = session.exec(select(Case)).one()
        casework.resolve(session, rt.settings, case, "valid", "Se cambió el módem.", by="ana")
        case.resolved_at = now - timedelta(days=31)
        session.add(case)
    # Reached the server 29 days after the resolution (within the 30 it promised),
    # read only now: the daemon was down over a holiday.
    reply = mail(
        subject="Re: Sin servicio de internet",
        body="Sigue fallando.",
        headers={"In-Reply-To": "<orig-1@example.com>"},
    )
    fetched = FetchedMessage(uid=2, raw=reply, internal_date=now - timedelta(days=2))
    try:
        assert service.ingest_message(rt, "contacto", 1, fetched) == "follow_up"
        with rt.store.transaction() as session:
            assert len(session.exec(select(Case)).all()) == 1
    finally:
        rt.store.dispose()


def test_a_deferred_notice_waits_from_its_failure_not_from_the_runs_start(
    tmp_path: Path,
) -> None:
    rt = offline_runtime(tmp_path)  # SMTP on a closed port: every attempt fails, temporarily
    fetched = FetchedMessage(uid=1, raw=mail(), internal_date=datetime.now(UTC))
    assert service.ingest_message(rt, "contacto", 1, fetched) == "new_case"
    try:
        # A run that started half an hour ago (a slow server, a large backlog).
        started = datetime.now(UTC) - timedelta(minutes=30)
        with rt.store.transaction() as session:
            for notice in session.exec(select(Notice)).all():
                notice.next_attempt_at = started - timedelta(minutes=1)
                session.add(notice)
        report = deliver_outbox(rt.store, rt.settings, now=started)
        assert report.deferred >= 1
        with rt.store.transaction() as session:
            waits = [n.next_attempt_at for n in session.exec(select(Notice)).all()]
        # Counted from run start, each was due again at once (1 minute after it).
        assert all(w is not None and w > datetime.now(UTC) for w in waits), waits
    finally:
        rt.store.dispose()


class _RepeatsExists(_FakeImap):
    """Repeats the folder's unchanged count with every NOOP (RFC 3501 lets a server
    send EXISTS at any time), then idles quietly."""

    exists = 3

    def answer(self, command: str, tag: bytes) -> bool:
        if command == "NOOP":
            self.wfile.write(b"* 3 EXISTS\r\n%s OK NOOP done\r\n" % tag)
            return True
        self.wfile.write(b"+ idling\r\n")
        self.wfile.flush()
        if self.rfile.readline().strip().upper() != b"DONE":
            return False
        self.wfile.write(b"%s OK IDLE done\r\n" % tag)
        return True


def test_an_exists_that_repeats_the_count_is_no_news() -> None:
    # Each NOOP before IDLE answered "* 3 EXISTS": taken for new mail, a poll, and
    # the next NOOP again, for ever (own-diff review).
    polls: list[str] = []
    with _watching(_RepeatsExists, polls.append) as watcher:
        assert watcher.ready.wait(5)
        time.sleep(1.5)
    assert polls == ["contacto"]  # the one poll on connecting; no news since


class _MovedAwayThenNewMail(_FakeImap):
    """A folder of 10; during the first IDLE agents move 3 away (EXPUNGE) and a mail
    arrives (``* 8 EXISTS``); a second arrives during the poll that follows, so the
    next NOOP answers ``* 9 EXISTS``. Quiet after that."""

    exists = 10

    def setup(self) -> None:
        super().setup()
        self.idles = self.noops = 0

    def answer(self, command: str, tag: bytes) -> bool:
        if command == "NOOP":
            self.noops += 1
            news = b"* 9 EXISTS\r\n" if self.noops == 2 else b""
            self.wfile.write(news + b"%s OK NOOP done\r\n" % tag)
            return True
        self.idles += 1
        self.wfile.write(b"+ idling\r\n")
        self.wfile.flush()
        if self.idles == 1:
            time.sleep(0.2)
            self.wfile.write(b"* 10 EXPUNGE\r\n* 9 EXPUNGE\r\n* 8 EXPUNGE\r\n")
            self.wfile.flush()
            time.sleep(0.2)
            self.wfile.write(b"* 8 EXISTS\r\n")
            self.wfile.flush()
        if self.rfile.readline().strip().upper() != b"DONE":
            return False
        self.wfile.write(b"%s OK IDLE done\r\n" % tag)
        return True


def test_mail_after_messages_were_moved_away_during_idle_is_news() -> None:
    # The watcher counted the folder from SELECT and NOOPs only: after 3 of 10 were
    # expunged during IDLE, the NOOP's "* 9 EXISTS" was not above the stale 10, and
    # that mail waited a whole poll interval.
    polls: list[str] = []
    with _watching(_MovedAwayThenNewMail, polls.append) as watcher:
        assert watcher.ready.wait(5)
        deadline = time.monotonic() + 3
        while len(polls) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
    # On connecting, for the EXISTS during IDLE, and for the NOOP's EXISTS.
    assert polls == ["contacto"] * 3


def test_a_clock_stepped_back_before_ready_leaves_the_paused_jobs_paused(
    tmp_path: Path,
) -> None:
    # Every job was given next_run_time=now, and modify_job resumes a paused one: a step
    # during the first round (chrony's first sync at boot) started the purge, close-stale
    # and the reminders before the mail waiting since before the restart was read.
    rt = offline_runtime(tmp_path)
    the_daemon = Daemon(rt)
    scheduler = the_daemon.scheduler
    scheduler.start(paused=True)  # holds the jobs; runs none
    later = datetime.now(UTC) + timedelta(hours=1)  # where a step back leaves them
    paused = [daemon.CLOSE_STALE_JOB, daemon.REMIND_JOB, daemon.PURGE_JOB]
    scheduled = ["poll:contacto", "poll:info", daemon.OUTBOX_JOB, daemon.WATCHDOG_JOB]
    try:
        for job in paused:
            scheduler.add_job(print, "interval", hours=1, id=job, next_run_time=None)
        for job in scheduled:
            scheduler.add_job(print, "interval", hours=1, id=job, next_run_time=later)
        # The wall clock now 60 s behind where it was against the monotonic clock.
        the_daemon._after_a_clock_step(daemon._wall_minus_monotonic() + 60)
        for job in paused:
            assert scheduler.get_job(job).next_run_time is None, job
        for job in scheduled:
            assert scheduler.get_job(job).next_run_time <= datetime.now(UTC), job
    finally:
        scheduler.shutdown(wait=False)
        rt.store.dispose()
