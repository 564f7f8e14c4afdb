"""Outages: many customers' reports of one failure, followed and resolved as one.

A fibre cut in one neighbourhood: thirty customers write within the hour. One case, the
main case, follows the failure; the others are its reports (``cases.outage_id``), as
OTRS/Znuny ITSM's master and slave tickets, Request Tracker's parent and child links and
osTicket's child tickets are. Resolving the main case resolves each open report
(:func:`mailcase.casework.resolve`), each customer told under their own folio. Reopening
the main case reopens no report (their customers were told it was corrected; one whose
failure is back writes, and their own case reopens). Closing it without a resolution
leaves its reports open and linked: they are worked one by one again, and reminded as
usual (mailcase.reminders waits for an open main case only). A merge takes the outage
along (:func:`mailcase.merging.merge`). Erasing a customer's data (``customers forget``,
closed cases only) keeps the link, which is no personal data: the erased case is closed,
so a resolution of its main case leaves it alone, and an erased main case takes no
reports.

Here a case joins an outage, leaves it, and the agents' news of it is relayed to every
open report's customer; each change runs in the caller's transaction, is recorded on
the case and on its main case, and is refused (:class:`~mailcase.casework.CaseworkError`)
with nothing changed when it does not apply. What casework's own changes need to know of
an outage (:func:`~mailcase.casework.is_outage_main`, the open reports a resolution
resolves, the outage an agents' notice names) stays in mailcase.casework, which imports
nothing of this module.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlmodel import Session, col, select

from mailcase.casework import (
    clear_pending,
    is_erased,
    is_outage_main,
    open_reports,
    record,
    refuse,
    relay,
    route_problem,
)
from mailcase.config import Settings
from mailcase.merging import merged_target
from mailcase.models import Case, CaseStatus
from mailcase.notices import queue_notice
from mailcase.store import utcnow
from mailcase.wire import FileAttachment


def outage_reports(session: Session, main: Case) -> list[Case]:
    """The reports of the outage followed in ``main``, oldest first (any status)."""
    return list(
        session.exec(
            select(Case).where(col(Case.outage_id) == main.id).order_by(col(Case.id))
        ).all()
    )


def has_open_reports(session: Session, case: Case) -> bool:
    """Whether ``case`` is the main case of an outage with a report still open (not
    resolved, closed nor merged): one its resolution would resolve."""
    if case.id is None:
        return False
    found = session.exec(
        select(Case.id)
        .where(
            col(Case.outage_id) == case.id,
            col(Case.status) == CaseStatus.OPEN,
            col(Case.merged_into_id).is_(None),
        )
        .limit(1)
    ).first()
    return found is not None


def open_outage_main(session: Session, case: Case) -> Case | None:
    """The main case of the outage ``case`` is a report of, while that one is open; None
    when ``case`` is no report, or its main case is resolved or closed."""
    if case.outage_id is None:
        return None
    main = session.get(Case, case.outage_id)
    return main if main is not None and main.status == CaseStatus.OPEN else None


def outage_problem(case: Case, main: Case, *, case_is_main: bool) -> str | None:
    """Why ``case`` cannot be made a report of the outage followed in ``main``, or ``None``;
    ``case``'s own status aside (an open case only: :func:`route_problem`, checked with a
    reply's other commands, so that ``#reabrir`` above it counts).

    Never a case of itself, no chains (``main`` a report of an outage, ``case`` the main
    case of one: ``case_is_main``), and a closed or resolved ``main`` is reopened first:
    its resolution would never reach the new report's customer.
    """
    if case.id == main.id:
        return "outage_same_case"
    if main.outage_id is not None:
        return "outage_chain"
    if case_is_main:
        return "outage_main"
    if main.status == CaseStatus.CLOSED:
        return "outage_closed"
    if main.status == CaseStatus.RESOLVED:
        return "outage_resolved"
    return None


def join_outage(
    session: Session,
    settings: Settings,
    case: Case,
    main: Case,
    *,
    by: str,
    tell_customer: bool = True,
) -> bool:
    """Make ``case`` one of the reports of the outage followed in ``main``, recorded on both
    cases, and tell its customer (``outage_joined``: their report is part of a general
    failure being worked on, and they will be told under their own folio when it is
    corrected; never ``main``'s, another customer's case) unless ``tell_customer`` is
    False; False, and nothing changed, recorded nor sent, when it was a report of
    ``main`` already. A report of another outage moves to this one (recorded on the old
    main case too), its customer not told again.

    Refused (:class:`CaseworkError`) for a merged ``case`` or ``main``, a ``case`` that is
    not open (reopen it first), and as :func:`outage_problem` says.
    """
    for merged in (case, main):
        if merged.merged_into_id is not None:
            into = merged_target(session, merged).folio
            refuse("merged", merged, into=into)
    refuse(route_problem(case.status), case)
    if case.outage_id is not None and case.outage_id == main.id:
        return False
    chained = session.get(Case, main.outage_id) if main.outage_id is not None else None
    refuse(
        outage_problem(case, main, case_is_main=is_outage_main(session, case)),
        case,
        into=main.folio,
        main=chained.folio if chained is not None else "",
    )
    moved_from = session.get(Case, case.outage_id) if case.outage_id is not None else None
    case.outage_id = main.id
    case.updated_at = utcnow()
    session.add(case)
    record(session, case, "system", f"report of the outage {main.folio}", from_addr=by)
    if moved_from is not None:  # its old main case's history must not still count it
        record(
            session, moved_from, "system",
            f"case {case.folio} is no longer a report of this outage: moved to {main.folio}",
            from_addr=by,
        )  # fmt: skip
    # Its next step is the repair now, as after a visit is booked: a wait left running
    # would close it "no answer" mid-outage, and the main case's resolution would then
    # skip it (closed), its customer never told the failure was corrected.
    clear_pending(session, case, by=by, why=f"a report of the outage {main.folio}")
    # The main case's, likewise: its wait's end would close it "no answer" with this
    # report open, and nothing would then resolve the report.
    clear_pending(session, main, by=by, why=f"the main case of an outage ({case.folio})")
    record(session, main, "system", f"case {case.folio} is a report of this outage", from_addr=by)
    # A report moved from another main case was told already: the same failure, from
    # the customer's side, and the same words again would read as a second one.
    if tell_customer and moved_from is None and case.customer and not is_erased(case):
        # Their own folio only: the main case is another customer's, and a mail naming
        # its folio would open a third case (triage takes no other customer's folio).
        queue_notice(session, settings, case, "outage_joined", to=case.customer)
    return True


def tell_outage_reports(
    session: Session,
    settings: Settings,
    main: Case,
    text: str,
    *,
    agent_name: str,
    attachments: Sequence[FileAttachment] = (),
) -> list[tuple[Case, str]]:
    """Relay an agent's news of the outage followed in ``main`` (``#masivo aviso``: an
    estimated time of restoration) to the customer of each of its open reports, under
    that report's own folio and thread, as :func:`relay` sends any reply (its guards
    alike). ``main``'s own customer is the caller's.

    Returns each open report with why the news did not reach its customer, in the words
    of the agent's ``not_relayed`` notice: ``no_customer`` (a phone report: someone must
    call them), ``held`` (a guard held it: ``limits.max_relays_per_case_per_hour``, a
    loop), or ``""`` when it went out.
    """
    told: list[tuple[Case, str]] = []
    for report in open_reports(session, main):
        if not report.customer:
            told.append((report, "no_customer"))
        elif relay(session, settings, report, text, agent_name=agent_name, attachments=attachments):
            told.append((report, ""))
        else:
            told.append((report, "held"))
    return told


def leave_outage(session: Session, case: Case, *, by: str) -> bool:
    """``case`` is no report of an outage any more (recorded on it, naming the main case,
    and on the main case, naming it); False, and nothing changed nor recorded, when it
    was none. Any status: bookkeeping. Nobody is told: the customer's case goes on under
    its own folio as before."""
    if case.outage_id is None:
        return False
    main = session.get(Case, case.outage_id)
    case.outage_id = None
    case.updated_at = utcnow()
    session.add(case)
    folio = main.folio if main is not None else "?"
    record(session, case, "system", f"no longer a report of the outage {folio}", from_addr=by)
    if main is not None:  # the main case's history said it was one: it says it left, too
        record(
            session, main, "system", f"case {case.folio} is no longer a report of this outage",
            from_addr=by,
        )  # fmt: skip
    return True
