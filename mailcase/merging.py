"""Merging cases: one report written twice (by mail and by phone, say) becomes one case.

:func:`merge` moves every message, file, notice, ledger row, participant and link of
one case to the other, closes the merged case and points it at the one that stays
(``merged_into_id``): mail naming its folio, or replying to its notices, joins that case
from then on (:func:`merged_target`), and an outage follows the merge.
:func:`merge_problem` says why two cases may not merge; a refused merge
(:class:`~mailcase.casework.CaseworkError`) changes nothing. All of it runs in the
caller's transaction and is recorded on both cases, as every change of a case is
(mailcase.casework).
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Session, col, select

from mailcase.casework import (
    NOT_WAITING,
    is_outage_main,
    participants,
    record,
    refuse,
)
from mailcase.config import Settings
from mailcase.folio import tagged_subject
from mailcase.models import (
    Case,
    CaseLink,
    CaseMessage,
    CaseStatus,
    LedgerEntry,
    Notice,
    Participant,
)
from mailcase.notices import queue_notice
from mailcase.store import utcnow
from mailcase.visitdates import visit_cancellable

# A merged case points at the one it joined, which may itself be merged later
# (A into B, then B into C). Merging into a merged case is refused, so there is no
# cycle; the bound only keeps a damaged database from looping.
_MAX_MERGE_HOPS = 20


def merged_target(session: Session, case: Case) -> Case:
    """The case that answers for ``case``: ``case`` itself, or the open end of the chain of
    cases it was merged into (:func:`merge`)."""
    hops = 0
    while case.merged_into_id is not None and hops < _MAX_MERGE_HOPS:
        into = session.get(Case, case.merged_into_id)
        if into is None:
            break
        case, hops = into, hops + 1
    return case


def merge_problem(
    source: Case,
    target: Case,
    now_local: datetime,
    *,
    source_is_main: bool = False,
    target_is_main: bool = False,
) -> str | None:
    """Why ``source`` cannot be merged into ``target``, or ``None``.

    Either merged already: the folio answers for another case, work on that one.
    A closed or resolved target is reopened first, as for any other change: the
    customer of ``source`` would otherwise write on a case that says the matter is
    settled. Two customers' cases do not merge (an outage reported by two
    neighbours): the resolution goes to a case's own customer alone, and the
    other would never hear it; a case without an address (a phone report) merges
    with any. A home visit still ahead on ``source`` is cancelled or kept by
    merging the other way: a merged case keeps no visit, and nobody must wait at
    home for one that was silently dropped.

    An outage follows the merge (:func:`merge`), so two cases whose outages differ do
    not merge (``merge_outage``): a main case (``source_is_main``: it has reports) into a
    report of an outage, a report into another outage's report or into another main
    case (``target_is_main``). A report merged into its own main case merges.
    """
    if source.id == target.id:
        return "same_case"
    if source.merged_into_id is not None or target.merged_into_id is not None:
        return "merged"
    if source.customer and target.customer and source.customer != target.customer:
        return "other_customer"
    if source.spam_at is not None:
        # Merged, its mark could never be undone (a merged case takes no change), and
        # its sender would stay blocked for good. (A target marked spam is closed.)
        return "merge_spam"
    if target.status == CaseStatus.CLOSED:
        return "into_closed"
    if target.status == CaseStatus.RESOLVED:
        return "into_resolved"
    if visit_cancellable(source, now_local):
        return "merge_visit"
    if source_is_main and target.outage_id is not None:
        return "merge_outage"
    # A report into its own main case merges (its link is dropped); into anything else,
    # the case that stays takes the outage, which it must be free to.
    elsewhere = source.outage_id is not None and source.outage_id != target.id
    if elsewhere and (target_is_main or target.outage_id not in (None, source.outage_id)):
        return "merge_outage"
    return None


def merge(
    session: Session,
    settings: Settings,
    source: Case,
    target: Case,
    *,
    by: str,
    tell_customer: bool = True,
    now_local: datetime | None = None,
) -> None:
    """Merge ``source`` into ``target``: one report written twice becomes one case.

    As Zammad, OTRS and Request Tracker merge tickets: every message, file,
    notice and ledger row of ``source`` moves to ``target``; its participants
    become ``target``'s, and its customer too when ``target`` has none (a phone
    report), with the subject they wrote (recorded, with the one it replaces); its
    links point at ``target``. ``source`` is closed and
    points at ``target`` (``merged_into_id``): mail naming its folio, or replying
    to its notices, joins ``target`` from then on (:func:`merged_target`). Both
    histories record the merge. The customer of an open ``source`` is told the
    folio that follows their report (``merged``), unless ``tell_customer`` is
    False; a report already settled needs no news. Refused
    (:class:`CaseworkError`) as :func:`merge_problem` says, in the caller's
    transaction, with nothing changed.

    An outage follows the merge, as a merged ticket's links follow it in Zammad and
    OTRS/Znuny: the reports of a main ``source`` become ``target``'s, and a report
    ``source`` makes ``target`` a report of its outage (unless ``target`` is that
    outage's main case).
    """
    now_local = now_local or utcnow().astimezone(settings.folio.zone)
    problem = merge_problem(
        source, target, now_local,
        source_is_main=is_outage_main(session, source),
        target_is_main=is_outage_main(session, target),
    )  # fmt: skip
    if problem == "merged":
        merged = source if source.merged_into_id is not None else target
        refuse(problem, merged, into=merged_target(session, merged).folio)
    refuse(problem, source, into=target.folio)
    assert source.id is not None and target.id is not None
    # Told only a customer the merged case had of its own (not one it takes below:
    # a phone report's subject is the agent's words, never meant for the customer).
    tell = tell_customer and source.status == CaseStatus.OPEN and source.customer
    moved = {"case_id": target.id}
    for model in (CaseMessage, LedgerEntry, Notice):
        session.execute(sa.update(model).where(col(model.case_id) == source.id).values(moved))
    _merge_participants(session, source, target)
    _merge_links(session, source, target)
    now = utcnow()
    took_subject: str | None = None  # the subject a phone report gave up, if it did
    if not target.customer and source.customer:
        # A phone report without an address takes the customer of the mail: their
        # address, name, and the mailbox and language they wrote in (the English
        # desk's customer must not be answered in Spanish from contacto@).
        target.customer, target.customer_name = source.customer, source.customer_name
        target.mailbox, target.language = source.mailbox, source.language
        # And the subject they wrote: the phone report's is the agent's words, and every
        # notice to the customer from now on (relays, resolution, visit) would show it.
        took_subject, target.subject = target.subject, source.subject
    if not source.customer:
        # The merged report is this customer's too: `cases list --customer` finds it,
        # and `customers forget` erases what it kept (its name, its subject).
        source.customer = target.customer
    if source.last_customer_at and (
        target.last_customer_at is None or source.last_customer_at > target.last_customer_at
    ):
        target.last_customer_at = source.last_customer_at
    target.area = target.area or source.area
    # Its classification too (a phone report an agent classified, merged into the
    # customer's mail): the report counts the case that stays by type, not the merged.
    took_type = target.type is None and source.type is not None
    target.type = target.type or source.type
    # And the agent responsible, when the case that stays has none: the merged report's
    # owner was following it up, and goes on doing so there.
    took_owner = target.owner is None and source.owner is not None
    target.owner = target.owner or source.owner
    if target.visit_date is None and source.visit_date is not None:
        # A visit that took place (one still ahead is refused): the case that stays
        # made it, and the report counts it there (merged cases are left out).
        target.visit_date, target.visit_time = source.visit_date, source.visit_time
        source.visit_date = source.visit_time = None
    target.updated_at = now
    source.status = CaseStatus.CLOSED
    source.closed_at = source.updated_at = now
    source.merged_into_id = target.id
    # Neither waits on the customer any more: the merged case is closed, and the one that
    # stays now holds the other report's messages, which may be the answer it waited for;
    # an agent who still waits says so again (#pendiente) on the case that stays.
    if target.pending_until is not None:
        record(session, target, "system", NOT_WAITING, from_addr=by)
    source.pending_until = target.pending_until = None
    # The outage follows the merge (merge_problem refused the cases whose outages differ).
    took_outage = source.outage_id not in (None, target.id, target.outage_id)
    if took_outage:
        target.outage_id = source.outage_id
    source.outage_id = None
    session.execute(
        sa.update(Case).where(col(Case.outage_id) == source.id).values(outage_id=target.id)
    )
    session.add(source)
    session.add(target)
    session.flush()
    record(session, source, "system", f"case merged into {target.folio}", from_addr=by)
    record(session, target, "system", f"case {source.folio} merged into this case", from_addr=by)
    if took_outage:
        main = session.get(Case, target.outage_id)
        folio = main.folio if main is not None else "?"
        record(session, target, "system", f"report of the outage {folio}", from_addr=by)
    if took_subject is not None:
        record(
            session, target, "system",
            f"subject taken from {source.folio}: {target.subject} (was: {took_subject})",
            from_addr=by,
        )  # fmt: skip
    if took_type:
        record(session, target, "system", f"type set to {target.type}", from_addr=by)
    if took_owner:
        record(session, target, "system", f"owner set to {target.owner}", from_addr=by)
    if tell:
        # Under the subject the customer wrote, with the folio that follows it.
        queue_notice(
            session, settings, target, "merged", to=source.customer,
            context={"merged_folio": source.folio},
            subject=tagged_subject(target.folio, source.subject, mask=True),
        )  # fmt: skip


def _merge_participants(session: Session, source: Case, target: Case) -> None:
    """The participants of ``source`` may write on ``target``, with no cap (an agent
    decided it)."""
    assert source.id is not None and target.id is not None
    existing = participants(session, target.id) | {target.customer}
    for address in sorted(participants(session, source.id) - existing):
        session.add(Participant(case_id=target.id, address=address))
    session.execute(sa.delete(Participant).where(col(Participant.case_id) == source.id))


def _merge_links(session: Session, source: Case, target: Case) -> None:
    """Links of ``source`` move to ``target`` (none to itself, none twice), and the two
    are linked, so that ``cases show`` of either names the other."""
    assert source.id is not None and target.id is not None
    others = {
        other
        for first, second in session.exec(
            select(CaseLink.case_id, CaseLink.related_id).where(
                (col(CaseLink.case_id) == source.id) | (col(CaseLink.related_id) == source.id)
            )
        ).all()
        for other in (first, second)
    } - {source.id, target.id}
    session.execute(
        sa.delete(CaseLink).where(
            (col(CaseLink.case_id) == source.id) | (col(CaseLink.related_id) == source.id)
        )
    )
    linked = set(
        session.exec(select(CaseLink.related_id).where(CaseLink.case_id == target.id)).all()
    ) | set(session.exec(select(CaseLink.case_id).where(CaseLink.related_id == target.id)).all())
    for other in [*sorted(others - linked), source.id]:
        session.add(CaseLink(case_id=target.id, related_id=other))
