"""The outbox: notices queued with the case change, delivered over SMTP afterwards.

A notice row is written in the same transaction as the case change that
causes it, already rendered to its final bytes, so nothing is sent before that
transaction commits and a template problem surfaces while the message is
still being processed (where it is quarantined), not at delivery time.

Delivery opens one SMTP connection per run and marks each notice as it goes:

* accepted → ``sent``;
* temporary failure (4xx, server down, time-out) → retried with exponential
  back-off and jitter until ``smtp.retry_for_hours`` after queueing, then ``failed``;
* permanent failure (5xx) → ``failed`` at once and recorded on the case;
* a recipient that is one of our own addresses or an automatic one
  (MAILER-DAEMON, noreply, …) → ``suppressed``: a last guard against mail loops.

A crash between the server's acceptance and the ``sent`` mark can send that
one notice twice; nothing else is ever sent twice (tests/test_crash.py holds
it to at most one repeat per kill). On SQLite the mark is first a record in
the sent log (mailcase.sentlog), which needs no wait for ingest's write lock,
and reaches the notices table with the next :data:`FOLD_EVERY` when the lock
is free, at the latest when the delivery run ends; until then ``outbox list``
shows the notice as queued.

A run given a ``stop`` event (the daemon's, set by SIGTERM) checks it before
each notice and leaves the rest queued for the next run, so stopping waits
for one SMTP transaction at most, not for a whole backlog.
"""

from __future__ import annotations

import contextlib
import random
import re
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col, func, select

from mailcase import metrics, runlock
from mailcase.classify import is_automatic_address
from mailcase.config import Settings
from mailcase.errors import DatabaseError, DeliveryError, PermanentDeliveryError, SecretError
from mailcase.logs import get_logger
from mailcase.models import Case, CaseMessage, Notice, NoticeStatus
from mailcase.notices import CUSTOMER_KINDS, queue_notice
from mailcase.prepared import Prepared
from mailcase.smtp import SmtpConnection
from mailcase.store import Store, error_text, idle_timeout_back, is_unavailable, table, utcnow

BASE_DELAY = timedelta(minutes=1)
MAX_DELAY = timedelta(hours=1)


def retry_delay(attempts: int) -> timedelta:
    """Back-off after ``attempts`` failures: 1, 2, 4 … minutes, at most an hour, ±20%."""
    delay = min(BASE_DELAY * (1 << min(max(attempts - 1, 0), 16)), MAX_DELAY)
    return delay * random.uniform(0.8, 1.2)


@dataclass
class DeliveryReport:
    sent: int = 0
    deferred: int = 0
    failed: int = 0
    suppressed: int = 0
    busy: bool = False  # another process was delivering: this run sent nothing (SQLite)
    stopped: bool = False  # the run was asked to stop; what it did not reach stays queued


PAGE = 500


def due_notice_ids(
    conn: sa.Connection, now: datetime, after: int = 0, limit: int = PAGE
) -> list[int]:
    """Ids of queued notices due at ``now`` above id ``after``, oldest first."""
    rows = conn.execute(
        select(Notice.id)
        .where(
            Notice.status == NoticeStatus.QUEUED,
            col(Notice.next_attempt_at) <= now,
            col(Notice.id) > after,
        )
        .order_by(col(Notice.id))
        .limit(limit)
    ).scalars()
    return [int(r) for r in rows if r is not None]


def _pages(store: Store, now: datetime, first: list[int]) -> Iterator[int]:
    """Every due notice id, a page at a time, each at most once per run.

    Each page is read as due by the clock then (or ``now``, if later): a notice
    queued while the run goes on (by another process, which found the run's
    lock held) is sent by this run, not left for the next.
    """
    ids = first
    while ids:
        yield from ids
        with store.reading() as conn:  # reads never wait for ingest's write lock
            ids = due_notice_ids(conn, max(now, utcnow()), after=ids[-1])


