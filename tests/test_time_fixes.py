"""Fifth review round, time: back-off that survives a long outage, IDLE that backs off
from a server refusing it, and the reopen window judged at the message's arrival.

Each test failed before its fix.
"""

from __future__ import annotations

import socketserver
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from helpers import mail, offline_runtime
from sqlmodel import select

from mailcase import casework, service
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


class _RefusesIdle(socketserver.StreamRequestHandler):
    logins: list[float]

    def handle(self) -> None:
        out = self.wfile
        out.write(b"* OK [CAPABILITY IMAP4rev1 IDLE] ready\r\n")
        for line in self.rfile:
            tag, _, rest = line.decode().rstrip("\r\n").partition(" ")
            command = rest.split(" ", 1)[0].upper()
            if command == "CAPABILITY":
                out.write(b"* CAPABILITY IMAP4rev1 IDLE\r\n%s OK done\r\n" % tag.encode())
            elif command == "LOGIN":
                self.logins.append(time.monotonic())
                out.write(b"%s OK [CAPABILITY IMAP4rev1 IDLE] in\r\n" % tag.encode())
            elif command in ("SELECT", "EXAMINE"):
                out.write(
                    b"* 0 EXISTS\r\n* OK [UIDVALIDITY 7] ok\r\n* FLAGS (\\Seen)\r\n"
                    b"%s OK [READ-WRITE] selected\r\n" % tag.encode()
                )
            elif command == "IDLE":
                # Seen from providers that cap IDLE sessions per account.
                out.write(b"%s NO [LIMIT] too many IDLE sessions\r\n" % tag.encode())
            elif command == "LOGOUT":
                out.write(b"* BYE bye\r\n%s OK bye\r\n" % tag.encode())
                return
            else:
                out.write(b"%s OK\r\n" % tag.encode())
            out.flush()


def test_idle_refused_after_login_backs_off(caplog: Any) -> None:
    logins: list[float] = []
    handler = type("Handler", (_RefusesIdle,), {"logins": logins})
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
    watcher = IdleWatcher("contacto", settings, lambda _name: None, stop)
    watcher.start()
    try:
        time.sleep(6.5)
    finally:
        stop.set()
        watcher.join(5)
        server.shutdown()
        server.server_close()
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


class _RepeatsExists(socketserver.StreamRequestHandler):
    """A server that repeats the folder's unchanged count with every NOOP (RFC 3501
    lets a server send EXISTS at any time) and then idles quietly."""

    def handle(self) -> None:
        out = self.wfile
        out.write(b"* OK [CAPABILITY IMAP4rev1 IDLE] ready\r\n")
        for line in self.rfile:
            tag, _, rest = line.decode().rstrip("\r\n").partition(" ")
            command = rest.split(" ", 1)[0].upper()
            if command == "CAPABILITY":
                out.write(b"* CAPABILITY IMAP4rev1 IDLE\r\n%s OK done\r\n" % tag.encode())
            elif command in ("SELECT", "EXAMINE"):
                out.write(
                    b"* 3 EXISTS\r\n* OK [UIDVALIDITY 7] ok\r\n* FLAGS (\\Seen)\r\n"
                    b"%s OK [READ-WRITE] selected\r\n" % tag.encode()
                )
            elif command == "LOGIN":
                out.write(b"%s OK [CAPABILITY IMAP4rev1 IDLE] in\r\n" % tag.encode())
            elif command == "NOOP":
                out.write(b"* 3 EXISTS\r\n%s OK NOOP done\r\n" % tag.encode())
            elif command == "IDLE":
                out.write(b"+ idling\r\n")
                out.flush()
                if self.rfile.readline().strip().upper() != b"DONE":
                    return
                out.write(b"%s OK IDLE done\r\n" % tag.encode())
            elif command == "LOGOUT":
                out.write(b"* BYE bye\r\n%s OK bye\r\n" % tag.encode())
                return
            else:
                out.write(b"%s OK\r\n" % tag.encode())
            out.flush()


def test_an_exists_that_repeats_the_count_is_no_news() -> None:
    # Each NOOP before IDLE answered "* 3 EXISTS": taken for new mail, a poll, and
    # the next NOOP again, for ever (own-diff review).
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _RepeatsExists)
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
    polls: list[str] = []
    stop = threading.Event()
    watcher = IdleWatcher("contacto", settings, polls.append, stop)
    watcher.start()
    try:
        assert watcher.ready.wait(5)
        time.sleep(1.5)
    finally:
        stop.set()
        watcher.join(5)
        server.shutdown()
        server.server_close()
    assert polls == ["contacto"]  # the one poll on connecting; no news since
