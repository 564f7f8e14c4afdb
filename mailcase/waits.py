"""Waiting for the customer, and closing what waited in vain or was settled long ago.

An agent's ``#pendiente`` (``mailcase cases pending``) makes an open case wait some
days for its customer's answer (:func:`set_pending`); their mail ends the wait
(:func:`mailcase.casework.clear_pending`), and so do a resolution, a closing, a merge,
a home visit and joining an outage. The hourly check (:func:`close_stale_cases`) closes
the cases whose wait passed with no word from the customer, telling them
(:func:`close_unanswered`), and the resolved cases nobody wrote on for
``cases.close_after_days``. A wait is never taken as unanswered before every mailbox
was read past its deadline (:func:`mail_read_until`), nor while the case is a report
of an outage still being repaired; what such a wait holds up is said
(:func:`closings_waiting_for_mail`). Every change runs in the caller's transaction and
is recorded on the case (mailcase.casework.record).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import aliased
from sqlmodel import Session, col, select

from mailcase.casework import (
    clear_pending,
    close,
    close_with_note,
    is_erased,
    record,
    refuse,
    route_problem,
)
from mailcase.commands import PENDING_MAX_DAYS
from mailcase.config import Settings
from mailcase.models import Case, CaseMessage, CaseStatus, Checkpoint
from mailcase.notices import queue_notice
from mailcase.outages import has_open_reports, open_outage_main
from mailcase.store import as_utc, utcnow
from mailcase.visitdates import visit_cancellable

# The history's words for a wait (set_pending), read back by the closing that ends it.
WAITING_FOR = "waiting for the customer for {days} day(s), until {until}"
_WAITING_DAYS = re.compile(r"waiting for the customer for (\d+) day")


def pending_problem(
    status: str,
    days: int,
    *,
    visit_ahead: bool = False,
    outage_open: bool = False,
    reports_open: bool = False,
) -> str | None:
    """Why a case in ``status`` cannot wait ``days`` days for its customer, or ``None``:
    only an open case waits (a closed or resolved one is reopened first, as for
    ``#area``), for 1 to :data:`~mailcase.commands.PENDING_MAX_DAYS` days, and not while
    a home visit is ahead (``visit_ahead``, ``pending_visit``), while it is a report of
    an outage whose main case is open (``outage_open``, ``pending_outage``), nor while it
    is the main case of an outage with open reports (``reports_open``, ``pending_main``):
    the next step is the company's, and the wait's end would cancel the visit, close the
    report unanswered mid-outage, out of the resolution that tells its customer of the
    repair, or close the main case whose resolution is its reports' own."""
    if not 1 <= days <= PENDING_MAX_DAYS:
        return "pending_days"
    problem = route_problem(status)
    if problem is None and visit_ahead:
        return "pending_visit"
    if problem is None and outage_open:
        return "pending_outage"
    if problem is None and reports_open:
        return "pending_main"
    return problem


def set_pending(
    session: Session, settings: Settings, case: Case, days: int, *, by: str
) -> datetime:
    """Make ``case`` wait ``days`` days for its customer's answer: ``pending_until`` is now
    plus ``days`` (a wait already set is replaced), recorded on the case; the deadline.

    Nobody is told here: the question is relayed by the caller (``#pendiente``'s text).
    Until then the agents are not reminded of the case (mailcase.reminders); at the
    deadline it is closed unresolved and the customer told (:func:`close_stale_cases`),
    unless the customer (or a participant) wrote meanwhile (:func:`clear_pending`), or
    it was resolved, closed, merged, given a home visit or made a report of an outage
    (:func:`join_outage`); a report's wait does not end so while its main case is open.
    Refused (:class:`CaseworkError`)
    as :func:`pending_problem` says.
    """
    now = utcnow()
    visit = visit_cancellable(case, now.astimezone(settings.folio.zone))
    main = open_outage_main(session, case)
    refuse(
        pending_problem(
            case.status,
            days,
            visit_ahead=visit,
            outage_open=main is not None,
            reports_open=has_open_reports(session, case),
        ),
        case,
        days=str(days),
        main=main.folio if main is not None else "",
    )
    case.pending_until = now + timedelta(days=days)
    case.updated_at = now
    session.add(case)
    record(session, case, "system", _waiting_for(settings, days, case.pending_until), from_addr=by)
    return case.pending_until


def _waiting_for(settings: Settings, days: int, until: datetime) -> str:
    """The history's record of a wait of ``days`` days until ``until`` (:data:`WAITING_FOR`),
    the deadline in the business's time zone."""
    # (as_utc: a deadline read back from SQLite is naive, and UTC.)
    local = (as_utc(until) or until).astimezone(settings.folio.zone)
    return WAITING_FOR.format(days=days, until=local.strftime("%Y-%m-%d %H:%M %Z"))


def restore_pending(
    session: Session,
    settings: Settings,
    case: Case,
    until: datetime | None,
    *,
    by: str,
    why: str,
) -> None:
    """Put back the wait ``case`` had (``until``; None: none) before the new deadline
    :func:`set_pending` just recorded, which must not stand, recorded with ``why``: a
    wait already running is kept as it was, recorded again with its own days
    (:data:`WAITING_FOR`, which the closing at its deadline reads), and without one the
    case waits no more (:func:`clear_pending`)."""
    if until is None:
        clear_pending(session, case, by=by, why=why)
        return
    # The latest record is the new wait's; the one before it, the wait put back. Without
    # recording it again, the closing told the customer the new wait's days.
    days = _recorded_waits(session, settings, case, 2)[-1]
    case.pending_until = until
    case.updated_at = utcnow()
    session.add(case)
    record(session, case, "system", f"the new deadline does not stand: {why}", from_addr=by)
    record(session, case, "system", _waiting_for(settings, days, until), from_addr=by)


def _waited_days(session: Session, settings: Settings, case: Case) -> int:
    """How many days ``case``'s expired wait was set for: read from the latest record of it
    (:data:`WAITING_FOR`); ``cases.pending_days`` if none is found."""
    return _recorded_waits(session, settings, case, 1)[0]


def _recorded_waits(session: Session, settings: Settings, case: Case, count: int) -> list[int]:
    """The days of ``case``'s latest ``count`` waits, latest first, read from their records
    (:data:`WAITING_FOR`); ``cases.pending_days`` for each one not found."""
    texts = session.exec(
        select(CaseMessage.text)
        .where(
            CaseMessage.case_id == case.id,
            CaseMessage.kind == "system",
            col(CaseMessage.text).startswith("waiting for the customer for "),
        )
        .order_by(col(CaseMessage.id).desc())
        .limit(count)
    ).all()
    found = [_WAITING_DAYS.match(text) for text in texts]
    days = [int(match.group(1)) if match else settings.cases.pending_days for match in found]
    return days + [settings.cases.pending_days] * (count - len(days))


# The start of close_unanswered's note, read back by closed_unanswered_at.
CLOSED_UNANSWERED = "closed: no answer from the customer"


def closed_unanswered_at(session: Session, case: Case) -> datetime | None:
    """When ``case`` was closed for lack of an answer (:func:`close_unanswered`), if that
    is why it is closed now (not reopened and closed again since); else None."""
    if case.status != CaseStatus.CLOSED or case.closed_at is None or case.outcome is not None:
        return None
    latest = session.exec(
        select(CaseMessage.text)
        .where(
            CaseMessage.case_id == case.id,
            CaseMessage.kind == "system",
            sa.or_(
                col(CaseMessage.text).startswith(CLOSED_UNANSWERED),
                col(CaseMessage.text).in_(("case closed", "case reopened")),
            ),
        )
        .order_by(col(CaseMessage.id).desc())
        .limit(1)
    ).first()
    return as_utc(case.closed_at) if latest and latest.startswith(CLOSED_UNANSWERED) else None


def close_unanswered(session: Session, settings: Settings, case: Case) -> None:
    """Close ``case``, whose wait for the customer passed with no word from them: closed
    without a resolution (``mailcase report`` counts it closed without resolution), the
    history saying why, and the customer told (``closed_no_answer``) that a reply to it
    opens a new case linked to this one (mailcase.triage: a closed, unresolved case takes
    no more mail) or that they can call.

    A case resolved, reopened, then closed so loses that resolution (outcome, cause,
    ``resolved_at``): the report would count it resolved, and a reply within
    ``cases.reopen_days`` of it would reopen it, against the notice's promise of a new
    case. Its record in the history stays, and the closing note names it.
    """
    days = _waited_days(session, settings, case)
    note = f"{CLOSED_UNANSWERED} within {days} day{'s' if days != 1 else ''}"
    if case.outcome is not None:
        note += f"; the earlier resolution ({case.outcome}) no longer stands"
    case.outcome = case.cause = case.resolved_at = None
    close_with_note(session, settings, case, by="mailcase", note=note)
    if case.customer and not is_erased(case):
        queue_notice(
            session, settings, case, "closed_no_answer", to=case.customer,
            context={"days": days},
        )  # fmt: skip


def mail_read_until(session: Session, settings: Settings) -> datetime | None:
    """The moment before which every configured mailbox's mail has been read: the
    earliest start of their latest complete polls (``checkpoints.last_poll_at``, taken at
    the poll's SEARCH); None when a mailbox has none, or its latest poll failed.

    A customer may answer to any of the company's addresses, and a mailbox that cannot
    be read now may hold an answer that reached it in time (an IMAP outage, a daemon
    stopped over the deadline): until it is read, nobody can say they did not answer.
    """
    reads = latest_reads(session, settings)
    if not reads or None in reads.values():
        return None
    return min(at for at in reads.values() if at is not None)


def latest_reads(session: Session, settings: Settings) -> dict[str, datetime | None]:
    """Each configured mailbox's latest complete read: the start of its latest poll
    (``checkpoints.last_poll_at``), None when it was never read or its latest poll
    failed."""
    rows = session.exec(
        select(Checkpoint.mailbox, Checkpoint.last_poll_at, Checkpoint.failures).where(
            col(Checkpoint.mailbox).in_(list(settings.mailboxes))
        )
    ).all()
    polls = {name: None if failures else as_utc(at) for name, at, failures in rows}
    return {name: polls.get(name) for name in settings.mailboxes}


def close_stale_cases(session: Session, settings: Settings, now: datetime) -> list[str]:
    """Close resolved cases with no customer reply for ``cases.close_after_days``, and open
    cases whose wait for the customer (``pending_until``) passed before ``now`` and before
    every mailbox was last read through (:func:`mail_read_until`: an answer that reached
    one in time has been read, and ended the wait) (:func:`close_unanswered`); their folios.

    A report whose main case is open is not closed so (:func:`_waits_on_the_repair`): it
    keeps waiting until the outage is resolved, which resolves it and ends the wait.
    """
    cutoff = now - timedelta(days=settings.cases.close_after_days)
    read = mail_read_until(session, settings)
    expired = (
        sa.and_(col(Case.pending_until) <= min(now, read), sa.not_(_waits_on_the_repair()))
        if read is not None
        else sa.false()
    )
    # FOR UPDATE (PostgreSQL): a customer's reply that reopens one of them (or ends its
    # wait) meanwhile waits for this transaction, or, committed first, takes the case
    # out of the selection; either way the reply is not overwritten by the closing.
    stale = session.exec(
        select(Case)
        .where(
            sa.or_(
                sa.and_(col(Case.status) == CaseStatus.RESOLVED, col(Case.resolved_at) <= cutoff),
                # Read by the indexed status: the open cases only, never the history.
                sa.and_(col(Case.status) == CaseStatus.OPEN, expired),
            )
        )
        .order_by(col(Case.id))  # one lock order for every instance: no deadlock
        .with_for_update()
        .execution_options(populate_existing=True)
    ).all()
    for case in stale:
        if case.status == CaseStatus.OPEN:
            close_unanswered(session, settings, case)
        else:
            close(session, settings, case, by="mailcase")
    return [c.folio for c in stale]


def _waits_on_the_repair() -> sa.ColumnElement[bool]:
    """The cases that are reports of an outage whose main case is open. One made to wait
    while its main case was closed, which was then reopened, would otherwise be closed
    "no answer" mid-outage, and the resolution (open reports only) would skip it."""
    main = aliased(Case)
    return (
        sa.exists()
        .where(col(main.id) == col(Case.outage_id), col(main.status) == CaseStatus.OPEN)
        .correlate(Case)
    )


def deferral_margin(settings: Settings) -> timedelta:
    """How long past its deadline a waiting case may stay open before that is worth a
    warning: three poll intervals, and at least ten minutes (a poll or two late is the
    normal course of a poll every ``poll.interval_seconds``, or a restart)."""
    return max(timedelta(seconds=3 * settings.poll.interval_seconds), timedelta(minutes=10))


def closings_waiting_for_mail(
    session: Session, settings: Settings, now: datetime
) -> tuple[list[str], list[str]]:
    """The open cases whose wait for the customer passed before ``now`` less
    :func:`deferral_margin` but that :func:`close_stale_cases` may not close yet, and
    the mailboxes it waits on: those never read, whose latest poll failed, or whose
    latest complete poll started before the earliest such deadline. Two empty lists
    when nothing waits that long.

    Without it an admin saw cases days past their deadline still open, and nothing
    said why (the mailbox's own failure is logged, but not what it holds up). A wait
    that ended since the latest poll is the next poll's to settle, not news: warning of
    it named every healthy mailbox.
    """
    overdue = now - deferral_margin(settings)
    rows = session.exec(
        select(Case.folio, Case.pending_until)
        .where(
            col(Case.status) == CaseStatus.OPEN,
            col(Case.pending_until) <= overdue,
            sa.not_(_waits_on_the_repair()),  # not closed by close_stale_cases: no news
        )
        .order_by(col(Case.id))
    ).all()
    if not rows:
        return [], []
    earliest = min(as_utc(until) or now for _, until in rows)
    reads = latest_reads(session, settings)
    unread = [name for name, at in reads.items() if at is None or at < earliest]
    return [folio for folio, _ in rows], unread
