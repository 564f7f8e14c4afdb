"""The ``cases`` command group: list, show and open cases, and work them as agents do by mail.

Every change goes through :mod:`mailcase.casework` in one transaction, as the
mail commands' do, and what the options say (addresses, folios, dates, areas)
is read as the mail commands read it and checked before the database is opened
or created; each action that changes a case is a class of its own
(:data:`_CHANGES`), in which that check, the change and what is printed of it
read together. The notices a change queued are sent once it is committed; what
cannot be sent stays queued, and a customer without a mail address who was not
told of a resolution or a visit is said on stderr, so that someone calls them.
A change PostgreSQL rolled back to end a deadlock is made once more. The
``--json`` objects (:func:`case_summary`, :func:`case_detail`) keep their keys.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from contextlib import suppress
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col, select

from mailcase import casework, merging, outages, visitdates, visits, waits
from mailcase.casework import FORGOTTEN, is_erased, related_folios
from mailcase.cli_common import (
    _NAMED_ADDRESS,
    DEFAULT_LIMIT,
    UsageError,
    _customer_address,
    _deliver_after_commit,
    _is_time,
    _iso,
    _last_notice_id,
    _limited,
    _local,
    _open_store,
    _operator,
    _print_json,
    _print_listing,
    _refuse_long_address,
    visible,
)
from mailcase.commands import area_key
from mailcase.config import Settings
from mailcase.errors import EXIT_OK, NotFoundError
from mailcase.inbound import MAX_NAME, canonical_address
from mailcase.merging import merged_target
from mailcase.models import Case, CaseMessage, CaseStatus, Notice, StoredAttachment
from mailcase.notices import queue_notice
from mailcase.outages import outage_reports
from mailcase.store import case_by_folio, is_deadlock, utcnow


def _mail_address(option: str, text: str) -> str:
    """The address in ``text`` (an ``option``'s value), lower-cased: a bare address, or
    the one in "Name <address>". UsageError for anything else.

    The address is checked as the mail command ``#participante`` checks it
    (:mod:`mailcase.commands`), so the command line and mail accept the same ones.
    """
    from mailcase.commands import CommandKind, parse_commands

    value = text.strip()
    named = _NAMED_ADDRESS.fullmatch(value)
    address = named.group(1).strip() if named else value
    _refuse_long_address(option, address)
    # One line only: a line break would end the command and start its text.
    parsed = parse_commands(f"#participante {address}") if address.isprintable() else None
    found = parsed.commands if parsed is not None and not parsed.text else ()
    if len(found) != 1 or found[0].kind != CommandKind.PARTICIPANT or not found[0].address:
        raise UsageError(
            f"{option} {text!r} is not a mail address "
            '(juan@example.com, or "Juan <juan@example.com>")'
        )
    return found[0].address


def _agent_address(option: str, text: str, settings: Settings) -> str:
    """The agent ``text`` names (an address as ``#asignar`` reads one: any capitals,
    "Name <address>"), which must be one of ``agents.addresses``; UsageError otherwise,
    naming them."""
    address = canonical_address(_mail_address(option, text))
    if address not in settings.agents.addresses:
        known = ", ".join(settings.agents.addresses) or "none configured"
        raise UsageError(
            f"{option} {address} is not an agent's address (agents.addresses: {known})"
        )
    return address


def _owner_filter(text: str) -> str | None:
    """``cases list --owner``: the address as stored (lower-cased, as ``#asignar`` spells
    it), or None for "none" (the cases nobody owns). Any address is taken, an agent's or
    not: one who left the desk (out of agents.addresses) still owns their old cases."""
    if text.strip().lower() in ("none", "nadie"):
        return None
    address = canonical_address(text.strip().lower())
    _refuse_long_address("--owner", address)
    local, at, domain = address.rpartition("@")
    if not (at and local and domain) or any(c.isspace() for c in address):
        raise UsageError(f'--owner {text!r} is not a mail address (or "none")')
    return address


def _folio(text: str, settings: Settings) -> str:
    """The folio a command-line argument names, read as the mail path reads one in a
    subject (:func:`mailcase.folio.find_folios`): ``PLR 2026 123``, ``plr-2026-000123.``
    and ``[Folio PLR-2026-000123]`` are ``PLR-2026-000123``. Anything else is returned
    upper-cased, to be reported as no such case."""
    from mailcase.folio import find_folios

    found = find_folios(text, settings.folio.prefix)
    return found[0] if len(found) == 1 else text.strip().upper()


def _visit_when(day: str, hour: str | None) -> tuple[date, str | None]:
    """``--date`` and ``--time`` read as the mail command ``#visita`` reads them; UsageError
    for a value it would not take."""
    from mailcase.commands import parse_date, parse_time

    parsed = parse_date(day.strip())
    if parsed is None:
        raise UsageError(f"--date {day!r} is not a date (YYYY-MM-DD)")
    if hour is None:
        return parsed, None
    clock = parse_time(hour.strip())
    if clock is None:
        raise UsageError(f"--time {hour!r} is not a time (HH:MM)")
    return parsed, clock.strftime("%H:%M")


def _unknown_area(area: str, settings: Settings) -> str:
    known = ", ".join(sorted(settings.areas)) or "none configured"
    return f"no area named {area!r} in the configuration (areas: {known})"


def case_summary(
    case: Case, merged_into: str | None = None, outage: str | None = None
) -> dict[str, Any]:
    """The ``cases list --json`` object of ``case``; ``merged_into``: the folio that answers
    for a merged case (:func:`mailcase.merging.merged_target`), None for the others;
    ``outage``: the folio of the main case of the outage it is a report of, or None."""
    return {
        "folio": case.folio,
        "status": case.status,
        "customer": case.customer,
        "subject": case.subject,
        "mailbox": case.mailbox,
        "area": case.area,
        "type": case.type,  # null: not classified yet
        "owner": case.owner,  # null: nobody owns it
        "pending_until": _iso(case.pending_until),  # null: not waiting for the customer
        "created_at": _iso(case.created_at),
        "updated_at": _iso(case.updated_at),
        "merged_into": merged_into,
        "outage": outage,  # null: no report of an outage
        "spam": case.spam_at is not None,  # marked spam by an agent (#spam, cases spam)
    }


def case_detail(session: Session, case: Case) -> dict[str, Any]:
    """The ``cases show --json`` object: the case and its messages, oldest first."""
    rows = session.exec(
        select(CaseMessage)
        .where(CaseMessage.case_id == case.id)
        # Recorded order, not Date headers: senders' clocks are not to be trusted.
        .order_by(col(CaseMessage.id))
    ).all()
    ids = [m.id for m in rows]
    attachments: dict[int, list[dict[str, Any]]] = {}
    if ids:
        for att in session.exec(
            select(StoredAttachment)
            .where(col(StoredAttachment.case_message_id).in_(ids))
            .order_by(col(StoredAttachment.id))
        ).all():
            attachments.setdefault(att.case_message_id, []).append(
                {
                    "filename": att.filename,
                    "content_type": att.content_type,
                    "size": att.size,
                    "sha256": att.sha256,
                }
            )
    statuses = dict(
        session.exec(select(Notice.id, Notice.status).where(Notice.case_id == case.id)).all()
    )
    merged_into = merged_target(session, case).folio if case.merged_into_id else None
    detail = case_summary(case, merged_into, _outage_folios(session, [case]).get(case.id))
    detail.update(
        outcome=case.outcome,
        cause=case.cause,
        customer_name=case.customer_name,
        channel=case.channel,
        language=case.language,
        area=case.area,
        visit=(
            {"date": case.visit_date.isoformat(), "time": case.visit_time}
            if case.visit_date
            else None
        ),
        related=related_folios(session, case),
        # The reports of the outage this case is the main case of ([]: none), oldest first.
        outage_reports=[r.folio for r in outage_reports(session, case)],
        resolved_at=_iso(case.resolved_at),
        closed_at=_iso(case.closed_at),
        spam_at=_iso(case.spam_at),  # null: not marked spam
    )
    detail["messages"] = [
        {
            "direction": m.direction,
            "kind": m.kind,
            "from": m.from_addr,
            "to": m.to_addrs,
            "subject": m.subject,
            "date": _iso(m.date),
            "message_id": m.message_id,
            "text": m.text,
            "attachments": attachments.get(m.id or 0, []),
            **({"delivery": statuses.get(m.notice_id)} if m.notice_id else {}),
        }
        for m in rows
    ]
    return detail


def _outage_folios(session: Session, cases: Sequence[Case]) -> dict[int | None, str]:
    """For those of ``cases`` that are reports of an outage: their id → the main case's
    folio (one query for a whole listing)."""
    mains = {c.outage_id for c in cases if c.outage_id is not None}
    if not mains:
        return {}
    folios = dict(session.exec(select(Case.id, Case.folio).where(col(Case.id).in_(mains))).all())
    return {c.id: folios[c.outage_id] for c in cases if c.outage_id in folios}


def _case_attachment(args: argparse.Namespace, settings: Settings) -> int:
    """Write the case's N-th file (1-based, in the order `cases show` lists them) to
    ``--output`` (created owner-only, never over an existing file) or to stdout.

    Agents' notices name the files that did not fit as "kept on the case": this is
    how one gets them back, as a helpdesk's web interface would offer a download.
    """
    from mailcase.blobs import BlobStore

    target: Path | None = Path(args.output) if args.output else None
    if target is None and sys.stdout.isatty():
        raise UsageError("give --output FILE: the attachment is not for a terminal")
    store = _open_store(settings, create=False)
    with store.read_session() as session:
        case = case_by_folio(session, _folio(args.folio, settings))
        if case is None:
            raise NotFoundError(f"no case with folio {args.folio}")
        stored = session.exec(
            select(StoredAttachment)
            .join(CaseMessage, col(CaseMessage.id) == col(StoredAttachment.case_message_id))
            .where(CaseMessage.case_id == case.id)
            .order_by(col(CaseMessage.id), col(StoredAttachment.id))
        ).all()
    if args.number > len(stored):
        raise NotFoundError(f"case {case.folio} has {len(stored)} attachment(s), not {args.number}")
    attachment = stored[args.number - 1]
    data = BlobStore(settings.storage.directory).get(attachment.sha256)
    if target is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return EXIT_OK
    _write_new_file(target, data)
    print(visible(f"{target}: {attachment.filename} ({attachment.size} bytes)"), file=sys.stderr)
    return EXIT_OK


def _write_new_file(target: Path, data: bytes) -> None:
    """Write ``data`` to ``target``, a file this call creates (mode 0600), or leave none.

    UsageError for a directory or an existing file (an existing file is the admin's,
    not ours to replace: O_EXCL); OSError naming the file when it cannot be written.
    A write that fails (a full disk: ENOSPC) removes the part written: a truncated
    file looked like the attachment and made the retry fail as "File exists".
    """
    if target.is_dir():
        raise UsageError(f"--output {target} is a directory: give a file name")
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UsageError(f"--output {target} exists: mailcase never writes over a file") from None
    except OSError as exc:
        raise OSError(f"cannot write {target}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
    except OSError as exc:
        with suppress(OSError):
            target.unlink()
        raise OSError(f"cannot write {target}: {exc.strerror or exc}") from exc


def _case_change_retried(args: argparse.Namespace, settings: Settings) -> int:
    """:func:`_case_change`, run once more when PostgreSQL rolled its transaction back to
    end a deadlock with another session's (an agent's mail on a report of the outage
    being resolved): nothing was changed, printed nor sent then, and the other session
    has its locks now. A second deadlock is reported as one (:data:`mailcase.cli._COLLIDED`)."""
    try:
        return _case_change(args, settings)
    except SQLAlchemyError as exc:
        if not is_deadlock(exc):
            raise
    return _case_change(args, settings)


def _case_change(args: argparse.Namespace, settings: Settings) -> int:
    """cases open/resolve/note/visit/participant/route/type/assign/pending/merge/outage/close/
    spam/reopen: the CLI door to casework. What each action does of its own (its options,
    its change, what is said of it) is its class in :data:`_CHANGES`; here is what they
    share: the database, the one transaction, the customer to call, the notices sent."""
    by = f"cli:{_operator()}"
    # What the options say is checked before the database is opened (or created).
    change = _CHANGES[args.action](args, settings)
    store = _open_store(settings, create=True)
    watermark = _last_notice_id(store)  # the notices above it are the ones this command queues
    with store.transaction() as session:
        change.make(session, by)
    change.say()
    untold = [
        _UNTOLD_WORDS[c]
        for c in casework.untold(
            resolved=change.resolves, booked=change.books, visit_cancelled=change.visit_cancelled
        )
    ]
    if untold and not change.has_customer:
        # A phone case: no notice was queued, and the customer must still be told
        # (a visit cancelled by resolving or closing too: nobody must wait at home).
        print(
            f"mailcase: case {change.folio} has no customer mail address: the customer was not "
            f"told of the {' and the '.join(untold)}; call them",
            file=sys.stderr,
        )
    case_ids = [change.case_id, *change.report_ids] if change.case_id is not None else None
    _deliver_after_commit(store, settings, after=watermark, case_ids=case_ids)
    return EXIT_OK


# casework.untold's changes as the lines that say whom to call name them.
_UNTOLD_WORDS = {"resolve": "resolution", "visit": "visit", "visit_cancelled": "cancelled visit"}


class _CaseChange:
    """One ``cases`` action that changes a case (:data:`_CHANGES`), its three parts together:
    the constructor reads its options and checks them before the database is opened (or
    created); :meth:`apply` makes the change in the command's transaction, on the case
    locked; :meth:`say` prints what was done, once that is committed (nothing is said of a
    change rolled back). :meth:`make` is what every action on a case does around its
    change; ``open``, which makes a case instead, has its own."""

    # What casework.untold counts of the action: a resolution, a visit booked (or moved).
    resolves = False
    books = False
    takes_merged = False  # True: it works on a case merged into another (merge)

    def __init__(self, args: argparse.Namespace, settings: Settings) -> None:
        self.args, self.settings = args, settings
        self.folio = ""
        self.case_id: int | None = None  # whose notices the command sends
        # Whose notices the command sent too (a resolution's reports).
        self.report_ids: list[int] = []
        self.changed = True  # False: it was so already, and nothing was recorded
        self.has_customer = True
        self.visit_cancelled = False

    def lock(self, session: Session) -> Case | None:
        """The case the command names, locked (None: there is none)."""
        return case_by_folio(session, _folio(self.args.folio, self.settings), for_update=True)

    def make(self, session: Session, by: str) -> None:
        """Lock the case, refuse one that cannot change, :meth:`apply` the change."""
        found = self.lock(session)
        if found is None:
            raise NotFoundError(f"no case with folio {self.args.folio}")
        if is_erased(found):
            # Kept for the statistics only: a resolution, a visit or a relay would
            # go nowhere, and a reopened case would take nobody's mail.
            raise UsageError(
                f"case {found.folio}: its customer's data was erased, it cannot change"
            )
        self.folio, self.case_id = found.folio, found.id
        if found.merged_into_id is not None and not self.takes_merged:
            into = merging.merged_target(session, found).folio
            raise casework.CaseworkError(
                f"case {self.folio} was merged into {into}: work on {into}"
            )
        self.has_customer = bool(found.customer)
        now_local = utcnow().astimezone(self.settings.folio.zone)
        visit_was_ahead = visitdates.visit_cancellable(found, now_local)
        self.apply(session, found, by, now_local)
        self.visit_cancelled = visit_was_ahead and not visitdates.visit_cancellable(
            found, now_local
        )

    def apply(self, session: Session, case: Case, by: str, now_local: datetime) -> None:
        """Change ``case`` (locked); :attr:`changed` False when it was so already."""
        raise NotImplementedError

    def say(self) -> None:
        """Print what was done."""
        print(f"{self.folio}: {self.args.action} done")


class _Open(_CaseChange):
    """``cases open``: a case received by phone, web or visit; the customer (if they have
    a mail address) and the agents are told."""

    def __init__(self, args: argparse.Namespace, settings: Settings) -> None:
        super().__init__(args, settings)
        customer = _customer_address(args.customer)
        if customer == FORGOTTEN:
            raise UsageError(f"--customer {customer} stands for a customer whose data was erased")
        if customer in settings.agents.addresses or customer in settings.own_addresses:
            # As a case an agent opens by mail (triage): the acknowledgement would go to
            # the help desk itself, and its replies would read as an agent's.
            raise UsageError(
                f"--customer {customer} is an agent's or one of our own addresses, not a customer's"
            )
        if len(args.name) > MAX_NAME:  # the column's length (Case.customer_name)
            raise UsageError(
                f"--name is {len(args.name)} characters long: a customer's name has at most "
                f"{MAX_NAME}"
            )
        self.customer = customer

    def make(self, session: Session, by: str) -> None:
        args, settings, customer = self.args, self.settings, self.customer
        mailbox = args.mailbox or next(iter(settings.mailboxes))
        if mailbox not in settings.mailboxes:
            raise NotFoundError(f"no mailbox named {mailbox} in the configuration")
        case = casework.open_case(
            settings,
            session,
            customer=customer,
            customer_name=args.name,
            subject=args.subject,
            mailbox=mailbox,
            now=utcnow(),
            channel=args.channel,
            language=args.language,
        )
        casework.record(
            session, case, "customer", args.text, from_addr=customer or by, subject=args.subject
        )
        if args.type:  # before the agents' notice, which shows it
            casework.set_type(session, case, args.type, by=by)
        if customer:
            queue_notice(session, settings, case, "acknowledgement", to=customer)
        casework.notify_agents(session, settings, case, "new", text=args.text)
        self.folio, self.case_id = case.folio, case.id

    def say(self) -> None:
        if self.args.json:
            _print_json({"folio": self.folio})
        else:
            super().say()


class _Resolve(_CaseChange):
    """``cases resolve``: the customer is told, and so are those of the reports of the
    outage the case is the main case of, resolved with it."""

    resolves = True

    def __init__(self, args: argparse.Namespace, settings: Settings) -> None:
        super().__init__(args, settings)
        self.resolved_reports: list[str] = []
        # The reports with no customer address, by what their customers were not told.
        self.phone_reports: dict[tuple[str, ...], list[str]] = {}

    def apply(self, session: Session, case: Case, by: str, now_local: datetime) -> None:
        # Its reports' visits ahead, to say which the resolution cancelled (read
        # before they are locked; the main case, locked, keeps reports from
        # joining or leaving meanwhile).
        visits_ahead = {
            r.id
            for r in outages.outage_reports(session, case)
            if visitdates.visit_cancellable(r, now_local)
        }
        reports = casework.resolve(
            session, self.settings, case, self.args.outcome, self.args.cause, by=by
        )
        self.resolved_reports = [r.folio for r in reports]
        self.report_ids = [r.id for r in reports if r.id is not None]
        for report in (r for r in reports if not r.customer):
            cancelled = report.id in visits_ahead and not visitdates.visit_cancellable(
                report, now_local
            )
            changes = casework.untold(resolved=True, booked=False, visit_cancelled=cancelled)
            self.phone_reports.setdefault(tuple(changes), []).append(report.folio)

    def say(self) -> None:
        super().say()
        folio = self.folio
        if self.resolved_reports:
            print(
                f"{folio}: resolved with it, the reports of its outage: "
                f"{', '.join(self.resolved_reports)}"
            )
        for missed, folios in self.phone_reports.items():
            # Their customers have no mail address: nobody told them the failure was corrected,
            # nor that the technician they wait at home for will not come.
            words = " and the ".join(_UNTOLD_WORDS[c] for c in missed)
            print(
                f"mailcase: reports {', '.join(folios)} have no customer mail address: their "
                f"customers were not told of the {words}; call them",
                file=sys.stderr,
            )


class _Note(_CaseChange):
    """``cases note``: an internal note, which nobody is sent."""

    def apply(self, session: Session, case: Case, by: str, now_local: datetime) -> None:
        casework.add_note(session, case, self.args.text, by=by)


class _Visit(_CaseChange):
    """``cases visit``: a home visit booked (or moved), or the one ahead cancelled
    (``--cancel``); the customer is told."""

    def __init__(self, args: argparse.Namespace, settings: Settings) -> None:
        super().__init__(args, settings)
        self.books = not args.cancel
        self.visit: tuple[date, str | None] | None = (
            None if args.cancel else _visit_when(args.date, args.time)
        )

    def apply(self, session: Session, case: Case, by: str, now_local: datetime) -> None:
        if self.args.cancel:
            visits.cancel_visit(session, self.settings, case, by=by, now_local=now_local)
        else:
            assert self.visit is not None  # read by the constructor, without --cancel
            visits.schedule_visit(
                session, self.settings, case, *self.visit, by=by, now_local=now_local
            )


class _AddParticipant(_CaseChange):
    """``cases participant``: another address may write on the case."""

    def __init__(self, args: argparse.Namespace, settings: Settings) -> None:
        super().__init__(args, settings)
        self.participant = _mail_address("--add", args.add)

    def apply(self, session: Session, case: Case, by: str, now_local: datetime) -> None:
        casework.add_participant(session, self.settings, case, self.participant, by=by)


class _Route(_CaseChange):
    """``cases route``: the case goes to an area, which is told."""

    def __init__(self, args: argparse.Namespace, settings: Settings) -> None:
        super().__init__(args, settings)
        self.area = area_key(args.area)
        if self.area not in settings.areas:
            raise UsageError(_unknown_area(args.area, settings))

    def apply(self, session: Session, case: Case, by: str, now_local: datetime) -> None:
        casework.route(session, self.settings, case, self.area, by=by)


class _SetType(_CaseChange):
    """``cases type``: the kind of report the case is."""

    def apply(self, session: Session, case: Case, by: str, now_local: datetime) -> None:
        self.changed = casework.set_type(session, case, self.args.type, by=by)

    def say(self) -> None:
        if not self.changed:  # that type already: nothing was recorded
            print(f"{self.folio}: already of type {self.args.type}")
        else:
            print(f"{self.folio}: type set to {self.args.type}")


class _Assign(_CaseChange):
    """``cases assign``: the agent who owns the case (``--to``), or nobody (``--none``)."""

    def __init__(self, args: argparse.Namespace, settings: Settings) -> None:
        super().__init__(args, settings)
        self.owner: str | None = None if args.none else _agent_address("--to", args.to, settings)

    def apply(self, session: Session, case: Case, by: str, now_local: datetime) -> None:
        # Nobody becomes the owner by running a command: the CLI has no agent
        # identity, so no auto_assign here, only the owner --to names.
        self.changed = casework.assign(session, self.settings, case, self.owner, by=by)

    def say(self) -> None:
        folio, owner = self.folio, self.owner
        if not self.changed:  # that owner already: nothing was recorded
            print(f"{folio}: already owned by {owner}" if owner else f"{folio}: already unowned")
        else:
            print(f"{folio}: owner set to {owner}" if owner else f"{folio}: owner cleared")


class _Pending(_CaseChange):
    """``cases pending``: the case waits for its customer's answer (``--days``), or no
    longer does (``--clear``)."""

    def __init__(self, args: argparse.Namespace, settings: Settings) -> None:
        super().__init__(args, settings)
        self.days = 0
        self.deadline: datetime | None = None

    def apply(self, session: Session, case: Case, by: str, now_local: datetime) -> None:
        if self.args.clear:
            self.changed = casework.clear_pending(session, case, by=by)
        else:
            self.days = self.args.days or self.settings.cases.pending_days
            self.deadline = waits.set_pending(session, self.settings, case, self.days, by=by)

    def say(self) -> None:
        folio = self.folio
        if not self.changed:  # --clear of a case not waiting
            print(f"{folio}: not waiting for the customer")
        elif self.args.clear:
            print(f"{folio}: no longer waiting for the customer")
        else:
            assert self.deadline is not None
            zone = self.settings.folio.zone
            until = self.deadline.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z")
            print(f"{folio}: waiting for the customer until {until} ({self.days} day(s))")


class _Merge(_CaseChange):
    """``cases merge``: the case is merged into another of the same customer (``--into``),
    whose folio answers for it from then on; the notices sent are that case's."""

    takes_merged = True
    target: Case | None = None  # the case --into names, locked with this one
    merged_into = ""

    def lock(self, session: Session) -> Case | None:
        found, self.target = _merge_pair(session, self.settings, self.args.folio, self.args.into)
        return found

    def apply(self, session: Session, case: Case, by: str, now_local: datetime) -> None:
        target = _other_case(self.target, self.args.into, "nothing merges into it")
        merging.merge(
            session,
            self.settings,
            case,
            target,
            by=by,
            tell_customer=not self.args.no_notice,
            now_local=now_local,
        )
        self.merged_into, self.case_id = target.folio, target.id

    def say(self) -> None:
        print(f"{self.folio}: merged into {self.merged_into}")


