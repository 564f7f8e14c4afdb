"""Use-cases: poll one mailbox, ingest one message. Wires the pure core to the adapters.

Every fetched message ends in exactly one ledger row, written in the same
transaction as the case change and the notices it causes, together with the
mailbox's UID checkpoint. A message that makes any step raise is quarantined
in a transaction of its own (raw bytes kept) and the poll goes on; only a
failure to reach the mailbox or the database stops a mailbox's poll, and then
nothing is checkpointed that was not committed, so the next poll resumes.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from email.policy import SMTP as SMTP_POLICY
from email.policy import SMTPUTF8 as SMTPUTF8_POLICY
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col, func, select

from mailcase.blobs import BlobStore
from mailcase.classify import Classification, MailKind, classify, is_automatic_address
from mailcase.config import MailboxSettings, Settings
from mailcase.errors import DatabaseError, MessageError, NotFoundError
from mailcase.folio import (
    find_folios,
    format_folio,
    new_message_id,
    remove_folio_tags,
    strip_reply_prefixes,
    tagged_subject,
)
from mailcase.imap import FetchedMessage, ImapMailbox
from mailcase.inbound import InboundMail, parse_inbound
from mailcase.logs import get_logger
from mailcase.models import (
    Case,
    CaseMessage,
    CaseStatus,
    Checkpoint,
    Disposition,
    LedgerEntry,
    Notice,
    NoticeStatus,
    StoredAttachment,
)
from mailcase.quoting import strip_quoted
from mailcase.render import Envelope, build_message, render_body
from mailcase.store import (
    Store,
    as_utc,
    case_by_folio,
    case_by_message_ids,
    ledger_by_key,
    next_folio_number,
    utcnow,
)
from mailcase.triage import CaseRef, Decision, Facts, triage


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
        return cls(settings=settings, store=store, blobs=BlobStore(settings.storage.directory))


@dataclass
class MailboxReport:
    mailbox: str
    fetched: int = 0
    dispositions: Counter[str] = field(default_factory=Counter)


def poll_mailbox(rt: Runtime, name: str) -> MailboxReport:
    """Ingest every message of mailbox ``name`` above its checkpoint.

    Raises :class:`~mailcase.errors.MailboxError` when the mailbox cannot be
    read; what was committed before stays committed.
    """
    settings = rt.settings.mailboxes[name]
    report = MailboxReport(mailbox=name)
    log = get_logger(mailbox=name)
    with ImapMailbox(name, settings) as box:
        last_uid = _checkpoint(rt.store, name, box.uidvalidity, log)
        uids = box.uids_after(last_uid)
        handled: list[int] = []
        for fetched in _fetch_planned(rt, box, uids):
            disposition = ingest_message(rt, name, box.uidvalidity, fetched)
            report.fetched += 1
            report.dispositions[disposition] += 1
            handled.append(fetched.uid)
            if len(handled) >= rt.settings.poll.batch_size:
                box.mark_done(handled)
                handled = []
            if rt.stop.is_set():
                break  # SIGTERM: the message in hand is finished; stop here
        box.mark_done(handled)
        # Flags lost to a crash between commit and STORE are put right here.
        box.mark_done(box.unflagged_below(last_uid))
        with rt.store.transaction() as session:
            checkpoint = session.get(Checkpoint, name)
            if checkpoint is not None:
                checkpoint.last_poll_at = utcnow()
                session.add(checkpoint)
    log.info("mailbox_polled", fetched=report.fetched, **dict(report.dispositions))
    return report


BATCH_BYTES = 32 * 1024 * 1024  # at most this much message data in memory per FETCH


def _fetch_planned(rt: Runtime, box: ImapMailbox, uids: list[int]) -> Iterator[FetchedMessage]:
    """Fetch ``uids`` in order: ordinary mail in batches bounded by count and bytes,
    mail over ``limits.max_message_bytes`` streamed to a spool file one at a time."""
    if not uids:
        return
    sizes = box.sizes(uids)
    limit = rt.settings.limits.max_message_bytes
    batch: list[int] = []
    batch_bytes = 0

    def flush() -> Iterator[FetchedMessage]:
        yield from box.fetch(batch, len(batch) or 1)

    for uid in uids:
        size = sizes.get(uid, 0)
        if size > limit:
            yield from flush()
            batch, batch_bytes = [], 0
            spooled = box.fetch_spooled(uid, size, rt.blobs.spool_path())
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


def _checkpoint(store: Store, name: str, uidvalidity: int, log: Any) -> int:
    """The last UID ingested for (name, uidvalidity); a new UIDVALIDITY starts over."""
    with store.transaction() as session:
        checkpoint = session.get(Checkpoint, name)
        if checkpoint is None:
            session.add(Checkpoint(mailbox=name, uidvalidity=uidvalidity, last_uid=0))
            return 0
        if checkpoint.uidvalidity != uidvalidity:
            # RFC 3501 2.3.1.1: old UIDs mean nothing now. Rescan everything;
            # messages already ingested are recognised by their Message-ID (or
            # content hash) and re-mapped, not ingested again.
            log.warning("uidvalidity_changed", old=checkpoint.uidvalidity, new=uidvalidity)
            checkpoint.uidvalidity = uidvalidity
            checkpoint.last_uid = 0
            session.add(checkpoint)
            return 0
        return checkpoint.last_uid


def ingest_message(rt: Runtime, mailbox: str, uidvalidity: int, fetched: FetchedMessage) -> str:
    """Process one fetched message; return its disposition. Never raises for bad mail.

    The raw bytes are stored first (idempotent, content-addressed), so even a
    message that fails every later step is kept and can be retried.
    """
    log = get_logger(mailbox=mailbox, uid=fetched.uid)
    raw_sha = rt.blobs.put_file(fetched.spooled) if fetched.spooled else rt.blobs.put(fetched.raw)
    try:
        with rt.store.transaction() as session:
            entry = _ingest(rt, session, mailbox, uidvalidity, fetched, raw_sha)
    except DatabaseError:
        raise
    except Exception as exc:  # a bad message costs one message (Mailman's runner)
        reason = _error_reason(exc)
        log.warning("message_quarantined", disposition="quarantined", reason=reason)
        try:
            with rt.store.transaction() as session:
                entry = _quarantine(session, mailbox, uidvalidity, fetched, raw_sha, reason)
        except SQLAlchemyError as db_exc:
            raise DatabaseError(
                f"cannot record message {fetched.uid} of mailbox {mailbox}: {db_exc}"
            ) from db_exc
    log.info(
        "message_ingested",
        message_id=entry.message_id,
        disposition=entry.disposition,
        folio=_folio_of(rt, entry.case_id),
        reason=entry.reason or None,
    )
    return entry.disposition


def retry_message(rt: Runtime, mailbox: str, uid: int) -> str:
    """Process a quarantined message again from its stored raw bytes; return the new disposition.

    Raises NotFoundError when (mailbox, uid) has no quarantined ledger row.
    """
    with rt.store.transaction() as session:
        entry = session.exec(
            select(LedgerEntry)
            .where(LedgerEntry.mailbox == mailbox, LedgerEntry.uid == uid)
            .order_by(col(LedgerEntry.id).desc())
        ).first()
        if entry is None or entry.disposition != Disposition.QUARANTINED:
            state = "does not exist" if entry is None else f"is {entry.disposition}"
            raise NotFoundError(f"message {uid} of mailbox {mailbox} {state}, not quarantined")
        uidvalidity, received = entry.uidvalidity, entry.received_at
        raw = rt.blobs.get(entry.raw_sha256)
        session.delete(entry)
    fetched = FetchedMessage(uid=uid, raw=raw, internal_date=received)
    return ingest_message(rt, mailbox, uidvalidity, fetched)


def _error_reason(exc: BaseException) -> str:
    if isinstance(exc, MessageError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"[:1000]


def _folio_of(rt: Runtime, case_id: int | None) -> str | None:
    if case_id is None:
        return None
    with rt.store.transaction() as session:
        case = session.get(Case, case_id)
        return case.folio if case else None


def _advance(session: Session, mailbox: str, uidvalidity: int, uid: int) -> None:
    checkpoint = session.get(Checkpoint, mailbox)
    if checkpoint is None:
        checkpoint = Checkpoint(mailbox=mailbox, uidvalidity=uidvalidity, last_uid=uid)
    elif checkpoint.uidvalidity == uidvalidity:
        checkpoint.last_uid = max(checkpoint.last_uid, uid)
    session.add(checkpoint)


def _existing(session: Session, mailbox: str, uidvalidity: int, uid: int) -> LedgerEntry | None:
    return session.exec(
        select(LedgerEntry).where(
            LedgerEntry.mailbox == mailbox,
            LedgerEntry.uidvalidity == uidvalidity,
            LedgerEntry.uid == uid,
        )
    ).first()


def _quarantine(
    session: Session,
    mailbox: str,
    uidvalidity: int,
    fetched: FetchedMessage,
    raw_sha: str,
    reason: str,
) -> LedgerEntry:
    existing = _existing(session, mailbox, uidvalidity, fetched.uid)
    if existing is not None:
        return existing
    entry = LedgerEntry(
        mailbox=mailbox,
        uidvalidity=uidvalidity,
        uid=fetched.uid,
        dedup_key=f"sha256:{raw_sha}",
        disposition=Disposition.QUARANTINED,
        reason=reason,
        raw_sha256=raw_sha,
        size=fetched.full_size,
        received_at=as_utc(fetched.internal_date),
        ingested_at=utcnow(),
    )
    session.add(entry)
    _advance(session, mailbox, uidvalidity, fetched.uid)
    return entry


def _parse(rt: Runtime, fetched: FetchedMessage, raw_sha: str) -> tuple[InboundMail, str]:
    """The message, and a note for the case when it was too large to keep whole."""
    limits = rt.settings.limits
    mail = parse_inbound(
        fetched.raw,
        web_form_senders=rt.settings.web_form.senders,
        max_parts=limits.max_mime_parts,
        max_depth=limits.max_mime_depth,
    )
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
) -> LedgerEntry:
    existing = _existing(session, mailbox, uidvalidity, fetched.uid)
    if existing is not None:
        return existing  # committed before a crash lost the checkpoint's news
    settings = rt.settings
    mail, oversize_note = _parse(rt, fetched, raw_sha)

    earlier = ledger_by_key(session, mail.dedup_key)
    stale = [e for e in earlier if e.mailbox == mailbox and e.uidvalidity != uidvalidity]
    if stale:
        # Seen in this mailbox under an older UIDVALIDITY (the folder was
        # rebuilt): the same message at a new address, not new mail.
        entry = stale[0]
        entry.uidvalidity, entry.uid = uidvalidity, fetched.uid
        session.add(entry)
        _advance(session, mailbox, uidvalidity, fetched.uid)
        return entry

    classification = classify(mail, own_addresses=settings.own_addresses)
    facts = _facts(session, mail, earlier, settings.folio.prefix)
    decision = triage(
        mail,
        classification,
        facts,
        own_addresses=settings.own_addresses,
        agent_addresses=frozenset(settings.agents.addresses),
    )
    case_id = _apply(rt, session, mailbox, mail, raw_sha, classification, decision, oversize_note)
    reasons = [r for r in (decision.reason, oversize_note) if r]
    entry = LedgerEntry(
        mailbox=mailbox,
        uidvalidity=uidvalidity,
        uid=fetched.uid,
        message_id=mail.message_id,
        dedup_key=mail.dedup_key,
        disposition=decision.disposition,
        reason="; ".join(reasons),
        case_id=case_id,
        raw_sha256=raw_sha,
        size=mail.size,
        received_at=as_utc(fetched.internal_date),
        ingested_at=utcnow(),
    )
    session.add(entry)
    _advance(session, mailbox, uidvalidity, fetched.uid)
    session.flush()
    return entry


def case_ref(case: Case) -> CaseRef:
    assert case.id is not None
    return CaseRef(id=case.id, folio=case.folio, customer=case.customer, status=case.status)


def _facts(session: Session, mail: InboundMail, earlier: list[LedgerEntry], prefix: str) -> Facts:
    duplicate_of = None
    for entry in earlier:
        if entry.case_id is not None:
            case = session.get(Case, entry.case_id)
            duplicate_of = case_ref(case) if case else None
            break
    referenced = case_by_message_ids(session, mail.thread_ids)
    by_folio = []
    for folio in find_folios(mail.subject, prefix):
        case = case_by_folio(session, folio)
        if case is not None:
            by_folio.append(case_ref(case))
    return Facts(
        duplicate_of=duplicate_of,
        is_duplicate=bool(earlier),
        by_reference=case_ref(referenced) if referenced else None,
        by_folio=tuple(by_folio),
    )


def _apply(
    rt: Runtime,
    session: Session,
    mailbox: str,
    mail: InboundMail,
    raw_sha: str,
    classification: Classification,
    decision: Decision,
    note: str = "",
) -> int | None:
    """Carry out ``decision`` in ``session``; return the case id the message belongs to."""
    if decision.disposition is Disposition.DUPLICATE:
        return decision.case.id if decision.case else None
    if decision.disposition is Disposition.QUARANTINED:
        return None
    now = utcnow()
    if decision.open_case:
        case = open_case(
            rt.settings,
            session,
            customer=mail.sender,
            customer_name=mail.sender_name,
            # A stranger's copy of someone else's folio tag would mislead: drop it.
            subject=remove_folio_tags(strip_reply_prefixes(mail.subject), rt.settings.folio.prefix),
            mailbox=mailbox,
            now=now,
        )
    elif decision.case is not None:
        found = session.get(Case, decision.case.id)
        if found is None:
            return None
        case = found
        case.updated_at = now
        session.add(case)
    else:
        return None
    assert case.id is not None
    kind = "customer" if classification.kind is MailKind.CUSTOMER else "system"
    _record_inbound(rt, session, case.id, mail, raw_sha, kind)
    if note:
        record_system_note(session, case.id, note)
    if decision.acknowledge:
        queue_acknowledgement(rt, session, case, mail)
    return case.id


def open_case(
    settings: Settings,
    session: Session,
    *,
    customer: str,
    customer_name: str,
    subject: str,
    mailbox: str,
    now: datetime,
) -> Case:
    """A new open case with the next folio of ``now``'s year (flushed, so it has an id)."""
    number = next_folio_number(session, now.year)
    case = Case(
        folio=format_folio(settings.folio.prefix, now.year, number),
        status=CaseStatus.OPEN,
        customer=customer,
        customer_name=customer_name,
        subject=subject,
        mailbox=mailbox,
        language=settings.notices.language,
        created_at=now,
        updated_at=now,
    )
    session.add(case)
    session.flush()
    return case


