"""A customer's right of cancellation (LFPDPPP, "derechos ARCO"): erase what mailcase
keeps of one address, and keep the cases as statistics.

What is erased, for every case whose customer is the address (all of them
closed or resolved, and none with a notice still queued: :func:`erase` refuses
otherwise, and changes nothing):

* the case's customer (replaced by :data:`FORGOTTEN`, an address in RFC 2606's
  ``.invalid``, which no mail can come from or go to), name, subject and the
  explanation of the causes;
* every message of the case: sender, recipients, subject, text, Message-ID
  and raw copy (a system note keeps its text when it names no address: "case
  closed", "routed to area …"); agents' and operators' names stay as senders;
* its stored attachments (the rows), its participants, and its notices' bytes,
  recipient (unless an agent's or ours), Message-ID and last error;
* its ledger rows' Message-ID, dedup key, reason and raw copy;
* the raw messages and attachments in the message store, unless a row that
  stays still refers to the same file (the store is content-addressed: two
  customers sending the same PDF share one file);
* elsewhere: the address as a participant of another customer's case (the row
  goes) and the address written in another case's messages (replaced by
  :data:`FORGOTTEN`);
* its own mail on another customer's case (it took part and wrote): as its
  cases' messages (its ledger rows, the copy that reached a second mailbox of
  ours too: :func:`_copies_in_other_mailboxes`), and that case's notices sent to
  it or about its mail (one written before migration 0016, which names no
  message: quoting its words) lose their bytes (one that only names the address,
  copied by the other customer, is the other customer's and stays);
* its mail kept outside any case (a quarantined, bulk, automatic or bounced
  message whose stored header of :data:`LOOSE_FIELDS` names the address, one
  that copies it in :data:`COPIED_FIELDS` unless quarantined, or a bounce naming
  it in its text: ledger row as above, a quarantined one dismissed) and the
  notices of no case that name the address (the agents told of such a
  message): their bytes and Message-ID.

The address is matched whole (:func:`address_pattern`): maria.juan@example.com
is not juan@example.com.

:func:`erase_many` erases a set of addresses so (the retention by age,
:mod:`mailcase.retention`): the stored mail outside any case, the notices and the
messages are read once for the whole set, then the addresses are erased in batches,
one transaction each, skipping those :func:`erase` would refuse.
:func:`erase_loose_mail` erases the stored copies of old mail of no case, whoever
sent it.

What stays: folios, status, outcome, area, channel, mailbox, language, dates
and the number and kind of messages and notices, and a system note saying
when the data was erased. Erased cases are invisible to triage
(:func:`mailcase.casework.is_erased`): mail naming one of their folios or threads opens a new
case, linked to nothing.
"""

from __future__ import annotations

import contextlib
import email
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from email import policy
from pathlib import Path

import sqlalchemy as sa
from sqlmodel import Session, col, select

from mailcase.blobs import BlobStore, read_header

# Defined with the case's rules (is_erased beside it): ingest asks it of every case it
# meets, and need not load this module to do so.
from mailcase.casework import FORGOTTEN
from mailcase.errors import MailcaseError
from mailcase.inbound import senders_of
from mailcase.logs import get_logger
from mailcase.models import (
    Case,
    CaseMessage,
    CaseStatus,
    Disposition,
    KeyValue,
    LedgerEntry,
    Notice,
    NoticeStatus,
    Participant,
    StoredAttachment,
)
from mailcase.store import BLOB_REMOVAL_LOCK_KEY, Store, no_idle_timeout_here, utcnow

ERASED_REASON = "erased: the customer's data was cancelled"
# The headers of mail kept outside any case that name the address's mail: it sent
# it, or it was written to (a newsletter's To, a bounce's X-Failed-Recipients).
LOOSE_FIELDS = ("from", "sender", "reply-to", "x-failed-recipients")
# Mail that only copies the person is theirs too, unless it is quarantined: then it is
# someone else's report (a neighbour's complaint in Cc), which must stay retryable.
COPIED_FIELDS = ("to", "cc")
BOUNCE_READ = 1 << 20  # of a bounce kept outside any case, the part searched whole
TRUNCATE_TRIES = 5  # SQLite's log emptied after the erasure: tries 0.1 s apart, no more
PENDING = "erasure:pending:"  # key_values: files an erasure committed and must remove
WORKER_KINDS = ("agent", "note", "notice")  # case messages the desk wrote, never a customer
ERASED = "erased"  # a notice no longer sent, its bytes erased (as mailcase.outbox.ERASED)


class ErasureRefused(MailcaseError):
    """The address's data cannot be erased now (an open case, a queued notice)."""


class _Stopped(Exception):
    """A scan gave up half way: its ``stop`` was set (the daemon stopping)."""


# Rows of the stored mail read between two looks at ``stop``: the scan of a large
# first purge takes minutes, more than systemd waits for a stop (TimeoutStopSec).
STOP_EVERY = 200


def _check(stop: threading.Event | None) -> None:
    if stop is not None and stop.is_set():
        raise _Stopped


@dataclass(frozen=True, slots=True)
class Erasure:
    """What erasing an address touches (or touched): folios and counts, never the address."""

    folios: tuple[str, ...] = ()
    messages: int = 0  # case messages of those cases
    files: int = 0  # files of the message store removed (not shared with a row that stays)
    notices: int = 0  # notices of those cases
    ledger: int = 0  # ledger rows of those cases
    participations: tuple[str, ...] = ()  # other customers' cases the address took part in
    erased: bool = False
    files_left: tuple[str, ...] = field(default=())  # files that could not be removed
    # Rows of theirs outside any case: fetched mail (a quarantined or bulk message)
    # and notices about it (the agents told of a quarantined message).
    loose_ledger: tuple[int, ...] = ()
    loose_notices: tuple[int, ...] = ()
    # Its own mail on other customers' cases (it took part in them): the messages,
    # their ledger rows, and those cases' notices that name it (quoting its mail).
    elsewhere_messages: tuple[int, ...] = ()
    elsewhere_ledger: tuple[int, ...] = ()
    elsewhere_notices: tuple[int, ...] = ()
    elsewhere_copies: tuple[int, ...] = ()
    # Messages of other cases naming the address (it is replaced there).
    mentions: tuple[int, ...] = ()

    @property
    def anything(self) -> bool:
        return bool(
            self.folios
            or self.participations
            or self.loose_ledger
            or self.loose_notices
            or self.elsewhere_messages
            or self.elsewhere_notices
            or self.mentions
        )


