"""The ``messages`` and ``outbox`` command groups: the ledger of fetched mail, and the notices.

``messages`` lists the ledger, shows one message (its ledger row, headers and
stored file) so that an admin can judge a quarantined one without a mail
client, and processes a quarantined or spam-held message again
(:mod:`mailcase.service`), or sets it aside for good. ``outbox`` lists the
notices and queues failed ones again. The listings only read (no write lock)
and keep within ``--limit``; what a retry or a release queued is sent at once,
and what cannot be sent stays queued for the daemon. The ``--json`` rows
(:func:`ledger_row`, :func:`notice_row`) keep their keys.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import defer
from sqlmodel import col, select

from mailcase.cli_common import (
    UsageError,
    _deliver_after_commit,
    _iso,
    _last_notice_id,
    _limited,
    _local,
    _open_store,
    _operator,
    _print_json,
    _print_listing,
    visible,
)
from mailcase.config import Settings
from mailcase.errors import EXIT_FAILURE, EXIT_OK, MailcaseError, NotFoundError
from mailcase.models import Case, LedgerEntry, Notice, NoticeStatus
from mailcase.store import utcnow


def ledger_row(entry: LedgerEntry, folio: str | None) -> dict[str, Any]:
    return {
        "mailbox": entry.mailbox,
        "uid": entry.uid,
        "uidvalidity": entry.uidvalidity,
        "message_id": entry.message_id,
        "disposition": entry.disposition,
        "folio": folio,
        "reason": entry.reason,
        "received_at": _iso(entry.received_at),
        "ingested_at": _iso(entry.ingested_at),
    }


def _messages(args: argparse.Namespace, settings: Settings) -> int:
    if args.action == "retry":
        return _messages_retry(args, settings)
    if args.action == "dismiss":
        return _messages_dismiss(args, settings)
    if args.action == "release":
        return _messages_release(args, settings)
    if args.action == "show":
        return _message_show(args, settings)
    store = _open_store(settings, create=False)
    with store.read_session() as session:
        query = (
            select(LedgerEntry, Case.folio)
            .join(Case, col(LedgerEntry.case_id) == col(Case.id), isouter=True)
            .order_by(col(LedgerEntry.id).desc())
        )
        if args.disposition:
            query = query.where(LedgerEntry.disposition == args.disposition)
        if args.mailbox:
            # Mailbox names are lower case (config.py); "Contacto" listed nothing, exit 0.
            mailbox = args.mailbox.strip().lower()
            if (
                mailbox not in settings.mailboxes
                and session.exec(
                    select(LedgerEntry.id).where(LedgerEntry.mailbox == mailbox).limit(1)
                ).first()
                is None
            ):
                # Usage (exit 2), as `cases list --area`. A mailbox taken out of the
                # configuration still lists what was fetched from it.
                known = ", ".join(sorted(settings.mailboxes)) or "none configured"
                raise UsageError(
                    f"no mailbox named {args.mailbox!r} in the configuration or the ledger "
                    f"(mailboxes: {known})"
                )
            query = query.where(LedgerEntry.mailbox == mailbox)
        rows = _limited(session, query, args, "messages")
        items = [ledger_row(entry, folio) for entry, folio in rows]
    columns = ["mailbox", "uid", "received_at", "disposition", "folio", "message_id", "reason"]
    _print_listing(items, columns, args, settings.folio.zone)
    return EXIT_OK


def _messages_dismiss(args: argparse.Namespace, settings: Settings) -> int:
    """``messages dismiss UID --mailbox M``: a quarantined message set aside for good."""
    from mailcase.quarantine import dismiss_message
    from mailcase.service import Runtime

    if args.mailbox not in settings.mailboxes:
        raise NotFoundError(f"no mailbox named {args.mailbox} in the configuration")
    rt = Runtime.open(settings)
    try:
        dismiss_message(rt, args.mailbox, args.uid, by=f"cli:{_operator()}", why=args.reason)
    finally:
        rt.store.dispose()
    print(f"message {args.uid} of mailbox {args.mailbox}: dismissed")
    return EXIT_OK


def _messages_release(args: argparse.Namespace, settings: Settings) -> int:
    """``messages release UID --mailbox M``: the spam filter was wrong about a message."""
    from mailcase.quarantine import release_message
    from mailcase.service import Runtime

    if args.mailbox not in settings.mailboxes:
        raise NotFoundError(f"no mailbox named {args.mailbox} in the configuration")
    rt = Runtime.open(settings)
    watermark = _last_notice_id(rt.store)
    disposition = release_message(rt, args.mailbox, args.uid, by=f"cli:{_operator()}")
    print(f"message {args.uid} of mailbox {args.mailbox}: {disposition}")
    # Its acknowledgement goes out now, as after `messages retry`.
    _deliver_after_commit(rt.store, settings, after=watermark)
    return EXIT_OK


def _messages_retry(args: argparse.Namespace, settings: Settings) -> int:
    """``messages retry UID --mailbox M``, or ``--all``: every quarantined message, oldest
    first; one that fails again stays quarantined (and is said), the rest go on."""
    from mailcase.quarantine import quarantined_messages, retry_message
    from mailcase.service import Runtime

    if args.mailbox is not None and args.mailbox not in settings.mailboxes:
        raise NotFoundError(f"no mailbox named {args.mailbox} in the configuration")
    if not args.all and args.mailbox is None:
        raise UsageError("messages retry UID needs --mailbox: the mailbox it was fetched from")
    rt = Runtime.open(settings)
    watermark = _last_notice_id(rt.store)
    targets = quarantined_messages(rt, args.mailbox) if args.all else [(args.mailbox, args.uid)]
    failed = 0
    for mailbox, uid in targets:
        try:
            disposition = retry_message(rt, mailbox, uid)
        except MailcaseError as exc:
            if not args.all:
                raise
            failed += 1  # stays quarantined; the others are still tried
            print(f"mailcase: message {uid} of mailbox {mailbox}: {exc}", file=sys.stderr)
            continue
        print(f"message {uid} of mailbox {mailbox}: {disposition}")
    if args.all and not targets:
        print("no quarantined messages")
    # As after a poll: what the messages caused (their acknowledgements) goes out
    # now, not at the next poll; what cannot be sent stays queued.
    _deliver_after_commit(rt.store, settings, after=watermark)
    return EXIT_FAILURE if failed else EXIT_OK


def _message_show(args: argparse.Namespace, settings: Settings) -> int:
    """``messages show UID --mailbox M``: what an admin needs to judge a quarantined
    message without a mail client: who sent it, its subject, and its stored file."""
    from mailcase.blobs import BlobStore, read_header
    from mailcase.inbound import header_summary, origin_of

    store = _open_store(settings, create=False)
    with store.read_session() as session:
        row = session.exec(
            select(LedgerEntry, Case.folio)
            .join(Case, col(LedgerEntry.case_id) == col(Case.id), isouter=True)
            .where(LedgerEntry.mailbox == args.mailbox, LedgerEntry.uid == args.uid)
            .order_by(col(LedgerEntry.id).desc())
        ).first()
        if row is None:
            raise NotFoundError(f"no message {args.uid} of mailbox {args.mailbox} in the ledger")
        entry, folio = row
        item = ledger_row(entry, folio)
    # No stored copy: its customer's data was erased (mailcase.erasure).
    path = (
        BlobStore.path_in(settings.storage.directory, entry.raw_sha256)
        if entry.raw_sha256
        else None
    )
    # Always in --json (null: the stored file was read), so a script need not test for it.
    item["stored"] = None
    head = b""
    try:
        if path is not None:
            head = read_header(path)
        else:
            item["stored"] = "erased"
    except OSError as exc:
        item["stored"] = f"cannot be read: {exc.strerror or exc}"
    headers = header_summary(head) if head else {}
    written = origin_of(head)[1] if head else None
    item |= {
        "from": headers.get("from", ""),
        "to": headers.get("to", ""),
        "subject": headers.get("subject", ""),
        # As `cases show` gives a message's date (ISO 8601, UTC; null when the
        # header is missing or not a date), and the header's own words beside it.
        "date": written.astimezone(UTC).isoformat() if written else None,
        "date_header": headers.get("date", ""),
        "header_message_id": headers.get("message-id", ""),
        "size": entry.size,
        "raw_sha256": entry.raw_sha256 or None,
        "raw_path": str(path) if path is not None else None,
    }
    if args.json:
        _print_json(item)
    else:
        zone = settings.folio.zone
        for key in ("received_at", "ingested_at", "date"):  # as every table shows times
            item[key] = _local(item[key], zone)
        if item["stored"] is None:  # the table says only what went wrong
            del item["stored"]
        width = max(len(key) for key in item)
        for key, value in item.items():
            print(visible(f"{key.ljust(width)}  {'' if value is None else value}"))
    return EXIT_OK


def notice_row(notice: Notice, folio: str | None) -> dict[str, Any]:
    return {
        "id": notice.id,
        "folio": folio,
        "kind": notice.kind,
        "status": notice.status,
        "to": notice.rcpt_to,
        "from": notice.mail_from,
        "message_id": notice.message_id,
        "attempts": notice.attempts,
        "next_attempt_at": _iso(notice.next_attempt_at) if notice.status == "queued" else None,
        "last_error": notice.last_error or None,
        "created_at": _iso(notice.created_at),
        "sent_at": _iso(notice.sent_at),
    }


RETRY_ALL_DAYS = 7  # `outbox retry --all` leaves failures older than this to `retry ID`


def _outbox(args: argparse.Namespace, settings: Settings) -> int:
    from mailcase.outbox import fold_sent_log, requeue

    store = _open_store(settings, create=args.action == "retry")
    if args.action == "retry":
        # What a delivery run sent and recorded in the sent log (SQLite) is not to be
        # counted, nor put back, as waiting: it is marked sent first.
        fold_sent_log(store)
    # `outbox list` reads only: no write lock (see Store.read_session).
    with store.transaction() if args.action == "retry" else store.read_session() as session:
        if args.action == "retry":
            if args.all:
                # Not every failure ever: years of bounced acknowledgements would go
                # out again to addresses that refused them (fifth review round).
                # From the start of its last retry window (a notice retried by ID
                # after a long outage failed recently, though made long ago).
                since = utcnow() - timedelta(days=RETRY_ALL_DAYS)
                window = sa.func.coalesce(col(Notice.queued_at), col(Notice.created_at))
                failed = sa.and_(
                    col(Notice.status) == NoticeStatus.FAILED,
                    sa.not_(col(Notice.last_error).startswith("bounced")),
                )
                ids = session.exec(
                    select(Notice.id).where(
                        sa.or_(
                            col(Notice.status) == NoticeStatus.QUEUED,
                            sa.and_(failed, window >= since),
                        )
                    )
                ).all()
                older = session.exec(
                    select(sa.func.count()).select_from(Notice).where(failed, window < since)
                ).one()
                if older:
                    print(
                        f"mailcase: {older} failed notice(s) older than {RETRY_ALL_DAYS} days "
                        "left out: `mailcase outbox retry ID` for each one to send",
                        file=sys.stderr,
                    )
            else:
                if session.get(Notice, args.id) is None:
                    raise NotFoundError(f"no notice with id {args.id}")
                ids = [args.id]
            count = requeue(session, [i for i in ids if i is not None])
            print(f"{count} notice(s) queued for delivery")
            return EXIT_OK
        query = (
            select(Notice, Case.folio)
            .join(Case, col(Notice.case_id) == col(Case.id), isouter=True)
            # Not the rendered message (attachments included): a listing needs none.
            .options(defer(Notice.raw))  # type: ignore[arg-type]
            .order_by(col(Notice.id).desc())
        )
        if args.status:
            status = NoticeStatus.QUEUED if args.status == "pending" else args.status
            query = query.where(Notice.status == status)
        rows = _limited(session, query, args, "notices")
        items = [notice_row(n, folio) for n, folio in rows]
    columns = ["id", "status", "kind", "folio", "to", "attempts", "next_attempt_at", "last_error"]
    _print_listing(items, columns, args, settings.folio.zone)
    return EXIT_OK