class _Outage(_CaseChange):
    """``cases outage``: the case is made a report of the outage followed in a main case
    (``--of``), or no report of an outage any more (``--clear``)."""

    target: Case | None = None  # the main case --of names, locked with this one
    outage_main = ""

    def lock(self, session: Session) -> Case | None:
        if not self.args.of:
            return super().lock(session)
        # Both locked in id order, as a merge's: a report joining while its main
        # case is resolved (PostgreSQL) waits, and is then refused (resolved).
        found, self.target = _merge_pair(session, self.settings, self.args.folio, self.args.of)
        return found

    def apply(self, session: Session, case: Case, by: str, now_local: datetime) -> None:
        if self.args.clear:
            self.changed = outages.leave_outage(session, case, by=by)
            return
        target = _other_case(self.target, self.args.of, "it follows no outage")
        self.changed = outages.join_outage(
            session, self.settings, case, target, by=by, tell_customer=not self.args.no_notice
        )
        self.outage_main = target.folio

    def say(self) -> None:
        folio, outage_main = self.folio, self.outage_main
        if not self.changed:  # as it was: nothing was recorded
            if outage_main:
                print(f"{folio}: already a report of the outage {outage_main}")
            else:
                print(f"{folio}: not a report of an outage")
        elif outage_main:
            print(f"{folio}: report of the outage {outage_main}")
        else:
            print(f"{folio}: no longer a report of an outage")


