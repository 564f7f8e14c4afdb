"""Use-cases: poll one mailbox, ingest one message. Wires the pure core to the adapters.

Every fetched message ends in exactly one ledger row, written in the same
transaction as the case change and the notices it causes, together with the
mailbox's UID checkpoint. A message that makes any step raise is quarantined
in a transaction of its own (raw bytes kept) and the poll goes on; only a
failure to reach the mailbox or the database stops a mailbox's poll, and then
nothing is checkpointed that was not committed, so the next poll resumes.

What an agent's reply does on its case is mailcase.agentmail's; what a person
does with quarantined messages afterwards (retry, release, dismiss) is
mailcase.quarantine's, through :func:`ingest_message`.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlmodel import Session, select

from mailcase import agentmail, casemail, casework, leases, merging, metrics, refusals, waits
from mailcase.authres import sender_is_authenticated
from mailcase.blobs import BlobStore, read_header
from mailcase.bounces import record_bounce
from mailcase.classify import MailKind, classify
from mailcase.config import MailboxSettings, Settings
from mailcase.errors import (
    ConfigError,
    DatabaseError,
    DatabaseRefusal,
    MailboxError,
    MailcaseError,
    MessageError,
    RefusedForNow,
    StorageError,
    TemplateError,
)
from mailcase.folio import echoable_subject, find_folios, remove_folio_tags, strip_reply_prefixes
from mailcase.imap import FetchedMessage, ImapMailbox
from mailcase.inbound import InboundMail, content_digest, header_summary, origin_of
from mailcase.logs import get_logger
from mailcase.models import (
    Case,
    CaseStatus,
    Checkpoint,
    Disposition,
    KeyValue,
    LedgerEntry,
)
from mailcase.msgid import proofs_in
from mailcase.notices import queue_notice, queue_without_case, signing_key
from mailcase.parsing import Parsed, ParseOptions, ParserProcess, parse_ahead, worth_a_process
from mailcase.prepared import Prepared
from mailcase.quoting import (
    customer_text,
)
from mailcase.reasons import QuarantineReason, Reason
from mailcase.spam import spam_verdict
from mailcase.store import (
    BLOB_REMOVAL_LOCK_KEY,
    Store,
    as_utc,
    case_by_folio,
    case_by_message_ids,
    error_text,
    hashed_key,
    insert_if_absent,
    insert_row,
    is_deadlock,
    is_unavailable,
    ledger_by_key,
    run,
    table,
    utcnow,
)
from mailcase.thanks import NOT_REOPENED
from mailcase.triage import CaseRef, Decision, Facts, Role, triage


@dataclass
class Runtime:
    """What a use-case needs: settings and the open adapters."""

    settings: Settings
    store: Store
    blobs: BlobStore
    stop: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def open(cls, settings: Settings) -> Runtime:
        store = Store.open(settings.database.url, auto_upgrade=settings.database.upgrades_itself)
        directory = settings.storage.directory
        try:
            blobs = BlobStore(directory)
            blobs.sweep_spool()
        except OSError as exc:
            store.dispose()
            raise ConfigError(
                f"storage.directory {directory} cannot be used: {exc.strerror or exc}"
            ) from exc
        return cls(settings=settings, store=store, blobs=blobs)


@dataclass
class MailboxReport:
    """What one poll of a mailbox did. Every fetched message is counted once: under
    its ledger disposition when it is new to the ledger, else in ``remapped``."""

    mailbox: str
    fetched: int = 0
    dispositions: Counter[str] = field(default_factory=Counter)
    # Messages whose ledger row was there already: a rebuilt folder's (new UIDVALIDITY),
    # met at their new UIDs, or ones committed before a crash lost the checkpoint.
    remapped: int = 0
    skipped: bool = False  # another instance holds the mailbox's lease

    @property
    def new(self) -> int:
        """Fetched messages that were new to the ledger."""
        return self.fetched - self.remapped


Progress = Callable[[int, int], None]  # (messages done, messages to do)
_Address = tuple[int, int]  # (UIDVALIDITY, UID) of a ledger row


def poll_mailbox(rt: Runtime, name: str, progress: Progress | None = None) -> MailboxReport:
    """Ingest every message of mailbox ``name`` above its checkpoint.

    Raises :class:`~mailcase.errors.MailboxError` when the mailbox cannot be
    read, :class:`~mailcase.errors.DatabaseError` when the database cannot be
    used; what was committed before stays committed.
    """
    with metrics.POLL_SECONDS.labels(name).time():
        try:
            report = _poll_mailbox(rt, name, progress)
        except (MailboxError, ConfigError) as exc:
            metrics.ERRORS.labels(_failed_component(exc), name).inc()
            if isinstance(exc, RefusedForNow):
                refusals.note(rt.store, name, exc.uid, exc.uidvalidity)
            raise
        except DatabaseRefusal as exc:
            refusals.note(rt.store, name, exc.uid, exc.uidvalidity)
            raise
        except SQLAlchemyError as exc:  # the lease, the checkpoint: one line, not a traceback
            raise DatabaseError(
                f"database error while polling mailbox {name}: {error_text(exc)}"
            ) from exc
    if not report.skipped:
        metrics.poll_succeeded(name)
    return report


def _failed_component(exc: MailboxError | ConfigError) -> str:
    """What a failed poll's ``exc`` blames, as ``mailcase_errors_total`` labels it: the
    :class:`MailboxError`'s component, ``template`` for a template that escaped
    unwrapped, and ``imap`` for any other ConfigError: a password file or credential
    of the mailbox's login that became unreadable after start-up."""
    if isinstance(exc, MailboxError):
        return exc.component
    return "template" if isinstance(exc, TemplateError) else "imap"


def _poll_mailbox(rt: Runtime, name: str, progress: Progress | None) -> MailboxReport:
    settings = rt.settings.mailboxes[name]
    report = MailboxReport(mailbox=name)
    if not leases.acquire(rt.store, name):
        report.skipped = True  # another instance is polling it
        get_logger(mailbox=name).info("mailbox_leased_elsewhere")
        return report
    try:
        return _poll_leased(rt, name, settings, report, progress, _Lease(rt, name))
    except _LeaseLost:  # before a message was read: another instance polls it now
        report.skipped = True
        get_logger(mailbox=name).info("mailbox_leased_elsewhere")
        return report
    finally:
        with contextlib.suppress(SQLAlchemyError):  # it expires by itself anyway
            leases.release(rt.store, name)


class _LeaseLost(Exception):
    """Another instance took the mailbox's lease during this poll (which stops)."""


class _Lease:
    """A poll's hold on its mailbox's lease (:mod:`mailcase.leases`), taken just before."""

    def __init__(self, rt: Runtime, name: str) -> None:
        self._rt, self._name = rt, name
        self._renewed = time.monotonic()

    def keep(self, *, now: bool = False) -> None:
        """Renew the lease when :data:`~mailcase.leases.RENEW_SECONDS` have passed since
        it was last renewed (or ``now``); raises :class:`_LeaseLost` when another
        instance holds it."""
        if now or time.monotonic() - self._renewed >= leases.RENEW_SECONDS:
            if not leases.acquire(self._rt.store, self._name):
                raise _LeaseLost(self._name)
            self._renewed = time.monotonic()


def _poll_leased(
    rt: Runtime,
    name: str,
    settings: MailboxSettings,
    report: MailboxReport,
    progress: Progress | None,
    lease: _Lease,
) -> MailboxReport:
    log = get_logger(mailbox=name)
    # What reached the mailbox before this moment is in the poll's answer: a complete
    # poll records it (not its end), so that a customer's answer that arrived during a
    # long poll is never taken as read (waits.close_stale_cases). Taken before the
    # SELECT: mail that arrives between it and the SEARCH is not in an empty folder's
    # answer (imap.uids_after trusts SELECT's EXISTS of 0).
    searched_at = utcnow()
    # The lease is renewed between the steps before the first message too: a slow
    # login, SELECT or SEARCH let it run out, and another instance polled alongside.
    with ImapMailbox(name, settings) as box:
        lease.keep()
        source = _source_of(settings)
        last_uid, first_contact = _checkpoint(rt.store, name, box.uidvalidity, log, source)
        box.give_up = refusals.given_up(rt.store, name, box.uidvalidity)
        uids = box.uids_after(last_uid)
        lease.keep()
        if progress is not None:
            progress(0, len(uids))
        handled: list[int] = []
        with _parser_for(rt, len(uids), log) as parser:
            complete = _ingest_all(
                rt, name, box, uids, report, progress, parser, handled, first_contact, lease
            )
        box.mark_done(handled)
        # Flags lost to a crash between commit and STORE are put right here.
        box.mark_done(_handled_among(rt, name, box.uidvalidity, box.unflagged_below(last_uid)))
        with rt.store.transaction() as session:
            checkpoint = session.get(Checkpoint, name)
            if checkpoint is not None:
                # Only a poll that went through every message completes one: the
                # first contact's silence must outlast a first poll cut short (a
                # restart, systemd's start timeout, a lost lease), or the rest
                # of a years-old backlog would be answered by the next poll.
                if complete:
                    checkpoint.last_poll_at = searched_at
                    _note_first_contact_end(session, name, first_contact, searched_at)
                checkpoint.failures = 0
                session.add(checkpoint)
            refusals.forget(session, name)  # the poll got past any
    again = {"remapped": report.remapped} if report.remapped else {}
    # An empty poll is the daemon's heartbeat, every interval per mailbox (2,880 lines
    # a day with two mailboxes): debug, as fetchmail and getmail keep it quiet.
    # STATUS= and the seconds-since metric say it is alive.
    emit = log.info if report.fetched else log.debug
    emit("mailbox_polled", fetched=report.fetched, **dict(report.dispositions), **again)
    return report