def deliver_outbox(
    store: Store,
    settings: Settings,
    *,
    now: datetime | None = None,
    stop: threading.Event | None = None,
) -> DeliveryReport:
    """Send every due notice over one SMTP connection; return what happened.

    On SQLite one process delivers at a time (mailcase.runlock): when another
    holds the outbox for longer than a few seconds, this run sends nothing,
    logs ``outbox_busy`` and says so in :attr:`DeliveryReport.busy`; the run
    in progress sends what is due, new notices included.

    Once ``stop`` is set no further notice is started: the one being sent is
    finished and recorded, the rest stay queued as they were (not attempted,
    no back-off), and :attr:`DeliveryReport.stopped` says so. The sent log is
    folded all the same.

    Raises :class:`~mailcase.errors.SecretError` (counted as an SMTP error) when
    the SMTP password file or credential (or an OAuth2 secret file) cannot be
    read: the notices not sent yet stay queued as they were.
    """
    if store.delivery_lock is None:
        return _deliver_due(store, settings, now or utcnow(), stop)
    with runlock.held(store.delivery_lock) as taken:
        if not taken:
            get_logger().info("outbox_busy", lock=str(store.delivery_lock))
            return DeliveryReport(busy=True)
        return _deliver_due(store, settings, now or utcnow(), stop)


def _deliver_due(
    store: Store, settings: Settings, now: datetime, stop: threading.Event | None
) -> DeliveryReport:
    report = DeliveryReport()
    fold_sent_log(store)  # what an earlier run sent is not due any more
    with store.reading() as conn:
        ids = due_notice_ids(conn, now)
    try:
        if not ids:
            return report
        handed: list[int] = []
        _deliver(store, settings, _noted(_pages(store, now, ids), handed), now, report, stop)
        if report.failed and handed and not report.stopped:
            # A refusal queues an alert to the agents (_tell_agents) after the last
            # page was read (SQLite reads a chunk ahead): sent by this run, not left
            # for the next one, which for a `mailcase poll` from cron is an hour away.
            with store.reading() as conn:
                more = due_notice_ids(conn, max(now, utcnow()), after=handed[-1])
            if more:
                _deliver(store, settings, iter(more), now, report, stop)
        return report
    finally:
        fold_sent_log(store)
        for outcome in ("sent", "deferred", "failed", "suppressed"):
            if getattr(report, outcome):
                metrics.NOTICES.labels(outcome).inc(getattr(report, outcome))
        with store.reading() as conn:
            queued = select(func.count()).select_from(Notice)
            metrics.set_queued(conn.execute(queued.where(Notice.status == "queued")).scalar_one())


def _noted(ids: Iterator[int], handed: list[int]) -> Iterator[int]:
    """``ids``, the last one handed out kept in ``handed[-1]``."""
    for notice_id in ids:
        handed[:] = [notice_id]
        yield notice_id


def _until(
    stop: threading.Event | None, ids: Iterator[int], report: DeliveryReport
) -> Iterator[int]:
    """``ids`` until ``stop`` is set; checked as each one is taken, so just before it is sent."""
    for notice_id in ids:
        if stop is not None and stop.is_set():
            report.stopped = True
            return
        yield notice_id


def fold_sent_log(store: Store, *, wait: bool = True) -> int:
    """Mark sent in the notices table what delivery recorded in the sent log; how many.

    SQLite only (mailcase.sentlog). When there is something to fold it waits
    for the write lock, or with ``wait=False`` folds nothing while another
    thread of this process writes. Records are forgotten only after the marks
    are committed, so a crash in between folds them again (harmlessly).
    """
    sent_log = store.sent_log
    if sent_log is None:
        return 0
    records = sent_log.pending()
    if not records:
        return 0  # the usual case: no need to queue for the write lock
    folded: list[int] = []
    with store.writing() if wait else store.writing_if_free() as conn:
        if conn is not None:
            # A record appended meanwhile stays for the next fold.
            folded = fold_into(conn, records)
    sent_log.forget(folded)
    return len(folded)


