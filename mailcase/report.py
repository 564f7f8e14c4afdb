"""The complaint figures of a period (``mailcase report``): plain rows in, a :class:`Report` out.

What management and the regulators (IFT, PROFECO) ask of a provider about the
complaints it received: how many, by which channel, mailbox and type (complaint,
question, clarification, cancellation, as the agents classified them), how many were
resolved and how many of those were upheld (*procedente*), how many are still
open, and how long the customer waited for a first answer and for the
resolution. Pure: the rows come from :mod:`mailcase.reporting` (one aggregate
query over the period's cases) or from a test; nothing here touches a database.

The rule: a case belongs to the period in which it was opened (``created_at``,
in the business's calendar); its figures are its state when the report is
made, so a month reported again later shows the cases resolved since.
A case merged into another (``merged_into_id``) is a report written twice: it
is counted in no figure, only as its own number, ``merged``. A case an agent marked
spam (``spam_at``: spam the filter missed) is no complaint at all: counted in no
figure either, only as ``spam`` (a merged one as ``merged``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

CHANNELS = ("mail", "phone", "web", "visit")  # cases.channel, in the order reports list them
# cases.type (mailcase.models.CaseType), in the order reports list them; NULL: not classified.
TYPES = ("complaint", "question", "clarification", "cancellation")
OUTCOME_VALID = "valid"  # procedente: the customer's complaint was upheld
OUTCOME_INVALID = "invalid"  # improcedente
STATUS_OPEN = "open"
STATUS_CLOSED = "closed"


@dataclass(frozen=True)
class Period:
    """Whole days ``first`` to ``last`` (both included) in the business's time zone."""

    first: date
    last: date
    zone: ZoneInfo

    def bounds(self) -> tuple[datetime, datetime]:
        """[start, end) in UTC: ``first``'s midnight to the midnight after ``last``, local.

        Raises OverflowError for a day at the end of the calendar (9999-12-31)."""
        start = datetime.combine(self.first, time(0), tzinfo=self.zone)
        end = datetime.combine(self.last + timedelta(days=1), time(0), tzinfo=self.zone)
        return start.astimezone(UTC), end.astimezone(UTC)


def previous_month(now: datetime, zone: ZoneInfo) -> Period:
    """The calendar month before the one ``now`` (aware) falls in, in ``zone``."""
    this_month = now.astimezone(zone).date().replace(day=1)
    last = this_month - timedelta(days=1)
    return Period(last.replace(day=1), last, zone)


@dataclass(frozen=True)
class CaseGroup:
    """One row of the period's aggregate: ``count`` cases that share every other field."""

    channel: str
    mailbox: str
    area: str | None
    status: str
    outcome: str | None  # valid | invalid | None: kept by a reopened case until resolved again
    merged: bool  # merged into another case
    visit: bool  # a home visit booked (visit_date set: a cancelled visit clears it)
    has_address: bool  # a customer address to answer by mail
    count: int
    type: str | None = None  # a TYPES value; None: not classified yet
    spam: bool = False  # marked spam by an agent (cases.spam_at)


@dataclass(frozen=True)
class Durations:
    """Median and 90th percentile of ``count`` durations, in hours (None when none)."""

    count: int
    median_hours: float | None
    p90_hours: float | None


