"""Reminders for cases a customer is waiting on (escalation).

The ISP's written procedure has customer service and the technician follow every
report up. A case is *unanswered* while it is open (never merged), has a
customer mail address, and nothing answered the customer's latest message:

* an answer is a customer-facing notice (:data:`~mailcase.notices.ANSWER_KINDS`:
  a relayed reply, a resolution, a visit or its cancellation) queued or sent
  (:data:`~mailcase.notices.ANSWERED_STATUSES`: one a guard held or the server
  refused never reached the customer), or an agent's message written straight to
  the customer with the mailbox in copy (recorded on the case, sent by the
  agent's own server); ``mailcase report``'s first answer is the same notices;
* the acknowledgement is no answer (it is automatic), nor is the notice of a
  merge (it names the folio that follows, nothing of the matter), nor an internal
  note (Zammad's "update time" escalation counts the same way).

"After" is the case's own order of messages (their ids), not clocks: a notice is
recorded on the case when it is queued, in the same order as the customer's
mail, so no clock skew between a mail's Date and ours can misplace it.

For each case unanswered for ``escalation.unanswered_hours`` since
``cases.last_customer_at`` (when the customer's latest message reached the mail
server; wall-clock hours, or open hours with ``escalation.clock = "business"``), ONE
``reminder`` notice goes to ``agents.notify``, to the area the case is routed
to and to the agent who owns it (once to each address); it is not repeated
until the customer writes again and that message too goes unanswered for the
period. The reminder notices recorded on the case are
the memory of what was sent: no column of its own. A reminder a guard held (an
hourly cap) is no reminder: it is tried again an hour later.

A case is reminded only once its mailbox has been read without error after the
wait reached the period: its latest poll succeeded and completed after that
moment. An answer the agents mailed in time, still unread in a mailbox that
cannot be read (a server down, a password changed), is never taken for none.
Old mail met on a first poll (opened silently) starts no wait: its case
counts only from the customer's next message.

The hours are wall-clock hours (nights and weekends included) unless
``escalation.clock = "business"``: then only the open hours of ``[calendar]``
count (:mod:`mailcase.businesshours`; mail that arrives while the desk is closed
starts waiting at the next opening), and no reminder goes out while the desk is
closed: one whose period ran out at or after the close waits for the next opening.
The check stays one query: its cutoff is walked back through the calendar.
A case waiting for its customer (``cases.pending_until`` set: an agent's
``#pendiente`` asked them something) is never unanswered: the agents decided the
next word is the customer's, as Zammad pauses escalation in its pending states.
The customer's answer ends the wait, and the case counts again from it.
A report of an outage (``cases.outage_id`` set: ``#masivo``, ``cases outage``) earns
no reminder of its own while its main case is open: the main case is what is worked,
and it is reminded as usual. Once that one is closed without a resolution, or its
report taken out of the outage, the report counts again as any case.

A case registered by phone with no mail address is never unanswered (nobody can
be answered by mail, and the customer cannot write one); a case opened with
``cases open`` counts only from the customer's first mail on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

import sqlalchemy as sa
from sqlmodel import Session, col, select

from mailcase.businesshours import BusinessCalendar
from mailcase.casework import last_customer_text
from mailcase.config import Settings
from mailcase.errors import MessageError
from mailcase.folio import clip
from mailcase.logs import get_logger
from mailcase.models import Case, CaseMessage, CaseStatus, Checkpoint, Notice, NoticeStatus
from mailcase.notices import ANSWER_KINDS, ANSWERED_STATUSES, queue_notice
from mailcase.store import Store, as_utc, table, utcnow
from mailcase.thanks import NOT_REOPENED

REMINDER_KIND = "reminder"
# A reminder a guard held is tried again this long after: not on every run (a new
# held row every few minutes while an hourly cap lasts).
HELD_RETRY = timedelta(hours=1)
# How often the daemon looks (mailcase.daemon): a reminder goes out at most this
# late after its period ends, and the look is one indexed query.
CHECK_MINUTES = 5
_LAST_TEXT_CHARS = 1500  # the customer's last message, as the reminder quotes it


class Waiting(StrEnum):
    """Where a case stands with its customer's latest message."""

    ANSWERED = "answered"  # answered, or nothing of the customer's to answer
    WAITING = "waiting"  # unanswered, no reminder sent for it yet
    REMINDED = "reminded"  # unanswered, and the agents were reminded of it