def erase(
    store: Store,
    blob_dir: Path,
    address: str,
    *,
    insiders: frozenset[str],
    by: str,
    dry_run: bool,
) -> Erasure:
    """Erase what is kept of ``address`` (spelt as stored: canonical, lower case), in one
    transaction, then remove its files from the store at ``blob_dir``; with ``dry_run``
    only say what would be erased.

    Raises :class:`ErasureRefused`, changing nothing, when one of the address's
    cases is open or has a notice still queued, or when it is one of ``insiders``:
    the agents' and mailcase's own addresses (notices to them keep their recipient). The result's
    ``files_left`` names files that could not be removed after the commit (the
    database change stands; each later run tries them again). The files to remove
    are recorded in the erasure's transaction (key_values, :data:`PENDING`): when
    the process dies before removing them, the next run removes them first.
    """
    address = address.strip().lower()
    if not address or address == FORGOTTEN:
        return Erasure()
    if address in insiders:
        # Their answers on every customer's case are the desk's record, not their data.
        raise ErasureRefused(
            "that is an agent's or one of mailcase's own addresses (agents.addresses, a "
            "mailbox, a notify address), not a customer's: remove it from the configuration "
            "first to erase it as a customer's, nothing was erased"
        )
    alone = _Addresses([address])
    if dry_run:
        with store.read_session() as session:
            scan = _scan(session, alone, blob_dir)[address]
            return _survey(session, address, scan, blob_dir, lock=False)[0]
    blobs = BlobStore(blob_dir)
    # An earlier run that died between its commit and its files' removal.
    earlier_left = finish_pending_removals(store, blobs)
    now = utcnow()
    pending = f"{PENDING}{uuid.uuid4().hex}"
    # The long scan reads without the write lock (SQLite has one: the daemon's
    # writes failed "database is locked" while it read 300,000 rows); under the lock
    # only the rows added since are scanned.
    with store.read_session() as session:
        first = _scan(session, alone, blob_dir)
    with store.transaction() as session:
        scan = _scan(session, alone, blob_dir, since=first)[address]
        found, cases, orphans = _survey(session, address, scan, blob_dir, lock=True)
        if found.anything:
            _erase_rows(session, address, cases, found, insiders=insiders, now=now, by=by)
        if orphans:
            # With the erasure, in its transaction: a crash before the files are gone
            # leaves this record, and the next run removes them.
            session.add(KeyValue(key=pending, value="\n".join(sorted(orphans))))
    removed_left = _remove_files(store, blobs, orphans)
    if orphans:
        _settle(store, pending, [Path(p).name for p in removed_left])
    if found.anything and store.checkpointer is not None:
        # Its own checkpoints (PASSIVE, in a thread the commit woke) stopped first:
        # one running would make this one give up.
        store.checkpointer.close()
        _truncate_log(store.checkpointer.path)
    result = replace(
        found,
        files=found.files - len(removed_left),
        erased=found.anything,
        files_left=tuple(removed_left + earlier_left),
    )
    if found.anything:
        # Folios and counts only: the log must not keep what was just erased.
        get_logger().info(
            "customer_forgotten",
            cases=len(found.folios),
            folios=list(found.folios),
            participations=len(found.participations),
            files=result.files,
        )
    return result


# Customers erased per transaction by erase_many: each is some thirty statements, and
# on SQLite they hold the write lock the daemon's polls wait for. The stored files'
# hashes are not indexed (migration 0013 says why), so on SQLite each customer's check
# of the files still referred to reads three tables whole: a few customers a batch.
# PostgreSQL locks rows, not the database: ingest goes on beside a larger batch.
BATCH = 20
SQLITE_BATCH = 4


@dataclass(frozen=True, slots=True)
class Erasures:
    """What erasing a set of addresses touches (or touched): how many customers, their
    folios and counts, never an address (the caller holds those it asked for)."""

    customers: tuple[str, ...] = ()  # the addresses erased (or that would be), in order
    folios: tuple[str, ...] = ()
    messages: int = 0
    files: int = 0
    notices: int = 0
    skipped: int = 0  # refused (an open case, a queued notice) or no longer wanted
    erased: bool = False
    files_left: tuple[str, ...] = ()
    # Their rows outside any case (ledger, notices): an old one is the customer's, not
    # also old mail of no case (erase_loose_mail's dry run leaves them out).
    loose_ledger: tuple[int, ...] = ()
    loose_notices: tuple[int, ...] = ()


# Asked of each address under its transaction's lock, with what erasing it would touch:
# whether it is still to be erased (a purge by age: has it written since it was chosen?).
StillWanted = Callable[[Session, str, Erasure], bool]


def erase_many(
    store: Store,
    blob_dir: Path,
    addresses: Iterable[str],
    *,
    insiders: frozenset[str],
    by: str,
    dry_run: bool,
    still_wanted: StillWanted | None = None,
    batch: int | None = None,
    stop: threading.Event | None = None,
) -> Erasures:
    """Erase each of ``addresses`` as :func:`erase` erases one, skipping (never raising
    for) one that :func:`erase` would refuse or that ``still_wanted`` no longer wants.

    The stored messages kept outside any case are read once for all the addresses,
    without the write lock; then ``batch`` addresses (:data:`BATCH`; on SQLite
    :data:`SQLITE_BATCH`) are erased per transaction, each batch scanning again only
    the rows added since and surveying each address under its lock as :func:`erase`
    does. A crash midway leaves every address erased whole or untouched, and SQLite's
    write lock is free between
    batches. Logs nothing: the caller says what it did. With ``dry_run`` nothing
    changes; each address is surveyed alone (a file two of them share counts for
    neither: ``files`` is then at least). Once ``stop`` is set no further batch begins
    and the first scan gives up within :data:`STOP_EVERY` rows or one chunk of
    addresses (the daemon stopping: the rest, counted as skipped, waits for the next
    run); what was erased by then is returned.
    """
    wanted = _Addresses(a.strip().lower() for a in addresses)
    # An insider is refused as erase refuses it: skipped.
    wanted = _Addresses(a for a in wanted.addresses if a and a != FORGOTTEN and a not in insiders)
    if not wanted.addresses:
        return Erasures()
    if dry_run:
        with store.read_session() as session:
            try:
                scans = _scan(session, wanted, blob_dir, stop=stop)
            except _Stopped:
                return Erasures(skipped=len(wanted.addresses))
            survey = [
                (address, found)
                for address, found, _, _ in _surveys(
                    session, wanted, scans, blob_dir, False, still_wanted
                )
            ]
        return _tally(survey, len(wanted.addresses), erased=False)
    blobs = BlobStore(blob_dir)
    earlier_left = finish_pending_removals(store, blobs)
    # The long scan, once for every address, without the write lock (see erase).
    try:
        with store.read_session() as session:
            first = _scan(session, wanted, blob_dir, stop=stop)
    except _Stopped:
        return Erasures(skipped=len(wanted.addresses), files_left=tuple(earlier_left))
    done: list[tuple[str, Erasure]] = []
    left: list[str] = []
    default = SQLITE_BATCH if store.engine.dialect.name == "sqlite" else BATCH
    for chunk in wanted.chunks(max(1, batch or default)):
        if stop is not None and stop.is_set():
            break
        now = utcnow()
        pending = f"{PENDING}{uuid.uuid4().hex}"
        orphans: set[str] = set()
        erased_here: list[tuple[str, Erasure]] = []
        with store.transaction() as session:
            since = {a: first[a] for a in chunk.addresses}
            scans = _scan(session, chunk, blob_dir, since=since)
            # One address after the other: each survey sees the rows the ones before it
            # erased (a file two of them shared is no longer kept by the first).
            surveys = _surveys(session, chunk, scans, blob_dir, True, still_wanted)
            for address, found, cases, files in surveys:
                _erase_rows(session, address, cases, found, insiders=insiders, now=now, by=by)
                orphans |= files
                erased_here.append((address, found))
            if orphans:
                session.add(KeyValue(key=pending, value="\n".join(sorted(orphans))))
        removed_left = _remove_files(store, blobs, orphans)
        if orphans:
            _settle(store, pending, [Path(p).name for p in removed_left])
        left += removed_left
        done += erased_here
    if done and store.checkpointer is not None:
        store.checkpointer.close()
        _truncate_log(store.checkpointer.path)
    result = _tally(done, len(wanted.addresses), erased=bool(done))
    return replace(result, files=result.files - len(left), files_left=tuple(left + earlier_left))


