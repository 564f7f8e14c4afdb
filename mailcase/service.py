"""Use-cases: poll one mailbox, ingest one message. Wires the pure core to the adapters.

Every fetched message ends in exactly one ledger row, written in the same
transaction as the case change and the notices it causes, together with the
mailbox's UID checkpoint. A message that makes any step raise is quarantined
in a transaction of its own (raw bytes kept) and the poll goes on; only a
failure to reach the mailbox or the database stops a mailbox's poll, and then
nothing is checkpointed that was not committed, so the next poll resumes.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from email.utils import parseaddr
from functools import partial
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlmodel import Session, col, select

from mailcase import casework, leases, merging, metrics, outages, refusals, waits
from mailcase.authres import sender_is_authenticated
from mailcase.blobs import BlobStore, read_header
from mailcase.bounces import record_bounce
from mailcase.classify import OWN_ADDRESS, MailKind, classify
from mailcase.commands import Command, CommandKind, command_kind, parse_commands
from mailcase.config import MailboxSettings, Settings
from mailcase.errors import (
    ConfigError,
    DatabaseError,
    DatabaseRefusal,
    MailboxError,
    MailcaseError,
    MessageError,
    NotFoundError,
    RefusedForNow,
    StorageError,
    TemplateError,
)
from mailcase.folio import echoable_subject, find_folios, remove_folio_tags, strip_reply_prefixes
from mailcase.imap import HEAD_BYTES, FetchedMessage, ImapMailbox
from mailcase.inbound import Attachment, InboundMail, content_digest, header_summary, origin_of
from mailcase.logs import get_logger
from mailcase.models import (
    Case,
    CaseMessage,
    CaseStatus,
    Checkpoint,
    Disposition,
    KeyValue,
    LedgerEntry,
    Notice,
    StoredAttachment,
)
from mailcase.msgid import proofs_in, signed_ids_in
from mailcase.notices import base_context, queue_notice, queue_without_case, signing_key
from mailcase.parsing import Parsed, ParseOptions, ParserProcess, parse_ahead, worth_a_process
from mailcase.prepared import Prepared
from mailcase.quoting import (
    agent_text,
    customer_text,
    shared_signature,
    strip_quoted,
    without_known_signature,
)
from mailcase.reasons import QuarantineReason, Reason
from mailcase.replies import render_reply, reply_names
from mailcase.spam import spam_verdict
from mailcase.store import (
    Store,
    as_utc,
    case_by_folio,
    case_by_message_ids,
    error_text,
    hashed_key,
    insert_if_absent,
    insert_row,
    insert_values,
    is_deadlock,
    is_unavailable,
    ledger_by_key,
    run,
    table,
    utcnow,
)
from mailcase.thanks import NOT_REOPENED
from mailcase.triage import CaseRef, Decision, Facts, Role, takes_replies, triage
from mailcase.waits import restore_pending  # by name: _agent_message has a local `waits`
from mailcase.wire import FileAttachment


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
        return _poll_leased(rt, name, settings, report, progress)
    finally:
        with contextlib.suppress(SQLAlchemyError):  # it expires by itself anyway
            leases.release(rt.store, name)


def _poll_leased(
    rt: Runtime,
    name: str,
    settings: MailboxSettings,
    report: MailboxReport,
    progress: Progress | None,
) -> MailboxReport:
    log = get_logger(mailbox=name)
    # What reached the mailbox before this moment is in the poll's answer: a complete
    # poll records it (not its end), so that a customer's answer that arrived during a
    # long poll is never taken as read (casework.close_stale_cases). Taken before the
    # SELECT: mail that arrives between it and the SEARCH is not in an empty folder's
    # answer (imap.uids_after trusts SELECT's EXISTS of 0).
    searched_at = utcnow()
    with ImapMailbox(name, settings) as box:
        source = _source_of(settings)
        last_uid, first_contact = _checkpoint(rt.store, name, box.uidvalidity, log, source)
        box.give_up = refusals.given_up(rt.store, name, box.uidvalidity)
        uids = box.uids_after(last_uid)
        if progress is not None:
            progress(0, len(uids))
        handled: list[int] = []
        with _parser_for(rt, len(uids), log) as parser:
            complete = _ingest_all(
                rt, name, box, uids, report, progress, parser, handled, first_contact
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
) -> bool:
    """Ingest ``uids`` in order; ``handled`` collects the UIDs to flag as done. Whether
    every one was gone through (``False``: a stop or a lost lease ended it early).

    Messages read ahead but not ingested (a stop, a lost lease, a failure) are
    read again by the next poll; their spool files are removed on the way out.
    """
    spooled: list[Path] = []
    fetched_messages = _noting_spools(_fetch_planned(rt, box, uids), spooled)
    try:
        renewed = time.monotonic()  # the caller took the lease just before
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
            if full or time.monotonic() - renewed >= leases.RENEW_SECONDS:
                if full:
                    box.mark_done(handled)
                    handled.clear()
                if not leases.acquire(rt.store, name):  # renew; lost it: stop here
                    return False
                renewed = time.monotonic()
            if rt.stop.is_set():
                return False  # SIGTERM: the message in hand is finished; stop here
        return True
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


def _fetch_planned(rt: Runtime, box: ImapMailbox, uids: list[int]) -> Iterator[FetchedMessage]:
    """Fetch ``uids`` in order (see :func:`_fetch_in_order`), holding back messages the
    server refused until one after them comes back.

    A message refused while a later one is returned is the message's fault (a
    damaged file): it goes on, to be quarantined. When nothing after it comes
    back, the server may be what is failing (an outage of its storage): the
    poll fails with the server's answer instead, and the next poll, after the
    usual back-off, fetches those messages again. Nothing is quarantined for a
    fault of the server's, and one damaged message never blocks the mail after it.
    """
    refused: list[FetchedMessage] = []
    for fetched in _fetch_in_order(rt, box, uids):
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


def _fetch_in_order(rt: Runtime, box: ImapMailbox, uids: list[int]) -> Iterator[FetchedMessage]:
    """Fetch ``uids`` in order: ordinary mail in batches bounded by count and bytes,
    mail over ``limits.max_message_bytes`` streamed to a spool file one at a time."""
    if not uids:
        return
    sizes = box.sizes(uids)
    limit = rt.settings.limits.max_message_bytes
    batch: list[int] = []
    batch_bytes = 0

    def flush() -> Iterator[FetchedMessage]:
        # The sizes let an empty answer for a message that is not empty be told apart.
        yield from box.fetch(batch, len(batch) or 1, sizes)

    for uid in uids:
        size = sizes.get(uid, 0)
        if size > limit:
            yield from flush()
            batch, batch_bytes = [], 0
            try:
                spool = rt.blobs.spool_path()
            except StorageError as exc:
                raise _not_stored(box.name, uid, exc) from exc
            try:
                spooled = box.fetch_spooled(uid, size, spool)
            except OSError as exc:  # the store's disk filled while the message streamed in
                spool.unlink(missing_ok=True)
                raise _not_stored(box.name, uid, rt.blobs.failed(exc)) from exc
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
    transaction as the new one is written (:func:`retry_message`).
    ``released_by``: likewise for a row set aside as ``spam``, which this person
    released: processed as a person's mail, the filter's verdict not read
    (:func:`release_message`).
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
        raise _not_stored(mailbox, fetched.uid, exc) from exc
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
        raise _not_stored(mailbox, fetched.uid, exc) from exc
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


def quarantined_messages(rt: Runtime, mailbox: str | None = None) -> list[tuple[str, int]]:
    """(mailbox, UID) of every quarantined message (of ``mailbox``), oldest first."""
    query = (
        sa.select(_LEDGER.c.mailbox, _LEDGER.c.uid)
        .where(_LEDGER.c.disposition == Disposition.QUARANTINED)
        .order_by(_LEDGER.c.id)
    )
    if mailbox is not None:
        query = query.where(_LEDGER.c.mailbox == mailbox)
    with rt.store.reading() as conn:
        return [(str(box), int(uid)) for box, uid in conn.execute(query)]


def dismiss_message(rt: Runtime, mailbox: str, uid: int, *, by: str, why: str = "") -> None:
    """Set a quarantined message aside for good (``dismissed``): one that can be fetched
    no more (its folder rebuilt, its stored copy lost) or that needs no case.

    Its row, raw bytes and reason are kept, the person and ``why`` added to the
    reason; it no longer counts as waiting for a person. Raises NotFoundError
    when (mailbox, uid) has no quarantined row.
    """
    with rt.store.transaction() as session:
        entry = _ledger_row_in(session, mailbox, uid)
        entry.disposition = Disposition.DISMISSED
        said = f"dismissed by {by}" + (f": {why.strip()}" if why.strip() else "")
        entry.reason = f"{entry.reason}; {said}"[:2000]
        session.add(entry)


def _ledger_row_in(
    session: Session, mailbox: str, uid: int, wanted: Disposition = Disposition.QUARANTINED
) -> LedgerEntry:
    """The ledger row of (mailbox, uid) in disposition ``wanted`` (quarantined); else
    NotFoundError saying its state."""
    rows = select(LedgerEntry).where(LedgerEntry.mailbox == mailbox, LedgerEntry.uid == uid)
    # The wanted row first: after the folder was rebuilt (a new UIDVALIDITY)
    # a newer row may hold the same UID, and must not hide it for good.
    entry = (
        session.exec(
            rows.where(LedgerEntry.disposition == wanted).order_by(col(LedgerEntry.id).desc())
        ).first()
        or session.exec(rows.order_by(col(LedgerEntry.id).desc())).first()
    )
    if entry is None or entry.disposition != wanted:
        state = "does not exist" if entry is None else f"is {entry.disposition}"
        raise NotFoundError(f"message {uid} of mailbox {mailbox} {state}, not {wanted}")
    return entry


def release_message(rt: Runtime, mailbox: str, uid: int, *, by: str) -> str:
    """Process a message set aside as spam as a person's mail; return the new disposition.

    The filter's verdict is not read again: the message opens its case (or joins
    one) and is answered as it would have been when it arrived (an acknowledgement
    unless it was old mail met on a first poll). Copies of it in other mailboxes,
    duplicates of no case, join that case. Raises NotFoundError when (mailbox, uid)
    has no ``spam`` row, or its stored copy was erased (``customers forget``: it is
    not fetched again). Like :func:`retry_message`, the spam row is replaced in the
    transaction that writes the new one; its reason, and the case's record, say
    it was released and ``by`` whom.
    """
    with rt.store.transaction() as session:
        entry = _ledger_row_in(session, mailbox, uid, Disposition.SPAM)
        uidvalidity, received = entry.uidvalidity, entry.received_at
        size, raw_sha = entry.size, entry.raw_sha256
    if not raw_sha:
        raise NotFoundError(
            f"message {uid} of mailbox {mailbox}: its stored copy was erased (customers forget "
            "or purge), nothing to release"
        )
    if size > rt.settings.limits.max_message_bytes:
        fetched = _spooled_copy(rt, mailbox, uid, raw_sha, size, received)
    else:
        fetched = _stored_copy(rt, mailbox, uidvalidity, uid, raw_sha, received)
    try:
        return ingest_message(rt, mailbox, uidvalidity, fetched, retry=True, released_by=by)
    finally:
        if fetched.spooled is not None:
            fetched.spooled.unlink(missing_ok=True)


def retry_message(rt: Runtime, mailbox: str, uid: int) -> str:
    """Process a quarantined message again from its stored raw bytes; return the new disposition.

    Raises NotFoundError when (mailbox, uid) has no quarantined ledger row. The
    quarantined row is replaced in the transaction that writes the new one: a
    retry that fails (the database or the store unavailable, a kill) leaves
    it quarantined, to be retried again, never without a row.
    """
    with rt.store.transaction() as session:
        entry = _ledger_row_in(session, mailbox, uid)
        uidvalidity, received = entry.uidvalidity, entry.received_at
        size, raw_sha, reason = entry.size, entry.raw_sha256, entry.reason
    if reason.startswith(UNREADABLE):
        fetched = _fetch_again(rt, mailbox, uidvalidity, uid)
    elif size > rt.settings.limits.max_message_bytes:
        fetched = _spooled_copy(rt, mailbox, uid, raw_sha, size, received)
    else:
        fetched = _stored_copy(rt, mailbox, uidvalidity, uid, raw_sha, received)
    try:
        return ingest_message(rt, mailbox, uidvalidity, fetched, retry=True)
    finally:
        if fetched.spooled is not None:  # consumed when stored; left when that failed
            fetched.spooled.unlink(missing_ok=True)


def _stored_copy(
    rt: Runtime, mailbox: str, uidvalidity: int, uid: int, raw_sha: str, received: Any
) -> FetchedMessage:
    """The quarantined message from its stored bytes; from the server again when they are
    gone (a store restored from an older backup). Raises a MailcaseError naming the
    message when neither has it, so that ``retry --all`` goes on with the others."""
    try:
        return FetchedMessage(uid=uid, raw=rt.blobs.get(raw_sha), internal_date=received)
    except OSError as exc:
        lost = f"its stored copy {rt.blobs.path(raw_sha)} cannot be read ({exc.strerror or exc})"
    try:
        return _fetch_again(rt, mailbox, uidvalidity, uid)
    except (NotFoundError, MailboxError) as exc:
        raise NotFoundError(f"message {uid} of mailbox {mailbox}: {lost}, and {exc}") from exc


def _fetch_again(rt: Runtime, mailbox: str, uidvalidity: int, uid: int) -> FetchedMessage:
    """Message ``uid`` fetched from the server again (it refused it the last time)."""
    box_settings = rt.settings.mailboxes.get(mailbox)
    if box_settings is None:
        raise NotFoundError(f"mailbox {mailbox} is no longer configured: message {uid} stays")
    with ImapMailbox(mailbox, box_settings) as box:
        if box.uidvalidity != uidvalidity:
            raise NotFoundError(
                f"mailbox {mailbox} was rebuilt (UIDVALIDITY {box.uidvalidity}): message {uid} "
                "is no longer at that address"
            )
        fetched = next(_fetch_planned(rt, box, [uid]), None)
    if fetched is None:
        raise NotFoundError(f"message {uid} of mailbox {mailbox} is no longer on the server")
    return fetched


def _spooled_copy(
    rt: Runtime, mailbox: str, uid: int, raw_sha: str, size: int, received: Any
) -> FetchedMessage:
    """A stored message over ``limits.max_message_bytes``, handled as a poll handles it:
    its beginning parsed, the whole kept, its attachments not unpacked (memory stays bounded)."""
    source = rt.blobs.path(raw_sha)
    try:
        spool = rt.blobs.spool_path()
    except StorageError as exc:
        raise _not_stored(mailbox, uid, exc) from exc
    try:
        shutil.copyfile(source, spool)
        with source.open("rb") as raw:
            head = raw.read(HEAD_BYTES)
    except OSError as exc:
        spool.unlink(missing_ok=True)
        raise _not_stored(mailbox, uid, rt.blobs.failed(exc)) from exc
    return FetchedMessage(uid=uid, raw=head, internal_date=received, spooled=spool, size=size)


def _not_stored(mailbox: str, uid: int, exc: StorageError) -> MailboxError:
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


# One round trip for both (PostgreSQL): the lookup, and the lock _existing describes.
_LEDGER_AT_LOCKING = Prepared(
    sa.select(
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
    committed (READ COMMITTED).
    """
    params = {"box": mailbox, "validity": uidvalidity, "uid": uid}
    if dedup_key is not None and session.get_bind().dialect.name == "postgresql":
        entry_id = run(session, _LEDGER_AT_LOCKING, params | {"key": dedup_key}).scalar()
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
                # link in it would reach agents as if from the support address.
                "sender": parseaddr(head.get("from", ""))[1],
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