@dataclass(frozen=True, slots=True)
class Entry:
    """One message of a case as the rule reads it (:func:`waiting`).

    ``kind`` is the case message's (customer, agent, note, notice, ...);
    ``from_customer``: written by the case's customer from their own address
    (a participant in Cc is not the customer); ``to_customer``: the customer is
    among its To/Cc; ``notice``: the notice's kind for a ``notice`` entry;
    ``status``: that notice's (:class:`~mailcase.models.NoticeStatus`); ``at``:
    when it was queued (or held).
    """

    kind: str
    from_customer: bool = False
    to_customer: bool = False
    notice: str = ""
    status: str = NoticeStatus.QUEUED.value
    at: datetime | None = None


def waiting(entries: Sequence[Entry]) -> Waiting:
    """Whether the customer's latest message in ``entries`` (a case's messages,
    oldest first) is answered, unanswered, or unanswered and reminded.

    Only what comes after the customer's latest message counts; without one (a
    case an agent opened for the customer, by forward) everything does. A
    reminder a guard held is none. Pure: no clock, no database.
    """
    state = Waiting.WAITING
    for entry in _since_customer(entries):
        if _answers(entry):
            return Waiting.ANSWERED
        if _is_reminder(entry) and entry.status != NoticeStatus.SUPPRESSED:
            state = Waiting.REMINDED
    return state


def last_held(entries: Sequence[Entry]) -> datetime | None:
    """When a guard last held a reminder of the customer's latest message in
    ``entries`` (None if none was held). Pure."""
    held = [
        e.at
        for e in _since_customer(entries)
        if _is_reminder(e) and e.status == NoticeStatus.SUPPRESSED and e.at is not None
    ]
    return max(map(_utc, held), default=None)


def _since_customer(entries: Sequence[Entry]) -> Sequence[Entry]:
    start = 0
    for i, entry in enumerate(entries):
        if entry.kind == "customer" and entry.from_customer:
            start = i + 1
    return entries[start:]


def _is_reminder(entry: Entry) -> bool:
    return entry.kind == "notice" and entry.notice == REMINDER_KIND


def _answers(entry: Entry) -> bool:
    if entry.kind == "notice":
        return entry.notice in ANSWER_KINDS and entry.status in ANSWERED_STATUSES
    # Written straight to the customer with the mailbox in copy: sent by the agent.
    return entry.kind == "agent" and entry.to_customer


def reminder_due(
    state: Waiting,
    last_customer_at: datetime,
    now: datetime,
    hours: int,
    *,
    held_at: datetime | None = None,
    calendar: BusinessCalendar | None = None,
) -> bool:
    """Whether a reminder goes out now: unanswered, not reminded, and the customer's
    latest message (``last_customer_at``) at least ``hours`` old (open hours of
    ``calendar`` when given, wall-clock hours otherwise); never when ``hours`` is 0
    (reminders off), nor within :data:`HELD_RETRY` (wall-clock) of a reminder a
    guard held (``held_at``)."""
    return (
        hours > 0
        and state is Waiting.WAITING
        and _utc(last_customer_at) <= waited_since(now, hours, calendar)
        and (held_at is None or _utc(held_at) <= now - HELD_RETRY)
    )


def waited_since(now: datetime, hours: int, calendar: BusinessCalendar | None) -> datetime:
    """The latest arrival that has waited ``hours`` by ``now``: ``hours`` back on the
    wall clock, or ``hours`` of open time back through ``calendar`` (a message at or
    before it has waited that long, one after it less)."""
    period = timedelta(hours=hours)
    return now - period if calendar is None else calendar.subtract(now, period)


def business_calendar(settings: Settings) -> BusinessCalendar | None:
    """The calendar the reminders count in: None for ``escalation.clock = "wall"``."""
    return settings.business_calendar() if settings.escalation.clock == "business" else None


def _utc(value: datetime) -> datetime:
    at = as_utc(value)
    assert at is not None  # only None for None
    return at


# The case message kinds the rule reads: the rest (notes, system lines, an
# unverified sender's mail) never answers and never resets the wait.
_READ_KINDS = ("customer", "agent", "notice")
_MESSAGES, _NOTICES = table(CaseMessage), table(Notice)
# The note that follows a customer's message of only thanks kept on a resolved case
# (mailcase.triage, rule 6).
# Written by mailcase (no stored message: an auto-reply kept on the case as "system"
# has one, and may say anything), from the thanks' sender.
_THANKS_NOTE = sa.and_(
    _MESSAGES.c.kind == "system",
    _MESSAGES.c.text == NOT_REOPENED,
    _MESSAGES.c.raw_sha256.is_(None),
)