class _Close(_CaseChange):
    """``cases close``: closed, with no notice (but for a visit ahead it cancels)."""

    def apply(self, session: Session, case: Case, by: str, now_local: datetime) -> None:
        self.changed = casework.close(session, self.settings, case, by=by)

    def say(self) -> None:
        if not self.changed:  # closed already: nothing was recorded
            print(f"{self.folio}: already closed")
        else:
            super().say()


class _Spam(_CaseChange):
    """``cases spam``: the case is marked spam the filter missed, or not (``--undo``)."""

    def apply(self, session: Session, case: Case, by: str, now_local: datetime) -> None:
        if self.args.undo:
            self.changed = casework.unmark_spam(session, case, by=by)
        else:
            self.changed = casework.mark_spam(session, self.settings, case, by=by)

    def say(self) -> None:
        folio, changed = self.folio, self.changed
        if self.args.undo:
            print(f"{folio}: spam mark removed" if changed else f"{folio}: not marked spam")
        else:
            print(f"{folio}: marked spam" if changed else f"{folio}: already marked spam")


class _Reopen(_CaseChange):
    """``cases reopen``: the case is open again."""

    def apply(self, session: Session, case: Case, by: str, now_local: datetime) -> None:
        self.changed = casework.reopen(session, case, by=by)

    def say(self) -> None:
        if not self.changed:  # open already: nothing was recorded
            print(f"{self.folio}: already open")
        else:
            super().say()