def _parser_for(
    rt: Runtime, backlog: int, log: Any
) -> contextlib.AbstractContextManager[ParserProcess | None]:
    """A child process to parse a backlog in (mailcase.parsing), or None: parse here."""
    if not (rt.settings.poll.parse_process and worth_a_process(backlog)):
        return contextlib.nullcontext()
    try:
        return ParserProcess(parse_options(rt.settings), blobs=rt.blobs.directory)
    except OSError as exc:
        log.warning("parser_process_unavailable", error=str(exc))
        return contextlib.nullcontext()


def _ingest_all(
    rt: Runtime,
    name: str,
    box: ImapMailbox,
    uids: list[int],
    report: MailboxReport,
    progress: Progress | None,
    parser: ParserProcess | None,
    handled: list[int],
    first_contact: bool,
    lease: _Lease,
) -> bool:
    """Ingest ``uids`` in order; ``handled`` collects the UIDs to flag as done. Whether
    every one was gone through (``False``: a stop or a lost lease ended it early).

    Messages read ahead but not ingested (a stop, a lost lease, a failure) are
    read again by the next poll; their spool files are removed on the way out.
    """
    spooled: list[Path] = []
    fetched_messages = _noting_spools(fetch_planned(rt, box, uids, lease.keep), spooled)
    try:
        for fetched, parsed in parse_ahead(fetched_messages, _raw_of, parser):
            disposition = ingest_message(
                rt,
                name,
                box.uidvalidity,
                fetched,
                parsed,
                first_contact=first_contact,
                report=report,
            )
            report.fetched += 1
            if progress is not None:
                progress(report.fetched, len(uids))
            if disposition != Disposition.QUARANTINED:
                # Left unread on the server: in webmail it stands out as not dealt with.
                handled.append(fetched.uid)
            full = len(handled) >= rt.settings.poll.batch_size
            # Renewed after every batch, and on time when messages come slowly (a large
            # one, a slow server): a lease left to expire mid-poll lets another
            # instance poll the mailbox alongside.
            if full:
                box.mark_done(handled)
                handled.clear()
            lease.keep(now=full)
            if rt.stop.is_set():
                return False  # SIGTERM: the message in hand is finished; stop here
        return True
    except _LeaseLost:  # renewing it failed: stop here
        return False
    finally:
        for path in spooled:  # stored ones were moved into the store already
            path.unlink(missing_ok=True)


def _noting_spools(
    fetched: Iterator[FetchedMessage], spooled: list[Path]
) -> Iterator[FetchedMessage]:
    """``fetched``, each spool file noted in ``spooled`` as it comes."""
    for message in fetched:
        if message.spooled is not None:
            spooled.append(message.spooled)
        yield message


def _handled_among(rt: Runtime, name: str, uidvalidity: int, uids: list[int]) -> list[int]:
    """Those of ``uids`` with a ledger row at (``name``, ``uidvalidity``) that is not
    quarantined: the messages mailcase handled. Quarantined ones stay unflagged, and so
    does one with no row at all: below the checkpoint without having been ingested (a
    server that left it out of a FETCH), it must not look handled in webmail."""
    if not uids:
        return uids
    handled: set[int] = set()
    with rt.store.reading() as conn:
        for start in range(0, len(uids), 500):
            handled.update(
                conn.execute(
                    sa.select(_LEDGER.c.uid).where(
                        _LEDGER.c.mailbox == name,
                        _LEDGER.c.uidvalidity == uidvalidity,
                        _LEDGER.c.disposition != Disposition.QUARANTINED,
                        _LEDGER.c.uid.in_(uids[start : start + 500]),
                    )
                ).scalars()
            )
    return [uid for uid in uids if uid in handled]


def _raw_of(fetched: FetchedMessage) -> tuple[bytes, bool]:
    # A spooled message's raw is its beginning only: the whole is stored from the spool.
    return fetched.raw, fetched.spooled is None


def parse_options(settings: Settings) -> ParseOptions:
    """How ``settings`` say inbound mail is parsed (web-form senders, MIME limits)."""
    limits = settings.limits
    return ParseOptions(
        web_form_senders=tuple(settings.web_form.senders),
        max_parts=limits.max_mime_parts,
        max_depth=limits.max_mime_depth,
    )


BATCH_BYTES = 32 * 1024 * 1024  # at most this much message data in memory per FETCH


def fetch_planned(
    rt: Runtime, box: ImapMailbox, uids: list[int], keep: Callable[[], None] = lambda: None
) -> Iterator[FetchedMessage]:
    """Fetch ``uids`` in order (see :func:`_fetch_in_order`), holding back messages the
    server refused until one after them comes back. ``keep`` is called before each
    FETCH (a poll renews its lease there, :meth:`_Lease.keep`).

    A message refused while a later one is returned is the message's fault (a
    damaged file): it goes on, to be quarantined. When nothing after it comes
    back, the server may be what is failing (an outage of its storage): the
    poll fails with the server's answer instead, and the next poll, after the
    usual back-off, fetches those messages again. Nothing is quarantined for a
    fault of the server's, and one damaged message never blocks the mail after it.
    """
    refused: list[FetchedMessage] = []
    for fetched in _fetch_in_order(rt, box, uids, keep):
        if fetched.unreadable is not None and fetched.uid not in box.give_up:
            refused.append(fetched)
            continue
        yield from refused
        refused.clear()
        yield fetched
    if refused:
        raise MailboxError(
            box.name,
            f"fetch failed: the server could not return message {refused[0].uid} "
            f"({refused[0].unreadable})",
        )


def _fetch_in_order(
    rt: Runtime, box: ImapMailbox, uids: list[int], keep: Callable[[], None]
) -> Iterator[FetchedMessage]:
    """Fetch ``uids`` in order: ordinary mail in batches bounded by count and bytes,
    mail over ``limits.max_message_bytes`` streamed to a spool file one at a time;
    ``keep`` is called before each FETCH."""
    if not uids:
        return
    sizes = box.sizes(uids)  # one FETCH of every size: long over a large backlog
    limit = rt.settings.limits.max_message_bytes
    batch: list[int] = []
    batch_bytes = 0

    def flush() -> Iterator[FetchedMessage]:
        keep()
        # The sizes let an empty answer for a message that is not empty be told apart.
        yield from box.fetch(batch, len(batch) or 1, sizes)

    for uid in uids:
        size = sizes.get(uid, 0)
        if size > limit:
            yield from flush()
            batch, batch_bytes = [], 0
            keep()
            try:
                spool = rt.blobs.spool_path()
            except StorageError as exc:
                raise not_stored(box.name, uid, exc) from exc
            try:
                spooled = box.fetch_spooled(uid, size, spool)
            except OSError as exc:  # the store's disk filled while the message streamed in
                spool.unlink(missing_ok=True)
                raise not_stored(box.name, uid, rt.blobs.failed(exc)) from exc
            except MailboxError:  # the server failed: no half-written spool file left behind
                spool.unlink(missing_ok=True)
                raise
            if spooled is not None:
                yield spooled
            continue
        if batch and (
            len(batch) >= rt.settings.poll.batch_size or batch_bytes + size > BATCH_BYTES
        ):
            yield from flush()
            batch, batch_bytes = [], 0
        batch.append(uid)
        batch_bytes += size
    yield from flush()


def record_mailbox_failure(rt: Runtime, name: str, error: str) -> None:
    """Remember that mailbox ``name`` could not be read (for ``mailcase status``)."""
    try:
        with rt.store.transaction() as session:
            checkpoint = session.get(Checkpoint, name)
            if checkpoint is None:
                checkpoint = Checkpoint(mailbox=name, uidvalidity=0, last_uid=0)
            checkpoint.last_error = error
            checkpoint.last_error_at = utcnow()
            checkpoint.failures += 1
            session.add(checkpoint)
    except SQLAlchemyError:  # the failure itself is logged by the caller
        pass


