"""`mailcase report`: the complaint figures of the cases opened in a period.

Unit tests of the figures (mailcase.report, no database), then the command on
cases built through the real pipeline (Dovecot, the SMTP sink, SQLite and
PostgreSQL) and the command line's own options.
"""

from __future__ import annotations

import re
import types
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from helpers import Cli, mail, offline_runtime, write_config
from servers import Dovecot, SmtpSink
from sqlmodel import select

from mailcase.models import Case
from mailcase.report import (
    CaseGroup,
    Period,
    build_report,
    durations,
    percentile,
    previous_month,
    report_json,
    report_lines,
)
from mailcase.store import Store

MX = ZoneInfo("America/Mexico_City")
OCTOBER = Period(date(2026, 10, 1), date(2026, 10, 31), MX)
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
T0 = datetime(2026, 10, 5, 15, 0, tzinfo=UTC)


def group(count: int = 1, **fields: Any) -> CaseGroup:
    values: dict[str, Any] = {
        "channel": "mail",
        "mailbox": "contacto",
        "area": None,
        "status": "open",
        "outcome": None,
        "merged": False,
        "visit": False,
        "has_address": True,
    }
    values.update(fields)
    return CaseGroup(count=count, **values)


def after(hours: float) -> tuple[datetime, datetime]:
    return T0, T0 + timedelta(hours=hours)


def report(groups: list[CaseGroup], resolutions: Any = (), answers: Any = (), **kw: Any) -> Any:
    return build_report(OCTOBER, groups, resolutions, answers, generated_at=NOW, **kw)


# --- the figures --------------------------------------------------------------------------


def test_median_and_p90_of_an_odd_count() -> None:
    figures = durations([after(h) for h in (5, 1, 3, 2, 4)])
    assert figures.count == 5
    assert figures.median_hours == 3
    # Interpolated: position 0.9 * 4 = 3.6 between 4 and 5.
    assert figures.p90_hours == pytest.approx(4.6)


def test_median_and_p90_of_an_even_count() -> None:
    figures = durations([after(h) for h in (1, 2, 10, 20)])
    assert figures.median_hours == 6  # the mean of the middle two
    assert figures.p90_hours == pytest.approx(17)  # position 2.7: 10 + 0.7 * 10


def test_one_duration_is_its_own_median_and_p90() -> None:
    assert durations([after(7.5)]).median_hours == 7.5
    assert durations([after(7.5)]).p90_hours == 7.5


def test_no_durations_have_no_median() -> None:
    assert percentile([], 0.5) is None
    figures = durations([])
    assert (figures.count, figures.median_hours, figures.p90_hours) == (0, None, None)


def test_a_clock_stepped_back_counts_as_no_time_not_negative() -> None:
    assert durations([(T0, T0 - timedelta(minutes=5))]).median_hours == 0


def test_an_empty_period() -> None:
    figures = report([], mailboxes=["contacto", "info"], areas=["redes"])
    assert figures.opened == 0
    assert figures.by_channel == {"mail": 0, "phone": 0, "web": 0, "visit": 0}
    assert figures.by_mailbox == {"contacto": 0, "info": 0}
    assert figures.by_area == {"redes": 0}
    assert figures.upheld_share is None
    data = report_json(figures)
    assert data["resolved"] == {"total": 0, "valid": 0, "invalid": 0, "valid_share": None}
    assert data["first_answer"] == {
        "count": 0,
        "median_hours": None,
        "p90_hours": None,
        "unanswered": 0,
        "excluded_no_address": 0,
    }
    assert data["resolution_time"] == {"count": 0, "median_hours": None, "p90_hours": None}
    text = "\n".join(report_lines(figures))
    assert "cases opened 2026-10-01 to 2026-10-31 (America/Mexico_City)" in text
    assert re.search(r"\nfirst answer \(hours\): median +-\n", text)