# The ``cases`` actions that change a case (build_parser names them), by name.
_CHANGES: dict[str, type[_CaseChange]] = {
    "open": _Open,
    "resolve": _Resolve,
    "note": _Note,
    "visit": _Visit,
    "participant": _AddParticipant,
    "route": _Route,
    "type": _SetType,
    "assign": _Assign,
    "pending": _Pending,
    "merge": _Merge,
    "outage": _Outage,
    "close": _Close,
    "spam": _Spam,
    "reopen": _Reopen,
}


def _other_case(target: Case | None, named: str, erased: str) -> Case:
    """The second case a merge (``--into``) or an outage (``--of``) names, as locked with
    the first; refused when there is no case ``named``, or when its customer's data was
    erased (``erased`` says what the command cannot do with it)."""
    if target is None:
        raise NotFoundError(f"no case with folio {named}")
    if is_erased(target):
        raise UsageError(f"case {target.folio}: its customer's data was erased, {erased}")
    return target


def _merge_pair(
    session: Session, settings: Settings, folio: str, into: str
) -> tuple[Case | None, Case | None]:
    """The cases ``folio`` and ``into`` name (None for one that does not exist), both
    locked in one statement, in one order: two crossed merges (A into B and B into A at
    once, PostgreSQL) then queue, and the second is refused as merged already, instead
    of one failing with a deadlock. A case that is no report of an outage first, then
    id order: a main case before its reports, as resolving it locks them (a report
    merged into, or made a report of, its own main case while it is resolved)."""
    names = (_folio(folio, settings), _folio(into, settings))
    locked = {
        case.folio: case
        for case in session.exec(
            select(Case)
            .where(col(Case.folio).in_(names))
            .order_by(col(Case.outage_id).is_not(None), col(Case.id))
            .with_for_update()
            .execution_options(populate_existing=True)
        ).all()
    }
    return locked.get(names[0]), locked.get(names[1])