def fold_into(conn: sa.Connection, records: list[tuple[int, datetime]]) -> list[int]:
    """Mark sent in ``conn``'s transaction the sent log's ``records``; the notices' ids.

    A notice no longer queued keeps its status (a bounce may have failed it).
    The caller forgets the records once the transaction is committed.
    """
    for notice_id, sent_at in records:
        _finish(conn, notice_id, NoticeStatus.SENT, tries=1, sent_at=sent_at)
    return [notice_id for notice_id, _ in records]


FOLD_EVERY = 50  # records of this process in the sent log that are folded at once


def _mark_sent(store: Store, notice_id: int) -> None:
    """Mark a notice sent (SQLite), durably, before the next one goes out.

    In the sent log: a commit of one small row, without waiting for ingest's
    write lock (21 µs, where an UPDATE of the notices table in a transaction
    of its own took ten times that). Once :data:`FOLD_EVERY` records of this
    process wait and the write lock is free, they are folded into the notices
    table in one transaction; the rest at the end of the run. Without a log
    (an in-memory database, or a log that cannot be written), in the notices
    table at once.
    """
    sent_log = store.sent_log
    if sent_log is not None and not sent_log.unusable:
        try:
            sent_log.append(notice_id, utcnow())
        except DatabaseError as exc:
            # Given up for this process: marks wait for the lock, as they did
            # before there was a log.
            sent_log.unusable = True
            get_logger().warning("sent_log_unavailable", error=str(exc))
        else:
            if sent_log.own_records >= FOLD_EVERY:
                fold_sent_log(store, wait=False)
            return
    with store.writing() as conn:
        _finish(conn, notice_id, NoticeStatus.SENT, tries=1)


def log_run_failure(exc: Exception) -> None:
    """Log a delivery run that raised ``exc``; call it in the ``except`` block.

    A database that is down or restarting is expected trouble: one line
    (``outbox_run_failed``), and the notices wait in it for the next run. So
    is a :class:`~mailcase.errors.DatabaseError` (a sent log that cannot be
    read): one line at error level, whose sentence names the file and what to
    do; and so is a :class:`~mailcase.errors.SecretError` (the SMTP password
    file or credential, or an OAuth2 secret file, cannot be read), as
    ``smtp_unavailable``. Anything else is a bug: ``outbox_run_crashed`` with
    its traceback.
    """
    if isinstance(exc, SecretError):
        # The notices are untouched, queued for the run that can log in.
        get_logger().error("smtp_unavailable", error=str(exc))
    elif isinstance(exc, DatabaseError):
        # Needs a person, but a traceback would hide the sentence that says what to do.
        get_logger().error("outbox_run_failed", error=str(exc))
    elif isinstance(exc, SQLAlchemyError) and is_unavailable(exc):
        get_logger().warning("outbox_run_failed", error=error_text(exc))
    else:
        get_logger().exception("outbox_run_crashed")


class DeliveryAlongside:
    """Deliver the outbox in a thread while the caller ingests (``mailcase poll``).

    Acknowledgements then go out while the rest of a large backlog is still
    being read, and the SMTP round trips overlap ingest work instead of
    following it. Each round is an ordinary :func:`deliver_outbox` run; on
    exit the thread stops after its round and the caller's thread runs one
    last round, so everything queued before exit is attempted exactly as
    before. A failing round is logged and ends the thread, never the caller.
    """

    def __init__(self, store: Store, settings: Settings, pause: float = 0.25) -> None:
        self.store, self.settings, self.pause = store, settings, pause
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._rounds, name="outbox", daemon=True)

    def __enter__(self) -> DeliveryAlongside:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        self._thread.join()

    def _rounds(self) -> None:
        while not self._done.is_set():
            try:
                report = deliver_outbox(self.store, self.settings)
            except Exception as exc:
                log_run_failure(exc)
                return
            if not (report.sent or report.deferred or report.failed or report.suppressed):
                self._done.wait(self.pause)


