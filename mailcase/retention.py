"""Retention by age (LFPDPPP art. 11: personal data is deleted once it is no longer
needed for its purpose): erase, as ``customers forget`` erases one address
(:mod:`mailcase.erasure`), every customer no longer active, and the stored copies of
mail of no case as old.

A customer is inactive for N days when none of their cases is open and the latest of
their activity is older than N days: the times of their cases (opened, resolved,
closed, the customer's last message; not ``updated_at``, which the desk moves too), the
last mail fetched for one of them, the last notice to them about one of them, their
last mail on another customer's case and their last mail kept outside any case. The
desk's own bookkeeping is no activity of theirs: an agent's mail on one of their cases
(an ``#asignar`` or ``#tipo`` on a case closed long ago, as ``cases assign`` and
``cases type``, which leave ``updated_at`` alone) and the notices to agents about it
(Zammad and OTRS/Znuny likewise age a ticket by its customer's side, not by an agent's
internal note). Every time is
mailcase's own clock, never a message's Date header (a sender's clock set in 2099
would keep them forever). A customer that ``forget`` would refuse (an open case, a
notice still queued) is skipped, never an error; so is one whose activity turned
recent between the choice and their batch's transaction.

Someone else's live case keeps a customer too, whatever the dates: one who is a
participant of a case not closed (copied on a neighbour's report, they may write on
it), who wrote on one, or whose own case was merged into one (followed down the chain
of merges). Erasing them would rewrite that case's history while the agents work it;
once it is closed they are purged as anyone else. Agents and mailcase's own addresses
(``insiders``) are never customers here: they are never chosen.

Addresses are never logged: the ``customers_purged`` event has counts and folios.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from mailcase.casework import FORGOTTEN
from mailcase.erasure import Erasure, Erasures, LooseErasure, erase_loose_mail, erase_many
from mailcase.logs import get_logger
from mailcase.merging import merged_target
from mailcase.models import Case, CaseMessage, CaseStatus, LedgerEntry, Notice, Participant
from mailcase.notices import AGENT_KINDS
from mailcase.store import Store, as_utc, utcnow


@dataclass(frozen=True, slots=True)
class Purge:
    """What a purge by age erased (or would erase)."""

    customers: Erasures
    loose: LooseErasure

    @property
    def files_left(self) -> tuple[str, ...]:
        return self.customers.files_left + self.loose.files_left


def purge_inactive(
    store: Store,
    blob_dir: Path,
    inactive_days: int,
    *,
    insiders: frozenset[str],
    by: str,
    dry_run: bool,
    now: datetime | None = None,
    stop: threading.Event | None = None,
) -> Purge:
    """Erase every customer inactive for ``inactive_days`` (see the module docstring) as
    :func:`mailcase.erasure.erase_many` does, and the mail of no case fetched that long
    ago (:func:`mailcase.erasure.erase_loose_mail`); with ``dry_run`` only say what would
    be erased. Logs ``customers_purged`` (counts and folios) when something was erased.
    Once ``stop`` is set (the daemon stopping: systemd waits two minutes), the choice of
    customers and the first scan give up within moments, no further batch of customers
    begins and the old mail of no case waits for the next run: what was erased by then
    is returned."""
    if inactive_days < 1:
        raise ValueError("inactive_days must be at least 1")
    cutoff = (now or utcnow()) - timedelta(days=inactive_days)
    with store.read_session() as session:
        # An agent's test mail, or mail from a mailbox of ours, once made them a case's
        # customer: they are never one to erase everywhere.
        chosen = [
            a for a in inactive_customers(session, cutoff, stop, insiders) if a not in insiders
        ]
    if stop is not None and stop.is_set():
        return Purge(customers=Erasures(skipped=len(chosen)), loose=LooseErasure())

    def still_inactive(session: Session, address: str, found: Erasure) -> bool:
        # Read again under the batch's lock: a message may have come since the choice.
        return _inactive(session, address, cutoff, found.loose_ledger, insiders)

    customers = erase_many(
        store,
        blob_dir,
        chosen,
        insiders=insiders,
        by=by,
        dry_run=dry_run,
        still_wanted=still_inactive,
        stop=stop,
    )
    stopping = stop is not None and stop.is_set()
    loose = (
        LooseErasure()
        if stopping
        else erase_loose_mail(store, blob_dir, cutoff, dry_run=dry_run, theirs=customers, stop=stop)
    )
    if not dry_run and (customers.erased or loose.messages or loose.notices):
        # Folios and counts only: the log must not keep what was just erased.
        get_logger().info(
            "customers_purged",
            inactive_days=inactive_days,
            customers=len(customers.customers),
            cases=len(customers.folios),
            folios=list(customers.folios),
            messages=customers.messages,
            notices=customers.notices,
            files=customers.files,
            loose_messages=loose.messages,
            loose_notices=loose.notices,
            loose_files=loose.files,
        )
    return Purge(customers=customers, loose=loose)


# The times on a case's row that are the customer's side of it: opened, their latest
# message, resolved, closed. Not updated_at: an agent's #tipo by mail moves it too.
_STAMPS: tuple[Any, ...] = (  # the case's columns (sqlmodel's col())
    col(Case.created_at),
    col(Case.last_customer_at),
    col(Case.resolved_at),
    col(Case.closed_at),
)


def _before(latest: Any, cutoff: datetime) -> sa.ColumnElement[bool]:
    """``latest`` (an aggregate, NULL when no case has that time) is before ``cutoff``."""
    return sa.or_(latest.is_(None), latest < cutoff)


def inactive_customers(
    session: Session,
    cutoff: datetime,
    stop: threading.Event | None = None,
    insiders: frozenset[str] = frozenset(),
) -> list[str]:
    """The customers (addresses) with no open case whose activity (see the module
    docstring; ``insiders``' mail is the desk's, not theirs) is all older than
    ``cutoff``, in order; once ``stop`` is set, only those found by then."""
    open_ = sa.func.sum(sa.case((col(Case.status) == CaseStatus.OPEN, 1), else_=0))
    rows = session.exec(
        select(Case.customer)
        .where(col(Case.customer) != FORGOTTEN, col(Case.customer) != "")
        .group_by(col(Case.customer))
        # A first cut on the cases' own row (the customer's side of it: not updated_at,
        # which the desk's own mail moves too); the rest is read per customer.
        .having(open_ == 0, *(_before(sa.func.max(stamp), cutoff) for stamp in _STAMPS))
        .order_by(col(Case.customer))
    ).all()
    found = []
    for address in rows:
        if stop is not None and stop.is_set():
            break
        if _inactive(session, address, cutoff, (), insiders):
            found.append(address)
    return found


def _inactive(
    session: Session,
    address: str,
    cutoff: datetime,
    loose_ledger: tuple[int, ...],
    insiders: frozenset[str] = frozenset(),
) -> bool:
    """Whether ``address`` has no open case and no activity at or after ``cutoff``;
    ``loose_ledger``: its mail kept outside any case (the erasure's scan found it);
    mail from ``insiders`` (agents, our own addresses) on its cases is not its activity."""
    cases = session.execute(
        sa.select(col(Case.id), col(Case.status), *_STAMPS).where(col(Case.customer) == address)
    ).all()
    if any(status == CaseStatus.OPEN for _, status, *_ in cases):
        return False
    ids = [i for i, *_ in cases if i is not None]
    if _on_a_live_case(session, address, ids):
        return False
    times: list[datetime | None] = [t for _, _, *stamps in cases for t in stamps]
    if ids:
        # The desk's own mail on their cases: its recorded message names the stored
        # file, as its ledger row does (ingest never sets case_messages.ledger_id), and
        # both are found through the indexed case_id, as the erasure finds a message's
        # copies.
        desks = select(CaseMessage.raw_sha256).where(
            col(CaseMessage.case_id).in_(ids),
            col(CaseMessage.from_addr).in_(insiders),
            col(CaseMessage.raw_sha256).is_not(None),
        )
        times.append(
            session.exec(
                select(sa.func.max(LedgerEntry.ingested_at)).where(
                    col(LedgerEntry.case_id).in_(ids),
                    col(LedgerEntry.raw_sha256).not_in(desks) if insiders else sa.true(),
                )
            ).one()
        )
        times.append(
            session.exec(
                select(sa.func.max(Notice.created_at)).where(
                    col(Notice.case_id).in_(ids), col(Notice.kind).not_in(AGENT_KINDS)
                )
            ).one()
        )
    # Their mail on other customers' cases, by when it was fetched: the ledger row of
    # the same case and stored file as the recorded message.
    times.append(
        session.exec(
            select(sa.func.max(LedgerEntry.ingested_at))
            .join(
                CaseMessage,
                sa.and_(
                    col(CaseMessage.case_id) == col(LedgerEntry.case_id),
                    col(CaseMessage.raw_sha256) == col(LedgerEntry.raw_sha256),
                ),
            )
            .where(CaseMessage.from_addr == address)
        ).one()
    )
    if loose_ledger:
        # A quarantined message of last week waits for a person: not to be dismissed.
        times.append(
            session.exec(
                select(sa.func.max(LedgerEntry.ingested_at)).where(
                    col(LedgerEntry.id).in_(loose_ledger)
                )
            ).one()
        )
    cut = as_utc(cutoff)
    assert cut is not None
    return all(t is None or (as_utc(t) or cut) < cut for t in times)


def _on_a_live_case(session: Session, address: str, own: list[int]) -> bool:
    """Whether ``address`` takes part in another customer's case that is not closed: a
    participant of it, the sender of one of its messages, or the customer of a case of
    its own (``own``) merged into it, at the end of the chain of merges
    (:func:`mailcase.merging.merged_target`)."""
    # Another customer's case (theirs resolved keeps nobody: see _inactive).
    live = sa.and_(col(Case.status) != CaseStatus.CLOSED, col(Case.id).not_in(own))
    if session.exec(
        select(Participant.id)
        .join(Case, col(Case.id) == col(Participant.case_id))
        .where(Participant.address == address, live)
    ).first():
        return True
    if session.exec(
        select(CaseMessage.id)
        .join(Case, col(Case.id) == col(CaseMessage.case_id))
        .where(CaseMessage.from_addr == address, live)
    ).first():
        return True
    if own:
        merged = session.exec(
            select(Case).where(col(Case.id).in_(own), col(Case.merged_into_id).is_not(None))
        ).all()
        if any(merged_target(session, case).status != CaseStatus.CLOSED for case in merged):
            return True
    return False