def case_entries(session: Session, case: Case) -> list[Entry]:
    """``case``'s messages as :func:`waiting` reads them, oldest first.

    A customer's message of only thanks kept on the case while it was resolved is
    left out: it asked for nothing, and a case an agent reopens after it is no more
    unanswered than it was before it.
    """
    messages, notices = _MESSAGES, _NOTICES
    query = (
        sa.select(
            messages.c.kind,
            messages.c.from_addr,
            messages.c.to_addrs,
            notices.c.kind,
            notices.c.status,
            notices.c.created_at,
        )
        .outerjoin(notices, notices.c.id == messages.c.notice_id)
        .where(
            messages.c.case_id == case.id,
            sa.or_(messages.c.kind.in_(_READ_KINDS), _THANKS_NOTE),
        )
        .order_by(messages.c.id)
    )
    rows = session.execute(query).all()
    customer = case.customer
    entries: list[Entry] = []
    last_from = ""
    for kind, from_addr, to_addrs, notice_kind, status, created_at in rows:
        if kind == "system":  # the thanks note: the message just before it is the thanks
            if entries and entries[-1].kind == "customer" and last_from == from_addr:
                entries.pop()
            continue
        last_from = from_addr
        entries.append(
            Entry(
                kind=kind,
                from_customer=bool(customer) and from_addr == customer,
                to_customer=bool(customer) and customer in (a.strip() for a in to_addrs.split(",")),
                notice=notice_kind or "",
                status=status or NoticeStatus.QUEUED.value,
                at=created_at,
            )
        )
    return entries


_MAIN = table(Case).alias("main_case")


def _candidates(cutoff: datetime | None) -> list[sa.ColumnElement[bool]]:
    """What the cases that may be unanswered have: open, never merged, not waiting for
    the customer, no report of an outage whose main case is open, a customer address and
    a customer message (older than ``cutoff`` when given)."""
    # Read by the main case's primary key, for the few reports among the open cases.
    main_open = (
        sa.select(_MAIN.c.id)
        .where(_MAIN.c.id == col(Case.outage_id), _MAIN.c.status == CaseStatus.OPEN)
        .exists()
    )
    where = [
        col(Case.status) == CaseStatus.OPEN,
        col(Case.merged_into_id).is_(None),
        col(Case.pending_until).is_(None),
        sa.or_(col(Case.outage_id).is_(None), ~main_open),
        col(Case.customer) != "",
        col(Case.last_customer_at).is_not(None),
    ]
    if cutoff is not None:
        where.append(col(Case.last_customer_at) <= cutoff)
    return where


_LONGEST_WAIT_FIRST = (col(Case.last_customer_at), col(Case.id))


def unanswered_cases(session: Session) -> list[Case]:
    """Every case unanswered now (however long), the longest wait first.

    One query on the indexed ``status`` for the open cases with a customer
    message, then one per candidate for its messages: at 1,000,000 cases the
    cost follows the open ones, not the history.
    """
    candidates = session.exec(
        select(Case).where(*_candidates(None)).order_by(*_LONGEST_WAIT_FIRST)
    ).all()
    return [c for c in candidates if waiting(case_entries(session, c)) is not Waiting.ANSWERED]


def remind_unanswered(store: Store, settings: Settings, now: datetime | None = None) -> list[str]:
    """Queue one reminder to the agents for every case unanswered for
    ``escalation.unanswered_hours`` and not yet reminded; the folios whose
    reminder was queued (not those a guard held, nor those that failed).

    Only cases whose mailbox was read without error since their wait reached
    the period (:func:`read_mailboxes`). A reminder that cannot be rendered
    for one case (an override template failing on its data) is logged with
    its folio and that case skipped: the others are reminded.

    Cost: one query on the indexed ``status`` for the open cases whose customer
    wrote before the threshold (at 1,000,000 cases, only the open ones are
    read, and of those only the ones waiting that long), then, per candidate, a
    transaction that locks the case (PostgreSQL: two instances sharing the
    database never remind twice), reads its messages and decides again. Nothing
    is queued when reminders are off (``unanswered_hours = 0``) or nobody is
    configured to receive them (no ``agents.notify`` and no area).
    """
    hours = settings.escalation.unanswered_hours
    if hours == 0:
        return []
    now = now or utcnow()
    calendar = business_calendar(settings)
    if calendar is not None and not calendar.is_open(now):
        # Nobody is at the desk to read it: the reminder goes out at the next opening
        # (OTRS/Znuny sends escalation notifications within working hours only too).
        return []
    with store.reading() as conn:
        read_at = read_mailboxes(conn, now)
        if not read_at:
            return []
        # Per mailbox: the customer wrote a period before its latest good read (a
        # period of open hours is walked back through the calendar, once a mailbox).
        waited = sa.or_(
            *(
                sa.and_(
                    col(Case.mailbox) == box,
                    col(Case.last_customer_at) <= waited_since(at, hours, calendar),
                )
                for box, at in read_at.items()
            )
        )
        query = sa.select(col(Case.id), col(Case.folio)).where(*_candidates(None), waited)
        rows = conn.execute(query.order_by(*_LONGEST_WAIT_FIRST)).all()
    reminded = []
    for case_id, folio in rows:
        try:
            if _remind_case(store, settings, int(case_id or 0), now, read_at, calendar):
                reminded.append(folio)
        except MessageError as exc:
            # Rolled back: nothing of this case's reminder was kept. The next run
            # tries again (the admin's template fixed by then, or this one line).
            get_logger().warning("reminder_failed", folio=folio, error=str(exc))
    if reminded:
        get_logger().info("cases_reminded", folios=reminded, unanswered_hours=hours)
    return reminded