@dataclass(frozen=True)
class Report:
    """The figures of the cases opened in ``period`` (merged ones only in ``merged``, those
    marked spam only in ``spam``).

    ``opened == resolved + open + closed_without_resolution``; ``opened ==
    sum(by_type) + no_type``; ``resolved == valid + invalid``; ``first_answer.count +
    unanswered + no_address == opened``.
    """

    period: Period
    generated_at: datetime  # the moment whose state the figures show (UTC)
    opened: int
    by_channel: dict[str, int]
    by_mailbox: dict[str, int]
    by_area: dict[str, int]  # routed cases per area
    no_area: int  # never routed
    by_type: dict[str, int]  # every TYPES value, even at 0
    no_type: int  # not classified yet
    resolved: int  # resolved, or closed after a resolution: an outcome was given
    valid: int
    invalid: int
    open: int  # not resolved when the report was made (a reopened case among them)
    closed_without_resolution: int
    merged: int  # merged into another case: counted in no other figure
    first_answer: Durations
    unanswered: int  # with an address, no answer yet beyond the acknowledgement
    no_address: int  # no address to answer by mail (a phone case): not in first_answer
    resolution: Durations
    visits: int
    spam: int = 0  # marked spam (not merged): counted in no other figure
    upheld_share: float | None = field(init=False)  # valid / resolved

    def __post_init__(self) -> None:
        share = self.valid / self.resolved if self.resolved else None
        object.__setattr__(self, "upheld_share", share)


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """The ``fraction`` quantile of ``values`` (0.5: the median), None for no values.

    Linear interpolation between the two nearest values (numpy's default, Excel's
    PERCENTILE.INC): the median of an even count is the mean of the middle two.
    """
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


def durations(pairs: Iterable[tuple[datetime, datetime]]) -> Durations:
    """Median and 90th percentile of ``end - start`` over ``pairs``, in hours.

    A pair whose end precedes its start (a host's clock stepped back between the two)
    counts as no time, not as negative time.
    """
    hours = [max((end - start).total_seconds(), 0.0) / 3600 for start, end in pairs]
    return Durations(len(hours), percentile(hours, 0.5), percentile(hours, 0.9))


def build_report(
    period: Period,
    groups: Iterable[CaseGroup],
    resolutions: Iterable[tuple[datetime, datetime]],
    first_answers: Iterable[tuple[datetime, datetime | None]],
    *,
    generated_at: datetime,
    mailboxes: Sequence[str] = (),
    areas: Sequence[str] = (),
) -> Report:
    """The figures of ``period`` from its rows.

    ``groups``: the aggregate of every case opened in the period, merged and spam ones
    too. ``resolutions``: (created_at, resolved_at) of its resolved cases, neither merged
    nor spam. ``first_answers``: (created_at, first answer or None) of its cases, neither
    merged nor spam, that have an address. ``mailboxes`` and ``areas`` (the configured
    ones) are listed even with no case; one met in the rows and no longer configured is
    listed too.
    """
    by_channel = dict.fromkeys(CHANNELS, 0)
    by_mailbox = dict.fromkeys(mailboxes, 0)
    by_area = dict.fromkeys(areas, 0)
    by_type = dict.fromkeys(TYPES, 0)
    opened = no_area = no_type = valid = invalid = still_open = closed = merged = spam = 0
    visits = no_address = 0
    for group in groups:
        if group.merged:
            merged += group.count
            continue
        if group.spam:
            spam += group.count
            continue
        opened += group.count
        by_channel[group.channel] = by_channel.get(group.channel, 0) + group.count
        by_mailbox[group.mailbox] = by_mailbox.get(group.mailbox, 0) + group.count
        if group.area:
            by_area[group.area] = by_area.get(group.area, 0) + group.count
        else:
            no_area += group.count
        if group.type:
            by_type[group.type] = by_type.get(group.type, 0) + group.count
        else:
            no_type += group.count
        if group.status == STATUS_OPEN:
            still_open += group.count
        elif group.outcome == OUTCOME_VALID:
            valid += group.count
        elif group.outcome == OUTCOME_INVALID:
            invalid += group.count
        else:
            closed += group.count
        visits += group.count if group.visit else 0
        no_address += 0 if group.has_address else group.count
    answers = list(first_answers)
    answered = [(start, end) for start, end in answers if end is not None]
    return Report(
        period=period,
        generated_at=generated_at,
        opened=opened,
        by_channel=by_channel,
        by_mailbox=by_mailbox,
        by_area=by_area,
        no_area=no_area,
        by_type=by_type,
        no_type=no_type,
        resolved=valid + invalid,
        valid=valid,
        invalid=invalid,
        open=still_open,
        closed_without_resolution=closed,
        merged=merged,
        first_answer=durations(answered),
        unanswered=len(answers) - len(answered),
        no_address=no_address,
        resolution=durations(resolutions),
        visits=visits,
        spam=spam,
    )


