"""The sent log: delivery's record of accepted notices, beside a SQLite database.

SQLite has one writer, and ingest holds the write lock for nearly all of each
message's transaction. Marking each notice sent in the database before the
next one goes out (so that a crash repeats at most the notice in flight) let
delivery mark about one notice per ingested message while ingest queued two:
during a large poll the outbox fell behind (bench/ingest.py: 800 of 2,000
notices out when ingest ended, the rest two seconds later).

So on SQLite, when another thread holds the write lock, delivery records the
accepted notice in a small database of its own (``<database>-sent``: one
table, written only by delivery), committed before the next notice goes out,
and does not wait for ingest. The outbox folds these records into the
notices table (mailcase.outbox) with the next mark made while the lock is
free, and at the start and end of every delivery run; a record is deleted
only after the notices table's commit. A crash between the two leaves the
record, and the next run folds it before it reads what is due: nothing
recorded here is ever sent again. Folds are idempotent (a notice is marked
only while queued), so two processes folding at once do no harm.

Losing this file loses at most the records not yet folded: those notices go
out again. It holds notice ids and times only.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

SUFFIX = "-sent"


class SentLog:
    """Accepted notices not yet marked sent in the database: ``(notice id, sent at)``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()  # one connection, shared by this process's threads
        self._conn: sqlite3.Connection | None = None
        self._own = 0  # records this process appended and has not forgotten

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

    def append(self, notice_id: int, sent_at: datetime) -> None:
        """Record that ``notice_id`` was accepted at ``sent_at``; committed on return."""
        with self._lock:
            self._connection().execute(
                "INSERT OR REPLACE INTO sent VALUES (?, ?)", (notice_id, sent_at.isoformat())
            )
            self._own += 1

    @property
    def has_own_records(self) -> bool:
        """Whether this process recorded notices it has not yet forgotten (no I/O)."""
        return self._own > 0

    def pending(self) -> list[tuple[int, datetime]]:
        """Every record not yet folded, oldest notice first."""
        if self._conn is None and not self.path.exists():
            return []  # nothing was ever recorded: no file created by a read
        with self._lock:
            rows = self._connection().execute(
                "SELECT notice_id, sent_at FROM sent ORDER BY notice_id"
            )
            return [(int(n), datetime.fromisoformat(at)) for n, at in rows]

    def forget(self, notice_ids: Sequence[int]) -> None:
        """Delete the records of ``notice_ids`` (folded, their marks committed)."""
        if not notice_ids:
            return
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany("DELETE FROM sent WHERE notice_id = ?", [(n,) for n in notice_ids])
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            self._own = max(0, self._own - len(notice_ids))

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