def _workable(case: Case | None) -> Case | None:
    """``case``, or None when its customer's data was erased (mailcase.erasure): mail
    naming it, by folio, thread or signed id, is told nothing of it and joins nothing,
    as if it named no case (not even a link: nothing ties new mail to the erased)."""
    return None if case is None or casework.is_erased(case) else case


def _answering(session: Session, case: Case | None) -> Case | None:
    """The case that answers for ``case``: the one a merged case joined (down a chain of
    merges), none for an erased one (:func:`_workable`), else ``case`` itself."""
    return _workable(merging.merged_target(session, case) if case is not None else None)


def _facts(rt: Runtime, session: Session, mail: InboundMail, earlier: list[LedgerEntry]) -> Facts:
    settings = rt.settings

    duplicate_of = None
    for entry in earlier:
        if entry.case_id is not None:
            case = _answering(session, session.get(Case, entry.case_id))
            duplicate_of = case_ref(session, case) if case else None
            break
    referenced = _answering(session, case_by_message_ids(session, mail.thread_ids))
    by_folio: list[CaseRef] = []
    for folio in find_folios(mail.subject, settings.folio.prefix):
        case = _answering(session, case_by_folio(session, folio))
        if case is not None and all(ref.id != case.id for ref in by_folio):
            by_folio.append(case_ref(session, case))
    in_text: list[CaseRef] = []
    # "…mi reporte con folio PLR-2026-000001, sigo sin servicio" under a new subject;
    # the quote cut off (customer_text) only when the text names a folio at all.
    if not by_folio and not referenced and find_folios(mail.text, settings.folio.prefix):
        named = find_folios(customer_text(mail.text, mail.subject), settings.folio.prefix)
        for folio in named[:_FOLIOS_IN_TEXT]:
            case = _answering(session, case_by_folio(session, folio))
            if case is not None and all(ref.id != case.id for ref in in_text):
                in_text.append(case_ref(session, case))
    signed_case = None
    authenticated = False
    if mail.sender in settings.agents.addresses:
        for case_id, proof in proofs_in(signing_key(session, settings), mail.thread_ids):
            if _exposed(session, proof):
                continue  # seen in someone else's hands: no proof any more
            case = _answering(session, session.get(Case, case_id))
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


