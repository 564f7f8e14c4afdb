"""The sent log: delivery's record of accepted notices, beside a SQLite database.

SQLite has one writer, and ingest holds the write lock for nearly all of each
message's transaction. Marking each notice sent in the database before the
next one goes out (so that a crash repeats at most the notice in flight) let
delivery mark about one notice per ingested message while ingest queued two:
during a large poll the outbox fell behind (bench/ingest.py: 800 of 2,000
notices out when ingest ended, the rest two seconds later).

So on SQLite delivery records each accepted notice in a small database of
its own (``<database>-sent``: one table, written only by delivery),
committed before the next notice goes out, and does not wait for ingest.
The outbox folds these records into the notices table (mailcase.outbox) in
one transaction once a batch has gathered and the write lock is free, and at
the start and end of every delivery run; a record is deleted only after the
notices table's commit. A crash between the two leaves the
record, and the next run folds it before it reads what is due: nothing
recorded here is ever sent again. Folds are idempotent (a notice is marked
only while queued), so two processes folding at once do no harm.

Losing this file loses at most the records not yet folded: those notices go
out again. It holds notice ids and times only. A log that cannot be written
(its directory not writable, say) is given up for the process: marks then
wait for the write lock as before (mailcase.outbox). One that exists but
cannot be read stops delivery runs with an error naming it and what to do
(make it readable, or move a damaged one aside and accept that the notices
it recorded may go out again), rather than send again what it may hold.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from mailcase.errors import DatabaseError

T = TypeVar("T")

SUFFIX = "-sent"
# Said when the log cannot be read: delivery stops until a person acts, so the
# error says what to do and what it costs (seen: a run crashing every 30 s
# with a traceback and no hint).
UNREADABLE_REMEDY = (
    " (make it readable by mailcase, or if it is damaged move it aside:"
    " notices it recorded as sent may then be sent again)"
)


class SentLog:
    """Accepted notices not yet marked sent in the database: ``(notice id, sent at)``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()  # one connection, shared by this process's threads
        self._conn: sqlite3.Connection | None = None
        self._own = 0  # records this process appended and has not forgotten
        self.unusable = False  # set by the outbox when an append failed: not tried again

    @classmethod
    def beside(cls, database: Path) -> SentLog:
        return cls(database.with_name(database.name + SUFFIX))

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            if not self.path.exists():
                # Owner-only, like the database it belongs to.
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # as the main database
            conn.execute(
                "CREATE TABLE IF NOT EXISTS sent"
                " (notice_id INTEGER PRIMARY KEY, sent_at TEXT NOT NULL)"
            )
            self._conn = conn
        return self._conn

    def _guarded(self, work: Callable[[sqlite3.Connection], T], remedy: str = "") -> T:
        """``work`` on the log's connection, one thread at a time; errors name the file.

        ``remedy``, when given, ends the error's sentence: what a person should do.
        """
        with self._lock:
            try:
                return work(self._connection())
            except (sqlite3.Error, OSError) as exc:
                raise DatabaseError(f"cannot use the sent log {self.path}: {exc}{remedy}") from exc

    def append(self, notice_id: int, sent_at: datetime) -> None:
        """Record that ``notice_id`` was accepted at ``sent_at``; committed on return.

        Raises :class:`~mailcase.errors.DatabaseError` when the log cannot be written.
        """

        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO sent VALUES (?, ?)", (notice_id, sent_at.isoformat())
            )
            self._own += 1

        self._guarded(insert)

    @property
    def own_records(self) -> int:
        """How many notices this process recorded and has not yet forgotten (no I/O)."""
        return self._own

    def pending(self) -> list[tuple[int, datetime]]:
        """Every record not yet folded, oldest notice first.

        Raises :class:`~mailcase.errors.DatabaseError` naming the file and the
        remedy when the log exists but cannot be read.
        """
        if self._conn is None and not self.path.exists():
            return []  # nothing was ever recorded: no file created by a read

        def select(conn: sqlite3.Connection) -> list[tuple[int, datetime]]:
            rows = conn.execute("SELECT notice_id, sent_at FROM sent ORDER BY notice_id")
            return [(int(n), datetime.fromisoformat(at)) for n, at in rows]

        return self._guarded(select, UNREADABLE_REMEDY)

    def pending_at(self, moment: Callable[[], None]) -> list[tuple[int, datetime]]:
        """Every record not yet folded, as the log stood when ``moment`` ran.

        The log's writers (appends, and the deletions that follow a fold) are held
        out from before ``moment`` until the records are read: a snapshot of the
        database that ``moment`` takes agrees with them. A notice marked sent in the
        database after the snapshot has its record here, since its record is deleted
        only after that mark (mailcase.backup). Writers wait for ``moment`` and one
        read, not longer. Without a log, ``moment`` runs and the answer is empty.
        """
        if self._conn is None and not self.path.exists():
            moment()
            return []

        def select(conn: sqlite3.Connection) -> list[tuple[int, datetime]]:
            conn.execute("BEGIN IMMEDIATE")
            try:
                moment()
                rows = conn.execute("SELECT notice_id, sent_at FROM sent ORDER BY notice_id")
                return [(int(n), datetime.fromisoformat(at)) for n, at in rows]
            finally:
                conn.execute("ROLLBACK")

        return self._guarded(select, UNREADABLE_REMEDY)

    def forget(self, notice_ids: Sequence[int]) -> None:
        """Delete the records of ``notice_ids`` (folded, their marks committed)."""
        if not notice_ids:
            return

        def delete(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")  # one commit for all (autocommit otherwise)
            try:
                conn.executemany("DELETE FROM sent WHERE notice_id = ?", [(n,) for n in notice_ids])
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            self._own = max(0, self._own - len(notice_ids))

        self._guarded(delete)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
