"""Reminders for cases a customer is waiting on (escalation).

The ISP's written procedure has customer service and the technician follow every
report up. A case is *unanswered* while it is open (never merged), has a
customer mail address, and nothing answered the customer's latest message:

* an answer is a customer-facing notice (:data:`ANSWER_KINDS`: a relayed reply,
  a resolution, a visit or its cancellation, the notice of a merge) that was not
  held by a guard, or an agent's message written straight to the customer with
  the mailbox in copy (recorded on the case, sent by the agent's own server);
* the acknowledgement is no answer (it is automatic), nor is an internal note
  (Zammad's "update time" escalation counts the same way).

"After" is the case's own order of messages (their ids), not clocks: a notice is
recorded on the case when it is queued, in the same order as the customer's
mail, so no clock skew between a mail's Date and ours can misplace it.

For each case unanswered for ``escalation.unanswered_hours`` (wall-clock hours
since ``cases.last_customer_at``, nights and weekends included), ONE
``reminder`` notice goes to ``agents.notify`` and to the area the case is routed
to; it is not repeated until the customer writes again and that message too
goes unanswered for the period. The reminder notices recorded on the case are
the memory of what was sent: no column of its own.

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

from mailcase.config import Settings
from mailcase.folio import clip
from mailcase.logs import get_logger
from mailcase.models import Case, CaseMessage, CaseStatus, Notice, NoticeStatus
from mailcase.notices import CUSTOMER_KINDS, queue_notice
from mailcase.store import Store, as_utc, table, utcnow

REMINDER_KIND = "reminder"
# Customer-facing notices that answer the customer; the acknowledgement is automatic.
ANSWER_KINDS = CUSTOMER_KINDS - {"acknowledgement"}
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
    ``held``: that notice was suppressed by a guard and never sent.
    """

    kind: str
    from_customer: bool = False
    to_customer: bool = False
    notice: str = ""
    held: bool = False


def waiting(entries: Sequence[Entry]) -> Waiting:
    """Whether the customer's latest message in ``entries`` (a case's messages,
    oldest first) is answered, unanswered, or unanswered and reminded.

    Only what comes after the customer's latest message counts; without one (a
    case an agent opened for the customer, by forward) everything does. Pure: no
    clock, no database.
    """
    start = 0
    for i, entry in enumerate(entries):
        if entry.kind == "customer" and entry.from_customer:
            start = i + 1
    state = Waiting.WAITING
    for entry in entries[start:]:
        if _answers(entry):
            return Waiting.ANSWERED
        if entry.kind == "notice" and entry.notice == REMINDER_KIND:
            # Held or not: a reminder a guard held is not tried again every few
            # minutes (a flood of held rows while the hourly cap lasts).
            state = Waiting.REMINDED
    return state


def _answers(entry: Entry) -> bool:
    if entry.kind == "notice":
        return entry.notice in ANSWER_KINDS and not entry.held
    # Written straight to the customer with the mailbox in copy: sent by the agent.
    return entry.kind == "agent" and entry.to_customer


def reminder_due(state: Waiting, last_customer_at: datetime, now: datetime, hours: int) -> bool:
    """Whether a reminder goes out now: unanswered, not reminded, and the customer's
    latest message (``last_customer_at``) at least ``hours`` old; never when
    ``hours`` is 0 (reminders off)."""
    return (
        hours > 0
        and state is Waiting.WAITING
        and _utc(last_customer_at) <= now - timedelta(hours=hours)
    )


def _utc(value: datetime) -> datetime:
    at = as_utc(value)
    assert at is not None  # only None for None
    return at


# The case message kinds the rule reads: the rest (notes, system lines, an
# unverified sender's mail) never answers and never resets the wait.
_READ_KINDS = ("customer", "agent", "notice")
_MESSAGES, _NOTICES = table(CaseMessage), table(Notice)