def _record_inbound(
    rt: Runtime, session: Session, case_id: int, mail: InboundMail, raw_sha: str, kind: str
) -> CaseMessage:
    message = CaseMessage(
        case_id=case_id,
        direction="in",
        kind=kind,
        from_addr=mail.sender,
        to_addrs=", ".join(mail.to + mail.cc),
        subject=mail.subject,
        date=as_utc(mail.date) or utcnow(),
        message_id=mail.message_id,
        text=strip_quoted(mail.text),
        raw_sha256=raw_sha,
    )
    session.add(message)
    session.flush()
    assert message.id is not None
    for attachment in mail.attachments:
        session.add(
            StoredAttachment(
                case_message_id=message.id,
                filename=attachment.filename,
                content_type=attachment.content_type,
                size=attachment.size,
                sha256=rt.blobs.put(attachment.payload),
            )
        )
    return message


def record_system_note(session: Session, case_id: int, text: str) -> None:
    """Add a note by mailcase itself to the case (never sent to anyone)."""
    session.add(
        CaseMessage(case_id=case_id, direction="in", kind="system", date=utcnow(), text=text)
    )


def _suppression(session: Session, settings: Settings, rcpt: str, kind: str) -> str:
    """Why a notice to ``rcpt`` must not go out now ("" when it may).

    Loop and flood guards (issue: never mail a loop): our own addresses and
    automatic ones are never mailed; acknowledgements to one sender and, when
    set, all notices are capped per hour. Cases are opened regardless.
    """
    if rcpt in settings.own_addresses or is_automatic_address(rcpt):
        return "recipient is one of ours or automatic"
    since = utcnow() - timedelta(hours=1)
    counted = col(Notice.status) != NoticeStatus.SUPPRESSED
    limits = settings.limits
    if kind == "acknowledgement":
        sent = session.exec(
            select(func.count())
            .select_from(Notice)
            .where(
                Notice.rcpt_to == rcpt,
                Notice.kind == "acknowledgement",
                col(Notice.created_at) >= since,
                counted,
            )
        ).one()
        if sent >= limits.max_acks_per_sender_per_hour:
            return f"limits.max_acks_per_sender_per_hour ({limits.max_acks_per_sender_per_hour})"
    if limits.max_notices_per_hour is not None:
        total = session.exec(
            select(func.count()).select_from(Notice).where(col(Notice.created_at) >= since, counted)
        ).one()
        if total >= limits.max_notices_per_hour:
            return f"limits.max_notices_per_hour ({limits.max_notices_per_hour})"
    return ""