def close_stale_cases(rt: Runtime) -> list[str]:
    """Close resolved cases left without a customer reply for ``cases.close_after_days``,
    and cases whose wait for the customer passed once every mailbox was read through;
    the folios closed. Cases past their wait that an unread mailbox holds open are
    logged (``pending_close_deferred``, their folios and the mailboxes), each run."""
    now = utcnow()
    with rt.store.transaction() as session:
        folios = waits.close_stale_cases(session, rt.settings, now)
        held, unread = waits.closings_waiting_for_mail(session, rt.settings, now)
    if folios:
        get_logger().info("cases_closed", folios=folios)
    if held:
        get_logger().warning("pending_close_deferred", folios=held, mailboxes=unread)
    return folios


def _source_of(settings: MailboxSettings) -> str:
    """Where a mailbox's mail comes from: account and folder (no secret).

    Not the host: one server under another name (``localhost`` for
    ``127.0.0.1``, a CNAME) must not re-read a folder of years; a folder moved
    to another server gets a new UIDVALIDITY there, which rescans it anyway.
    ``INBOX`` is one folder in any case (RFC 3501 5.1).
    """
    folder = "INBOX" if settings.folder.upper() == "INBOX" else settings.folder
    return json.dumps([settings.login, folder])


def _retire_rows_at(session: Session, mailbox: str, uidvalidity: int) -> None:
    """Move ``mailbox``'s ledger rows under ``uidvalidity`` aside, to a UIDVALIDITY no
    folder has (below every one the mailbox's rows hold, and below zero).

    They belong to the folder the mailbox read before; the new one may have
    the same UIDVALIDITY (Dovecot gives accounts made in the same second the
    same one), and its messages would have been taken for those rows, ingested
    already, and never opened a case.
    """
    rows = _LEDGER.c.mailbox == mailbox
    lowest = run(session, sa.select(sa.func.min(_LEDGER.c.uidvalidity)).where(rows)).scalar()
    aside = min(lowest or 0, 0) - 1
    session.execute(
        sa.update(_LEDGER)
        .where(rows, _LEDGER.c.uidvalidity == uidvalidity)
        .values(uidvalidity=aside)
    )


def _checkpoint(
    store: Store, name: str, uidvalidity: int, log: Any, source: str = ""
) -> tuple[int, bool]:
    """The last UID ingested for (name, uidvalidity), a new UIDVALIDITY starting over; and
    whether this is the first contact with the mailbox: no poll of it has completed yet.

    ``source`` is the account and folder the mailbox reads (:func:`_source_of`).
    When the configuration points the mailbox at another one, that is a first
    contact too: its history is mail mailcase never saw, and its UIDs say
    nothing about the old folder's (the old rows under the same UIDVALIDITY are
    moved aside, :func:`_retire_rows_at`). The source is kept in ``key_values``; a
    checkpoint without one (written before it was kept) takes the current one.
    """
    with store.transaction() as session:
        checkpoint = session.get(Checkpoint, name)
        if source:
            key = hashed_key("source", name)  # mailbox names run to 64 characters
            known = session.get(KeyValue, key)
            if known is None:
                insert_if_absent(session, KeyValue(key=key, value=source))
            elif known.value != source:
                log.warning("mailbox_source_changed", was=known.value, now=source)
                known.value = source
                session.add(known)
                _retire_rows_at(session, name, uidvalidity)
                # A first contact again: until it ends, what it meets is its backlog.
                ended = session.get(KeyValue, _first_contact_key(name))
                if ended is not None:
                    session.delete(ended)
                if checkpoint is not None:
                    checkpoint.uidvalidity, checkpoint.last_uid = uidvalidity, 0
                    checkpoint.last_poll_at = None
                    session.add(checkpoint)
                    return 0, True
        if checkpoint is None:
            session.add(Checkpoint(mailbox=name, uidvalidity=uidvalidity, last_uid=0))
            return 0, True
        first_contact = checkpoint.last_poll_at is None
        if checkpoint.uidvalidity == 0:  # only failures were recorded so far
            checkpoint.uidvalidity = uidvalidity
            session.add(checkpoint)
            return checkpoint.last_uid, first_contact
        if checkpoint.uidvalidity != uidvalidity:
            # RFC 3501 2.3.1.1: old UIDs mean nothing now. Rescan everything;
            # messages already ingested are recognised by their Message-ID (or
            # content hash) and re-mapped, not ingested again.
            log.warning("uidvalidity_changed", old=checkpoint.uidvalidity, new=uidvalidity)
            checkpoint.uidvalidity = uidvalidity
            checkpoint.last_uid = 0
            session.add(checkpoint)
            return 0, first_contact
        return checkpoint.last_uid, first_contact


def ingest_message(
    rt: Runtime,
    mailbox: str,
    uidvalidity: int,
    fetched: FetchedMessage,
    parsed: Parsed | None = None,
    *,
    retry: bool = False,
    released_by: str = "",
    first_contact: bool = False,
    report: MailboxReport | None = None,
) -> str:
    """Process one fetched message; return its disposition. Never raises for bad mail
    (but for a release, ``released_by``: a MailcaseError says why it stays spam).

    The raw bytes are stored first (idempotent, content-addressed), so even a
    message that fails every later step is kept and can be retried. ``parsed``
    is its parse already done (mailcase.parsing), or None: parsed here.
    ``retry``: its ledger row is quarantined, and is replaced in the same
    transaction as the new one is written (:func:`mailcase.quarantine.retry_message`).
    ``released_by``: likewise for a row set aside as ``spam``, which this person
    released: processed as a person's mail, the filter's verdict not read
    (:func:`mailcase.quarantine.release_message`).
    ``first_contact``: no poll of the mailbox has completed yet, so mail that
    reached the server before ``notices.max_age_hours`` is a backlog from before
    mailcase: its cases open silently. Afterwards old mail is still answered
    (mail moved out of a junk folder keeps its arrival time; so does mail
    that waited out an outage).

    A message whose ledger row was there already (its folder rebuilt under a
    new UIDVALIDITY, or committed before a crash lost the checkpoint's news)
    keeps that row, moved to its new address: it is logged as
    ``message_remapped``, counted in ``report.remapped``, and not in the
    messages or cases metrics, which counted it when it was new. Any other
    message is counted in ``report.dispositions`` (``report``: the poll's).
    """
    log = get_logger(mailbox=mailbox, uid=fetched.uid)
    try:
        raw_sha = (
            rt.blobs.put_file(fetched.spooled) if fetched.spooled else rt.blobs.put(fetched.raw)
        )
    except StorageError as exc:
        raise not_stored(mailbox, fetched.uid, exc) from exc
    if fetched.unreadable is not None:
        return _quarantine_unreadable(rt, mailbox, uidvalidity, fetched, raw_sha, log, report)
    folio: str | None = None
    remapped_from: _Address | None = None
    try:
        # Parsed before the transaction: the write lock (SQLite) is then held
        # for the database work only, and delivery can commit in between.
        mail_and_note = _parse(rt, fetched, raw_sha, parsed)
        for attempt in range(_TRIAGE_ATTEMPTS):
            try:
                with rt.store.transaction() as session:
                    entry, folio, remapped_from = _ingest(
                        rt,
                        session,
                        mailbox,
                        uidvalidity,
                        fetched,
                        raw_sha,
                        mail_and_note,
                        retry=retry,
                        released_by=released_by,
                        first_contact=first_contact,
                    )
                    if folio is None and entry.case_id is not None:  # a message met again
                        folio = run(session, _FOLIO_OF, {"id": entry.case_id}).scalar()
                    _still_stored(rt, fetched, raw_sha)
                break
            except _CaseChanged:
                if attempt == _TRIAGE_ATTEMPTS - 1:
                    raise
            except SQLAlchemyError as exc:
                # PostgreSQL ended a lock cycle with another session (two agents moving
                # reports crosswise between two outages, say) by rolling this whole
                # transaction back: run again at once, it takes its locks after the
                # other's commit. Failing the poll made the message wait a poll.
                if not is_deadlock(exc) or attempt == _TRIAGE_ATTEMPTS - 1:
                    raise
                log.info("message_deadlock_retried", attempt=attempt + 1)
    except DatabaseError:
        raise
    except StorageError as exc:
        raise not_stored(mailbox, fetched.uid, exc) from exc
    except TemplateError as exc:
        # A template the admin broke, not the message: quarantining would blame
        # every message until it is fixed, and need each retried by hand.
        raise MailboxError(
            mailbox,
            f"message {fetched.uid} not ingested, read again by the next poll: {exc}",
            component="template",
        ) from exc
    except Exception as exc:  # a bad message costs one message (Mailman's runner)
        if (
            isinstance(exc, SQLAlchemyError)
            and is_unavailable(exc)
            and fetched.uid not in refusals.given_up(rt.store, mailbox, uidvalidity)
        ):
            # The database went away (a restart, a dropped connection), not the
            # message: quarantining it would blame good mail, and would succeed
            # as soon as the server is back. The poll fails instead; the
            # message is read again by the next one. A message the database has
            # failed on for a day (refusals.GIVE_UP: a statement_timeout it always
            # exceeds) is quarantined below, so that the mail after it is read.
            # A deadlock at every attempt is other sessions' locks, not a database down.
            trouble = "deadlock" if is_deadlock(exc) else "database unavailable"
            raise DatabaseRefusal(
                f"{trouble} while ingesting message {fetched.uid} of mailbox "
                f"{mailbox}: {error_text(exc)}",
                uid=fetched.uid,
                uidvalidity=uidvalidity,
            ) from exc
        if isinstance(exc, IntegrityError):
            # Another poll of this mailbox committed the message first (two instances
            # overlapping for a moment, or a poll next to the daemon's): not a bad
            # message, and not ingested twice either; its row is the other poll's.
            with rt.store.transaction() as session:
                other = _existing(session, mailbox, uidvalidity, fetched.uid)
            if other is not None:
                log.info("message_ingested_elsewhere", disposition=other.disposition)
                _count(report, other.disposition)
                return str(other.disposition)
        why = _reason_of(exc)
        reason = why.text()
        if released_by:
            # Its spam row stays as it was (the transaction rolled back): the person who
            # released it is told why, not shown "spam" as if it had worked.
            raise MailcaseError(
                f"message {fetched.uid} of mailbox {mailbox} stays spam: {reason}"
            ) from exc
        log.warning("message_quarantined", disposition="quarantined", reason=reason)
        try:
            with rt.store.transaction() as session:
                _hold_files(session)
                _still_stored(rt, fetched, raw_sha)
                entry, remapped_from = _quarantine(
                    session,
                    mailbox,
                    uidvalidity,
                    fetched,
                    raw_sha,
                    reason,
                    first_time=lambda: _tell_quarantined(
                        rt.settings, session, mailbox, fetched, why
                    ),
                )
        except SQLAlchemyError as db_exc:
            raise DatabaseError(
                f"cannot record message {fetched.uid} of mailbox {mailbox}: {error_text(db_exc)}"
            ) from db_exc
        except StorageError as exc:
            raise not_stored(mailbox, fetched.uid, exc) from exc
    if remapped_from is not None and not retry:
        # Not new mail: counted when it was (a retry that failed again is counted
        # as its first quarantine was).
        _remapped(log, report, entry, remapped_from, folio)
        return entry.disposition
    metrics.MESSAGES.labels(mailbox, entry.disposition).inc()
    if entry.disposition == Disposition.NEW_CASE:
        metrics.CASES_OPENED.labels(mailbox).inc()
    log.info(
        "message_ingested",
        message_id=entry.message_id,
        disposition=entry.disposition,
        folio=folio,
        reason=entry.reason or None,
    )
    _count(report, entry.disposition)
    return entry.disposition