def _exposed(session: Session, proof: str) -> bool:
    """Whether the signed Message-ID ``proof`` was seen in other hands (_note_exposed)."""
    return session.get(KeyValue, hashed_key("exposed-id", proof)) is not None


def _to_customer(case: Case, mail: InboundMail) -> bool:
    """Whether ``mail`` went to ``case``'s customer too (To or Cc)."""
    return bool(case.customer) and (case.customer in mail.to or case.customer in mail.cc)


def _only_copied(session: Session, settings: Settings, case: Case, mail: InboundMail) -> bool:
    """Whether ``mail`` was addressed to others with a support mailbox only in Cc: one of
    our mailboxes is in its Cc, none in its To, and neither ``case``'s customer nor a
    participant of it (the customer's side: a relative they copied) is a recipient.

    Mail that names none of our mailboxes (an alias or an old address delivered into
    the mailbox, a Bcc) is not taken for copied: it came to the desk all the same, and
    was relayed before this rule existed.
    """
    mailboxes = {m.address for m in settings.mailboxes.values()}
    if mailboxes.isdisjoint(mail.cc) or not mailboxes.isdisjoint(mail.to):
        return False
    if _to_customer(case, mail) or case.id is None:
        return False
    return casework.participants(session, case.id).isdisjoint((*mail.to, *mail.cc))


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
        if _exposed(session, proof):
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
        _record_inbound(rt, session, case, mail, raw_sha, kind, text=text)
        if note:
            casework.record(session, case, "system", note)
        if decision.role is Role.AGENT and not decision.quiet and _to_customer(case, mail):
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
                session, settings, case, "new", mail, text, related=decision.related,
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
        _record_inbound(rt, session, case, mail, raw_sha, "system")
        if _answer_from_own_address(session, settings, case, decision, mail):
            # A person answered our notice to agents from a shared address of ours
            # (the agents' list, a support mailbox): nothing runs, but they learn why.
            _not_relayed(session, settings, case, mail, "own_address", to=settings.agents.notify)
        return case
    if decision.quiet:  # old mail: kept on the case, no command runs, nobody is told
        _record_inbound(rt, session, case, mail, raw_sha, str(decision.role))
        casework.record(session, case, "system", note)
        return case
    if decision.role is Role.AGENT:
        _agent_message(rt, session, case, mail, raw_sha)
    elif decision.role is Role.UNVERIFIED:
        _record_inbound(rt, session, case, mail, raw_sha, "unverified")
        if _to_customer(case, mail):
            # What an agent writing to the customer from the customer's own mail,
            # the mailbox in copy, looks like: kept, but no forgery warning.
            return case
        key = signing_key(session, settings)
        exposed = any(_exposed(session, proof) for _, proof in proofs_in(key, mail.thread_ids))
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
        _record_inbound(rt, session, case, mail, raw_sha, "customer", text=text)
        casework.record(session, case, "system", NOT_REOPENED, from_addr=mail.sender)
    else:
        if not decision.reopen and case.status != CaseStatus.OPEN:
            # Closed or resolved since triage read it (another session committed in
            # between, on PostgreSQL): decided again on what is there now, or the
            # reply would stay on a case that says the matter is finished.
            raise _CaseChanged(case.folio)
        text = customer_text(mail.text, mail.subject)
        _record_inbound(rt, session, case, mail, raw_sha, "customer", text=text)
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
            session, settings, case, reason, mail, text, unstored=_unstored(mailbox, fetched)
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
    *,
    related: Sequence[str] = (),
    unstored: Mapping[str, object] | None = None,
) -> None:
    """Tell ``agents.notify`` what ``mail`` brought to ``case`` (``text``: its words, as
    the case keeps them); and the case's area, which must answer it (as Zammad,
    OTRS/Znuny and FreeScout tell a ticket's group). ``unstored``: the message was
    over ``limits.max_message_bytes`` and its attachments were not kept
    (:func:`_unstored`)."""
    recipients = [settings.agents.notify]
    area = settings.areas.get(case.area or "")
    if area is not None and area.notify != settings.agents.notify:
        recipients.append(area.notify)
    # The customer's files go along while they fit (RT's notifications carry them).
    files, left = _fitting(mail.attachments, settings.notices.max_agent_attachment_bytes)
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
        )