def _deliver(
    store: Store,
    settings: Settings,
    ids: Iterator[int],
    now: datetime,
    report: DeliveryReport,
    stop: threading.Event | None = None,
) -> DeliveryReport:
    log = get_logger()
    ids = _until(stop, ids, report)
    try:
        connection = SmtpConnection(settings.smtp).__enter__()
    except SecretError:
        metrics.ERRORS.labels("smtp", "").inc()
        raise  # logged by the caller (log_run_failure) or said by the CLI
    except DeliveryError as exc:
        metrics.ERRORS.labels("smtp", "").inc()
        # Even a refused login is the server's or the admin's problem, not the
        # notices': keep them queued until it is fixed or they expire.
        log.warning("smtp_unavailable", error=str(exc))
        for notice_id in ids:
            _record_failure(
                store, settings, notice_id, exc, permanent=False, report=report, now=now
            )
        return report
    try:
        if store.engine.dialect.name == "postgresql":
            _deliver_claimed(store, settings, connection, ids, now, report)
        else:
            # One read per chunk instead of one transaction per notice.
            for chunk in _chunks(ids, READ_CHUNK):
                rows, read_at = _due_rows(store, chunk), time.monotonic()
                # The chunk was taken ahead of sending: ask _until again before each.
                for position, notice_id in enumerate(_until(stop, iter(chunk), report)):
                    if time.monotonic() - read_at > CHUNK_FRESH_SECONDS:
                        # A slow server: what is left is read again, so a notice
                        # suppressed meanwhile (a case marked spam) is not sent.
                        rows = _due_rows(store, chunk[position:])
                        read_at = time.monotonic()
                    _deliver_one(
                        store, settings, connection, notice_id, now, report,
                        row=rows.get(notice_id),
                    )  # fmt: skip
    except SecretError:  # connecting again after the server hung up
        metrics.ERRORS.labels("smtp", "").inc()
        raise
    finally:
        connection.close()
    return report


READ_CHUNK = 50
# A chunk's rows older than this are read again before the next notice goes out. At
# loopback speed a chunk is sent in about 0.1 s and never read twice; at a remote
# server's 0.3 s a notice, a case marked spam would otherwise still have its queued
# acknowledgement sent up to fifty notices (15 s) after the mark.
CHUNK_FRESH_SECONDS = 0.5


def _due_rows(store: Store, ids: list[int]) -> dict[int, Any]:
    """The rows of ``ids`` still queued, by id (read without the write lock)."""
    with store.reading() as conn:
        return {r.id: r for r in conn.execute(_DUE_MANY, {"ids": ids})}


def _chunks(ids: Iterator[int], size: int) -> Iterator[list[int]]:
    chunk: list[int] = []
    for notice_id in ids:
        chunk.append(notice_id)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


SUPPRESSED = "recipient is one of our mailboxes or automatic: not sent"
ERASED = "erased"  # a notice with no bytes: erased with its customer's data (mailcase.erasure)
_NOTICES = table(Notice)
# Built once: delivery runs these for every notice, and SQLAlchemy's ORM
# session and statement building cost more than SQLite itself (py-spy).
_DUE_MANY = sa.select(
    _NOTICES.c.id, _NOTICES.c.mail_from, _NOTICES.c.rcpt_to, _NOTICES.c.message_id, _NOTICES.c.raw
).where(
    _NOTICES.c.id.in_(sa.bindparam("ids", expanding=True)),
    _NOTICES.c.status == NoticeStatus.QUEUED,
)
_CLAIM = Prepared(
    sa.select(_NOTICES.c.mail_from, _NOTICES.c.rcpt_to, _NOTICES.c.message_id, _NOTICES.c.raw)
    .where(
        _NOTICES.c.id == sa.bindparam("id"),
        _NOTICES.c.status == NoticeStatus.QUEUED,
        # Still due: another instance may have deferred it since this run listed it.
        _NOTICES.c.next_attempt_at <= sa.bindparam("now"),
    )
    .with_for_update(skip_locked=True)
)
_FINISH = Prepared(
    sa.update(_NOTICES)
    .where(_NOTICES.c.id == sa.bindparam("notice"), _NOTICES.c.status == NoticeStatus.QUEUED)
    .values(
        status=sa.bindparam("status"),
        sent_at=sa.bindparam("sent_at"),
        attempts=_NOTICES.c.attempts + sa.bindparam("tries"),
        last_error=sa.bindparam("error"),
    )
)