def _surveys(
    session: Session,
    wanted: _Addresses,
    scans: Mapping[str, _Scan],
    blob_dir: Path,
    lock: bool,
    still_wanted: StillWanted | None,
) -> Iterator[tuple[str, Erasure, list[Case], set[str]]]:
    """The survey of each address ``wanted`` that has something to erase, is not refused
    and is still wanted; lazily, so that an erasure between two is seen by the next."""
    for address in wanted.addresses:
        try:
            found, cases, orphans = _survey(session, address, scans[address], blob_dir, lock=lock)
        except ErasureRefused:
            continue
        if found.anything and (still_wanted is None or still_wanted(session, address, found)):
            yield address, found, cases, orphans


def _tally(done: Sequence[tuple[str, Erasure]], asked: int, *, erased: bool) -> Erasures:
    return Erasures(
        customers=tuple(a for a, _ in done),
        folios=tuple(f for _, e in done for f in e.folios),
        messages=sum(e.messages for _, e in done),
        files=sum(e.files for _, e in done),
        notices=sum(e.notices for _, e in done),
        skipped=asked - len(done),
        erased=erased,
        loose_ledger=tuple(sorted({i for _, e in done for i in e.loose_ledger})),
        loose_notices=tuple(sorted({i for _, e in done for i in e.loose_notices})),
    )


LOOSE_REASON = "erased: kept longer than retention.inactive_days"
LOOSE_BATCH = 500  # loose messages erased per transaction


@dataclass(frozen=True, slots=True)
class LooseErasure:
    """Mail kept outside any case erased by age (or that would be): counts only."""

    messages: int = 0  # ledger rows whose stored copy went
    notices: int = 0  # notices of no case whose bytes went
    files: int = 0
    files_left: tuple[str, ...] = ()


def erase_loose_mail(
    store: Store,
    blob_dir: Path,
    before: datetime,
    *,
    dry_run: bool,
    theirs: Erasures | None = None,
    stop: threading.Event | None = None,
) -> LooseErasure:
    """Erase the stored copies of mail kept outside any case that was fetched before
    ``before`` (bulk, automatic replies, bounces, an agent's mail naming no case, a
    quarantined message someone dismissed; never one still quarantined, which waits
    for a person), as :func:`erase` erases an address's loose mail, and the bytes of
    the notices of no case created before it that are not queued (the agents told of
    such mail). The ledger rows stay (so the mail is never fetched again), their
    reason :data:`LOOSE_REASON`. At most :data:`LOOSE_BATCH` rows per transaction;
    with ``dry_run`` only counted. ``theirs``: the customers erased (or to be) just
    before, whose loose rows are theirs and not counted again here (a real run finds
    them erased already). Once ``stop`` is set no further batch begins."""
    with store.read_session() as session:
        skip_ledger = set(theirs.loose_ledger) if theirs else set()
        skip_notices = set(theirs.loose_notices) if theirs else set()
        ledger = [
            i
            for i in session.exec(
                select(LedgerEntry.id).where(*_loose_by_age(before)).order_by(col(LedgerEntry.id))
            ).all()
            if i is not None and i not in skip_ledger
        ]
        notices = [
            i
            for i in session.exec(
                select(Notice.id).where(*_loose_notices_by_age(before)).order_by(col(Notice.id))
            ).all()
            if i is not None and i not in skip_notices
        ]
        if dry_run:
            shas = set(
                session.exec(
                    select(LedgerEntry.raw_sha256).where(col(LedgerEntry.id).in_(ledger))
                ).all()
            )
            # The customers' rows go too: a file only they and these share counts here.
            files = len(shas - _kept_elsewhere(session, shas, [], sorted(skip_ledger) + ledger))
            return LooseErasure(messages=len(ledger), notices=len(notices), files=files)
    blobs = BlobStore(blob_dir)
    erased = files = 0
    left: list[str] = []
    for start in range(0, len(ledger), LOOSE_BATCH):
        if stop is not None and stop.is_set():
            break
        pending = f"{PENDING}{uuid.uuid4().hex}"
        with store.transaction() as session:
            # Read again under the lock: retried into a case or erased meanwhile.
            rows = session.exec(
                select(LedgerEntry).where(
                    col(LedgerEntry.id).in_(ledger[start : start + LOOSE_BATCH]),
                    *_loose_by_age(before),
                )
            ).all()
            ids = [r.id for r in rows if r.id is not None]
            shas = {r.raw_sha256 for r in rows}
            for entry in rows:
                _erase_ledger_row(entry)
                entry.reason = LOOSE_REASON
                session.add(entry)
            session.flush()
            orphans = shas - _kept_elsewhere(session, shas, [], ids)
            if orphans:
                session.add(KeyValue(key=pending, value="\n".join(sorted(orphans))))
        erased += len(ids)
        still = _remove_files(store, blobs, orphans)
        if orphans:
            _settle(store, pending, [Path(p).name for p in still])
        files += len(orphans) - len(still)
        left += still
    emptied = 0
    for start in range(0, len(notices), LOOSE_BATCH):
        if stop is not None and stop.is_set():
            break
        with store.transaction() as session:
            for notice in session.exec(
                select(Notice).where(
                    col(Notice.id).in_(notices[start : start + LOOSE_BATCH]),
                    *_loose_notices_by_age(before),
                )
            ).all():
                notice.raw = b""
                notice.last_error = ""
                notice.message_id = ""
                _never_again(notice)
                session.add(notice)
                emptied += 1
    return LooseErasure(messages=erased, notices=emptied, files=files, files_left=tuple(left))


def _loose_by_age(before: datetime) -> tuple[sa.ColumnElement[bool], ...]:
    return (
        col(LedgerEntry.case_id).is_(None),
        col(LedgerEntry.raw_sha256) != "",
        col(LedgerEntry.disposition) != Disposition.QUARANTINED,
        col(LedgerEntry.ingested_at) < before,
    )


def _loose_notices_by_age(before: datetime) -> tuple[sa.ColumnElement[bool], ...]:
    return (
        col(Notice.case_id).is_(None),
        col(Notice.status) != NoticeStatus.QUEUED,
        col(Notice.created_at) < before,
        sa.func.length(col(Notice.raw)) > 0,
    )