def _agent_message(
    rt: Runtime, session: Session, case: Case, mail: InboundMail, raw_sha: str
) -> None:
    """A verified agent wrote on ``case``: run its commands, or relay its words."""
    settings = rt.settings
    # Only what the agent wrote: a reply that is nothing but the quoted notice
    # must not relay the internal notice to the customer. An HTML-only reply
    # is cut where its markup starts the quote, which no attribution wording
    # can hide (inbound.html_texts).
    written = agent_text(mail.text if mail.text_above_quote is None else mail.text_above_quote)
    parsed = parse_commands(_without_signature_of(session, mail.sender, written.text))
    by = mail.sender
    problems = [{"line": p.line, "problem": p.problem} for p in parsed.problems]
    problems += [
        {"line": c.line, "problem": "unknown_area"}
        for c in parsed.commands
        if c.kind is CommandKind.ROUTE and c.area not in settings.areas
    ]
    problems += [
        {"line": c.line, "problem": "bad_participant"}
        for c in parsed.commands
        if c.kind is CommandKind.PARTICIPANT
        and casework.participant_problem(settings, case, c.address or "")
    ]
    # Only an agent can be responsible for a case: a typo in the address would leave it
    # to nobody while everyone thought it was someone's.
    problems += [
        {"line": c.line, "problem": "unknown_agent"}
        for c in parsed.commands
        if c.kind is CommandKind.ASSIGN
        and c.owner is not None
        and c.owner not in settings.agents.addresses
    ]
    # One clock for the whole reply: a visit checked at 09:59:59 and booked at
    # 10:00:00 was refused inside the transaction, and the reply quarantined.
    now_local = utcnow().astimezone(settings.folio.zone)
    for c in parsed.commands:
        if c.kind is CommandKind.MERGE:
            into = _merge_target(session, settings, c)
            merge_problem = (
                merging.merge_problem(
                    case,
                    into,
                    now_local,
                    source_is_main=casework.is_outage_main(session, case),
                    target_is_main=casework.is_outage_main(session, into),
                )
                if into
                else "unknown_folio"
            )
            if merge_problem:
                problems.append({"line": c.line, "problem": merge_problem})
        elif c.kind is CommandKind.SPAM and not c.stop:
            spam_problem = casework.spam_problem(
                case, is_main=casework.is_outage_main(session, case)
            )
            if spam_problem:
                problems.append({"line": c.line, "problem": spam_problem})
        elif c.kind is CommandKind.OUTAGE and c.update:
            if not casework.is_outage_main(session, case):
                problems.append({"line": c.line, "problem": "outage_not_main"})
        elif c.kind is CommandKind.OUTAGE and not c.stop:
            main = _merge_target(session, settings, c)
            outage_problem = (
                outages.outage_problem(
                    case, main, case_is_main=casework.is_outage_main(session, case)
                )
                if main
                else "unknown_folio"
            )
            if outage_problem:
                problems.append({"line": c.line, "problem": outage_problem})
    # A canned reply that exists in neither language (mailcase.replies): the agent is
    # told which ones do, in the command_error notice.
    replies = reply_names(settings.templates.directory)
    problems += [
        {"line": c.line, "problem": "unknown_reply"}
        for c in parsed.commands
        if c.kind is CommandKind.REPLY and c.reply not in replies
    ]
    if written.notice_line:  # our notice is in the text, and where it starts is unknown
        problems.append({"line": written.notice_line, "problem": "quoted_notice"})
    if not problems:  # what the case's state and the reply's other commands forbid
        problems += [
            {"line": line, "problem": code}
            for line, code in casework.command_problems(
                parsed.commands,
                parsed.text,
                case.status,
                now_local,
                visit_ahead=casework.visit_cancellable(case, now_local),
                outage_open=outages.open_outage_main(session, case) is not None,
                reports_open=outages.has_open_reports(session, case),
                spam=case.spam_at is not None,
            )
        ]
    canned = ""
    if not problems:
        # "#respuesta": rendered before anything runs. An admin's file that does not render
        # (a typo, a name no case has, Latin-1, or a failure on this case's data, such as
        # a name's first word when there is no name) raised out of this message: every
        # poll of the mailbox stopped on it, or the agent's reply was quarantined unsaid.
        # The agent is told instead, and the poll goes on.
        try:
            canned = _canned_reply(settings, case, parsed.commands)
        except (TemplateError, MessageError) as exc:
            line = next(c.line for c in parsed.commands if c.kind is CommandKind.REPLY)
            get_logger().warning("canned_reply_broken", folio=case.folio, error=str(exc))
            problems.append({"line": line, "problem": "reply_broken"})
    if problems:
        # One bad command and nothing runs: a typo such as "#ntoa" must not
        # let an internal note reach the customer as relayed text, and a
        # misspelt area must not leave the resolution above it half done.
        _record_inbound(rt, session, case, mail, raw_sha, "note")
        queue_notice(
            session,
            settings,
            case,
            "command_error",
            to=mail.sender,
            context={
                "problems": problems,
                # The areas are listed when a line about one went wrong.
                "about_areas": any(
                    command_kind(str(p["line"])) is CommandKind.ROUTE for p in problems
                ),
                # And the agents, when an "#asignar" named someone who is not one.
                "agents": list(settings.agents.addresses),
                "about_agents": any(p["problem"] == "unknown_agent" for p in problems),
                # And the canned replies, when a "#respuesta" named none of them.
                "about_replies": any(p["problem"] == "unknown_reply" for p in problems),
            },
            in_reply_to=mail.message_id,
        )
        return
    kinds = {c.kind for c in parsed.commands}
    own = parsed.text.strip()
    # "#respuesta": the canned reply goes below the agent's own words, as one relayed reply
    # (the question the case waits on, with "#pendiente"). The case keeps the agent's own
    # words as their message (the relay notice keeps the whole text): the signature their
    # mail client adds is learnt from the end of those (_without_signature_of).
    text = "\n\n".join(part for part in (own, canned) if part)
    # Words addressed to others (a colleague, a contractor, the agents' list), a support
    # mailbox only in copy: the agent told them something, not the customer. Kept as a
    # note, as Zammad keeps such mail as an internal article; the agent is told. Only
    # a reply without commands: a command was typed on purpose, and runs as in any
    # reply, with what it sends the customer (#resolver's causes, #pendiente's question).
    copied = not parsed.commands and _only_copied(session, settings, case, mail)
    # A remark sent back to one of our side notices ("Yo no envié eso", "Enterado, se lo
    # llevo en la visita") is for colleagues, not the customer: kept as a note.
    side = not parsed.commands and not copied and _answers_a_side_notice(session, settings, mail)
    # "#pendiente" relays its text as a plain reply does: the question the case waits on.
    waits = bool(text) and any(
        c.kind is CommandKind.PENDING and not c.stop for c in parsed.commands
    )
    # "#masivo aviso" too, and to every open report's customer: news of the outage.
    news = any(c.kind is CommandKind.OUTAGE and c.update for c in parsed.commands)
    asks = waits or (bool(text) and news)
    is_note = (
        side
        or copied
        or CommandKind.NOTE in kinds
        or (kinds and not kinds & _RELAYING and not asks)
    )
    entry_kind = "note" if is_note else "agent"
    _record_inbound(rt, session, case, mail, raw_sha, entry_kind, text=own)
    visit_was_ahead = casework.visit_cancellable(case, now_local)
    # The reports a resolution of this main case resolves with it, with a visit still
    # ahead: a phone one's agent is told of that visit's cancellation too, as when it is
    # resolved by hand (untold_changes).
    visits_ahead = (
        {
            report.id
            for report in outages.outage_reports(session, case)
            if casework.visit_cancellable(report, now_local)
        }
        if CommandKind.RESOLVE in kinds
        else set()
    )
    waited_until = case.pending_until  # put back if #pendiente's question reaches nobody
    reports: list[Case] = []  # of the outage this case is the main case of, resolved with it
    for command in parsed.commands:
        reports += _run_command(
            session, settings, case, command, own, by, now_local, note=own if is_note else ""
        )
    if kinds & _ANSWERS and CommandKind.ASSIGN not in kinds:
        # A resolution or a visit answers the customer (on a phone case the agent is
        # told to call them): its agent follows the case up, unless the same reply
        # said who does.
        casework.assign_on_answer(session, settings, case, by)
        # So does each report its resolution resolved, as if resolved one by one: a
        # customer's reply on one reopens it with nobody following it up otherwise.
        for report in reports:
            casework.assign_on_answer(session, settings, report, by)
    if parsed.commands:
        untold = casework.untold_changes(
            parsed.commands,
            visit_cancelled=visit_was_ahead and not casework.visit_cancellable(case, now_local),
        )
        if untold and not case.customer:
            # A phone case: the resolution or visit reached nobody; the agent must call.
            _not_relayed(session, settings, case, mail, "no_customer", untold=untold)
        for report in reports:
            if not report.customer:  # a phone report of the outage: the same, under its folio
                cancelled = report.id in visits_ahead and not casework.visit_cancellable(
                    report, now_local
                )
                untold_there = casework.untold(
                    resolved=True, booked=False, visit_cancelled=cancelled
                )
                _not_relayed(session, settings, report, mail, "no_customer", untold=untold_there)
        if news and not text:
            # An empty "#masivo aviso" (the news written below the quote, or forgotten):
            # nothing went to anyone, and the agent is told, as for any empty reply.
            _not_relayed(
                session, settings, case, mail, "no_text",
                attachments=[a.filename for a in _agent_files(mail)],
            )  # fmt: skip
            return
        if not asks and CommandKind.REPLY not in kinds:
            return
    reached_a_report = False
    news_kept: list[list[str]] = [[], []]  # the news' files left out: too big, withheld
    # What the agent attached, not a signature's logo (_agent_files), and of it what may
    # go on to a customer: judged once, for the reports' customers and the case's alike.
    attached = _agent_files(mail)
    relayable: tuple[list[FileAttachment], list[str], list[str]] | None = None
    if news:
        # Each report's customer, under their own folio; the main case's, below, as any reply.
        relayable = _relayable(
            attached, settings.notices.max_relayed_attachment_bytes, signing_key(session, settings)
        )
        files, *news_kept = relayable
        told = outages.tell_outage_reports(
            session, settings, case, text, agent_name=mail.sender_name, attachments=files
        )
        # The agent learns, under each report's folio, whose customer the news did not
        # reach (a phone report: call them; held: a loop, most likely), as for one case.
        for report, why in told:
            if why:
                _not_relayed(session, settings, report, mail, why, outage_main=case.folio)
        reached_a_report = any(not why for _, why in told)
    # Written straight to the customer with the mailbox in Cc: already sent, and an
    # answer all the same (the reminders count it as one).
    if _to_customer(case, mail):
        if case.spam_at is not None:  # the agent wrote to the spammer; nothing more goes
            if canned:
                _not_relayed(session, settings, case, mail, "spam")
            return
        if CommandKind.ASSIGN not in kinds:
            casework.assign_on_answer(session, settings, case, by)
        # The customer has the agent's words, from the agent; the canned reply they named
        # is only in mailcase's hands: relayed alone (it was skipped, and nobody told).
        if canned and not casework.relay(
            session, settings, case, canned, agent_name=mail.sender_name
        ):
            # Their own mail did reach the customer: only the canned reply is to send again.
            name = next((c.reply for c in parsed.commands if c.reply), "") or ""
            _not_relayed(session, settings, case, mail, "held", canned_only=name)
        return
    if copied:  # nobody was answered: no owner taken either
        _not_relayed(session, settings, case, mail, "copied")
        return
    if side:
        _not_relayed(session, settings, case, mail, "side_notice")
        return
    attachments = [a.filename for a in attached]
    reason = (
        "no_text"
        if not text
        else "no_customer"
        if not case.customer
        # Marked spam (#spam): its "customer" is whoever the spammer forged; a case
        # resolved before the mark would take replies by the rule below.
        else "spam"
        if case.spam_at is not None
        # The customer's answer to it would open a new case (triage: a closed case
        # takes no more mail), far from the question the agent asked.
        else "closed"
        if case.status == CaseStatus.CLOSED
        and not takes_replies(
            case.status, as_utc(case.resolved_at), utcnow(), settings.cases.reopen_days
        )
        else ""
    )
    withheld: list[str] = []
    if not reason:
        sent, too_big, withheld = relayable or _relayable(
            attached, settings.notices.max_relayed_attachment_bytes, signing_key(session, settings)
        )
        if casework.relay(
            session, settings, case, text, agent_name=mail.sender_name, attachments=sent
        ):
            kept = too_big + withheld
            reason, attachments = ("attachments", kept) if kept else ("", [])
            if CommandKind.ASSIGN not in kinds:  # "#asignar nadie" keeps the case nobody's
                casework.assign_on_answer(session, settings, case, by)
        else:
            reason, withheld = "held", []  # max_relays_per_case_per_hour: a loop, most likely
    # "#pendiente"'s question that reached nobody (held, a phone case): the case must not
    # wait for an answer to it, nor tell the customer at the deadline they gave none.
    # A wait already running (a question that did reach them, or asked by phone) stands.
    dropped = waits and reason in ("held", "no_customer", "closed")
    if dropped:
        restore_pending(
            session, case, waited_until, by=by, why="the question did not reach the customer"
        )
    if reason == "no_customer" and reached_a_report:
        # A main case with no customer address (the outage opened by the desk, as README
        # suggests): the news went to the reports' customers, and "your reply reached
        # nobody" would be false; the phone reports were named one by one above.
        reason = ""
    outage_news = news and reached_a_report
    if outage_news and not reason and (news_kept[0] or news_kept[1]):
        # The files the news went without, to every report's customer: on a phone main
        # case nothing else says so (its own notice is the one suppressed just above).
        withheld = news_kept[1]
        reason, attachments = "attachments", news_kept[0] + withheld
    if reason:  # the agent learns what did not reach the customer
        _not_relayed(
            session, settings, case, mail, reason, attachments=attachments, withheld=withheld,
            pending_dropped=dropped, outage_news=outage_news and reason == "attachments",
        )  # fmt: skip