def _count(report: MailboxReport | None, disposition: str) -> None:
    """Count a message new to the ledger in the poll's ``report`` (if any)."""
    if report is not None:
        report.dispositions[disposition] += 1


def _remapped(
    log: Any,
    report: MailboxReport | None,
    entry: LedgerEntry,
    was: _Address,
    folio: str | None = None,
) -> None:
    """Log and count a message whose ledger row was there already, at address ``was``."""
    log.info(
        "message_remapped",
        message_id=entry.message_id,
        disposition=entry.disposition,
        folio=folio,
        old_uidvalidity=was[0],
        old_uid=was[1],
    )
    if report is not None:
        report.remapped += 1


# How the ledger's reason for a message the server refused begins (retry fetches it again).
UNREADABLE = "the IMAP server could not return it"


def _quarantine_unreadable(
    rt: Runtime,
    mailbox: str,
    uidvalidity: int,
    fetched: FetchedMessage,
    raw_sha: str,
    log: Any,
    report: MailboxReport | None = None,
) -> str:
    """Record a message the server refused to return: quarantined, the poll goes on,
    and ``agents.notify`` told as of any quarantined message (:func:`_tell_quarantined`).

    Its own identity (``unreadable:`` and its address), not its empty content's,
    so that two such messages stay two rows. ``messages retry`` fetches it again.
    """
    why = QuarantineReason(Reason.UNREADABLE, {"answer": str(fetched.unreadable)})
    reason = why.text()
    log.warning("message_quarantined", disposition="quarantined", reason=reason)
    try:
        with rt.store.transaction() as session:
            existing = _existing(session, mailbox, uidvalidity, fetched.uid)
            if existing is not None:  # recorded before a crash lost the checkpoint
                _remapped(log, report, existing, (uidvalidity, fetched.uid))
                return str(existing.disposition)
            _write_ledger(
                session,
                mailbox,
                uidvalidity,
                fetched,
                dedup_key=f"unreadable:{mailbox}:{uidvalidity}:{fetched.uid}",
                disposition=Disposition.QUARANTINED,
                reason=reason,
                raw_sha256=raw_sha,
                size=0,
            )
            _tell_quarantined(rt.settings, session, mailbox, fetched, why)
    except SQLAlchemyError as exc:
        raise DatabaseError(
            f"cannot record message {fetched.uid} of mailbox {mailbox}: {error_text(exc)}"
        ) from exc
    metrics.MESSAGES.labels(mailbox, Disposition.QUARANTINED).inc()
    _count(report, Disposition.QUARANTINED)
    return str(Disposition.QUARANTINED)


def _hold_files(session: Session) -> None:
    """Begin ``session``'s transaction so that no file is removed from the store until it
    ends, as :func:`_existing` does on ingest's own path: SQLite's write lock, taken
    as the transaction begins; on PostgreSQL :data:`BLOB_REMOVAL_LOCK_KEY` shared."""
    conn = session.connection()  # SQLite: BEGIN IMMEDIATE (mailcase.store)
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock_shared(BLOB_REMOVAL_LOCK_KEY)))


def _still_stored(rt: Runtime, fetched: FetchedMessage, raw_sha: str) -> None:
    """Make sure the message's stored copy ``raw_sha`` is there; called in the
    transaction that records the message, under the lock that keeps files from being
    removed (:func:`_existing`, :func:`_hold_files`), so it stays until the
    transaction's rows refer to it.

    Stored before the transaction, it may have been removed since: an erasure removed
    the same file (another customer's copy, this customer's earlier one) between the
    two, and writing it again was a no-op. Written again from the bytes held; a
    message streamed to the store (over limits.max_message_bytes) has none left, and
    raises StorageError: the poll fails, and the next one fetches it again. The
    attachments need nothing here: :func:`mailcase.casemail.record_inbound` stores
    them in the transaction, under the lock.
    """
    path = rt.blobs.path(raw_sha)
    if path.exists():
        return
    if fetched.spooled is not None:
        raise StorageError(f"its stored copy {path} was removed by an erasure meanwhile")
    rt.blobs.put(fetched.raw)


def not_stored(mailbox: str, uid: int, exc: StorageError) -> MailboxError:
    """The store is full or unwritable: the mailbox's poll fails, as for a database outage.

    Quarantining the message would blame good mail and need a person to retry
    it; failing the poll leaves it above the checkpoint, unflagged, so the
    next poll (with back-off in the daemon) reads it again once there is room.
    """
    return MailboxError(
        mailbox,
        f"message {uid} not ingested, read again by the next poll: {exc}",
        component="storage",
    )


def _reason_of(exc: BaseException) -> QuarantineReason:
    """Why ``exc`` quarantined a message; its English text is the ledger's reason."""
    if isinstance(exc, MessageError):
        return exc.reason
    if isinstance(exc, _CaseChanged):
        return QuarantineReason(Reason.CASE_CHANGING, {"folio": str(exc)})
    if isinstance(exc, SQLAlchemyError):  # the database's words, not SQLAlchemy's SQL dump
        error = f"{type(exc).__name__}: {error_text(exc)}"
        return QuarantineReason(Reason.DATABASE, {"error": error})
    return QuarantineReason(Reason.UNEXPECTED, {"error": f"{type(exc).__name__}: {exc}"[:1000]})


_CASES = table(Case)
_FOLIO_OF = Prepared(sa.select(_CASES.c.folio).where(_CASES.c.id == sa.bindparam("id")))
_CHECKPOINTS = table(Checkpoint)
_MOVE_CHECKPOINT = Prepared(
    sa.update(_CHECKPOINTS)
    .where(
        _CHECKPOINTS.c.mailbox == sa.bindparam("box"),
        _CHECKPOINTS.c.uidvalidity == sa.bindparam("validity"),
        _CHECKPOINTS.c.last_uid < sa.bindparam("uid"),
    )
    .values(last_uid=sa.bindparam("uid"))
)
_LEDGER = table(LedgerEntry)
_LEDGER_AT = Prepared(
    sa.select(_LEDGER.c.id).where(
        _LEDGER.c.mailbox == sa.bindparam("box"),
        _LEDGER.c.uidvalidity == sa.bindparam("validity"),
        _LEDGER.c.uid == sa.bindparam("uid"),
    )
)