def test_counts_by_state_outcome_channel_mailbox_and_area() -> None:
    figures = report(
        [
            group(3, status="resolved", outcome="valid", area="redes"),
            group(1, status="closed", outcome="invalid", mailbox="info"),
            group(2, status="closed"),  # closed without a resolution
            group(4, status="open", outcome="valid", channel="web"),  # reopened since
            group(2, channel="visit", visit=True, area="redes"),
        ],
        mailboxes=["contacto", "info"],
        areas=["redes", "cobranza"],
    )
    assert figures.opened == 12
    assert figures.by_channel == {"mail": 6, "phone": 0, "web": 4, "visit": 2}
    assert figures.by_mailbox == {"contacto": 11, "info": 1}
    assert (figures.by_area, figures.no_area) == ({"redes": 5, "cobranza": 0}, 7)
    assert (figures.resolved, figures.valid, figures.invalid) == (4, 3, 1)
    assert figures.upheld_share == 0.75
    assert (figures.open, figures.closed_without_resolution) == (6, 2)
    assert figures.opened == figures.resolved + figures.open + figures.closed_without_resolution
    assert figures.visits == 2


def test_merged_cases_are_counted_only_as_merged() -> None:
    figures = report(
        [
            group(1, status="resolved", outcome="valid"),
            group(2, status="closed", merged=True, visit=False, has_address=False),
            group(1, status="closed", outcome="invalid", merged=True, channel="phone"),
        ],
        mailboxes=["contacto"],
    )
    assert figures.merged == 3
    assert figures.opened == 1
    assert figures.by_channel["phone"] == 0
    assert figures.by_mailbox == {"contacto": 1}
    assert (figures.resolved, figures.invalid, figures.closed_without_resolution) == (1, 0, 0)
    assert figures.no_address == 0
    assert report_json(figures)["merged"] == 3


def test_all_phone_cases_without_an_address_have_no_first_answer_figure() -> None:
    figures = report(
        [group(3, channel="phone", has_address=False)],
        resolutions=[],
        answers=[],  # only cases with an address are read for it
    )
    assert figures.by_channel == {"mail": 0, "phone": 3, "web": 0, "visit": 0}
    assert figures.no_address == 3
    assert figures.first_answer.count == 0
    assert figures.first_answer.median_hours is None
    assert report_json(figures)["first_answer"]["excluded_no_address"] == 3


def test_first_answer_counts_answered_and_unanswered_apart() -> None:
    answers = [after(1), after(3), (T0, None), after(0.5)]
    figures = report([group(4)], answers=answers)
    assert figures.first_answer.count == 3
    assert figures.first_answer.median_hours == 1
    assert figures.unanswered == 1


def test_json_keys_and_rounding() -> None:
    figures = report(
        [
            group(2, status="resolved", outcome="valid"),
            group(1, status="closed", outcome="invalid"),
        ],
        resolutions=[after(1 / 3), after(25), after(2)],
        answers=[after(0.25), after(0.75), after(1)],
    )
    data = report_json(figures)
    assert list(data) == [
        "period",
        "generated_at",
        "opened",
        "resolved",
        "open",
        "closed_without_resolution",
        "merged",
        "spam",
        "first_answer",
        "resolution_time",
        "visits_booked",
    ]
    assert data["period"] == {
        "from": "2026-10-01",
        "to": "2026-10-31",
        "timezone": "America/Mexico_City",
    }
    assert data["generated_at"] == "2026-11-28T12:00:00+00:00"
    assert list(data["opened"]) == [
        "total",
        "by_channel",
        "by_mailbox",
        "by_area",
        "no_area",
        "by_type",
        "no_type",
    ]
    assert data["resolved"]["valid_share"] == 0.6667
    assert data["resolution_time"] == {"count": 3, "median_hours": 2.0, "p90_hours": 20.4}
    text = "\n".join(report_lines(figures))
    assert re.search(r"\n  upheld +66\.7%\n", text)
    assert re.search(r"\nresolution \(hours\): median +2\.0\n  90th percentile +20\.4\n", text)