def case_entries(session: Session, case: Case) -> list[Entry]:
    """``case``'s messages as :func:`waiting` reads them, oldest first."""
    messages, notices = _MESSAGES, _NOTICES
    query = (
        sa.select(
            messages.c.kind,
            messages.c.from_addr,
            messages.c.to_addrs,
            notices.c.kind,
            notices.c.status,
        )
        .outerjoin(notices, notices.c.id == messages.c.notice_id)
        .where(messages.c.case_id == case.id, messages.c.kind.in_(_READ_KINDS))
        .order_by(messages.c.id)
    )
    rows = session.execute(query).all()
    customer = case.customer
    return [
        Entry(
            kind=kind,
            from_customer=bool(customer) and from_addr == customer,
            to_customer=bool(customer) and customer in (a.strip() for a in to_addrs.split(",")),
            notice=notice_kind or "",
            held=status == NoticeStatus.SUPPRESSED,
        )
        for kind, from_addr, to_addrs, notice_kind, status in rows
    ]


def _candidates(cutoff: datetime | None) -> list[sa.ColumnElement[bool]]:
    """What the cases that may be unanswered have: open, never merged, a customer
    address and a customer message (older than ``cutoff`` when given)."""
    where = [
        col(Case.status) == CaseStatus.OPEN,
        col(Case.merged_into_id).is_(None),
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
    ``escalation.unanswered_hours`` and not yet reminded; the folios reminded.

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
    with store.reading() as conn:
        query = sa.select(col(Case.id)).where(*_candidates(now - timedelta(hours=hours)))
        ids = [row[0] for row in conn.execute(query.order_by(*_LONGEST_WAIT_FIRST))]
    reminded = []
    for case_id in ids:
        with store.transaction() as session:
            case = session.get(Case, case_id, with_for_update=True, populate_existing=True)
            if case is None or not _still_candidate(case):
                continue
            assert case.last_customer_at is not None  # _still_candidate
            entries = case_entries(session, case)
            if not reminder_due(waiting(entries), case.last_customer_at, now, hours):
                continue
            if _queue_reminders(session, settings, case, now):
                reminded.append(case.folio)
    if reminded:
        get_logger().info("cases_reminded", folios=reminded, unanswered_hours=hours)
    return reminded


def _still_candidate(case: Case) -> bool:
    """What the candidate query asked, read again under the case's lock."""
    return (
        case.status == CaseStatus.OPEN
        and case.merged_into_id is None
        and bool(case.customer)
        and case.last_customer_at is not None
    )


def _queue_reminders(session: Session, settings: Settings, case: Case, now: datetime) -> bool:
    """Queue the reminder of ``case`` to ``agents.notify`` and its area; whether any was."""
    recipients = [settings.agents.notify] if settings.agents.notify else []
    area = settings.areas.get(case.area or "")
    if area is not None and area.notify not in recipients:
        recipients.append(area.notify)
    if not recipients:
        return False
    assert case.last_customer_at is not None
    since = _utc(case.last_customer_at)
    waited = int((now - since).total_seconds() // 3600)
    context = {
        "waited_hours": waited,
        "since": since.astimezone(settings.folio.zone).strftime("%Y-%m-%d %H:%M"),
        "timezone": settings.folio.timezone,
        "text": clip(_last_customer_text(session, case), _LAST_TEXT_CHARS),
        "unanswered_hours": settings.escalation.unanswered_hours,
    }
    for rcpt in recipients:
        queue_notice(session, settings, case, REMINDER_KIND, to=rcpt, context=context)
    return True


def _last_customer_text(session: Session, case: Case) -> str:
    """The words of the customer's latest message on ``case`` ("" if none is kept)."""
    text = session.exec(
        select(CaseMessage.text)
        .where(
            CaseMessage.case_id == case.id,
            CaseMessage.kind == "customer",
            CaseMessage.from_addr == case.customer,
        )
        .order_by(col(CaseMessage.id).desc())
        .limit(1)
    ).first()
    return (text or "").strip()