def read_mailboxes(conn: sa.Connection, now: datetime) -> dict[str, datetime]:
    """The mailboxes whose latest poll succeeded, each with when its latest complete
    poll ended (never after ``now``): what was in the mailbox then has been read."""
    query = sa.select(col(Checkpoint.mailbox), col(Checkpoint.last_poll_at)).where(
        col(Checkpoint.failures) == 0, col(Checkpoint.last_poll_at).is_not(None)
    )
    return {str(box): min(_utc(at), now) for box, at in conn.execute(query) if at is not None}


def _remind_case(
    store: Store,
    settings: Settings,
    case_id: int,
    now: datetime,
    read_at: dict[str, datetime],
    calendar: BusinessCalendar | None,
) -> bool:
    """Remind the agents of the case ``case_id`` if still due; whether a reminder was
    queued. A :class:`MessageError` (its reminder cannot be rendered) rolls the
    case's transaction back."""
    hours = settings.escalation.unanswered_hours
    with store.transaction() as session:
        case = session.get(Case, case_id, with_for_update=True, populate_existing=True)
        if case is None or not _still_candidate(session, case) or case.mailbox not in read_at:
            return False
        assert case.last_customer_at is not None  # _still_candidate
        entries = case_entries(session, case)
        # Judged at the mailbox's latest read: a wait that ended after it may have
        # been answered by mail not read yet.
        state, held_at = waiting(entries), last_held(entries)
        if not (
            reminder_due(
                state, case.last_customer_at, read_at[case.mailbox], hours, calendar=calendar
            )
            and reminder_due(
                state, case.last_customer_at, now, hours, held_at=held_at, calendar=calendar
            )
        ):
            return False
        return _queue_reminders(session, settings, case, now)


def _still_candidate(session: Session, case: Case) -> bool:
    """What the candidate query asked, read again under the case's lock."""
    main = session.get(Case, case.outage_id) if case.outage_id is not None else None
    return (
        case.status == CaseStatus.OPEN
        and case.merged_into_id is None
        and case.pending_until is None
        and (main is None or main.status != CaseStatus.OPEN)
        and bool(case.customer)
        and case.last_customer_at is not None
    )


def _queue_reminders(session: Session, settings: Settings, case: Case, now: datetime) -> bool:
    """Queue the reminder of ``case`` to ``agents.notify``, its area and its owner, once
    to each address; whether any was queued (held by a guard for every recipient: not)."""
    recipients = [settings.agents.notify] if settings.agents.notify else []
    area = settings.areas.get(case.area or "")
    if area is not None and area.notify not in recipients:
        recipients.append(area.notify)
    # The agent responsible hears of it in person (Zammad and OTRS/Znuny escalate to a
    # ticket's owner): a shared list's reminder is everyone's, so nobody's. Only while
    # still an agent: one taken out of agents.addresses has left the desk.
    owner = case.owner
    if owner and owner in settings.agents.addresses and owner not in recipients:
        recipients.append(owner)
    if not recipients:
        return False
    assert case.last_customer_at is not None
    since = _utc(case.last_customer_at)
    waited = int((now - since).total_seconds() // 3600)
    context = {
        "waited_hours": waited,
        "since": since.astimezone(settings.folio.zone).strftime("%Y-%m-%d %H:%M"),
        "timezone": settings.folio.timezone,
        "text": clip(last_customer_text(session, case), _LAST_TEXT_CHARS),
        "unanswered_hours": settings.escalation.unanswered_hours,
        "business_hours": settings.escalation.clock == "business",  # "24 horas hábiles"
        "case_type": case.type or "",  # as the case's notification shows it
        "owner": case.owner or "",  # as the case's notification shows it
    }
    held = [
        queue_notice(session, settings, case, REMINDER_KIND, to=rcpt, context=context).held
        for rcpt in recipients
    ]
    return not all(held)