# The commands whose reply's text reaches the customer: a resolution's causes, a canned
# reply below the agent's words (and "#pendiente"'s question, when it has one).
_RELAYING = frozenset({CommandKind.RESOLVE, CommandKind.REPLY})


def _canned_reply(settings: Settings, case: Case, commands: Sequence[Command]) -> str:
    """The canned reply a ``#respuesta`` of ``commands`` names, rendered for ``case`` in its
    language (:func:`replies.render_reply`, which falls back to the other language only
    when the reply lacks the case's); "" without one, or when its file was removed since
    the name was checked. Raises as :func:`replies.render_reply` does."""
    for command in commands:
        if command.kind is not CommandKind.REPLY or command.reply is None:
            continue
        rendered = render_reply(
            command.reply,
            case.language,
            base_context(settings, case),
            override=settings.templates.directory,
        )
        if rendered is not None:
            return rendered.text
    return ""


# The commands that answer the customer (a resolution, a visit booked or called off):
# with one, an agent's reply makes them the owner of a case nobody owns (auto_assign).
_ANSWERS = frozenset({CommandKind.RESOLVE, CommandKind.VISIT})


# Notices that tell an agent about one of their own replies or a delivery: a reply to
# one is never the customer's to read. The forged-mail warning (unverified_agent) is
# one too, unless the case's notifications were exposed: then it asks for the
# agent's words as a reply to itself, the one proof left.
# An assignment notice shows a colleague's note ("es cliente molesto"): its natural
# answer, "Enterado, le llamo", is for that colleague, never the customer.
SIDE_NOTICE_KINDS = ("command_error", "not_relayed", "delivery_failed", "assigned")