def _survey(
    session: Session, address: str, scan: _Scan, blob_dir: Path, *, lock: bool
) -> tuple[Erasure, list[Case], set[str]]:
    """What erasing ``address`` touches: the counts, its cases (locked with ``lock``) and
    the store's files (at ``blob_dir``) only those rows refer to. ErasureRefused as
    :func:`erase` says."""
    query = select(Case).where(Case.customer == address).order_by(col(Case.id))
    if lock:
        # One lock order for every writer (as close_stale_cases): no deadlock.
        query = query.with_for_update().execution_options(populate_existing=True)
    cases = list(session.exec(query).all())
    # Cases merged into theirs keep what they were opened with (a phone report's name
    # and subject as the agent typed them), with no address when merged before they
    # had one: theirs too. Followed down every chain of merges (A into B into C).
    seen = {c.id for c in cases}
    frontier = set(seen)
    while frontier:
        merged = select(Case).where(col(Case.merged_into_id).in_(frontier)).order_by(col(Case.id))
        if lock:
            merged = merged.with_for_update().execution_options(populate_existing=True)
        more = [c for c in session.exec(merged).all() if c.id not in seen]
        cases += more
        frontier = {c.id for c in more}
        seen |= frontier
    ids = [c.id for c in cases if c.id is not None]
    folios = {c.id: c.folio for c in cases}
    still_open = [c.folio for c in cases if c.status == CaseStatus.OPEN]
    if still_open:
        raise ErasureRefused(
            f"case(s) {', '.join(still_open)} of this customer are still open: "
            "resolve or close them first, nothing was erased"
        )
    queued = (
        session.exec(
            select(Notice.case_id).where(
                col(Notice.case_id).in_(ids), Notice.status == NoticeStatus.QUEUED
            )
        ).all()
        if ids
        else []
    )
    if queued:
        waiting = ", ".join(sorted({folios[c] for c in queued if c is not None}))
        raise ErasureRefused(
            f"case(s) {waiting} of this customer still have notices in the outbox: "
            "wait for the outbox to send them (mailcase outbox list), nothing was erased"
        )
    loose_ledger = list(scan.loose_ledger)
    loose_notices = scan.loose_notices
    if (
        loose_notices
        and session.exec(
            select(Notice.id).where(
                col(Notice.id).in_(loose_notices), Notice.status == NoticeStatus.QUEUED
            )
        ).first()
    ):
        raise ErasureRefused(
            "a notice to the agents about this customer's mail is still in the outbox: "
            "wait for the outbox to send it (mailcase outbox list), nothing was erased"
        )
    participations = session.exec(
        select(Case.id, Case.folio)
        .join(Participant, col(Participant.case_id) == col(Case.id))
        .where(Participant.address == address, col(Case.id).not_in(ids))
        .order_by(col(Case.id))
    ).all()
    elsewhere = _elsewhere(
        session, address, ids, [i for i, _ in participations if i is not None], blob_dir
    )
    if elsewhere.queued:
        raise ErasureRefused(
            f"case(s) {', '.join(elsewhere.queued)} where this customer wrote still have "
            "notices in the outbox: wait for the outbox to send them (mailcase outbox list), "
            "nothing was erased"
        )
    message_ids = (
        list(session.exec(select(CaseMessage.id).where(col(CaseMessage.case_id).in_(ids))).all())
        if ids
        else []
    )
    candidates: set[str] = {sha for _, sha in loose_ledger} | set(elsewhere.shas)
    if ids:
        candidates.update(
            s
            for s in session.exec(
                select(CaseMessage.raw_sha256).where(col(CaseMessage.case_id).in_(ids))
            ).all()
            if s
        )
        candidates.update(
            session.exec(
                select(LedgerEntry.raw_sha256).where(col(LedgerEntry.case_id).in_(ids))
            ).all()
        )
        candidates.update(
            session.exec(
                select(StoredAttachment.sha256).where(
                    col(StoredAttachment.case_message_id).in_(message_ids)
                )
            ).all()
        )
    candidates.discard("")
    orphans = candidates - _kept_elsewhere(
        session,
        candidates,
        ids,
        [i for i, _ in loose_ledger] + list(elsewhere.ledger),
        elsewhere.messages,
    )
    ledger = (
        len(
            session.exec(select(col(LedgerEntry.id)).where(col(LedgerEntry.case_id).in_(ids))).all()
        )
        if ids
        else 0
    )
    notices = (
        len(session.exec(select(col(Notice.id)).where(col(Notice.case_id).in_(ids))).all())
        if ids
        else 0
    )
    found = Erasure(
        folios=tuple(c.folio for c in cases),
        messages=len(message_ids) + len(loose_ledger) + len(elsewhere.messages),
        files=len(orphans),
        notices=notices + len(loose_notices) + len(elsewhere.notices),
        ledger=ledger + len(loose_ledger) + len(elsewhere.ledger),
        participations=tuple(folio for _, folio in participations),
        loose_ledger=tuple(i for i, _ in loose_ledger),
        loose_notices=loose_notices,
        elsewhere_messages=elsewhere.messages,
        elsewhere_ledger=elsewhere.ledger,
        elsewhere_notices=elsewhere.notices,
        elsewhere_copies=elsewhere.copies,
        mentions=_still_mentioning(session, address, scan.mentioning, ids),
    )
    return found, cases, orphans


def _still_mentioning(
    session: Session, address: str, found: Sequence[int], skip: Sequence[int]
) -> tuple[int, ...]:
    """Of the messages ``found`` naming ``address`` (an earlier scan, maybe in another
    transaction), those outside the cases ``skip`` that still name it: another instance
    may have erased it meanwhile (PostgreSQL), and it is then nothing to erase."""
    if not found:
        return ()
    pattern = address_pattern(address)
    return tuple(
        i
        for i, *texts in session.exec(
            select(CaseMessage.id, CaseMessage.from_addr, CaseMessage.to_addrs, CaseMessage.text)
            .where(col(CaseMessage.id).in_(found), col(CaseMessage.case_id).not_in(skip))
            .order_by(col(CaseMessage.id))
        ).all()
        if i is not None and any(pattern.search(t) for t in texts)
    )


@dataclass(frozen=True, slots=True)
class _Elsewhere:
    """The address's own mail on other customers' cases (it took part in them)."""

    messages: tuple[int, ...] = ()  # its messages there
    ledger: tuple[int, ...] = ()  # their ledger rows (a duplicate's too)
    shas: tuple[str, ...] = ()  # their raw copies and attachments in the store
    notices: tuple[int, ...] = ()  # those cases' notices to it or about its mail
    copies: tuple[int, ...] = ()  # and those cases' history's copies of them
    queued: tuple[str, ...] = ()  # folios of those with such a notice still queued


