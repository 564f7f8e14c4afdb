"""Quarantine administration: list, dismiss, release and retry set-aside messages.

A message a poll quarantined (mailcase.service) keeps its ledger row and its
raw bytes; so does one the spam filter set aside. Here a person (``mailcase
messages``) lists the quarantined ones, dismisses one for good, retries one
from its stored bytes (from the server again when the server refused it or
the stored copy is lost), or releases one set aside as spam. A retry or a
release goes through the poll's own ingest (``service.ingest_message``), and
the old row is replaced in the transaction that writes the new one: when it
fails, the row stays as it was, and a message is never left without a row.
"""

from __future__ import annotations

import shutil
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from mailcase import service
from mailcase.errors import MailboxError, NotFoundError, StorageError
from mailcase.imap import HEAD_BYTES, FetchedMessage, ImapMailbox
from mailcase.models import Disposition, LedgerEntry
from mailcase.service import UNREADABLE, Runtime
from mailcase.store import table

_LEDGER = table(LedgerEntry)


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
        return service.ingest_message(rt, mailbox, uidvalidity, fetched, retry=True, released_by=by)
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
        return service.ingest_message(rt, mailbox, uidvalidity, fetched, retry=True)
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
        fetched = next(service.fetch_planned(rt, box, [uid]), None)
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
        raise service.not_stored(mailbox, uid, exc) from exc
    try:
        shutil.copyfile(source, spool)
        with source.open("rb") as raw:
            head = raw.read(HEAD_BYTES)
    except OSError as exc:
        spool.unlink(missing_ok=True)
        raise service.not_stored(mailbox, uid, rt.blobs.failed(exc)) from exc
    return FetchedMessage(uid=uid, raw=head, internal_date=received, spooled=spool, size=size)