# A notice's row stays locked while the SMTP server answers, which may take longer than
# a DBA's idle_in_transaction_session_timeout (a server scanning DATA): the session was
# killed after the mail was accepted, and the notice went out again at every run. Off
# for the run's connection, and back to what a new connection gets when the run ends
# (a SET LOCAL in each claim cost a round trip per notice). A dead instance's claimed
# row then stays locked until TCP keepalive ends its session; the other instances skip
# it meanwhile (SKIP LOCKED), so that notice alone waits.
_NO_IDLE_TIMEOUT = "SET idle_in_transaction_session_timeout = 0"


@contextmanager
def _without_idle_timeout(conn: sa.Connection) -> Iterator[None]:
    """``conn``'s session without ``idle_in_transaction_session_timeout`` meanwhile."""
    with conn.begin():
        conn.exec_driver_sql(_NO_IDLE_TIMEOUT)
    try:
        yield
    finally:
        # A connection that broke is discarded by the pool, setting and all.
        with contextlib.suppress(sa.exc.SQLAlchemyError), conn.begin():
            idle_timeout_back(conn)  # not RESET alone: that left the pool's connection without one


def _deliver_claimed(
    store: Store,
    settings: Settings,
    connection: SmtpConnection,
    ids: Iterator[int],
    now: datetime,
    report: DeliveryReport,
) -> None:
    """Deliver on PostgreSQL, where several instances may share the outbox.

    Each notice is claimed with ``FOR UPDATE SKIP LOCKED`` and sent while its
    row is locked, so one instance only sends it, then marked in the same
    transaction: a crash sends at most that one twice. The server's
    ``idle_in_transaction_session_timeout`` is off for the run. One
    connection serves the whole run (a connection from the pool cost a ping, a
    round trip, per notice).
    """
    log = get_logger()
    with store.connection() as conn, _without_idle_timeout(conn):
        for notice_id in ids:
            failure: DeliveryError | None = None
            with conn.begin():
                # Due by the clock now: a notice queued since the run began (the
                # agents' alert of a refusal it met) is due too.
                due = max(now, utcnow())
                row = _CLAIM.execute(conn, {"id": notice_id, "now": due}).first()
                if row is None:
                    continue  # sent, or being sent, by another instance
                mail_from, rcpt_to, message_id, raw = row
                if not raw:  # erased with its customer's data: an empty mail otherwise
                    _finish(conn, notice_id, NoticeStatus.SUPPRESSED, tries=0, error=ERASED)
                    continue
                if _suppressed(settings, notice_id, rcpt_to, report):
                    _finish(conn, notice_id, NoticeStatus.SUPPRESSED, tries=0, error=SUPPRESSED)
                    continue
                failure = _send(connection, mail_from, rcpt_to, raw)
                if failure is None:
                    _finish(conn, notice_id, NoticeStatus.SENT, tries=1)
            if failure is None:
                report.sent += 1
                log.info("notice_sent", notice=notice_id, message_id=message_id)
                continue
            _delivery_failed(store, settings, notice_id, failure, report, now)


