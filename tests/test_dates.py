"""Dates that customers' clocks and mail servers get wrong must cost nothing: a lying
Date header is no date, never a quarantined report."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from helpers import Cli, mail, offline_runtime, write_config
from servers import Dovecot, SmtpSink
from sqlmodel import select

from mailcase import service
from mailcase.imap import FetchedMessage
from mailcase.inbound import parse_inbound
from mailcase.models import Case

ORIGINAL = b"Date: Fri, 20 Nov 2026 10:30:00 +0000\n"


def dated(value: str, sender: str = "juan.perez@example.com") -> bytes:
    raw = mail(sender=sender)
    assert ORIGINAL in raw
    return raw.replace(ORIGINAL, f"Date: {value}\n".encode())


def test_a_date_past_the_last_representable_one_in_utc_is_no_date() -> None:
    assert parse_inbound(dated("Fri, 31 Dec 9999 23:00:00 -0500")).date is None


def test_a_far_but_representable_date_is_kept() -> None:
    assert parse_inbound(dated("Fri, 31 Dec 9999 23:00:00 +0000")).date == datetime(
        9999, 12, 31, 23, 0, tzinfo=UTC
    )


def test_a_message_with_a_date_out_of_range_opens_its_case(tmp_path: Path) -> None:
    rt = offline_runtime(tmp_path)
    raw = dated("Fri, 31 Dec 9999 23:00:00 -0500")
    fetched = FetchedMessage(uid=1, raw=raw, internal_date=datetime.now(UTC))
    assert service.ingest_message(rt, "contacto", 1, fetched) == "new_case"
    rt.store.dispose()


def test_messages_show_gives_times_as_every_other_command(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    cli = Cli(write_config(tmp_path, mailboxes, sink), capsys)
    uid = mailboxes.append("contacto", dated("Fri, 20 Nov 2026 10:30:00 -0600"))
    cli.poll()
    shown = cli.json("messages", "show", str(uid), "--mailbox", "contacto")
    # --json: ISO 8601 in UTC, as `cases show` gives a message's date; the header beside it.
    assert shown["date"] == "2026-11-20T16:30:00+00:00"
    assert shown["date_header"] == "Fri, 20 Nov 2026 10:30:00 -0600"
    assert datetime.fromisoformat(shown["received_at"]).tzinfo is not None
    # For people: to the minute, in the business's time zone (America/Mexico_City).
    code, out, _ = cli("messages", "show", str(uid), "--mailbox", "contacto")
    assert code == 0
    lines = {line.split()[0]: line.split(None, 1)[-1] for line in out.splitlines() if line.strip()}
    assert lines["date"] == "2026-11-20 10:30 CST"
    assert datetime.strptime(lines["received_at"], "%Y-%m-%d %H:%M CST")


def test_the_folio_year_is_the_year_the_report_arrived_in_the_business_calendar(
    tmp_path: Path,
) -> None:
    # Written at 23:30 on 31 December in Mexico City (05:30 UTC on 1 January) and
    # polled after midnight: a report of the old year, as folio.timezone promises.
    rt = offline_runtime(tmp_path)
    this_year = datetime.now(rt.settings.folio.zone).year
    last_year = this_year - 1
    arrived = datetime(last_year + 1, 1, 1, 5, 30, tzinfo=UTC)
    fetched = FetchedMessage(uid=1, raw=mail(), internal_date=arrived)
    assert service.ingest_message(rt, "contacto", 1, fetched) == "new_case"
    # A date the server put in the future is no arrival: the year is now's.
    future = FetchedMessage(
        uid=2, raw=mail(sender="b@example.com"), internal_date=datetime(2999, 1, 1, tzinfo=UTC)
    )
    assert service.ingest_message(rt, "contacto", 1, future) == "new_case"
    with rt.store.transaction() as session:
        folios = sorted(session.exec(select(Case.folio)).all())
    rt.store.dispose()
    assert folios == sorted([f"PLR-{last_year}-000001", f"PLR-{datetime.now(UTC).year}-000001"])