def _answers_a_side_notice(session: Session, settings: Settings, mail: InboundMail) -> bool:
    """Whether ``mail`` answers one of our side notices (its In-Reply-To):
    :data:`SIDE_NOTICE_KINDS`, or a forged-mail warning about a case whose
    notifications still prove an agent."""
    if not mail.in_reply_to:
        return False
    answered = session.exec(
        select(Notice.kind, Notice.case_id).where(col(Notice.message_id).in_(mail.in_reply_to[:5]))
    ).all()
    for kind, case_id in answered:
        if kind in SIDE_NOTICE_KINDS:
            return True
        if kind == "unverified_agent" and case_id is not None:
            notified = session.exec(
                select(Notice.message_id).where(
                    Notice.case_id == case_id, Notice.kind == "agent_notification"
                )
            ).all()
            proofs = proofs_in(signing_key(session, settings), notified)
            if not any(_exposed(session, proof) for _, proof in proofs):
                return True
    return False


INLINE_PHOTO_BYTES = 64 * 1024  # an inline image this large is a photo, not a logo


def _agent_files(mail: InboundMail) -> list[Attachment]:
    """What an agent attached to ``mail``, not a signature's logo. Apple Mail (and a
    screenshot pasted in Outlook or Gmail) puts a photo in the HTML as an inline image:
    one that large is a photo, and went nowhere, with nobody told."""
    return [a for a in mail.attachments if not a.inline or _inline_photo(a)]