# One round trip for all three (PostgreSQL): the lookup, and the locks _existing
# describes. The shared lock on file removal comes first: a transaction waiting for it
# (behind a removal) then holds no message's lock another ingest could be waiting for.
_LEDGER_AT_LOCKING = Prepared(
    sa.select(
        sa.func.pg_advisory_xact_lock_shared(BLOB_REMOVAL_LOCK_KEY),
        _LEDGER_AT.statement.scalar_subquery(),  # type: ignore[attr-defined]
        sa.func.pg_advisory_xact_lock(sa.func.hashtextextended(sa.bindparam("key"), 0)),
    )
)


def _advance(session: Session, mailbox: str, uidvalidity: int, uid: int) -> None:
    """Move the checkpoint past ``uid`` (never back; a checkpoint of another UIDVALIDITY stays)."""
    params = {"box": mailbox, "validity": uidvalidity, "uid": uid}
    if run(session, _MOVE_CHECKPOINT, params).rowcount:
        return
    if session.get(Checkpoint, mailbox) is None:  # the mailbox's first message
        session.add(Checkpoint(mailbox=mailbox, uidvalidity=uidvalidity, last_uid=uid))


def _existing(
    session: Session, mailbox: str, uidvalidity: int, uid: int, dedup_key: str | None = None
) -> LedgerEntry | None:
    """The ledger row of message ``uid`` if it was ingested already.

    With a ``dedup_key``, on PostgreSQL, the same statement takes the
    transaction's advisory lock on it: two instances may ingest the two
    copies of one message (Cc to both mailboxes) at once, and they serialise
    on its identity until commit. Whatever is read about that identity is
    read in later statements, which see what the lock's previous holder
    committed (READ COMMITTED). It also takes :data:`BLOB_REMOVAL_LOCK_KEY`
    shared, until commit: no file is removed from the store meanwhile
    (SQLite: the transaction's write lock, taken by its first statement).
    """
    params = {"box": mailbox, "validity": uidvalidity, "uid": uid}
    if dedup_key is not None and session.get_bind().dialect.name == "postgresql":
        entry_id = run(session, _LEDGER_AT_LOCKING, params | {"key": dedup_key}).first()[1]
    else:
        entry_id = run(session, _LEDGER_AT, params).scalar()
    return None if entry_id is None else session.get(LedgerEntry, entry_id)


def _tell_quarantined(
    settings: Settings,
    session: Session,
    mailbox: str,
    fetched: FetchedMessage,
    why: QuarantineReason,
) -> None:
    """Tell ``agents.notify`` that ``fetched`` was quarantined: its sender, subject and
    why (``reason``: the ledger's English; ``reason_text``: in the notice's language),
    and what to do (ten such notices an hour at most).

    A customer whose mail cannot be processed gets no acknowledgement; without
    this nobody heard of it until an admin looked at ``status`` or the ledger
    (Zammad lists such mail to its admins; here agents are the ones told).
    """
    if not settings.agents.notify:
        return
    head = header_summary(fetched.raw)
    try:
        queue_without_case(
            session,
            settings,
            "quarantined",
            to=settings.agents.notify,
            mailbox=mailbox,
            subject=head.get("subject", ""),
            context={
                # The address alone: a display name is the sender's free text, and a
                # link in it would reach agents as if from the support address. Read
                # from the raw field as ingest reads it (never from an encoded word,
                # which named ana@x.com for "=?utf-8?q?ana=40x=2Ecom?= <mallory@y.com>"),
                # and never raising: the notice must not cost the ledger its row.
                "sender": origin_of(fetched.raw)[0],
                "mailbox": mailbox,
                "uid": fetched.uid,
                "reason": why.text()[:500],
                # In the language queue_without_case writes the notice in: the mailbox's.
                "reason_text": why.text(settings.language_of(mailbox))[:500],
                # The server did not return it: nothing is kept, a retry asks again.
                "stored": fetched.unreadable is None,
            },
        )
    except MailcaseError as exc:  # a broken override template must not lose the row
        get_logger(mailbox=mailbox, uid=fetched.uid).warning(
            "quarantine_notice_failed", error=str(exc)
        )


def _quarantine(
    session: Session,
    mailbox: str,
    uidvalidity: int,
    fetched: FetchedMessage,
    raw_sha: str,
    reason: str,
    *,
    first_time: Callable[[], None] | None = None,
) -> tuple[LedgerEntry, _Address | None]:
    """The message's quarantined ledger row, written in ``session``: a new one, or its
    row already there (a retry that failed again, a folder rebuilt), with the address
    that row had (else None). ``first_time`` is called when the row is new: the
    message was never quarantined before."""
    existing = _existing(session, mailbox, uidvalidity, fetched.uid)
    if existing is not None:
        if existing.disposition == Disposition.QUARANTINED and existing.reason != reason:
            existing.reason = reason  # a retry that failed again: its latest error
            session.add(existing)
        return existing, (uidvalidity, fetched.uid)
    key = f"sha256:{raw_sha}"
    for entry in ledger_by_key(session, key):
        if entry.mailbox == mailbox and entry.uidvalidity != uidvalidity:
            # Quarantined before the folder was rebuilt: the same message at a
            # new address (as _ingest does for parsed mail), not a second one.
            was = (entry.uidvalidity, entry.uid)
            entry.uidvalidity, entry.uid, entry.reason = uidvalidity, fetched.uid, reason
            session.add(entry)
            _advance(session, mailbox, uidvalidity, fetched.uid)
            return entry, was
    entry = _write_ledger(
        session,
        mailbox,
        uidvalidity,
        fetched,
        dedup_key=key,
        disposition=Disposition.QUARANTINED,
        reason=reason,
        raw_sha256=raw_sha,
        size=fetched.full_size,
    )
    if first_time is not None:
        first_time()
    return entry, None


def _write_ledger(
    session: Session, mailbox: str, uidvalidity: int, fetched: FetchedMessage, **fields: Any
) -> LedgerEntry:
    """The message's one ledger row, and the checkpoint moved past it, in ``session``."""
    entry = insert_row(
        session,
        LedgerEntry,
        mailbox=mailbox,
        uidvalidity=uidvalidity,
        uid=fetched.uid,
        received_at=as_utc(fetched.internal_date),
        ingested_at=utcnow(),
        **fields,
    )
    _advance(session, mailbox, uidvalidity, fetched.uid)
    return entry


def _parse(
    rt: Runtime, fetched: FetchedMessage, raw_sha: str, parsed: Parsed | None
) -> tuple[InboundMail, str]:
    """The message, and a note for the case when it was too large to keep whole.

    Raises what parsing raised (here, or in the parser process: ``parsed``).
    """
    limits = rt.settings.limits
    if parsed is None:
        mail = parse_options(rt.settings).parse(fetched.raw)
    elif isinstance(parsed, BaseException):
        raise parsed
    else:
        mail = parsed
    if fetched.spooled is None:
        return mail, ""
    # Only the beginning was parsed: headers and text, never attachments.
    mail = replace(mail, attachments=(), raw_sha256=raw_sha, size=fetched.full_size)
    note = (
        f"message of {fetched.full_size} bytes is over limits.max_message_bytes "
        f"({limits.max_message_bytes}): its attachments were not stored"
    )
    return mail, note