def _cases(args: argparse.Namespace, settings: Settings) -> int:
    if args.action == "attachment":
        return _case_attachment(args, settings)
    if args.action == "remind":
        return _cases_remind(args, settings)
    if args.action not in ("list", "show"):
        return _case_change_retried(args, settings)
    store = _open_store(settings, create=False)
    with store.read_session() as session:
        if args.action == "list":
            query = select(Case).order_by(col(Case.created_at).desc(), col(Case.id).desc())
            if args.status:
                query = query.where(Case.status == args.status)
            if args.customer:
                # Spelt as stored (mailcase.inbound.canonical_address).
                query = query.where(Case.customer == _customer_address(args.customer))
            if args.area:
                if area_key(args.area) not in settings.areas:
                    # Usage (exit 2), as for `cases route`: exit 4 is a folio or
                    # message that does not exist.
                    raise UsageError(_unknown_area(args.area, settings))
                query = query.where(Case.area == area_key(args.area))
            if args.type:
                query = query.where(Case.type == args.type)
            if args.owner:
                owned = _owner_filter(args.owner)
                query = query.where(
                    col(Case.owner).is_(None) if owned is None else Case.owner == owned
                )
            if args.pending and args.unanswered:
                # Disjoint by definition: a case waiting for its customer is not unanswered.
                raise UsageError("--pending and --unanswered list different cases: give one")
            if args.pending:
                query = query.where(
                    Case.status == CaseStatus.OPEN, col(Case.pending_until).is_not(None)
                )
            if args.outage:
                main = case_by_folio(session, _folio(args.outage, settings))
                if main is None:
                    raise NotFoundError(f"no case with folio {args.outage}")
                query = query.where(col(Case.outage_id) == main.id)
                args.outage_id = main.id  # for --unanswered, which filters what it reads
            if args.unanswered:
                found = _unanswered(session, args)
            else:
                found = list(reversed(_limited(session, query, args, "cases")))
            outages = _outage_folios(session, found)
            items = [
                case_summary(
                    c,
                    merged_target(session, c).folio if c.merged_into_id else None,
                    outages.get(c.id),
                )
                for c in found
            ]
            if args.unanswered:
                # Since when the customer waits (their latest message's arrival), the
                # rows' order: what a script sorting or alerting on the wait needs.
                business = settings.escalation.clock == "business"
                calendar = settings.business_calendar() if business else None
                now = utcnow()
                for item, c in zip(items, found, strict=True):
                    item["waiting_since"] = _iso(c.last_customer_at)
                    if calendar is not None and c.last_customer_at is not None:
                        # Open hours waited so far: what the reminder counts.
                        waited = calendar.open_time(c.last_customer_at, now)
                        item["waiting_business_hours"] = round(waited.total_seconds() / 3600, 2)
            columns = [
                "folio",
                "status",
                "customer",
                "mailbox",
                "area",
                "owner",
                # When each closes unanswered: what a desk working the list needs.
                *(["pending_until"] if args.pending else []),
                "created_at",
                "subject",
            ]
            _print_listing(items, columns, args, settings.folio.zone)
            return EXIT_OK
        case = case_by_folio(session, _folio(args.folio, settings))
        if case is None:
            raise NotFoundError(f"no case with folio {args.folio}")
        detail = case_detail(session, case)
    if args.json:
        _print_json(detail)
    else:
        _print_case(detail, settings.folio.zone)
    return EXIT_OK


