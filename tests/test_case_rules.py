"""What a case's state allows (casework's checks) and when a reply reopens it (triage): no I/O."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from test_triage import CASE, inbound

from mailcase.casework import command_problems, resolve_problem
from mailcase.classify import classify
from mailcase.commands import parse_commands
from mailcase.models import Disposition
from mailcase.triage import Facts, triage
from mailcase.visitdates import visit_problem

NOW = datetime(2026, 11, 27, 10, 0)  # local time in the business's zone


def problems(reply: str, status: str = "open") -> list[tuple[str, str]]:
    parsed = parse_commands(reply)
    assert not parsed.problems, parsed.problems  # well-formed: only the case rules are tested
    return command_problems(parsed.commands, parsed.text, status, NOW)


def test_well_formed_commands_on_an_open_case_pass() -> None:
    assert problems("#resolver procedente\nSe cambió el módem.") == []
    assert problems("#visita 2026-11-27 10:30\n#area redes\nLlevar módem.") == []
    assert problems("#nota\nEl cliente tiene adeudo.") == []
    assert problems("#resolver improcedente\n#cerrar\nNo hubo falla.") == []


def test_a_resolution_needs_its_causes() -> None:
    assert problems("#resolver procedente") == [("#resolver procedente", "missing_cause")]
    assert problems("#resolver procedente\n\n   \n") == [("#resolver procedente", "missing_cause")]
    assert resolve_problem("open", " ") == "missing_cause"


def test_a_closed_case_is_reopened_first() -> None:
    for reply in ("#resolver procedente\nListo.", "#visita 2026-12-01", "#area redes"):
        [(_, code)] = problems(reply, status="closed")
        assert code == "case_closed"
    # In order: reopened by the line before, then resolved.
    assert problems("#reabrir\n#resolver procedente\nListo.", status="closed") == []
    # Below this reply's own #cerrar: put it above (not "reopen first", a conflict).
    assert problems("#cerrar\n#area redes") == [("#area redes", "after_close")]
    # A visit with #cerrar, in either order: the close would cancel it.
    assert problems("#cerrar\n#visita 2026-12-01") == [("#visita 2026-12-01", "settles_visit")]
    # A resolved case too: a second agent's resolution contradicted the first one
    # the customer had read, and a visit booked after it was cancelled by the closing.
    for reply in ("#resolver improcedente\nNo hubo falla.", "#visita 2026-12-01", "#area redes"):
        [(_, code)] = problems(reply, status="resolved")
        assert code == "case_resolved"
    # A correction: reopened by the line before, then resolved again.
    assert problems("#reabrir\n#resolver improcedente\nNo hubo falla.", status="resolved") == []


def test_a_reply_holds_each_command_once_and_none_that_contradict() -> None:
    assert problems("#resolver procedente\n#resolver improcedente\nSe cambió el módem.") == [
        ("#resolver improcedente", "repeated")
    ]
    assert problems("#cerrar\n#reabrir") == [("#reabrir", "conflict")]
    # The text would be the customer's causes and an internal note at once.
    assert problems("#resolver procedente\n#nota\nEl cliente tiene adeudo.") == [
        ("#nota", "conflict")
    ]
    assert problems("#nota\n#resolver procedente\nTexto.") == [("#resolver procedente", "conflict")]


@pytest.mark.parametrize(
    ("day", "hour", "past"),
    [
        (date(2026, 11, 26), None, True),
        (date(2025, 11, 28), "10:00", True),  # the year mistyped
        (date(2026, 11, 27), "09:59", True),
        (date(2026, 11, 27), "10:00", False),
        (date(2026, 11, 27), None, False),  # today, no time: still ahead
        (date(2026, 11, 28), "08:00", False),
    ],
)
def test_a_visit_is_never_in_the_past(day: date, hour: str | None, past: bool) -> None:
    assert (visit_problem("open", day, hour, NOW) == "visit_in_past") is past


@pytest.mark.parametrize(
    ("day", "hour", "problem"),
    [
        (date(2026, 11, 28), "04:30", "visit_hours"),  # "4:30" meant the afternoon
        (date(2026, 11, 28), "21:30", "visit_hours"),
        (date(2026, 11, 28), "07:00", None),
        (date(2026, 11, 28), "21:00", None),
        # Past first: an early visit from before the hours existed is one that took place
        # (rescheduling does not call it cancelled).
        (date(2026, 11, 20), "04:30", "visit_in_past"),
    ],
)
def test_visiting_hours(day: date, hour: str, problem: str | None) -> None:
    assert visit_problem("open", day, hour, NOW) == problem


# Triage: the resolution notice promises that a reply within cases.reopen_days reopens.
RESOLVED_AT = datetime(2026, 11, 1, tzinfo=UTC)


def reply_to(status: str, resolved_at: datetime | None, days_later: int) -> Disposition:
    case = CASE.__class__(**{**vars_of(CASE), "status": status, "resolved_at": resolved_at})
    mail = inbound(subject=f"Re: [Folio {case.folio}] Sin servicio")
    now = (resolved_at or RESOLVED_AT) + timedelta(days=days_later)
    decision = triage(mail, classify(mail), Facts(by_folio=(case,)), now=now, reopen_days=30)
    assert decision.reopen is (decision.disposition is Disposition.FOLLOW_UP)
    return decision.disposition


def vars_of(case: object) -> dict[str, object]:
    slots = getattr(case, "__slots__", ())
    return {name: getattr(case, name) for name in slots} or dict(vars(case))


def test_a_reply_within_the_window_reopens_even_a_case_closed_since() -> None:
    assert reply_to("resolved", RESOLVED_AT, 10) is Disposition.FOLLOW_UP
    # Closed by itself after cases.close_after_days (7), or by an agent.
    assert reply_to("closed", RESOLVED_AT, 10) is Disposition.FOLLOW_UP


def test_a_reply_after_the_window_or_to_a_case_closed_unresolved_opens_a_new_one() -> None:
    assert reply_to("resolved", RESOLVED_AT, 31) is Disposition.NEW_CASE
    assert reply_to("closed", RESOLVED_AT, 31) is Disposition.NEW_CASE
    assert reply_to("closed", None, 1) is Disposition.NEW_CASE
