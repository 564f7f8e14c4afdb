"""The rows of ``mailcase report`` from the database: a thin layer over :mod:`mailcase.report`.

Three statements, each bounded to the period's cases by a range on
``cases.created_at`` (the ``ix_cases_created_at_id`` index), so a month's
report reads that month's cases and their notices, never the whole table
(a million cases: tests/test_report.py checks SQLite's plan). Counts are
aggregated by the database; only the durations of the period's resolved and
answered cases come back as rows, for the percentiles.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, func, select

from mailcase.models import Case, CaseStatus, Notice
from mailcase.notices import ANSWER_KINDS, ANSWERED_STATUSES
from mailcase.report import CaseGroup, Period, Report, build_report
from mailcase.store import as_utc


def _in_period(start: datetime, end: datetime) -> sa.ColumnElement[bool]:
    return sa.and_(col(Case.created_at) >= start, col(Case.created_at) < end)


def _flag(condition: sa.ColumnElement[bool]) -> sa.ColumnElement[int]:
    """``condition`` as 1 or 0, groupable alike on SQLite and PostgreSQL."""
    return sa.case((condition, 1), else_=0)


def groups_statement(start: datetime, end: datetime) -> Any:
    """The count of the period's cases per channel, mailbox, area, type, state and flags."""
    keys = (
        col(Case.channel),
        col(Case.mailbox),
        col(Case.area),
        col(Case.type),
        col(Case.status),
        col(Case.outcome),
        _flag(col(Case.merged_into_id).is_not(None)).label("merged"),
        _flag(col(Case.spam_at).is_not(None)).label("spam"),
        _flag(col(Case.visit_date).is_not(None)).label("visit"),
        _flag(col(Case.customer) != "").label("has_address"),
    )
    return sa.select(*keys, func.count().label("n")).where(_in_period(start, end)).group_by(*keys)


def _counted(start: datetime, end: datetime) -> sa.ColumnElement[bool]:
    """The period's cases the figures count: neither merged nor marked spam."""
    return sa.and_(
        _in_period(start, end), col(Case.merged_into_id).is_(None), col(Case.spam_at).is_(None)
    )


def resolutions_statement(start: datetime, end: datetime) -> Any:
    """(created_at, resolved_at) of the period's counted cases (:func:`_counted`) that were
    resolved (an outcome given, and not reopened since: the resolved figure's cases)."""
    return select(Case.created_at, Case.resolved_at).where(
        _counted(start, end),
        col(Case.status) != CaseStatus.OPEN.value,
        col(Case.outcome).is_not(None),
        col(Case.resolved_at).is_not(None),
    )


def first_answers_statement(start: datetime, end: datetime) -> Any:
    """(created_at, first answer or NULL) of the period's counted cases (:func:`_counted`)
    with an address.

    Only answers given after the case opened: a case that another was merged into
    holds that case's notices, some older than itself.
    """
    answer = sa.and_(
        col(Notice.case_id) == col(Case.id),
        col(Notice.kind).in_(ANSWER_KINDS),
        col(Notice.status).in_(ANSWERED_STATUSES),
        col(Notice.created_at) >= col(Case.created_at),
    )
    return (
        select(Case.created_at, func.min(Notice.created_at))
        .select_from(Case)
        .outerjoin(Notice, answer)
        .where(_counted(start, end), col(Case.customer) != "")
        .group_by(col(Case.id), col(Case.created_at))
    )


def read_report(
    session: Session,
    period: Period,
    *,
    now: datetime,
    mailboxes: tuple[str, ...] = (),
    areas: tuple[str, ...] = (),
) -> Report:
    """The report of ``period`` as the database holds it at ``now`` (see :mod:`mailcase.report`)."""
    start, end = period.bounds()
    rows = session.execute(groups_statement(start, end)).all()
    groups = [
        CaseGroup(
            channel=channel,
            mailbox=mailbox,
            area=area,
            type=kind,
            status=status,
            outcome=outcome,
            merged=bool(merged),
            spam=bool(spam),
            visit=bool(visit),
            has_address=bool(has_address),
            count=n,
        )
        for channel, mailbox, area, kind, status, outcome, merged, spam, visit, has_address, n in (
            rows
        )
    ]
    resolutions = [
        (_utc(created), _utc(resolved))
        for created, resolved in session.exec(resolutions_statement(start, end)).all()
    ]
    answers = [
        (_utc(created), None if answered is None else _utc(answered))
        for created, answered in session.exec(first_answers_statement(start, end)).all()
    ]
    return build_report(
        period,
        groups,
        resolutions,
        answers,
        generated_at=now,
        mailboxes=mailboxes,
        areas=areas,
    )


def _utc(value: datetime | str) -> datetime:
    """A datetime column's value, aware in UTC. ``MIN()`` of a column on SQLite may come
    back as the stored text when the driver does not know the expression's type."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    aware = as_utc(value)
    assert aware is not None
    return aware