def _unanswered(session: Session, args: argparse.Namespace) -> list[Case]:
    """``cases list --unanswered``: the cases unanswered now (:mod:`mailcase.reminders`),
    the longest wait first, with the listing's other filters, within its limit (said on
    stderr when it left some out). Reads the open cases only, never the whole history."""
    from mailcase.reminders import unanswered_cases

    customer = _customer_address(args.customer) if args.customer else ""
    area = area_key(args.area) if args.area else ""
    owner = _owner_filter(args.owner) if args.owner else ""
    found = [
        c
        for c in unanswered_cases(session)
        if (not args.status or c.status == args.status)
        and (not customer or c.customer == customer)
        and (not area or c.area == area)
        and (not args.type or c.type == args.type)
        and (not args.owner or c.owner == owner)
        and (not args.outage or c.outage_id == args.outage_id)
    ]
    limit = len(found) if args.all else args.limit or DEFAULT_LIMIT
    if len(found) > limit:
        print(
            f"mailcase: showing the {limit} longest-waiting cases; --limit N or --all for more",
            file=sys.stderr,
        )
    return found[:limit]


def _cases_remind(args: argparse.Namespace, settings: Settings) -> int:
    """``cases remind``: the daemon's reminder check, once; prints the folios reminded
    (nothing when none was, so that cron mails only news)."""
    from mailcase.reminders import remind_unanswered

    store = _open_store(settings, create=True)
    watermark = _last_notice_id(store)
    folios = remind_unanswered(store, settings)
    if args.json:
        _print_json(folios)
    else:
        for folio in folios:
            print(folio)
    if folios:
        _deliver_after_commit(store, settings, after=watermark)
    return EXIT_OK