def _inline_photo(attachment: Attachment) -> bool:
    """Whether an inline image is a picture the agent meant to send (at least
    :data:`INLINE_PHOTO_BYTES`; a signature's logo is a few kilobytes, and it
    would otherwise go to the customer with every reply)."""
    return attachment.content_type.startswith("image/") and attachment.size >= INLINE_PHOTO_BYTES


def _fitting(attached: Sequence[Attachment], limit: int) -> tuple[list[FileAttachment], list[str]]:
    """Of ``attached``, in order, the files that fit in ``limit`` bytes together, and the
    names of those that did not (:func:`casework.fitting`)."""
    candidates = [
        (a.filename, a.content_type, a.size, lambda data=a.payload: data) for a in attached
    ]
    return casework.fitting(candidates, limit)


def _relayable(
    attached: list[Attachment], limit: int, key: bytes
) -> tuple[list[FileAttachment], list[str], list[str]]:
    """The agent's files that go on to the customer, in order, while they fit in ``limit``
    bytes together (``notices.max_relayed_attachment_bytes``); the names of those that
    did not fit; and the names of those withheld (below).

    Never an attached message (Outlook's "attach original message" would hand
    the customer our notice to agents, whose signed Message-ID is an agent's
    proof, with the command help), nor a file inside one (an internal mail's
    ``clientes_afectados.csv`` went out while the mail itself was withheld), nor
    any file that holds a signed id of ours.
    """
    passed: list[Attachment] = []
    withheld: list[str] = []
    for attachment in attached:
        internal = attachment.in_message or attachment.content_type.partition("/")[0] in (
            "message",
            "multipart",
        )
        if internal or _holds_signed_id(attachment.payload, key):
            withheld.append(attachment.filename)
        else:
            passed.append(attachment)
    sent, too_big = _fitting(passed, limit)
    return sent, too_big, withheld


def _without_signature_of(session: Session, agent: str, text: str) -> str:
    """``text`` without the signature ``agent``'s mail client adds (an Outlook signature
    under ``#resolver`` had been sent to the customer as the causes).

    Learnt from the agent's last relayed message (quoting.shared_signature) and
    kept in key_values, so that it is known from then on; a reply that is only
    the signature is left with no words of its own.
    """
    key = hashed_key("signature", agent)
    known = session.get(KeyValue, key)
    earlier = session.exec(
        select(CaseMessage.text)
        .where(
            CaseMessage.from_addr == agent,
            CaseMessage.kind == "agent",  # relayed words, not a refused reply's
            CaseMessage.direction == "in",
        )
        .order_by(col(CaseMessage.id).desc())
        .limit(1)
    ).first()
    learnt = shared_signature(text, earlier) if earlier else ""
    if learnt and (known is None or known.value != learnt):
        if known is not None:
            known.value = learnt
            session.add(known)
        else:  # another instance may learn it at the same time: either will do
            insert_if_absent(session, KeyValue(key=key, value=learnt))
    signature = learnt or (known.value if known is not None else "")
    return without_known_signature(text, signature) if signature else text


def _answer_from_own_address(
    session: Session, settings: Settings, case: Case, decision: Decision, mail: InboundMail
) -> bool:
    """Whether ``mail`` is a person's answer to our notice to agents about ``case``, sent
    from one of mailcase's own addresses, with someone to tell (``agents.notify``).

    Classify calls mail from our own addresses automatic (a loop guard); mail that
    names no automatic header (those are reasons of their own) and references a
    signed id of this case was written by someone who read the notice.
    """
    if not settings.agents.notify or not decision.reason.startswith(OWN_ADDRESS):
        return False
    proofs = proofs_in(signing_key(session, settings), mail.thread_ids)
    return any(case_id == case.id for case_id, _ in proofs)


def _not_relayed(
    session: Session,
    settings: Settings,
    case: Case,
    mail: InboundMail,
    reason: str,
    *,
    attachments: list[str] | None = None,
    withheld: list[str] | None = None,
    untold: list[str] | None = None,
    to: str | None = None,
    pending_dropped: bool = False,
    outage_news: bool = False,
    outage_main: str = "",
    canned_only: str = "",
) -> None:
    """Tell the agent who wrote ``mail`` (or ``to``) what did not reach the customer, and why
    (``pending_dropped``: so the case does not wait for the customer's answer to it;
    ``outage_news``: the files left out of a ``#masivo aviso``, which every customer of
    the outage got without them; ``outage_main``: ``case`` is a report the ``#masivo aviso``
    of that main case did not reach, the news kept on the main case only, and sending the
    aviso again would reach every other report's customer twice; ``canned_only``: the
    agent wrote to the customer directly and only the canned reply of that name, which
    mailcase relays, was held)."""
    queue_notice(
        session,
        settings,
        case,
        "not_relayed",
        to=to or mail.sender,
        context={
            "reason": reason,
            "attachments": attachments or [],
            "untold": untold or [],
            "withheld": withheld or [],
            "pending_dropped": pending_dropped,
            "outage_news": outage_news,
            "outage_main": outage_main,
            "canned_only": canned_only,
            "own_sender": mail.sender,
            "attachment_limit": _megabytes(settings.notices.max_relayed_attachment_bytes),
        },
        in_reply_to=mail.message_id,
    )