def _ingest(
    rt: Runtime,
    session: Session,
    mailbox: str,
    uidvalidity: int,
    fetched: FetchedMessage,
    raw_sha: str,
    parsed: tuple[InboundMail, str],
    *,
    retry: bool = False,
    released_by: str = "",
    first_contact: bool = False,
) -> tuple[LedgerEntry, str | None, _Address | None]:
    """Record the message in ``session``: its ledger row, its case's folio if known, and
    the address its row had when the message was in the ledger already (else None).

    With ``retry``, a quarantined ledger row of the message is deleted in this
    transaction, so that it is replaced, or kept if the transaction fails; with
    ``released_by``, its ``spam`` row alike. ``first_contact``: see :func:`ingest_message`.
    """
    mail, note = parsed
    mail = _web_form_vouched(rt.settings, mail)
    existing = _existing(session, mailbox, uidvalidity, fetched.uid, mail.dedup_key)
    # Old mail is left unanswered on a first contact (see ingest_message), and on a
    # retry as it was when first met: a message of a first contact's backlog stays
    # unanswered, one quarantined last week is answered now, and so is old mail met
    # after the first contact (moved out of a junk folder, read after an outage).
    age_gate, met_at = first_contact, utcnow()
    release = bool(released_by)
    replaced = Disposition.SPAM if release else Disposition.QUARANTINED
    if existing is not None and retry and existing.disposition == replaced:
        met_at = as_utc(existing.ingested_at) or met_at
        # Released, it is answered unless it was old mail of a first poll when met (the
        # spam row says so): mail moved out of a junk folder keeps its arrival time.
        age_gate = (
            OLD_MAIL_NOTE in existing.reason
            if release
            else _met_in_first_contact(session, mailbox, existing.ingested_at)
        )
        session.delete(existing)
        session.flush()
        if release:
            note = "; ".join(n for n in (note, f"released from spam by {released_by}") if n)
    elif existing is not None:  # committed before a crash lost the checkpoint's news
        return existing, None, (uidvalidity, fetched.uid)
    settings = rt.settings

    earlier = ledger_by_key(session, mail.dedup_key)
    if not earlier and mail.message_id is None:
        # Ingested before content keys existed, under the raw bytes' hash.
        earlier = ledger_by_key(session, mail.raw_key)
    if earlier and mail.message_id is not None:
        earlier = _copies_among(rt, mail, earlier, None if fetched.spooled else fetched.raw)
    verdict = spam_verdict(mail) if settings.spam.enabled and not release else ""
    # Copies of a spam mail (Cc to both mailboxes: the first set aside, the others its
    # duplicates of no case). A copy with no verdict, released by a person or judged
    # clean by its own mailbox's filter, opens the case, and they follow it: whichever
    # mailbox is read first, one case.
    # (Not the message itself met again in its own folder, rebuilt under a new
    # UIDVALIDITY: its row is moved below, whatever a filter says of it now.)
    moved = not retry and any(
        e.mailbox == mailbox and e.uidvalidity != uidvalidity for e in earlier
    )
    copies = [] if verdict or moved else _spam_copies(earlier, release)
    if copies:
        earlier = []
    stale = [e for e in earlier if e.mailbox == mailbox and e.uidvalidity != uidvalidity]
    if stale and not retry:
        # Seen in this mailbox under an older UIDVALIDITY (the folder was
        # rebuilt): the same message at a new address, not new mail. (Not on a
        # retry: the quarantined row retried is the one at the old address, and
        # the row "under another UIDVALIDITY" is its copy in the rebuilt folder,
        # which must keep its address: the retried one is its duplicate.)
        entry = stale[0]
        was = (entry.uidvalidity, entry.uid)
        entry.uidvalidity, entry.uid = uidvalidity, fetched.uid
        session.add(entry)
        _advance(session, mailbox, uidvalidity, fetched.uid)
        return entry, None, was

    classification = classify(mail, own_addresses=settings.own_addresses)
    facts = _facts(rt, session, mail, earlier)
    if mail.thread_ids and classification.kind is MailKind.CUSTOMER:
        # A person's mail only: a bounce or an out-of-office reply quoting a notice's
        # id (Gmail's reports do) shows no one holds it, and runs nothing anyway.
        _note_exposed(session, settings, mail)
    judge = partial(
        triage,
        mail,
        classification,
        facts,
        own_addresses=settings.own_addresses,
        agent_addresses=frozenset(settings.agents.addresses),
        # The reopen window is judged at the message's arrival on the server, as
        # the folio's year is: a reply of day 29 read on day 31 (the daemon down
        # over a holiday, a retry) reopens the case the resolution promised it would.
        now=_arrival(fetched, met_at),
        reopen_days=settings.cases.reopen_days,
        # A message too large to read whole (its files were not kept) is never judged
        # only thanks: what it carried is unknown.
        reopen_on_thanks=settings.cases.reopen_on_thanks or fetched.spooled is not None,
    )
    # Released from spam by a person (messages release): the filter was wrong.
    decision = judge(spam=verdict)
    blocked = "" if verdict or release else _blocked_sender(rt, session, mail, decision)
    if blocked:
        # Triaged again with the agents' verdict, as with a filter's: what would open a case
        # is set aside, and a customer's mail following a case of theirs is not.
        decision = judge(spam=blocked)
        if copies and decision.disposition is Disposition.SPAM:
            # A copy of mail set aside already (Cc to two mailboxes): its duplicate, as a
            # copy of a filter's spam is.
            decision, copies = (
                Decision(Disposition.DUPLICATE, reason=f"copy of {mail.dedup_key}"),
                [],
            )
    if age_gate and _too_old(settings, fetched, met_at):
        # Old mail met for the first time: opened and recorded, never answered.
        decision = replace(decision, acknowledge=False, quiet=True)
        note = "; ".join(n for n in (note, OLD_MAIL_NOTE) if n)
    case = _apply(rt, session, mailbox, mail, raw_sha, fetched, decision, note)
    if isinstance(case, Case) and case.merged_into_id is not None:
        # Its own #fusionar moved the case's history: the message's row goes with it.
        case = merging.merged_target(session, case)
    if case is not None:
        _copies_follow(session, copies, case.id, mailbox, mail.dedup_key)
    reasons = [r for r in (decision.reason, note) if r]
    entry = _write_ledger(
        session,
        mailbox,
        uidvalidity,
        fetched,
        message_id=mail.message_id,
        dedup_key=mail.dedup_key,
        disposition=decision.disposition,
        reason="; ".join(reasons),
        case_id=case.id if case else None,
        raw_sha256=raw_sha,
        size=mail.size,
    )
    return entry, case.folio if case else None, None


OLD_MAIL_NOTE = "older than notices.max_age_hours: not answered"


def _first_contact_key(mailbox: str) -> str:
    return hashed_key("firstpoll", mailbox)  # mailbox names run to 64 characters


def _note_first_contact_end(
    session: Session, mailbox: str, first_contact: bool, searched_at: datetime
) -> None:
    """Remember when ``mailbox``'s first contact ended, at a complete poll: now, when the
    poll was one (the messages it met, after its search, were met in it); otherwise,
    when nothing was remembered yet (an installation older than this record), before
    this poll's search (what it met was met after the first contact)."""
    key = _first_contact_key(mailbox)
    row = session.get(KeyValue, key)
    at = utcnow() if first_contact else searched_at
    if row is None:
        insert_if_absent(session, KeyValue(key=key, value=at.isoformat()))
    elif first_contact:
        row.value = at.isoformat()
        session.add(row)


def _met_in_first_contact(session: Session, mailbox: str, met: datetime | None) -> bool:
    """Whether a message ``mailbox`` met at ``met`` may have been met in its first contact
    (its old mail then opened cases silently): a quarantined message retried is judged
    as it would have been then. True when unknown (no first contact ended yet)."""
    row = session.get(KeyValue, _first_contact_key(mailbox))
    met = as_utc(met)
    return row is None or met is None or met <= datetime.fromisoformat(row.value)


# The customer's cases marked spam (casework.mark_spam), in the partial index that holds
# them alone (ix_cases_spam_customer): an empty index for most installations.
_SPAM_CASE_OF = Prepared(
    sa.select(_CASES.c.folio)
    .where(_CASES.c.customer == sa.bindparam("customer"), _CASES.c.spam_at.is_not(None))
    .order_by(_CASES.c.id)
    .limit(1)
)


def _blocked_sender(rt: Runtime, session: Session, mail: InboundMail, decision: Decision) -> str:
    """The verdict that sets ``mail`` aside because an agent marked a case of its sender
    spam ("sender's case PLR-… was marked spam"), or "".

    Asked only of mail ``decision`` would open a case for its sender and acknowledge
    (never an agent's, nor one of our own or an automatic address's: those are not
    answered), and not of a web form's own address, under which many people's cases
    are filed: one indexed statement on the driver's cursor, in an index of the spam
    cases alone.
    """
    if not (decision.open_case and decision.acknowledge and decision.role is Role.CUSTOMER):
        return ""
    if mail.sender in rt.settings.web_form.senders:
        return ""
    folio = run(session, _SPAM_CASE_OF, {"customer": mail.sender}).scalar()
    return f"sender's case {folio} was marked spam" if folio else ""


def _spam_copies(earlier: list[LedgerEntry], release: bool) -> list[LedgerEntry]:
    """``earlier`` when its rows opened nothing only for a filter's verdict (the first
    copy ``spam``, or released: deleted already; the others its duplicates), else []."""
    caseless = all(
        e.case_id is None and e.disposition in (Disposition.SPAM, Disposition.DUPLICATE)
        for e in earlier
    )
    if caseless and (release or any(e.disposition == Disposition.SPAM for e in earlier)):
        return earlier
    return []


def _copies_follow(
    session: Session, copies: list[LedgerEntry], case_id: int | None, mailbox: str, key: str
) -> None:
    """Point ``copies`` (:func:`_spam_copies`) at the case a copy of theirs opened; a
    copy set aside as spam becomes that case's duplicate."""
    for copy in copies:
        copy.case_id = case_id
        if copy.disposition == Disposition.SPAM:
            copy.disposition = Disposition.DUPLICATE
            said = f"copy of {key}; its copy in mailbox {mailbox} was not judged spam"
            copy.reason = f"{said} ({copy.reason})"[:2000]
        session.add(copy)


def _web_form_vouched(settings: Settings, mail: InboundMail) -> InboundMail:
    """``mail``, speaking for the customer its Reply-To names only when a web form of
    ours sent it: with ``agents.trusted_authserv_ids`` set, the receiving server must
    have authenticated the form's domain; otherwise it is the form's own mail.

    Anyone can write the form's From, and with it speak as any customer on their
    case ("cancelen mi reporte"); a forged From of the customer's own domain would
    fail that domain's DMARC, the form's does not. Without trusted servers
    nothing can be checked, and form mail is taken at its word, as before.
    """
    trusted = settings.agents.trusted_authserv_ids
    if not trusted or mail.sender == mail.from_address or not mail.from_address:
        return mail
    if sender_is_authenticated(mail, mail.from_address, trusted_authserv_ids=frozenset(trusted)):
        return mail
    return replace(mail, sender=mail.from_address, sender_name="")