def test_a_period_is_whole_local_days() -> None:
    start, end = OCTOBER.bounds()
    # Mexico City keeps UTC-6 all year since 2022.
    assert start == datetime(2026, 10, 1, 6, 0, tzinfo=UTC)
    assert end == datetime(2026, 11, 1, 6, 0, tzinfo=UTC)
    one_day = Period(date(2026, 11, 27), date(2026, 11, 27), MX).bounds()
    assert one_day[1] - one_day[0] == timedelta(days=1)


def test_the_default_period_is_the_previous_month_in_the_business_zone() -> None:
    # 03:00 UTC on December 1st is still November 30th in Mexico City.
    assert previous_month(datetime(2026, 12, 1, 3, 0, tzinfo=UTC), MX) == Period(
        date(2026, 10, 1), date(2026, 10, 31), MX
    )
    assert previous_month(datetime(2026, 12, 1, 7, 0, tzinfo=UTC), MX) == Period(
        date(2026, 11, 1), date(2026, 11, 30), MX
    )
    assert previous_month(datetime(2026, 1, 15, tzinfo=UTC), MX) == Period(
        date(2025, 12, 1), date(2025, 12, 31), MX
    )


# --- the command on real cases --------------------------------------------------------------

AREAS = '[areas.redes]\nnotify = "redes@internet-plarey.com.mx"\nname = "Redes"\n'


@pytest.fixture
def cli(tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str) -> Cli:
    return Cli(write_config(tmp_path, mailboxes, sink, db_url=db_url, extra=AREAS), capsys)


def _newest_folio(cli: Cli) -> str:
    folio: str = cli.json("cases", "list")[0]["folio"]
    return folio


def _write(cli: Cli, mailboxes: Dovecot, box: str, sender: str, subject: str) -> str:
    mailboxes.append(box, mail(sender=sender, subject=subject, body=f"{subject}.\nGracias."))
    cli.poll()
    return _newest_folio(cli)


def _ok(cli: Cli, *args: str) -> str:
    code, out, err = cli(*args)
    assert code == 0, err
    return out


def _around_today() -> list[str]:
    # Yesterday to tomorrow: the test may run across local midnight.
    today = datetime.now(MX).date()
    return ["--from", str(today - timedelta(days=1)), "--to", str(today + timedelta(days=1))]