def _deliver_one(
    store: Store,
    settings: Settings,
    connection: SmtpConnection,
    notice_id: int,
    now: datetime,
    report: DeliveryReport,
    *,
    row: Any,  # an sa.Row of _DUE_MANY, or None: no longer queued
) -> None:
    """Deliver one queued notice on SQLite and record the outcome.

    The caller has read ``row`` without the write lock (Store.reading), and
    it is sent outside any transaction, so delivery neither waits for ingest
    nor holds the lock while a remote server answers. It is marked sent
    before the next one goes out (:func:`_mark_sent`), so a crash repeats at
    most this one. SQLite has one writer: no other instance takes the same
    notice.
    """
    if row is None:
        return  # sent by an earlier run
    if not row.raw:  # erased with its customer's data: an empty mail otherwise
        with store.writing() as conn:
            _finish(conn, notice_id, NoticeStatus.SUPPRESSED, tries=0, error=ERASED)
        return
    if _suppressed(settings, notice_id, row.rcpt_to, report):
        with store.writing() as conn:
            _finish(conn, notice_id, NoticeStatus.SUPPRESSED, tries=0, error=SUPPRESSED)
        return
    failure = _send(connection, row.mail_from, row.rcpt_to, row.raw)
    if failure is None:
        _mark_sent(store, notice_id)
        report.sent += 1
        get_logger().info("notice_sent", notice=notice_id, message_id=row.message_id)
        return
    _delivery_failed(store, settings, notice_id, failure, report, now)


def _delivery_failed(
    store: Store,
    settings: Settings,
    notice_id: int,
    failure: DeliveryError,
    report: DeliveryReport,
    now: datetime,
) -> None:
    """Record the server's refusal (5xx: failed) or a temporary failure (back-off)."""
    permanent = isinstance(failure, PermanentDeliveryError)
    _record_failure(
        store, settings, notice_id, failure, permanent=permanent, report=report, now=now
    )


def _finish(
    conn: sa.Connection,
    notice_id: int,
    status: str,
    *,
    tries: int,
    error: str = "",
    sent_at: datetime | None = None,
) -> None:
    if sent_at is None and status == NoticeStatus.SENT:
        sent_at = utcnow()
    _FINISH.execute(
        conn,
        {"notice": notice_id, "status": status, "sent_at": sent_at, "tries": tries, "error": error},
    )


def _suppressed(settings: Settings, notice_id: int, rcpt: str, report: DeliveryReport) -> bool:
    """Last guard against loops (the full policy ran at queueing): count and say so."""
    ours = {m.address for m in settings.mailboxes.values()}
    if rcpt not in ours and not is_automatic_address(rcpt):
        return False
    report.suppressed += 1
    get_logger().warning("notice_suppressed", notice=notice_id, reason=SUPPRESSED)
    return True


def _send(
    connection: SmtpConnection, mail_from: str, rcpt: str, raw: bytes
) -> DeliveryError | None:
    """Send one notice; the failure, or None. A server that hung up and then refused
    the new connection is counted and logged (``smtp_unavailable``) once per run, as
    a failed connection at the run's start is."""
    reachable = connection.unreachable is None
    try:
        connection.send(mail_from, rcpt, raw)  # connects again if the server hung up
    except DeliveryError as exc:
        if reachable and connection.unreachable is not None:
            metrics.ERRORS.labels("smtp", "").inc()
            get_logger().warning("smtp_unavailable", error=str(connection.unreachable))
        return exc
    return None


