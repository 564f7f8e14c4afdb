"""Home visits: a technician's visit booked, moved or called off, the customer told.

:func:`schedule_visit` books a visit (or moves the one still ahead, the customer told
the old one is off), ends a wait for the customer (the next step is the company's) and
tells the customer and the area the case is routed to; :func:`cancel_visit` calls it
off and tells them. Each runs in the caller's transaction, is recorded on the case, and
is refused (:class:`~mailcase.casework.CaseworkError`) with nothing changed when it does
not apply (:func:`~mailcase.visitdates.visit_problem`). A resolution and a closing
cancel a visit still ahead themselves (mailcase.casework: its
:func:`~mailcase.casework.cancel_visit_if_ahead` and
:func:`~mailcase.casework.tell_visit_cancelled`, which :func:`cancel_visit` uses too);
casework imports nothing of this module.
"""

from __future__ import annotations

from datetime import date, datetime

from sqlmodel import Session

from mailcase.casework import (
    cancel_visit_if_ahead,
    clear_pending,
    record,
    refuse,
    tell_area,
    tell_visit_cancelled,
)
from mailcase.config import Settings
from mailcase.models import Case, CaseStatus
from mailcase.notices import queue_notice
from mailcase.store import utcnow
from mailcase.visitdates import (
    clock_text,
    visit_ahead,
    visit_cancellable,
    visit_problem,
    visit_text,
)


def schedule_visit(
    session: Session,
    settings: Settings,
    case: Case,
    day: date,
    hour: str | None,
    *,
    by: str,
    now_local: datetime | None = None,
) -> None:
    """Record a home visit and send the customer a notice with its date.

    Refused (:class:`~mailcase.casework.CaseworkError`) on a closed case and for a
    time already past in the business's time zone (``folio.timezone``) at
    ``now_local`` (default: now): a caller that checked the visit first passes the
    time it checked at.
    """
    now_local = now_local or utcnow().astimezone(settings.folio.zone)
    refuse(
        visit_problem(case.status, day, hour, now_local),
        case,
        when=f"{day.isoformat()} {hour}" if hour else day.isoformat(),
        now=now_local.strftime("%Y-%m-%d %H:%M %Z"),
    )
    previous = ""
    if visit_ahead(case, now_local):
        # Still ahead: this one replaces it. One that took place (a second visit
        # after a repair that did not hold, today's with no time included) is not
        # cancelled.
        previous = visit_text(case.visit_date, case.visit_time, case.language)
    if previous == visit_text(day, hour, case.language) or (
        case.visit_date == day and case.visit_time is None
    ):
        # The same visit again, or its time given now: nothing is cancelled.
        previous = ""
    case.visit_date = day
    case.visit_time = hour
    case.updated_at = utcnow()
    session.add(case)
    when = f"{day.isoformat()} {hour}" if hour else day.isoformat()
    record(session, case, "system", f"home visit scheduled for {when}", from_addr=by)
    # The next step is the company's now, as after #resolver: the wait's end would close
    # the case "for no answer", cancel this visit and tell the customer both.
    clear_pending(session, case, by=by, why="a home visit was booked")
    if case.customer:
        queue_notice(
            session,
            settings,
            case,
            "visit",
            to=case.customer,
            context={
                "visit_date": day.isoformat(),
                "visit_date_text": visit_text(day, None, case.language),
                "visit_time": hour or "",
                "visit_time_text": clock_text(hour, case.language) if hour else "",
                # A visit scheduled again: the customer is told the old one is off.
                "previous_visit": previous,
            },
        )
    tell_area(session, settings, case, "visit", visit_text(day, hour, case.language))


def cancel_visit(
    session: Session,
    settings: Settings,
    case: Case,
    *,
    by: str,
    now_local: datetime | None = None,
) -> None:
    """Cancel ``case``'s home visit and tell the customer (``visit_cancelled``).

    Refused (:class:`~mailcase.casework.CaseworkError`) on a closed case and when
    there is no visit to call off (:func:`~mailcase.visitdates.visit_cancellable` at
    ``now_local``, default now).
    """
    now_local = now_local or utcnow().astimezone(settings.folio.zone)
    if case.status == CaseStatus.CLOSED:
        refuse("case_closed", case)
    if not visit_cancellable(case, now_local):
        refuse("no_visit", case)
    case.updated_at = utcnow()
    cancelled = cancel_visit_if_ahead(session, settings, case, by=by, explicit=now_local)
    tell_visit_cancelled(session, settings, case, cancelled)