def _holds_signed_id(data: bytes, key: bytes) -> bool:
    """Whether ``data`` holds a Message-ID of ours that proves an agent (mailcase.msgid)."""
    return bool(proofs_in(key, signed_ids_in(data.decode("latin-1"))))


def _unstored(mailbox: str, fetched: FetchedMessage) -> dict[str, object]:
    """For the agents' notice of a message too large to keep its attachments (only its
    beginning was parsed): its size, and where the whole of it is; {} otherwise.

    The case had a system note; the agents, who must ask the customer for the
    photos or open the message, were not told the message had any.
    """
    if fetched.spooled is None:
        return {}
    return {"size": _megabytes(fetched.full_size), "uid": fetched.uid, "mailbox": mailbox}


def _megabytes(size: int) -> str:
    """``size`` bytes for people: "5 MB", "2.5 MB", "800 KB" ("" for 0)."""
    if not size:
        return ""
    value, unit = (size / 1_000_000, "MB") if size >= 1_000_000 else (size / 1000, "KB")
    return f"{value:,.1f}".removesuffix(".0") + f" {unit}"


def _run_command(
    session: Session,
    settings: Settings,
    case: Case,
    command: Command,
    text: str,
    by: str,
    now_local: datetime,
    *,
    note: str = "",
) -> list[Case]:
    """Carry out one checked ``command`` (:func:`casework.command_problems` at ``now_local``,
    the time the visit checks are made at again, so that they cannot disagree). ``note``:
    the reply's text when it is kept as a note (what a new owner is shown). The reports
    of an outage a resolution of its main case resolved with it; [] for the rest."""
    kind = command.kind
    if kind is CommandKind.RESOLVE and command.outcome is not None:
        return casework.resolve(
            session, settings, case, command.outcome, text, by=by, record_cause=False
        )
    if kind is CommandKind.VISIT and command.cancel:
        casework.cancel_visit(session, settings, case, by=by, now_local=now_local)
    elif kind is CommandKind.VISIT and command.visit_date is not None:
        hour = command.visit_time.strftime("%H:%M") if command.visit_time else None
        casework.schedule_visit(
            session, settings, case, command.visit_date, hour, by=by, now_local=now_local
        )
    elif kind is CommandKind.ROUTE and command.area:
        casework.route(session, settings, case, command.area, by=by, note=text)
    elif kind is CommandKind.PARTICIPANT and command.address:
        casework.add_participant(session, settings, case, command.address, by=by)
    elif kind is CommandKind.CLOSE:
        casework.close(session, settings, case, by=by)
    elif kind is CommandKind.REOPEN:
        casework.reopen(session, case, by=by)
    elif kind is CommandKind.TYPE and command.case_type:
        casework.set_type(session, case, command.case_type, by=by)
    elif kind is CommandKind.ASSIGN:
        # "#asignar yo": the agent who wrote, verified as one (triage's Role.AGENT).
        owner = by if command.myself else None if command.nobody else command.owner
        casework.assign(session, settings, case, owner, by=by, note=note)
    elif kind is CommandKind.PENDING and command.stop:
        casework.clear_pending(session, case, by=by)  # the agent's reply says why, if at all
    elif kind is CommandKind.PENDING:
        days = command.days or settings.cases.pending_days
        waits.set_pending(session, settings, case, days, by=by)
    elif kind is CommandKind.MERGE:
        into = _merge_target(session, settings, command)
        assert into is not None  # checked with the reply's other commands
        merging.merge(session, settings, case, into, by=by, now_local=now_local)
    elif kind is CommandKind.SPAM and command.stop:
        casework.unmark_spam(session, case, by=by)
    elif kind is CommandKind.SPAM:
        casework.mark_spam(session, settings, case, by=by)
    elif kind is CommandKind.OUTAGE and command.update:
        pass  # "#masivo aviso": its text is relayed by the caller, to every customer of it
    elif kind is CommandKind.OUTAGE and command.stop:
        outages.leave_outage(session, case, by=by)
    elif kind is CommandKind.OUTAGE:
        main = _merge_target(session, settings, command)
        assert main is not None  # checked with the reply's other commands
        outages.join_outage(session, settings, case, main, by=by)
    # NOTE: the message itself was recorded as a note (relayed, for #pendiente, by the
    # caller); REPLY: the canned text was added to the relayed text by the caller
    # (_canned_reply); nothing else to do.
    return []


def _merge_target(session: Session, settings: Settings, command: Command) -> Case | None:
    """The case a ``#fusionar`` or ``#masivo`` names (read as a subject's folio is), locked,
    or None when it names no folio of a case. A merged one answers with the case it
    joined."""
    folios = find_folios(command.folio or "", settings.folio.prefix)
    found = case_by_folio(session, folios[0], for_update=True) if len(folios) == 1 else None
    # An erased case takes nothing more: it is no case to merge into (as for mail).
    return _answering(session, found)


def _inbound_text(mail: InboundMail, kind: str) -> str:
    """The text a ``kind`` message keeps on its case: a customer's forward whole
    (:func:`customer_text`), anyone else's words without quoted history."""
    if kind == "customer":
        return customer_text(mail.text, mail.subject)
    return strip_quoted(mail.text)


def _record_inbound(
    rt: Runtime,
    session: Session,
    case: Case,
    mail: InboundMail,
    raw_sha: str,
    kind: str,
    *,
    text: str | None = None,
) -> int:
    """Record ``mail`` on ``case`` as a ``kind`` message, with its attachments; its id."""
    assert case.id is not None
    message_id = insert_values(
        session,
        CaseMessage,
        case_id=case.id,
        direction="in",
        kind=kind,
        from_addr=mail.sender,
        to_addrs=", ".join(mail.to + mail.cc),
        subject=mail.subject,
        date=as_utc(mail.date) or utcnow(),
        message_id=mail.message_id,
        text=_inbound_text(mail, kind) if text is None else text,
        raw_sha256=raw_sha,
    )
    for attachment in mail.attachments:
        session.add(
            StoredAttachment(
                case_message_id=message_id,
                filename=attachment.filename,
                content_type=attachment.content_type,
                size=attachment.size,
                sha256=rt.blobs.put(attachment.payload),
            )
        )
    return message_id
