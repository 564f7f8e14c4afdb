"""SQLite's write-ahead log copied back into the database file in a thread of its own.

In WAL mode a commit appends pages to ``<database>-wal``; a checkpoint copies
them into the database file and syncs it. By default the connection whose
commit takes the log past 1,000 pages runs that checkpoint itself, at the end
of its commit. During a large poll that was ingest's thread, the one the poll
process waits on: half of each commit's time went into checkpoints and their
``fsync`` (bench/ingest.py). SQLite's documentation suggests the alternative
used here: automatic checkpoints left to a backstop, and checkpoints run in
a separate thread.

The store calls :meth:`Checkpointer.poke` after every committed write. A
daemon thread, started at the first poke, then runs a PASSIVE checkpoint on a
connection of its own, at most once every :data:`CHECKPOINT_EVERY_SECONDS`
while writes go on. PASSIVE never waits for readers or writers, and the
sqlite3 module releases the interpreter lock meanwhile, so the copy and the
sync run beside ingest instead of inside it. The writers' own automatic
checkpoint stays as a backstop at :data:`BACKSTOP_PAGES` (40 MB of log): it
bounds the log should this thread fall behind or fail, and completes the
checkpoint so that the next writer starts the log over. Durability does not
change: a committed transaction is in the log either way.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from mailcase.logs import get_logger

CHECKPOINT_EVERY_SECONDS = 1.0
# wal_autocheckpoint for the store's connections: 10,000 pages of 4 KiB.
BACKSTOP_PAGES = 10_000


class Checkpointer:
    """Checkpoints ``path``'s write-ahead log in a background thread after writes."""

    def __init__(self, path: Path, every: float = CHECKPOINT_EVERY_SECONDS) -> None:
        self.path = path
        self.every = every
        self.passes = 0  # checkpoints run (for tests and debugging)
        self._wanted = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def poke(self) -> None:
        """Ask for a checkpoint soon (a write was committed); start the thread if needed."""
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="sqlite-checkpoint", daemon=True
                    )
                    self._thread.start()
        self._wanted.set()

    @property
    def running(self) -> bool:
        """Whether the thread is alive."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def close(self) -> None:
        """Stop the thread (after the checkpoint it may be running); a later poke starts another."""
        with self._lock:
            thread = self._thread
            if thread is None:
                return
            self._stopping.set()
            self._wanted.set()
            if thread is threading.current_thread():
                # A store's finalizer run by the garbage collector in this very
                # thread: it stops after this pass, and cannot wait for itself.
                return
            thread.join()
            self._thread = None
            self._stopping.clear()
            self._wanted.clear()

    def _run(self) -> None:
        try:
            connection = sqlite3.connect(self.path, isolation_level=None)
        except sqlite3.Error as exc:
            self._failed(exc)
            return
        try:
            while True:
                self._wanted.wait()
                if self._stopping.is_set():
                    return
                self._wanted.clear()
                connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                self.passes += 1
                if self._stopping.wait(self.every):  # at most one pass per interval
                    return
        except sqlite3.Error as exc:
            self._failed(exc)
        finally:
            connection.close()

    def _failed(self, exc: sqlite3.Error) -> None:
        # The writers' backstop checkpoint keeps the log bounded from here on.
        get_logger().warning("sqlite_checkpoint_failed", database=str(self.path), error=str(exc))