def _elsewhere(
    session: Session,
    address: str,
    skip: Sequence[int],
    took_part: Sequence[int],
    blob_dir: Path,
) -> _Elsewhere:
    """What :class:`_Elsewhere` holds, for the cases other than ``skip``; ``took_part``
    are the cases the address is a participant of; ``blob_dir`` the message store."""
    # The person's own mail: never a row of the desk's work (an agent's answer, a note,
    # a notice) that happens to carry the address as its sender.
    query = select(CaseMessage).where(
        CaseMessage.from_addr == address, col(CaseMessage.kind).not_in(WORKER_KINDS)
    )
    if skip:
        query = query.where(col(CaseMessage.case_id).not_in(skip))
    messages = list(session.exec(query.order_by(col(CaseMessage.id))).all())
    if not messages and not took_part:
        return _Elsewhere()
    message_ids = [m.id for m in messages if m.id is not None]
    case_ids = sorted({m.case_id for m in messages} | set(took_part))
    shas = {m.raw_sha256 for m in messages if m.raw_sha256}
    shas.update(
        session.exec(
            select(StoredAttachment.sha256).where(
                col(StoredAttachment.case_message_id).in_(message_ids)
            )
        ).all()
    )
    ledger = {m.ledger_id for m in messages if m.ledger_id is not None}
    if shas:
        # A copy of the same mail fetched again (a duplicate) is his too.
        ledger.update(
            i
            for i in session.exec(
                select(LedgerEntry.id).where(
                    col(LedgerEntry.case_id).in_({m.case_id for m in messages}),
                    col(LedgerEntry.raw_sha256).in_(sorted(shas)),
                )
            ).all()
            if i is not None
        )
    ledger |= _copies_in_other_mailboxes(session, address, messages, ledger, blob_dir)
    if ledger:
        shas.update(
            s
            for s in session.exec(
                select(LedgerEntry.raw_sha256).where(col(LedgerEntry.id).in_(sorted(ledger)))
            ).all()
            if s
        )
    # Their notices: one sent to the person, or one about their message (the agents
    # told of it on the case: notices.about_message_id, whatever it quotes: a photo
    # with no words). One naming no message (written before migration 0016, or about
    # none: a routing) is theirs when it quotes their words. A notice that only names
    # the address (the other customer copied them) is the other customer's, as their
    # mail is: it stays, and can still be retried.
    snippets = _snippets(m.text for m in messages)
    theirs = set(message_ids)
    notices, queued = [], set()
    about_theirs: set[int] = set()  # notices about one of their messages
    about_others: set[int] = set()  # and about someone else's
    for notice_id, status, rcpt_to, raw, about, folio in session.execute(
        sa.select(
            col(Notice.id), col(Notice.status), col(Notice.rcpt_to), col(Notice.raw),
            col(Notice.about_message_id), col(Case.folio),
        )
        .join(Case, col(Case.id) == col(Notice.case_id))
        .where(col(Notice.case_id).in_(case_ids))
        .order_by(col(Notice.id))
    ).all():  # fmt: skip
        if notice_id is None:
            continue
        if about is not None:
            (about_theirs if about in theirs else about_others).add(notice_id)
        if (
            rcpt_to == address
            or notice_id in about_theirs
            or (about is None and _quotes(snippets, _texts_of(bytes(raw))))
        ):
            notices.append(notice_id)
            if status == NoticeStatus.QUEUED:
                queued.add(folio)
    # The case's history keeps what each notice said (a message of kind "notice"): the
    # copy of one about their message is theirs, and one of a notice naming no message
    # that quotes them; a copy that only names the address is among the mentions (the
    # address replaced).
    copies = [
        m.id
        for m in session.exec(
            select(CaseMessage).where(
                col(CaseMessage.case_id).in_(case_ids), CaseMessage.kind == "notice"
            )
        ).all()
        if m.id is not None
        and (
            m.notice_id in about_theirs
            or (m.notice_id not in about_others and _quotes(snippets, [m.text]))
        )
    ]
    return _Elsewhere(
        messages=tuple(message_ids),
        copies=tuple(copies),
        ledger=tuple(sorted(ledger)),
        shas=tuple(sorted(shas - {""})),
        notices=tuple(notices),
        queued=tuple(sorted(queued)),
    )


def _copies_in_other_mailboxes(
    session: Session,
    address: str,
    messages: Sequence[CaseMessage],
    ledger: set[int],
    blob_dir: Path,
) -> set[int]:
    """The ``duplicate`` ledger rows of ``messages`` (the address's own mail on other
    customers' cases), on their cases, other than ``ledger`` (their rows found already):
    the copy that reached a second mailbox of ours (Cc to contacto@ and ventas@).

    Such a copy has bytes of its own (its Delivered-To, its Received), so neither the
    message's file nor its row's: it is found by the message's dedup key (its
    Message-ID, or its content's hash), and taken only when its stored From, Sender or
    Reply-To is the address, so that a Message-ID another sender reused (a device that
    sends every message under one id) takes no row of theirs.
    """
    keys = {m.message_id for m in messages if m.message_id}
    if ledger:
        keys.update(
            session.exec(
                select(LedgerEntry.dedup_key).where(col(LedgerEntry.id).in_(sorted(ledger)))
            ).all()
        )
    if not keys:
        return set()
    found: set[int] = set()
    for row_id, sha in session.exec(
        select(LedgerEntry.id, LedgerEntry.raw_sha256).where(
            col(LedgerEntry.case_id).in_(sorted({m.case_id for m in messages})),
            LedgerEntry.disposition == Disposition.DUPLICATE,
            col(LedgerEntry.dedup_key).in_(sorted(keys)),
            col(LedgerEntry.id).not_in(sorted(ledger)),
        )
    ).all():
        try:
            head = read_header(BlobStore.path_in(blob_dir, sha))
        except (OSError, ValueError):  # its file gone (or erased): nothing says whose it is
            continue
        if row_id is not None and address in senders_of(head):
            found.add(row_id)
    return found


@dataclass(frozen=True, slots=True)
class _Scan:
    """What only a scan of whole tables finds: the ledger rows of no case whose stored
    message the address sent, the notices of no case naming it, and the messages of
    any case naming it; with the highest id of each table the scan covered."""

    loose_ledger: tuple[tuple[int, str], ...] = ()
    loose_notices: tuple[int, ...] = ()
    mentioning: tuple[int, ...] = ()
    marks: tuple[int, int, int] = (0, 0, 0)  # ledger, notices, case_messages


# How many addresses one query of the messages' texts looks for (the database's
# "contains" reads every row whatever it looks for; a statement of thousands of
# LIKEs is too deep for SQLite's parser).
SCAN_CHUNK = 50


class _Addresses:
    """A set of addresses (canonical), found whole in a text by one pass of one pattern
    (as :func:`address_pattern` finds one): reading a stored message once serves all."""

    def __init__(self, addresses: Iterable[str]) -> None:
        self.addresses = tuple(sorted(set(addresses)))
        self.members = frozenset(self.addresses)
        self._spelt = {s.lower(): a for a in self.addresses for s in _spellings(a)}
        alternatives = "|".join(re.escape(s) for s in sorted(self._spelt, key=len, reverse=True))
        self._pattern = re.compile(
            f"{_LOCAL_BEFORE}(?:{alternatives}){_DOMAIN_AFTER}", re.IGNORECASE
        )

    def found_in(self, texts: Iterable[str]) -> set[str]:
        """The addresses of the set that one of ``texts`` holds as a whole address."""
        found: set[str] = set()
        if not self.addresses:
            return found
        for text in texts:
            for match in self._pattern.finditer(text):
                spelt = match.group()
                address = self._spelt.get(spelt.lower())
                if address is None:  # a case folding lower() does not undo (Unicode)
                    address = next(
                        (a for a in self.addresses if address_pattern(a).fullmatch(spelt)), None
                    )
                if address is not None:
                    found.add(address)
            if found == self.members:
                break
        return found

    def chunks(self, size: int) -> Iterator[_Addresses]:
        for start in range(0, len(self.addresses), size):
            yield _Addresses(self.addresses[start : start + size])