# Lines of each message's text that ``cases show`` prints (``--json`` gives all).
SHOWN_LINES = 40


def _print_case(detail: dict[str, Any], zone: ZoneInfo) -> None:
    keys = (
        "folio",
        "status",
        "merged_into",
        "outage",
        "outcome",
        "cause",
        "area",
        "type",
        "owner",
        "pending_until",
        "visit",
        "related",
        "outage_reports",
        "customer",
        "name",  # customer_name: all a phone case may have of its customer
        "mailbox",
        "channel",
        "language",
        "subject",
        "created_at",
        "resolved_at",
        "closed_at",
        "spam_at",
    )
    for key in keys:
        value = detail.get("customer_name" if key == "name" else key) or None
        if _is_time(key):
            value = _local(value, zone)
        elif key == "visit" and value:
            value = " ".join(filter(None, (value["date"], value["time"])))
        elif key in ("related", "outage_reports"):
            value = ", ".join(value or ()) or None
        print(visible(f"{key + ':':12} {value if value is not None else '-'}"))
    number = 0
    for m in detail["messages"]:
        arrow = "<-" if m["direction"] == "in" else "->"
        print(
            visible(
                f"\n{arrow} {_local(m['date'], zone) or '-'}  {m['kind']}  {m['from']} → {m['to']}"
            )
        )
        print(visible(f"   {m['subject']}"))
        lines = (m["text"] or "").splitlines()
        for line in lines[:SHOWN_LINES]:
            print(visible(f"   | {line}"))
        if len(lines) > SHOWN_LINES:
            # Said, not silent: a reader must not take the cut for the end of the message.
            print(
                f"   | [… {len(lines) - SHOWN_LINES} more lines: "
                f"mailcase cases show {detail['folio']} --json has the whole text]"
            )
        for att in m["attachments"]:
            number += 1  # as `mailcase cases attachment FOLIO N` takes it
            kind, size = att["content_type"], att["size"]
            print(visible(f"   [attachment {number}] {att['filename']} ({kind}, {size} bytes)"))