def _copies_among(
    rt: Runtime, mail: InboundMail, earlier: list[LedgerEntry], raw: bytes | None = None
) -> list[LedgerEntry]:
    """The rows of ``earlier`` (same Message-ID as ``mail``) that are copies of it.

    A Message-ID should be unique (RFC 5322 3.6.4), but some devices, web
    forms and scripts send every message under one fixed id: another sender's
    report must not be dropped as a "duplicate". A copy (Cc to contacto@ and
    info@, a second delivery) has the same From and Date; a row whose stored
    message cannot be read is taken as a copy, as before this check. Without
    a Date (an alarm panel's "Nodo 4 caído", then "Nodo 9 caído", under one
    id) From alone tells nothing apart: the content (``raw``, trace fields
    aside) must match too.
    """
    copies = []
    for entry in earlier[-_ORIGINS_COMPARED:]:
        try:
            head = read_header(rt.blobs.path(entry.raw_sha256))
        except OSError:
            copies.append(entry)
            continue
        if origin_of(head) != mail.origin:
            continue
        if mail.date is None and raw is not None:
            try:
                theirs = rt.blobs.get(entry.raw_sha256)
            except OSError:
                copies.append(entry)
                continue
            if content_digest(theirs) != content_digest(raw):
                continue
        copies.append(entry)
    return copies


_ORIGINS_COMPARED = 20  # the latest rows under one id: a fixed id is reused without end


def _arrival(fetched: FetchedMessage, met_at: datetime) -> datetime:
    """When ``fetched`` reached the server (INTERNALDATE), never later than ``met_at``,
    when mailcase first met it; ``met_at`` when the server gave no date."""
    arrived = as_utc(fetched.internal_date)
    return min(arrived, met_at) if arrived else met_at


def _too_old(settings: Settings, fetched: FetchedMessage, met_at: datetime) -> bool:
    """Whether ``fetched`` had been on the server longer than ``notices.max_age_hours``
    when mailcase first met it (``met_at``)."""
    received = as_utc(fetched.internal_date)
    if received is None:
        return False
    return met_at - received > timedelta(hours=settings.notices.max_age_hours)


def case_ref(session: Session, case: Case) -> CaseRef:
    assert case.id is not None
    return CaseRef(
        id=case.id,
        folio=case.folio,
        customer=case.customer,
        status=case.status,
        participants=casework.participants(session, case.id),
        resolved_at=case.resolved_at,
        subject=case.subject,
        closed_unanswered_at=waits.closed_unanswered_at(session, case),
        spam=case.spam_at is not None,
    )


_FOLIOS_IN_TEXT = 3  # folios of a message's text looked up: a list of fifty is no report
# Folios of a subject looked up, in the order written. A person names one case, two or
# three when writing about duplicates ("PLR-2026-000101 y PLR-2026-000102"); each costs
# statements, and the cases a stranger names are linked to the new case, so a 64 KB
# subject of folios must not name thousands of them.
_FOLIOS_IN_SUBJECT = 5


def _facts(rt: Runtime, session: Session, mail: InboundMail, earlier: list[LedgerEntry]) -> Facts:
    settings = rt.settings

    duplicate_of = None
    for entry in earlier:
        if entry.case_id is not None:
            case = casemail.answering(session, session.get(Case, entry.case_id))
            duplicate_of = case_ref(session, case) if case else None
            break
    referenced = casemail.answering(session, case_by_message_ids(session, mail.thread_ids))
    by_folio: list[CaseRef] = []
    for folio in find_folios(mail.subject, settings.folio.prefix)[:_FOLIOS_IN_SUBJECT]:
        case = casemail.answering(session, case_by_folio(session, folio))
        if case is not None and all(ref.id != case.id for ref in by_folio):
            by_folio.append(case_ref(session, case))
    in_text: list[CaseRef] = []
    # "…mi reporte con folio PLR-2026-000001, sigo sin servicio" under a new subject;
    # the quote cut off (customer_text) only when the text names a folio at all.
    if not by_folio and not referenced and find_folios(mail.text, settings.folio.prefix):
        named = find_folios(customer_text(mail.text, mail.subject), settings.folio.prefix)
        for folio in named[:_FOLIOS_IN_TEXT]:
            case = casemail.answering(session, case_by_folio(session, folio))
            if case is not None and all(ref.id != case.id for ref in in_text):
                in_text.append(case_ref(session, case))
    signed_case = None
    authenticated = False
    if mail.sender in settings.agents.addresses:
        for case_id, proof in proofs_in(signing_key(session, settings), mail.thread_ids):
            if casemail.exposed(session, proof):
                continue  # seen in someone else's hands: no proof any more
            case = casemail.answering(session, session.get(Case, case_id))
            if case is not None:
                signed_case = case_ref(session, case)
                break
        authenticated = sender_is_authenticated(
            mail,
            mail.sender,
            trusted_authserv_ids=frozenset(settings.agents.trusted_authserv_ids),
            trust_topmost=settings.agents.trust_topmost_authentication_results,
        )
    return Facts(
        duplicate_of=duplicate_of,
        is_duplicate=bool(earlier),
        by_reference=case_ref(session, referenced) if referenced else None,
        by_folio=tuple(by_folio),
        in_text=tuple(in_text),
        signed_case=signed_case,
        sender_authenticated=authenticated,
    )


def _note_exposed(session: Session, settings: Settings, mail: InboundMail) -> None:
    """Mark the signed ids ``mail`` references as no proof any more, when someone who
    is not an agent holds them.

    The id of a notice to agents proves its holder saw that notice (mailcase.msgid).
    An agent who writes to the customer, with the mailbox in copy, by replying to
    the notice hands the customer that id in References: the customer could then
    write as the agent, commands included. So an id is exposed when an agent's
    message referencing it also goes to someone else, and when anyone but an
    agent sends it back. This message itself is judged as before (its id was a
    proof until now). What never passes through a mailbox is not seen here: an
    agent who forwards a notice outside, with no copy to us (the README says so).
    """
    agents = frozenset(settings.agents.addresses)
    insiders = agents | settings.own_addresses
    outsiders = {a for a in (*mail.to, *mail.cc) if a not in insiders}
    if mail.sender in agents and not outsiders:
        return
    for case_id, proof in proofs_in(signing_key(session, settings), mail.thread_ids):
        if casemail.exposed(session, proof):
            continue
        key = hashed_key("exposed-id", proof)
        # Another instance may mark it at the same time: either mark will do.
        marked = f"case {case_id} at {utcnow().isoformat()}"
        insert_if_absent(session, KeyValue(key=key, value=marked))
        get_logger().info("signed_id_exposed", case_id=case_id)


