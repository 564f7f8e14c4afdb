"""The sent log (mailcase.sentlog): records survive the process, are forgotten only by
name, and never appear from a read alone."""

from __future__ import annotations

import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
import structlog
from helpers import json_events, mail, run_process, write_config
from servers import Dovecot, SmtpSink

from mailcase import outbox
from mailcase.config import load_settings
from mailcase.daemon import Daemon
from mailcase.errors import DatabaseError
from mailcase.models import Notice, NoticeStatus
from mailcase.sentlog import SentLog
from mailcase.service import Runtime
from mailcase.store import Store, table

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


def _queued_notices(store: Store, count: int) -> list[int]:
    notices = table(Notice)
    with store.writing() as conn:
        return [
            conn.execute(
                sa.insert(notices).returning(notices.c.id),
                {
                    "kind": "acknowledgement",
                    "status": NoticeStatus.QUEUED,
                    "mail_from": "contacto@example.mx",
                    "rcpt_to": f"c{i}@example.com",
                    "message_id": f"<n{i}@example.mx>",
                    "raw": b"raw",
                    "queued_at": WHEN,
                    "next_attempt_at": WHEN,
                    "created_at": WHEN,
                },
            ).scalar_one()
            for i in range(count)
        ]


def _statuses(store: Store) -> list[str]:
    with store.reading() as conn:
        return list(conn.execute(sa.text("SELECT status FROM notices ORDER BY id")).scalars())


@contextmanager
def _writing_elsewhere(store: Store) -> Iterator[None]:
    """Another thread holds the write lock (ingest writing a message) inside the block."""
    held, release = threading.Event(), threading.Event()

    def ingest_writing() -> None:
        with store.writing():
            held.set()
            release.wait(10)

    holder = threading.Thread(target=ingest_writing)
    holder.start()
    try:
        assert held.wait(10)
        yield
    finally:
        release.set()
        holder.join()


def test_marks_go_to_the_log_and_are_folded_in_batches_when_the_lock_is_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outbox, "FOLD_EVERY", 2)
    with Store.open(f"sqlite:///{tmp_path}/mailcase.db", auto_upgrade=True) as store:
        first, second, third, fourth = _queued_notices(store, 4)
        sent_log = store.sent_log
        assert sent_log is not None
        outbox._mark_sent(store, first)  # recorded, not yet folded: one is not a batch
        assert [n for n, _ in sent_log.pending()] == [first]
        assert _statuses(store) == ["queued"] * 4
        with _writing_elsewhere(store):
            outbox._mark_sent(store, second)  # a batch, but ingest writes: returns at once
            assert [n for n, _ in sent_log.pending()] == [first, second]
            assert _statuses(store) == ["queued"] * 4
        outbox._mark_sent(store, third)  # the lock is free: the batch is folded
        assert _statuses(store) == ["sent", "sent", "sent", "queued"]
        assert sent_log.pending() == []
        outbox._mark_sent(store, fourth)
        assert outbox.fold_sent_log(store) == 1  # what is left, at the end of a run
        assert _statuses(store) == ["sent"] * 4
        assert sent_log.pending() == []


def test_a_log_that_cannot_be_written_gives_way_to_waiting_for_the_lock(tmp_path: Path) -> None:
    with Store.open(f"sqlite:///{tmp_path}/mailcase.db", auto_upgrade=True) as store:
        first, second = _queued_notices(store, 2)
        (tmp_path / "file").write_text("")
        store.sent_log = SentLog(tmp_path / "file" / "mailcase.db-sent")  # not a directory
        marking = threading.Thread(target=outbox._mark_sent, args=(store, first))
        with structlog.testing.capture_logs() as logs:
            with _writing_elsewhere(store):
                marking.start()
                marking.join(0.3)
                assert marking.is_alive()  # no log to write to: it waits for the lock
            marking.join(10)
            outbox._mark_sent(store, second)
        assert _statuses(store) == ["sent", "sent"]
        warnings = [e for e in logs if e["event"] == "sent_log_unavailable"]
        assert len(warnings) == 1 and "file/mailcase.db-sent" in warnings[0]["error"]


@pytest.mark.integration
def test_a_log_that_cannot_be_read_stops_delivery_naming_it(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink
) -> None:
    settings = load_settings(write_config(tmp_path, mailboxes, sink))
    with Store.open(settings.database.url, auto_upgrade=True) as store:
        _queued_notices(store, 1)
        assert store.sent_log is not None
        store.sent_log.path.write_bytes(b"not a database" * 100)
        with pytest.raises(
            DatabaseError, match=r"cannot use the sent log .*mailcase\.db-sent.*move it aside"
        ):
            outbox.deliver_outbox(store, settings)
        assert _statuses(store) == ["queued"]  # nothing sent that the log may hold
        assert sink.messages == []


@pytest.mark.integration
def test_a_damaged_log_is_one_line_that_says_what_to_do(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink
) -> None:
    # Seen: every delivery run logged outbox_run_crashed with a traceback, every
    # 30 s, and nothing said what to do about the file.
    config = write_config(tmp_path, mailboxes, sink)
    (tmp_path / "mailcase.db-sent").write_bytes(b"SQLite format 3\x00" + bytes(range(200)))
    rt = Runtime.open(load_settings(config))
    try:
        with structlog.testing.capture_logs() as logs:
            Daemon(rt)._deliver_once()  # one of the daemon's delivery runs
    finally:
        rt.store.dispose()
    [failure] = logs
    assert (failure["event"], failure["log_level"]) == ("outbox_run_failed", "error")
    assert "exc_info" not in failure
    assert str(tmp_path / "mailcase.db-sent") in failure["error"]
    assert "move it aside" in failure["error"] and "sent again" in failure["error"]
    # `mailcase poll` (its delivery thread, then its last round): the same, no traceback.
    mailboxes.append("contacto", mail())
    result = run_process(config, "poll")
    assert "Traceback" not in result.stderr
    events = json_events(result.stderr)  # every other line is the command's one-line error
    assert "outbox_run_crashed" not in [e["event"] for e in events]
    assert "move it aside" in result.stderr
    assert sink.messages == []  # nothing sent that the log may hold