@pytest.mark.integration
def test_report_counts_cases_built_through_the_pipeline(
    cli: Cli, mailboxes: Dovecot, sink: SmtpSink, db_url: str
) -> None:
    juan = "Juan Pérez <juan.perez@example.com>"
    first = _write(cli, mailboxes, "contacto", juan, "Sin internet")
    second = _write(cli, mailboxes, "contacto", juan, "Sigo sin internet")
    _ok(cli, "cases", "merge", second, "--into", first)  # the "merged" notice: no answer
    upheld = _write(cli, mailboxes, "info", "María <maria@example.com>", "Cobro doble")
    _ok(cli, "cases", "resolve", upheld, "--outcome", "procedente", "--cause", "Cobro duplicado.")
    refused = _write(cli, mailboxes, "contacto", "Pedro <pedro@example.com>", "Lentitud")
    _ok(cli, "cases", "route", refused, "--area", "redes")
    _ok(cli, "cases", "resolve", refused, "--outcome", "invalid", "--cause", "Velocidad correcta.")
    phone = ["cases", "open", "--channel", "phone", "--subject", "Sin tono", "--text", "Llamó."]
    _ok(cli, *phone)  # no address: no mail answer possible
    _ok(cli, *phone, "--customer", "rosa@example.com")  # acknowledged, never answered
    _ok(cli, "cases", "close", _newest_folio(cli))

    data = cli.json("report", *_around_today())

    assert data["opened"] == {
        "total": 5,
        "by_channel": {"mail": 3, "phone": 2, "web": 0, "visit": 0},
        "by_mailbox": {"contacto": 4, "info": 1},
        "by_area": {"redes": 1},
        "no_area": 4,
        "by_type": {"complaint": 0, "question": 0, "clarification": 0, "cancellation": 0},
        "no_type": 5,
    }
    assert data["resolved"] == {"total": 2, "valid": 1, "invalid": 1, "valid_share": 0.5}
    assert (data["open"], data["closed_without_resolution"], data["merged"]) == (2, 1, 1)
    # Answered: the two resolutions. Not yet: the merged-into case (an acknowledgement
    # and a "merged" notice are no answer) and Rosa's. Excluded: the call without address.
    answer = data["first_answer"]
    assert (answer["count"], answer["unanswered"], answer["excluded_no_address"]) == (2, 2, 1)
    assert 0 <= answer["median_hours"] <= answer["p90_hours"] < 0.1
    assert data["resolution_time"]["count"] == 2
    assert data["visits_booked"] == 0

    # A visit is booked, and is the case's first answer; a cancelled one is not counted.
    visit_day = str(datetime.now(MX).date() + timedelta(days=3))
    _ok(cli, "cases", "visit", first, "--date", visit_day)
    data = cli.json("report", *_around_today())
    assert data["visits_booked"] == 1
    assert (data["first_answer"]["count"], data["first_answer"]["unanswered"]) == (3, 1)
    _ok(cli, "cases", "visit", first, "--cancel")
    assert cli.json("report", *_around_today())["visits_booked"] == 0

    # The text form says each section, in English, hours to one decimal.
    text = _ok(cli, "report", *_around_today())
    for label in (
        "opened ",
        "by channel: phone",
        "by mailbox: info",
        "by area: redes",
        "by area: (none)",
        "valid (procedente)",
        "invalid (improcedente)",
        "50.0%",
        "still open",
        "closed without resolution",
        "merged into another case",
        "first answer (hours): median",
        "excluded: no address",
        "resolution (hours): median",
        "home visits booked",
    ):
        assert label in text, label

    # The default period is last month: none of these; the upheld case moved there is.
    assert cli.json("report")["opened"]["total"] == 0
    today = datetime.now(MX).date()
    last_month = today.replace(day=1) - timedelta(days=1)
    opened_at = datetime(last_month.year, last_month.month, 15, 9, 0, tzinfo=MX)
    store = Store.open(db_url, auto_upgrade=False)
    try:
        with store.transaction() as session:
            moved = session.exec(select(Case).where(Case.folio == upheld)).one()
            moved.created_at = opened_at.astimezone(UTC)
    finally:
        store.dispose()
    resolved_at = datetime.fromisoformat(cli.json("cases", "show", upheld)["resolved_at"])
    data = cli.json("report")
    assert data["period"] == {
        "from": str(last_month.replace(day=1)),
        "to": str(last_month),
        "timezone": "America/Mexico_City",
    }
    assert data["opened"]["total"] == 1
    assert data["opened"]["by_mailbox"] == {"contacto": 0, "info": 1}
    hours = round((resolved_at - opened_at).total_seconds() / 3600, 2)
    assert data["resolution_time"] == {"count": 1, "median_hours": hours, "p90_hours": hours}
    assert data["first_answer"]["count"] == 1
    assert data["first_answer"]["median_hours"] == pytest.approx(hours, abs=0.02)


@pytest.fixture
def offline_cli(tmp_path: Path, capsys: Any) -> Cli:
    runtime = offline_runtime(tmp_path)  # creates the SQLite database
    runtime.store.dispose()
    return Cli(tmp_path / "mailcase.toml", capsys)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            ["--from", "2026-11-10", "--to", "2026-11-09"],
            "--from 2026-11-10 is after --to 2026-11-09",
        ),
        (["--from", "2026-02-30"], "--from '2026-02-30' is not a date (YYYY-MM-DD)"),
        (["--to", "ayer"], "--to 'ayer' is not a date (YYYY-MM-DD)"),
        (["--to", "2026/11/01"], "--to '2026/11/01' is not a date (YYYY-MM-DD)"),
        (["--to", "9999-12-31"], "--to '9999-12-31' is not a date (YYYY-MM-DD)"),
        (["--from", "0001-01-01"], "--from '0001-01-01' is not a date (YYYY-MM-DD)"),
    ],
)
def test_bad_dates_are_a_usage_error(offline_cli: Cli, options: list[str], message: str) -> None:
    code, out, err = offline_cli("report", *options)
    assert code == 2
    assert out == ""
    assert err.strip().splitlines()[-1] == f"mailcase: {message}"