def _scan(
    session: Session,
    wanted: _Addresses,
    blob_dir: Path,
    *,
    since: Mapping[str, _Scan] | None = None,
    stop: threading.Event | None = None,
) -> dict[str, _Scan]:
    """:class:`_Scan` of every address ``wanted``, each table read once for all of them
    (the stored headers, the longest part, once whatever their number); with ``since``
    (earlier scans of the same addresses, in another transaction, all up to the same
    marks) only the rows added after them are scanned, and what they found is read
    again by id (a quarantined message retried into a case since is no longer loose).
    Raises :class:`_Stopped` once ``stop`` is set (looked at every :data:`STOP_EVERY`
    rows and every chunk of addresses)."""
    after = next(iter(since.values())).marks if since else (0, 0, 0)
    if since is None:
        # A whole scan reads every stored header between two statements: longer than
        # PostgreSQL's idle timeout for a transaction (mailcase.store) on a big store.
        # Its reading transaction holds no lock an ingest waits for.
        no_idle_timeout_here(session)
    marks = (
        session.exec(select(sa.func.max(LedgerEntry.id))).one() or 0,
        session.exec(select(sa.func.max(Notice.id))).one() or 0,
        session.exec(select(sa.func.max(CaseMessage.id))).one() or 0,
    )
    ledger = _loose_ledger(session, wanted, blob_dir, after[0], marks[0], stop)
    notices = _loose_notices(session, wanted, after[1], marks[1], stop)
    mentioning = _mentioning(session, wanted, after[2], marks[2], stop)
    if since:
        was = {i: sha for s in since.values() for i, sha in s.loose_ledger}
        still_ledger = {
            i
            for i, sha in session.exec(
                select(LedgerEntry.id, LedgerEntry.raw_sha256).where(
                    col(LedgerEntry.id).in_(sorted(was)), col(LedgerEntry.case_id).is_(None)
                )
            ).all()
            if i is not None and sha and was[i] == sha
        }
        still_notices = {
            i
            for i in session.exec(
                select(Notice.id).where(
                    col(Notice.id).in_(
                        sorted({n for s in since.values() for n in s.loose_notices})
                    ),
                    col(Notice.case_id).is_(None),
                )
            ).all()
            if i is not None
        }
        for address, earlier in since.items():
            if address not in wanted.members:
                continue
            ledger[address] = [
                row for row in earlier.loose_ledger if row[0] in still_ledger
            ] + ledger[address]
            notices[address] = [n for n in earlier.loose_notices if n in still_notices] + notices[
                address
            ]
            mentioning[address] = list(earlier.mentioning) + mentioning[address]
    upto = (max(marks[0], after[0]), max(marks[1], after[1]), max(marks[2], after[2]))
    return {
        address: _Scan(
            loose_ledger=tuple(sorted(ledger[address])),
            loose_notices=tuple(sorted(notices[address])),
            mentioning=tuple(sorted(mentioning[address])),
            marks=upto,
        )
        for address in wanted.addresses
    }


def _loose_ledger(
    session: Session,
    wanted: _Addresses,
    blob_dir: Path,
    after: int,
    upto: int,
    stop: threading.Event | None = None,
) -> dict[str, list[tuple[int, str]]]:
    """Per address ``wanted``: (id, raw sha256) of the ledger rows of no case, ids
    ``after`` < id <= ``upto``, whose stored message names the address in a header of
    :data:`LOOSE_FIELDS` (it sent the quarantined, dismissed, bulk or automatic mail,
    or a bounce names it), in To or Cc of one that is not quarantined (someone else's
    quarantined report that copies it stays, to be retried), or anywhere in a bounce's
    text (a delivery report of a message to it).

    The ledger keeps no sender, so each stored header is read, once for every address:
    a manual or daily task can afford what the ingest path could not.
    """
    found: dict[str, list[tuple[int, str]]] = {a: [] for a in wanted.addresses}
    if not wanted.addresses:
        return found
    rows = session.exec(
        select(LedgerEntry.id, LedgerEntry.raw_sha256, LedgerEntry.disposition)
        .where(
            col(LedgerEntry.case_id).is_(None),
            LedgerEntry.raw_sha256 != "",
            col(LedgerEntry.id) > after,
            col(LedgerEntry.id) <= upto,
        )
        .order_by(col(LedgerEntry.id))
    ).all()
    for n, (row_id, sha, disposition) in enumerate(rows):
        if n % STOP_EVERY == 0:
            _check(stop)
        try:
            path = BlobStore.path_in(blob_dir, sha)
            head = read_header(path)
            named = set(senders_of(head, LOOSE_FIELDS) & wanted.members)
            if disposition != Disposition.QUARANTINED:
                named |= senders_of(head, COPIED_FIELDS) & wanted.members
            if disposition == Disposition.BOUNCE and named != wanted.members:
                # A delivery report names the recipient in its text (RFC 3464's
                # Final-Recipient), not in a header; the address leads it.
                with path.open("rb") as raw:
                    named |= wanted.found_in(_texts_of(raw.read(BOUNCE_READ)))
        except (OSError, ValueError):  # the file gone, or no sha256: nothing to read
            continue
        if row_id is not None:
            for address in named:
                found[address].append((row_id, sha))
    return found


def _loose_notices(
    session: Session,
    wanted: _Addresses,
    after: int,
    upto: int,
    stop: threading.Event | None = None,
) -> dict[str, list[int]]:
    """Per address ``wanted``: notices of no case, ids ``after`` < id <= ``upto``, whose
    bytes name it (the agents told of a quarantined message from it, of an agent's mail
    about it that named no case)."""
    found: dict[str, list[int]] = {a: [] for a in wanted.addresses}
    if not wanted.addresses:
        return found
    rows = session.exec(
        select(Notice.id, Notice.raw).where(
            col(Notice.case_id).is_(None), col(Notice.id) > after, col(Notice.id) <= upto
        )
    ).all()
    for n, (notice_id, raw) in enumerate(rows):
        if n % STOP_EVERY == 0:
            _check(stop)
        if notice_id is not None:
            for address in wanted.found_in(_texts_of(bytes(raw))):
                found[address].append(notice_id)
    return found


# Characters of an address's local part (RFC 5322 atext and the dot; \w takes in the
# letters of RFC 6532's UTF-8 ones) and of a domain: an address found with one of them
# just before it, or one of a domain's just after it, is another address that merely
# contains it (maria.juan@example.com, juan@example.com.mx). A dot that ends a
# sentence ("escriba a juan@example.com.") is no domain's.
_LOCAL_BEFORE = r"(?<![\w!#$%&'*+/=?^`{|}~.-])"
_DOMAIN_AFTER = r"(?![\w-])(?!\.[\w-])"


def _spellings(address: str) -> list[str]:
    """``address`` with its domain in IDNA and, when it has one, in Unicode."""
    spellings = [address]
    local, _, domain = address.rpartition("@")
    with contextlib.suppress(UnicodeError):
        unicode_form = f"{local}@{domain.encode('ascii').decode('idna')}"
        if unicode_form != address:
            spellings.append(unicode_form)
    return spellings


def address_pattern(address: str) -> re.Pattern[str]:
    """A pattern finding ``address`` (canonical: lower case, its domain in IDNA) as a
    whole address in a text, in any case, its domain in either form (``xn--…`` or
    Unicode); never inside a longer address."""
    alternatives = "|".join(
        re.escape(s) for s in sorted(_spellings(address), key=len, reverse=True)
    )
    return re.compile(f"{_LOCAL_BEFORE}(?:{alternatives}){_DOMAIN_AFTER}", re.IGNORECASE)