def _record_failure(
    store: Store,
    settings: Settings,
    notice_id: int,
    exc: DeliveryError,
    *,
    permanent: bool,
    report: DeliveryReport,
    now: datetime,
) -> None:
    log = get_logger()
    with store.transaction() as session:
        # Locked, and read as committed (PostgreSQL): another instance may have sent
        # it since this one's attempt, which must then not mark it failed or deferred.
        notice = session.get(Notice, notice_id, with_for_update=True, populate_existing=True)
        if notice is None or notice.status != NoticeStatus.QUEUED:
            return
        notice.attempts += 1
        notice.last_error = str(exc)
        window_start = notice.queued_at or notice.created_at
        expired = now - window_start > timedelta(hours=settings.smtp.retry_for_hours)
        if permanent or expired:
            notice.status = NoticeStatus.FAILED
            report.failed += 1
            if notice.case_id is not None:
                why = "refused" if permanent else "not accepted in time"
                session.add(
                    CaseMessage(
                        case_id=notice.case_id,
                        direction="out",
                        kind="system",
                        to_addrs=notice.rcpt_to,
                        subject=f"Delivery failed: {notice.kind}",
                        date=now,
                        text=f"The {notice.kind} to {notice.rcpt_to} was {why}: {exc}",
                        notice_id=notice.id,
                    )
                )
                _tell_agents(session, settings, notice, str(exc))
            log.error("notice_failed", notice=notice_id, error=str(exc), permanent=permanent)
        else:
            # From the failure, not from the run's start: in a run longer than the
            # delay (a slow server, a large backlog) the notice was due again at once.
            notice.next_attempt_at = max(now, utcnow()) + retry_delay(notice.attempts)
            report.deferred += 1
            log.warning(
                "notice_deferred", notice=notice_id, error=str(exc), attempts=notice.attempts
            )
        session.add(notice)


_STATUS = re.compile(r"(?<![\d.])[245]\.\d{1,3}\.\d{1,3}(?![\d.])")


def _tell_agents(session: Session, settings: Settings, notice: Notice, error: str) -> None:
    """Tell agents.notify, once per failed notice, that a customer was not reached.

    Notices to the agents themselves are not reported (that could loop), and a
    notice retried and failed again is not reported twice.
    """
    if not settings.agents.notify or notice.kind not in CUSTOMER_KINDS or notice.case_id is None:
        return
    already = session.exec(
        select(func.count())
        .select_from(CaseMessage)
        .where(CaseMessage.notice_id == notice.id, CaseMessage.kind == "system")
    ).one()
    if already > 1:  # the record added just now is the first
        return
    case = session.get(Case, notice.case_id)
    if case is None:
        return
    # "server refused the message to X: 550 5.1.1 <x>: User unknown": the server's
    # reply after the first ": ", and its status (RFC 3463 enhanced, else the code).
    diagnostic = error.split(": ", 1)[-1].strip()
    status = _STATUS.search(diagnostic)
    # No reply code at all ("connection lost while sending"): none is shown.
    code = status.group(0) if status else (diagnostic[:3] if diagnostic[:3].isdigit() else "")
    queue_notice(
        session,
        settings,
        case,
        "delivery_failed",
        to=settings.agents.notify,
        context={
            "recipient": notice.rcpt_to,
            "status": code,
            "diagnostic": diagnostic[:500],
            "notice_kind": notice.kind,
        },
    )


def requeue(session: Session, notice_ids: Iterable[int]) -> int:
    """Put failed or deferred notices back in the queue, due now, but those with no bytes
    left (erased) and those to the customer of a case marked spam; return how many."""
    count = 0
    for notice_id in notice_ids:
        notice = session.get(Notice, notice_id)
        # No bytes: erased with its customer's data (mailcase.erasure), nothing to send.
        if notice is None or notice.status == NoticeStatus.SENT or not notice.raw:
            continue
        case = session.get(Case, notice.case_id) if notice.case_id is not None else None
        if case is not None and case.spam_at is not None and notice.rcpt_to == case.customer:
            continue  # #spam: whoever the spammer forged is never written to (backscatter)
        notice.status = NoticeStatus.QUEUED
        notice.next_attempt_at = notice.queued_at = utcnow()  # a fresh retry window
        session.add(notice)
        count += 1
    return count