def test_from_alone_after_today_says_to_is_today(offline_cli: Cli) -> None:
    code, _, err = offline_cli("report", "--from", "9000-01-01")
    assert code == 2
    assert re.fullmatch(
        r"mailcase: --from 9000-01-01 is after --to \d{4}-\d\d-\d\d \(today\)",
        err.strip().splitlines()[-1],
    )


def test_one_end_alone(offline_cli: Cli) -> None:
    # --from alone runs to today; --to alone from the first day of its month.
    before = datetime.now(MX).date()
    data = offline_cli.json("report", "--from", "2026-01-01")
    today = {str(before), str(datetime.now(MX).date())}  # the test may run across midnight
    assert data["period"]["from"] == "2026-01-01"
    assert data["period"]["to"] in today
    data = offline_cli.json("report", "--to", "2026-10-20")
    assert (data["period"]["from"], data["period"]["to"]) == ("2026-10-01", "2026-10-20")
    one_day = offline_cli.json("report", "--from", "2026-10-20", "--to", "2026-10-20")
    assert one_day["period"]["to"] == "2026-10-20"


def test_report_refuses_a_missing_database(tmp_path: Path, capsys: Any) -> None:
    # Read-only, as cases list: it must not leave an empty database behind.
    servers: Any = types.SimpleNamespace(port=1, ssl_port=2, users={"contacto": "x", "info": "y"})
    sink: Any = types.SimpleNamespace(port=3)
    config = write_config(tmp_path, servers, sink)
    code, _, err = Cli(config, capsys)("report")
    assert code == 3, err
    assert not (tmp_path / "mailcase.db").exists()


def test_the_queries_read_only_the_periods_cases(tmp_path: Path) -> None:
    # SQLite's plan of each statement the report runs: the cases by the created_at index,
    # the notices by case, never a scan of either table (a month's report on a million
    # cases). Before, "merged_into_id IS NULL" took ix_cases_merged_into_id: every
    # unmerged case of the database.
    from mailcase.reporting import read_report

    runtime = offline_runtime(tmp_path)
    engine = runtime.store.engine
    seen: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        seen.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", capture)
    try:
        with runtime.store.read_session() as session:
            read_report(session, OCTOBER, now=NOW)
        sa.event.remove(engine, "before_cursor_execute", capture)
        statements = [(s, p) for s, p in seen if "FROM cases" in s]
        assert len(statements) == 3
        with engine.connect() as conn:
            for statement, parameters in statements:
                plan = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters).all()
                details = [row[-1] for row in plan]
                assert any("ix_cases_created_at_id" in d for d in details), details
                assert not any(d.startswith(("SCAN cases", "SCAN notices")) for d in details), (
                    details
                )
    finally:
        runtime.store.dispose()


@pytest.mark.integration
def test_an_answer_the_server_refused_is_no_answer(
    cli: Cli, mailboxes: Dovecot, sink: SmtpSink
) -> None:
    folio = _write(cli, mailboxes, "contacto", "Lucía <lucia@example.com>", "Sin señal")
    sink.fail_next(550, "mailbox unavailable")
    code, _, err = cli("cases", "resolve", folio, "--outcome", "valid", "--cause", "Antena.")
    assert code == 0, err
    assert [n["status"] for n in cli.json("outbox", "list") if n["kind"] != "acknowledgement"] == [
        "failed"
    ]

    answer = cli.json("report", *_around_today())["first_answer"]

    assert (answer["count"], answer["unanswered"]) == (0, 1)


def test_report_is_a_read_only_command() -> None:
    # Root may run it on the service's state (cli._refuse_root_over_service_files).
    from mailcase.cli import _writes, build_parser

    assert _writes(build_parser().parse_args(["report", "--from", "2026-10-01"])) is False