def _texts_of(raw: bytes) -> Iterator[str]:
    """The message ``raw`` as text: its bytes as they are, then its headers and text
    parts decoded; nothing more of a message too damaged to parse."""
    if not raw:
        return
    yield raw.decode("utf-8", "replace")
    try:
        message = email.message_from_bytes(raw, policy=policy.default)
        for part in message.walk():
            yield from (str(value) for value in part.values())
            if not part.is_multipart() and part.get_content_maintype() == "text":
                payload = part.get_payload(decode=True)
                if isinstance(payload, bytes):
                    charset = part.get_content_charset() or "utf-8"
                    try:
                        yield payload.decode(charset, "replace")
                    except LookupError:
                        yield payload.decode("utf-8", "replace")
    except Exception:  # a notice too damaged to parse: its bytes were given above
        return


# How much of the person's own words marks a notice as quoting them: the first
# characters of each of their messages (whitespace folded), when there are enough
# to mean it (a "Gracias" is anyone's).
_QUOTE_CHARS = 60
_QUOTE_MIN = 20


def _snippets(texts: Iterable[str]) -> list[str]:
    folded = (" ".join(text.split()) for text in texts)
    return [text[:_QUOTE_CHARS] for text in folded if len(text) >= _QUOTE_MIN]


def _quotes(snippets: Sequence[str], texts: Iterable[str]) -> bool:
    """Whether one of ``texts`` holds one of ``snippets`` (whitespace folded)."""
    return bool(snippets) and any(
        snippet in " ".join(text.split()) for text in texts for snippet in snippets
    )


def _kept_elsewhere(
    session: Session,
    shas: set[str],
    case_ids: Sequence[int],
    ledger_ids: Sequence[int],
    message_ids: Sequence[int] = (),
) -> set[str]:
    """Which of ``shas`` a row that stays refers to: one outside the cases ``case_ids``,
    the ledger rows ``ledger_ids`` (a ledger row of no case included) and the messages
    ``message_ids`` (and their attachments)."""
    if not shas:
        return set()
    wanted = sorted(shas)
    kept: set[str] = set()
    kept.update(
        s
        for s in session.exec(
            select(LedgerEntry.raw_sha256).where(
                col(LedgerEntry.raw_sha256).in_(wanted),
                (col(LedgerEntry.case_id).is_(None)) | col(LedgerEntry.case_id).not_in(case_ids),
                col(LedgerEntry.id).not_in(ledger_ids),
            )
        ).all()
    )
    kept.update(
        s
        for s in session.exec(
            select(CaseMessage.raw_sha256).where(
                col(CaseMessage.raw_sha256).in_(wanted),
                col(CaseMessage.case_id).not_in(case_ids),
                col(CaseMessage.id).not_in(message_ids),
            )
        ).all()
        if s is not None
    )
    kept.update(
        session.exec(
            select(StoredAttachment.sha256)
            .join(CaseMessage, col(CaseMessage.id) == col(StoredAttachment.case_message_id))
            .where(
                col(StoredAttachment.sha256).in_(wanted),
                col(CaseMessage.case_id).not_in(case_ids),
                col(CaseMessage.id).not_in(message_ids),
            )
        ).all()
    )
    return kept


def _erase_rows(
    session: Session,
    address: str,
    cases: list[Case],
    found: Erasure,
    *,
    insiders: frozenset[str],
    now: datetime,
    by: str,
) -> None:
    """The erasure itself, in the caller's transaction (see the module docstring)."""
    from mailcase.casework import record

    ids = [c.id for c in cases if c.id is not None]
    mention = address_pattern(address)
    if ids:
        messages = session.exec(select(CaseMessage).where(col(CaseMessage.case_id).in_(ids))).all()
        message_ids = [m.id for m in messages]
        for row in session.exec(
            select(StoredAttachment).where(col(StoredAttachment.case_message_id).in_(message_ids))
        ).all():
            session.delete(row)
        for message in messages:
            # Who worked the case (an agent, an operator, mailcase) is no customer data.
            worker = message.kind in ("agent", "note", "system") and (
                message.from_addr in insiders or "@" not in message.from_addr
            )
            message.from_addr = message.from_addr if worker else ""
            message.to_addrs = ""
            message.subject = ""
            # "case closed", "routed to area soporte": mailcase's record of what happened,
            # kept; "participant juan@… added" names someone, and goes, as does a mail
            # kept as "system" (an auto-reply naming the folio: it has a raw copy).
            keep_text = (
                message.kind == "system" and message.raw_sha256 is None and "@" not in message.text
            )
            message.text = message.text if keep_text else ""
            message.message_id = None
            message.raw_sha256 = None
            session.add(message)
        for participant in session.exec(
            select(Participant).where(col(Participant.case_id).in_(ids))
        ).all():
            session.delete(participant)
        for notice in session.exec(select(Notice).where(col(Notice.case_id).in_(ids))).all():
            notice.raw = b""
            notice.rcpt_to = notice.rcpt_to if notice.rcpt_to in insiders else FORGOTTEN
            # A late delivery report naming it must not find the case again.
            notice.message_id = ""
            notice.last_error = ""
            _never_again(notice)
            session.add(notice)
        for entry in session.exec(select(LedgerEntry).where(col(LedgerEntry.case_id).in_(ids))):
            _erase_ledger_row(entry)
            session.add(entry)
        day = now.date().isoformat()
        for case in cases:
            case.customer = FORGOTTEN
            case.customer_name = ""
            case.subject = ""
            case.cause = None
            case.updated_at = now
            session.add(case)
            session.flush()
            record(
                session,
                case,
                "system",
                f"the customer's personal data was erased on {day} (right of cancellation)",
                from_addr=by,
            )
    if found.loose_ledger:
        for entry in session.exec(
            select(LedgerEntry).where(col(LedgerEntry.id).in_(found.loose_ledger))
        ):
            _erase_ledger_row(entry)
            # Without its stored copy a quarantined message can only be fetched again
            # (messages retry): set aside for good instead, as `messages dismiss` does.
            if entry.disposition == Disposition.QUARANTINED:
                entry.disposition = Disposition.DISMISSED
            session.add(entry)
    if found.loose_notices:
        for notice in session.exec(select(Notice).where(col(Notice.id).in_(found.loose_notices))):
            notice.raw = b""
            notice.last_error = ""
            notice.message_id = ""
            _never_again(notice)
            session.add(notice)
    # Its own mail on another customer's case (it took part, and wrote): erased as
    # its own cases' messages are; the case's notices quoting it lose their bytes.
    _erase_elsewhere(session, address, found)
    # Elsewhere: the address as a participant of another customer's case, and written
    # in that case's messages (a system note adding it, its mail's sender or Cc).
    for participant in session.exec(select(Participant).where(Participant.address == address)):
        session.delete(participant)
    for message in session.exec(
        select(CaseMessage).where(col(CaseMessage.id).in_(found.mentions))
    ).all():
        message.from_addr = mention.sub(FORGOTTEN, message.from_addr)
        message.to_addrs = mention.sub(FORGOTTEN, message.to_addrs)
        message.text = mention.sub(FORGOTTEN, message.text)
        session.add(message)
    session.flush()