def _log_suppression(session: Session, rcpt: str, reason: str) -> None:
    # Logged once per recipient and hour: the first suppressed notice only.
    since = utcnow() - timedelta(hours=1)
    earlier = session.exec(
        select(func.count())
        .select_from(Notice)
        .where(
            Notice.rcpt_to == rcpt,
            Notice.status == NoticeStatus.SUPPRESSED,
            col(Notice.created_at) >= since,
        )
    ).one()
    if not earlier:
        get_logger().warning("notices_suppressed", recipient=rcpt, reason=reason)


def _domain(address: str) -> str:
    return address.rpartition("@")[2] or "localhost"


def queue_acknowledgement(rt: Runtime, session: Session, case: Case, mail: InboundMail) -> Notice:
    """Render the acknowledgement for a new ``case`` and queue it, in the caller's transaction."""
    settings = rt.settings
    box: MailboxSettings = settings.mailboxes[case.mailbox]
    context = {
        "folio": case.folio,
        "customer": case.customer,
        "customer_name": case.customer_name,
        "subject": case.subject,
        "mailbox_address": box.address,
        "company": settings.company.model_dump(),
    }
    body = render_body(
        "acknowledgement", case.language, context, override=settings.templates.directory
    )
    now = utcnow()
    envelope = Envelope(
        from_addr=box.address,
        from_name=settings.company.name,
        to_addr=case.customer,
        subject=tagged_subject(case.folio, case.subject),
        message_id=new_message_id(_domain(box.address)),
        date=now,
        in_reply_to=mail.message_id,
        references=(*mail.references, mail.message_id) if mail.message_id else mail.references,
        language=case.language,
    )
    message = build_message(envelope, body)
    assert case.id is not None
    suppressed = _suppression(session, settings, case.customer, "acknowledgement")
    if suppressed:
        _log_suppression(session, case.customer, suppressed)
    notice = Notice(
        case_id=case.id,
        kind="acknowledgement",
        status=NoticeStatus.SUPPRESSED if suppressed else NoticeStatus.QUEUED,
        last_error=f"not sent: {suppressed}" if suppressed else "",
        # The mailbox is the envelope sender so that bounces of our notices come
        # back to a mailbox we read (and are classified as bounces, never answered).
        mail_from=box.address,
        rcpt_to=case.customer,
        message_id=envelope.message_id,
        raw=message.as_bytes(policy=SMTP_POLICY if case.customer.isascii() else SMTPUTF8_POLICY),
        next_attempt_at=now,
        created_at=now,
    )
    session.add(notice)
    session.flush()
    session.add(
        CaseMessage(
            case_id=case.id,
            direction="out",
            kind="notice",
            from_addr=box.address,
            to_addrs=case.customer,
            subject=str(message["Subject"]),
            date=now,
            message_id=envelope.message_id,
            text=body.text,
            notice_id=notice.id,
        )
    )
    return notice


def list_quarantined(session: Session) -> list[LedgerEntry]:
    return list(
        session.exec(
            select(LedgerEntry)
            .where(LedgerEntry.disposition == Disposition.QUARANTINED)
            .order_by(col(LedgerEntry.id))
        ).all()
    )