def _apply(
    rt: Runtime,
    session: Session,
    mailbox: str,
    mail: InboundMail,
    raw_sha: str,
    fetched: FetchedMessage,
    decision: Decision,
    note: str = "",
) -> Case | CaseRef | None:
    """Carry out ``decision`` in ``session``; return the case the message belongs to."""
    settings = rt.settings
    disposition = decision.disposition
    if disposition is Disposition.DUPLICATE:
        return decision.case
    if disposition is Disposition.QUARANTINED:
        # Mail with no sender address (triage): nobody can be answered, so the agents
        # are told, as of every other quarantined message.
        _tell_quarantined(settings, session, mailbox, fetched, QuarantineReason(Reason.NO_SENDER))
        return None
    if disposition is Disposition.NO_CASE:
        if not decision.quiet:
            # What the agent meant cannot be guessed: they are told how to say it.
            queue_without_case(
                session,
                settings,
                "no_case",
                to=mail.sender,
                mailbox=mailbox,
                subject=mail.subject,
                context={"unverified": decision.role is Role.UNVERIFIED},
            )
        return None
    if disposition is Disposition.BOUNCE:
        bounced = record_bounce(rt.settings, session, fetched.raw, decision.case)
        if bounced is not None:
            return bounced
    now = utcnow()
    if decision.open_case:
        # The folio's year is the year the report reached the server, in the
        # business's calendar: mail of 23:30 on 31 December polled after midnight
        # (a backlog, an outage, a retry) is a report of the old year.
        arrived = as_utc(fetched.internal_date)
        case = casework.open_case(
            settings,
            session,
            # An agent who forwarded a customer's mail, or wrote to one with
            # support in copy, opens the case for that customer (triage).
            customer=decision.customer or mail.sender,
            customer_name=decision.customer_name if decision.customer else mail.sender_name,
            # A stranger's copy of someone else's folio tag would mislead: drop it.
            subject=remove_folio_tags(strip_reply_prefixes(mail.subject), settings.folio.prefix),
            mailbox=mailbox,
            now=now,
            reported_at=min(arrived, now) if arrived else now,
            # The customer's wait (mailcase.reminders) counts from the same moment;
            # old mail met on a first poll, opened silently, starts none.
            last_customer_at=None if decision.quiet else _arrival(fetched, now),
        )
        casework.link(session, case, decision.related)
        if not decision.quiet:
            # The answer to a case that waits, in a new mail naming its folio: it waits no
            # more (or it would be closed "for no answer" beside the answer's own case).
            casework.answered_in(session, case, decision.related, sender=mail.sender)
        casework.add_participants(session, settings, case, mail.cc)
        # The first message is the report: a forward is kept whole, whoever sent it.
        kind = "agent" if decision.role is Role.AGENT else "customer"
        text = customer_text(mail.text, mail.subject)
        about = casemail.record_inbound(rt, session, case, mail, raw_sha, kind, text=text)
        if note:
            casework.record(session, case, "system", note)
        if decision.role is Role.AGENT and not decision.quiet and casemail.to_customer(case, mail):
            # Written to the customer, the mailbox in copy (not a forward of their mail):
            # the agent answered them, and follows the case up as on a case already
            # open. Before the agents' notice, which shows the owner.
            casework.assign_on_answer(session, settings, case, mail.sender)
        if decision.acknowledge:
            queue_notice(
                session,
                settings,
                case,
                "acknowledgement",
                to=case.customer,
                # Opened by an agent (a forward, or a mail to the customer): the
                # customer wrote no message to support, and is not told one came.
                context={"opened_by_agent": decision.role is Role.AGENT},
                in_reply_to=mail.message_id,
                references=(*mail.references, mail.message_id)
                if mail.message_id
                else mail.references,
            )
        if not decision.quiet:
            _notify_agents_of(
                session, settings, case, "new", mail, text, about, related=decision.related,
                unstored=_unstored(mailbox, fetched),
            )  # fmt: skip
        return case
    if decision.case is None:
        return None
    # Locked (PostgreSQL): a change another instance or an agent's command commits
    # meanwhile is read, then built on, never overwritten by this one.
    main_id = (
        session.exec(select(Case.outage_id).where(Case.id == decision.case.id)).first()
        if decision.role is Role.AGENT
        else None
    )
    if main_id is not None:
        # A report of an outage: its main case first. Resolving the main case locks it,
        # then its reports; an agent's "#masivo MAIN" or "#fusionar MAIN" on a report
        # locked the report, then the main case, and the two deadlocked (PostgreSQL).
        # Main case before its reports, everywhere: the second waits for the first.
        session.get(Case, main_id, with_for_update=True, populate_existing=True)
    found = session.get(Case, decision.case.id, with_for_update=True, populate_existing=True)
    if found is None:
        return None
    if (
        found.merged_into_id is not None
        or (casework.is_erased(found) and decision.case.customer != found.customer)
        # Marked spam since triage read it: a customer's mail on it is set aside now.
        or (
            found.spam_at is not None
            and disposition is Disposition.FOLLOW_UP
            and decision.role is Role.CUSTOMER
        )
    ):
        # Merged, or its customer's data erased (customers forget), since triage read
        # it (PostgreSQL: another session committed in between): decided again, on the
        # case that answers for it, or as mail naming no case (nothing more may be kept
        # on an erased case).
        raise _CaseChanged(found.folio)
    case = found
    case.updated_at = now
    session.add(case)
    if disposition is not Disposition.FOLLOW_UP:  # an auto-reply or bounce naming the case
        casemail.record_inbound(rt, session, case, mail, raw_sha, "system")
        if agentmail.answer_from_own_address(session, settings, case, decision, mail):
            # A person answered our notice to agents from a shared address of ours
            # (the agents' list, a support mailbox): nothing runs, but they learn why.
            agentmail.not_relayed(
                session, settings, case, mail, "own_address", to=settings.agents.notify
            )
        return case
    if decision.quiet:  # old mail: kept on the case, no command runs, nobody is told
        casemail.record_inbound(rt, session, case, mail, raw_sha, str(decision.role))
        casework.record(session, case, "system", note)
        return case
    if decision.role is Role.AGENT:
        agentmail.agent_message(rt, session, case, mail, raw_sha)
    elif decision.role is Role.UNVERIFIED:
        casemail.record_inbound(rt, session, case, mail, raw_sha, "unverified")
        if casemail.to_customer(case, mail):
            # What an agent writing to the customer from the customer's own mail,
            # the mailbox in copy, looks like: kept, but no forgery warning.
            return case
        key = signing_key(session, settings)
        exposed = any(
            casemail.exposed(session, proof) for _, proof in proofs_in(key, mail.thread_ids)
        )
        queue_notice(
            session,
            settings,
            case,
            "unverified_agent",
            to=mail.sender,
            # The message's own subject, not the case's: the agent looks for that one.
            context={
                "claimed_from": mail.sender,
                "subject": echoable_subject(mail.subject),
                "exposed": exposed,
            },
        )
    elif decision.thanks_only:
        if case.status != decision.case.status:
            # Reopened (or closed) since triage read it (PostgreSQL): decided again.
            raise _CaseChanged(case.folio)
        # Kept as the customer's, so that a later reply threads on it; its note tells the
        # agents reading the case, and the reminders, that it asked for nothing. The case
        # is not touched otherwise: no reopening, no wait started, nobody told.
        text = customer_text(mail.text, mail.subject)
        casemail.record_inbound(rt, session, case, mail, raw_sha, "customer", text=text)
        casework.record(session, case, "system", NOT_REOPENED, from_addr=mail.sender)
    else:
        if not decision.reopen and case.status != CaseStatus.OPEN:
            # Closed or resolved since triage read it (another session committed in
            # between, on PostgreSQL): decided again on what is there now, or the
            # reply would stay on a case that says the matter is finished.
            raise _CaseChanged(case.folio)
        text = customer_text(mail.text, mail.subject)
        about = casemail.record_inbound(rt, session, case, mail, raw_sha, "customer", text=text)
        if mail.sender == case.customer:
            # When it reached the server; never back before a later message already read.
            arrived = _arrival(fetched, now)
            last = as_utc(case.last_customer_at)
            case.last_customer_at = max(last, arrived) if last else arrived
            casework.add_participants(session, settings, case, mail.cc)
        if decision.reopen:
            casework.reopen(session, case, by=mail.sender)
        # The customer (or a participant) answered: the case waits on them no more, and
        # is the agents' again (reminded if nobody answers, never closed for silence).
        casework.clear_pending(session, case, by=mail.sender, why=f"{mail.sender} wrote")
        reason = "reopened" if decision.reopen else "update"
        _notify_agents_of(
            session, settings, case, reason, mail, text, about, unstored=_unstored(mailbox, fetched)
        )
    if note:
        casework.record(session, case, "system", note)
    return case


class _CaseChanged(Exception):
    """The case a customer's reply was triaged onto changed status before it was locked:
    the message's transaction is rolled back and triaged again."""


_TRIAGE_ATTEMPTS = 3  # a case changing (or a deadlock) under every attempt: given up for now


def _notify_agents_of(
    session: Session,
    settings: Settings,
    case: Case,
    reason: str,
    mail: InboundMail,
    text: str,
    about: int,
    *,
    related: Sequence[str] = (),
    unstored: Mapping[str, object] | None = None,
) -> None:
    """Tell ``agents.notify`` what ``mail`` brought to ``case`` (``text``: its words, as
    the case keeps them in its message ``about``); and the case's area, which must
    answer it (as Zammad, OTRS/Znuny and FreeScout tell a ticket's group).
    ``unstored``: the message was over ``limits.max_message_bytes`` and its attachments
    were not kept (:func:`_unstored`)."""
    recipients = [settings.agents.notify]
    area = settings.areas.get(case.area or "")
    if area is not None and area.notify != settings.agents.notify:
        recipients.append(area.notify)
    # The customer's files go along while they fit (RT's notifications carry them).
    files, left = casemail.fitting(mail.attachments, settings.notices.max_agent_attachment_bytes)
    for rcpt in recipients:
        casework.notify_agents(
            session,
            settings,
            case,
            reason,
            text=text,
            attachments=[a.filename for a in mail.attachments],
            files=files,
            not_attached=left,
            sender=mail.sender,
            to=rcpt,
            related=related,
            unstored=unstored,
            about=about,
        )


def _unstored(mailbox: str, fetched: FetchedMessage) -> dict[str, object]:
    """For the agents' notice of a message too large to keep its attachments (only its
    beginning was parsed): its size, and where the whole of it is; {} otherwise.

    The case had a system note; the agents, who must ask the customer for the
    photos or open the message, were not told the message had any.
    """
    if fetched.spooled is None:
        return {}
    return {"size": casemail.megabytes(fetched.full_size), "uid": fetched.uid, "mailbox": mailbox}
