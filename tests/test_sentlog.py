"""The sent log (mailcase.sentlog): records survive the process, are forgotten only by
name, and never appear from a read alone."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

from mailcase.sentlog import SentLog

WHEN = datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)


def test_a_read_of_a_log_never_written_creates_no_file(tmp_path: Path) -> None:
    log = SentLog.beside(tmp_path / "mailcase.db")
    assert log.pending() == []
    assert not log.path.exists()
    assert log.path == tmp_path / "mailcase.db-sent"


def test_records_survive_the_process_and_are_owner_only(tmp_path: Path) -> None:
    log = SentLog.beside(tmp_path / "mailcase.db")
    log.append(7, WHEN)
    log.append(3, WHEN + timedelta(seconds=1))
    log.close()  # as a crash would leave it
    again = SentLog.beside(tmp_path / "mailcase.db")
    assert again.pending() == [(3, WHEN + timedelta(seconds=1)), (7, WHEN)]
    assert stat.S_IMODE(again.path.stat().st_mode) == 0o600
    again.close()


def test_forget_deletes_only_the_records_named(tmp_path: Path) -> None:
    # Another process (another SentLog on the same file) records a notice between
    # this one's read and its forget: that record must stay for the next fold.
    mine = SentLog.beside(tmp_path / "mailcase.db")
    other = SentLog.beside(tmp_path / "mailcase.db")
    mine.append(1, WHEN)
    mine.append(2, WHEN)
    folded = [notice for notice, _ in mine.pending()]
    other.append(3, WHEN)
    mine.forget(folded)
    assert mine.pending() == [(3, WHEN)]
    assert other.pending() == [(3, WHEN)]
    mine.forget([])  # nothing to do
    mine.close()
    other.close()


def test_a_notice_recorded_twice_is_one_record(tmp_path: Path) -> None:
    log = SentLog.beside(tmp_path / "mailcase.db")
    log.append(5, WHEN)
    log.append(5, WHEN + timedelta(minutes=1))
    assert log.pending() == [(5, WHEN + timedelta(minutes=1))]
    log.close()