def _hours(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _durations_json(figures: Durations) -> dict[str, Any]:
    return {
        "count": figures.count,
        "median_hours": _hours(figures.median_hours),
        "p90_hours": _hours(figures.p90_hours),
    }


def report_json(report: Report) -> dict[str, Any]:
    """``mailcase report --json``: stable snake_case keys (README, "Command line").

    Hours are rounded to two decimals, the share upheld to four; a figure of no cases
    (a median of none, the share of no resolutions) is null.
    """
    share = report.upheld_share
    return {
        "period": {
            "from": report.period.first.isoformat(),
            "to": report.period.last.isoformat(),
            "timezone": report.period.zone.key,
        },
        "generated_at": report.generated_at.astimezone(UTC).isoformat(),
        "opened": {
            "total": report.opened,
            "by_channel": report.by_channel,
            "by_mailbox": report.by_mailbox,
            "by_area": report.by_area,
            "no_area": report.no_area,
            "by_type": report.by_type,
            "no_type": report.no_type,
        },
        "resolved": {
            "total": report.resolved,
            "valid": report.valid,
            "invalid": report.invalid,
            "valid_share": None if share is None else round(share, 4),
        },
        "open": report.open,
        "closed_without_resolution": report.closed_without_resolution,
        "merged": report.merged,
        "spam": report.spam,
        "first_answer": {
            **_durations_json(report.first_answer),
            "unanswered": report.unanswered,
            "excluded_no_address": report.no_address,
        },
        "resolution_time": _durations_json(report.resolution),
        "visits_booked": report.visits,
    }


def _one_decimal(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def report_lines(report: Report) -> list[str]:
    """The report as a person reads it: labelled figures, one a line, hours to one decimal."""
    zone = report.period.zone
    when = report.generated_at.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z")
    share = report.upheld_share
    rows: list[tuple[str, str]] = [
        ("opened", str(report.opened)),
        *((f"  by channel: {name}", str(n)) for name, n in report.by_channel.items()),
        *((f"  by mailbox: {name}", str(n)) for name, n in report.by_mailbox.items()),
        *((f"  by area: {name}", str(n)) for name, n in report.by_area.items()),
        ("  by area: (none)", str(report.no_area)),
        *((f"  by type: {name}", str(n)) for name, n in report.by_type.items()),
        ("  by type: (not classified)", str(report.no_type)),
        ("resolved", str(report.resolved)),
        ("  valid (procedente)", str(report.valid)),
        ("  invalid (improcedente)", str(report.invalid)),
        ("  upheld", "-" if share is None else f"{share * 100:.1f}%"),
        ("still open", str(report.open)),
        ("closed without resolution", str(report.closed_without_resolution)),
        ("merged into another case", str(report.merged)),
        ("marked spam", str(report.spam)),
        ("first answer (hours): median", _one_decimal(report.first_answer.median_hours)),
        ("  90th percentile", _one_decimal(report.first_answer.p90_hours)),
        ("  cases answered", str(report.first_answer.count)),
        ("  not answered yet", str(report.unanswered)),
        ("  excluded: no address", str(report.no_address)),
        ("resolution (hours): median", _one_decimal(report.resolution.median_hours)),
        ("  90th percentile", _one_decimal(report.resolution.p90_hours)),
        ("  cases resolved", str(report.resolution.count)),
        ("home visits booked", str(report.visits)),
    ]
    width = max(len(label) for label, _ in rows)
    return [
        f"cases opened {report.period.first} to {report.period.last} ({zone.key}), as of {when}",
        "merged cases are counted only as merged, spam only as spam",
        "",
        *(f"{label.ljust(width)}  {value.rjust(6)}" for label, value in rows),
    ]