def _erase_elsewhere(session: Session, address: str, found: Erasure) -> None:
    """Erase the address's messages on other cases, their attachments' rows and ledger
    rows, and empty those cases' notices that name it (see :class:`_Elsewhere`)."""
    if found.elsewhere_messages:
        ids = list(found.elsewhere_messages)
        for row in session.exec(
            select(StoredAttachment).where(col(StoredAttachment.case_message_id).in_(ids))
        ).all():
            session.delete(row)
        for message in session.exec(select(CaseMessage).where(col(CaseMessage.id).in_(ids))):
            message.from_addr = FORGOTTEN  # the case's history says someone wrote
            message.to_addrs = ""
            message.subject = ""
            message.text = ""
            message.message_id = None
            message.raw_sha256 = None
            session.add(message)
    if found.elsewhere_ledger:
        for entry in session.exec(
            select(LedgerEntry).where(col(LedgerEntry.id).in_(found.elsewhere_ledger))
        ):
            _erase_ledger_row(entry)
            session.add(entry)
    if found.elsewhere_notices:
        for notice in session.exec(
            select(Notice).where(col(Notice.id).in_(found.elsewhere_notices))
        ):
            # Its Message-ID is ours: an agent's reply to it still finds the other
            # customer's case. Its recipient is the agents', or the address's own.
            notice.raw = b""
            notice.rcpt_to = FORGOTTEN if notice.rcpt_to == address else notice.rcpt_to
            _never_again(notice)
            session.add(notice)
    if found.elsewhere_copies:
        for message in session.exec(
            select(CaseMessage).where(col(CaseMessage.id).in_(found.elsewhere_copies))
        ):
            # It quoted the person's own words (the agents told of their message):
            # theirs. A copy that only names the address is among the mentions.
            message.text = ""
            session.add(message)


def _never_again(notice: Notice) -> None:
    """A failed notice whose bytes were erased is never sent again (``outbox retry``
    would have sent the agents an empty message, and a bounced acknowledgement to
    :data:`FORGOTTEN`): suppressed, its last error :data:`ERASED`."""
    if notice.status == NoticeStatus.FAILED:
        notice.status = NoticeStatus.SUPPRESSED
        notice.last_error = ERASED


def _erase_ledger_row(entry: LedgerEntry) -> None:
    entry.message_id = None
    entry.dedup_key = f"erased:{entry.id}"  # matches no message's key
    entry.reason = ERASED_REASON
    entry.raw_sha256 = ""


def _mentioning(
    session: Session,
    wanted: _Addresses,
    after: int,
    upto: int,
    stop: threading.Event | None = None,
) -> dict[str, list[int]]:
    """Per address ``wanted``: messages, ids ``after`` < id <= ``upto``, whose sender,
    recipients or text hold it as a whole address (see :func:`address_pattern`)."""
    found: dict[str, list[int]] = {a: [] for a in wanted.addresses}
    columns = (col(CaseMessage.from_addr), col(CaseMessage.to_addrs), col(CaseMessage.text))
    for chunk in wanted.chunks(SCAN_CHUNK):
        _check(stop)  # each chunk reads every message's text: seconds on a long history
        # The database's "contains" only narrows the rows down (it finds the address in
        # maria.juan@example.com too); the pattern decides. autoescape: "_" is a wildcard.
        query = select(
            CaseMessage.id, CaseMessage.from_addr, CaseMessage.to_addrs, CaseMessage.text
        ).where(
            col(CaseMessage.id) > after,
            col(CaseMessage.id) <= upto,
            sa.or_(
                *(
                    c.icontains(s, autoescape=True)
                    for c in columns
                    for a in chunk.addresses
                    for s in _spellings(a)
                )
            ),
        )
        for message_id, *texts in session.exec(query).all():
            if message_id is not None:
                for address in chunk.found_in(texts):
                    found[address].append(message_id)
    return found


def finish_pending_removals(store: Store, blobs: BlobStore) -> list[str]:
    """Remove the files that erasures committed but did not remove (the process died
    after its commit), unless a row refers to one again (the store is content-addressed:
    another customer may have sent the same file since); the paths still left."""
    with store.read_session() as session:
        records = session.exec(
            select(KeyValue).where(col(KeyValue.key).startswith(PENDING, autoescape=True))
        ).all()
        if not records:
            return []
        wanted = {sha for r in records for sha in r.value.split() if sha}
        kept = _kept_elsewhere(session, wanted, [], [])
    left: list[str] = []
    for record in records:
        shas = {sha for sha in record.value.split() if sha} - kept
        still = _remove_files(store, blobs, shas)
        left += still
        _settle(store, record.key, [Path(p).name for p in still])
    return left


def _settle(store: Store, key: str, left: list[str]) -> None:
    """The pending removal ``key`` done, but for the files ``left`` (tried again next time)."""
    with store.transaction() as session:
        record = session.get(KeyValue, key)
        if record is None:
            return
        if left:
            record.value = "\n".join(sorted(left))
            session.add(record)
        else:
            session.delete(record)


def _truncate_log(database: Path) -> None:
    """Copy SQLite's write-ahead log into the database and empty it, if that can be done
    at once: the log keeps the pages as they were before the erasure until they are
    overwritten. Hardly waits (busy_timeout 0, :data:`TRUNCATE_TRIES` tries: a reader
    in the middle of a transaction, the daemon's, makes it give up) and never raises;
    says in the log when it gave up."""
    busy: object = None
    for _ in range(TRUNCATE_TRIES):
        try:
            with contextlib.closing(sqlite3.connect(database, timeout=0)) as conn:
                conn.execute("PRAGMA busy_timeout=0")
                busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error as exc:
            busy = str(exc)
        if not busy:
            return
        time.sleep(0.1)  # the daemon's write or read is usually over by then
    get_logger().info("erasure_log_not_truncated", reason=str(busy))


def _remove_files(store: Store, blobs: BlobStore, shas: Iterable[str]) -> list[str]:
    """Remove the files ``shas`` from ``blobs``, but those a row refers to again; the paths
    that could not be removed.

    The store is content-addressed and writes a file once: mail ingested meanwhile
    with the same file (another customer's copy of a contract) refers to the one
    already there, which must stay. So the rows are read again, and the files
    unlinked, in one transaction that excludes ingest's: on SQLite it holds the write
    lock; on PostgreSQL :data:`~mailcase.store.BLOB_REMOVAL_LOCK_KEY` exclusive, which
    each ingest transaction takes shared (:func:`mailcase.service._existing`). Mail
    committed before is seen here and keeps its files; mail ingested after finds
    its file gone, under its own lock, and writes it again
    (:func:`mailcase.service._still_stored`, and its attachments' ``put``).
    """
    wanted = set(shas)
    if not wanted:
        return []
    left = []
    with store.transaction() as session:
        if session.get_bind().dialect.name == "postgresql":
            session.execute(sa.select(sa.func.pg_advisory_xact_lock(BLOB_REMOVAL_LOCK_KEY)))
        # On SQLite this first statement takes the write lock (BEGIN IMMEDIATE).
        kept = _kept_elsewhere(session, wanted, [], [])
        for sha in sorted(wanted - kept):
            path = blobs.path(sha)
            try:
                path.unlink(missing_ok=True)
            except OSError:
                left.append(str(path))
    return left
