"""``mailcase db backup FILE``: a consistent copy of an SQLite database, while it runs.

Copying ``mailcase.db`` with ``cp`` while the daemon writes gives a damaged
file (its write-ahead log holds the latest commits), and the database alone
is not the whole state: notices delivery recorded in the sent log
(:mod:`mailcase.sentlog`) and not yet folded would go out again from a
restored copy. So the copy is made with SQLite's online backup (one read
transaction: a snapshot of the last commit, writers go on), the sent log's
records as they stood at that snapshot are marked sent in the copy, and the copy is left as
one self-contained file (rollback journal, not WAL), owner-only, verified
with ``PRAGMA quick_check``. Restoring is copying that file back, with the
service stopped, over the database (removing its ``-wal``, ``-shm`` and
``-sent`` files).

Not copied: ``storage.directory``, the raw messages and files the rows refer
to. Files there are named by their hash and added by ingest; only erasures
remove any: ``customers forget``, ``customers purge`` and the daemon's daily
purge (``retention.inactive_days``), each the files of what it erased (and those
an earlier erasure left). Backing the directory up *after* the database, with
any file-level tool, gives every file the copy refers to, unless an erasure ran
in between: it removed files of rows the copy still has. That is the admin's to
avoid (README, "Backup and restore"); this command does not: it ends before the
directory is copied. Hard links to the copy's files would need the backup on the
store's file system, and a full copy of them doubles the backup.

PostgreSQL has its own tools (``pg_dump``); this command refuses it.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from mailcase.errors import ConfigError, DatabaseError, StorageError
from mailcase.sentlog import SentLog
from mailcase.store import Store, error_text, sqlite_path


@dataclass(frozen=True)
class Backup:
    """What ``db backup`` made: the copy, its size, revision, and the sent-log marks folded."""

    source: Path
    target: Path
    size: int
    revision: str | None
    folded: int


def backup_database(url: str, target: Path) -> Backup:
    """Copy the SQLite database at ``url`` to ``target``, a new owner-only file.

    Guarantees: ``target`` did not exist and is never written over; on any
    failure it is removed again and the error names what failed; the copy
    holds the last commit before the copy began, with every notice the sent
    log recorded as sent marked sent; it needs no companion file. Raises
    ConfigError for PostgreSQL or an existing ``target``, DatabaseError for a
    database that cannot be read (missing, damaged, newer than the code),
    StorageError when ``target`` cannot be written.
    """
    source = sqlite_path(url)
    if source is None:
        raise ConfigError(
            "db backup copies an SQLite database; back up PostgreSQL with pg_dump"
            " (database.url names a PostgreSQL server)"
        )
    # Refuses a missing file (never creates one) and a schema newer than the code.
    revision, _ = Store.schema_state(url)
    try:
        # O_EXCL: a backup never replaces a file, least of all an earlier backup.
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        raise ConfigError(f"{target} exists: db backup never writes over a file") from None
    except OSError as exc:
        raise StorageError(f"cannot create backup file {target}: {exc.strerror}") from exc
    try:
        records = _copy(source, target)
        folded = _fold_sent_log(records, target)
        _check(target)
    except BaseException:
        with contextlib.suppress(OSError):
            target.unlink()
        for suffix in ("-journal", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                target.with_name(target.name + suffix).unlink()
        raise
    return Backup(source, target, target.stat().st_size, revision, folded)


def _copy(source: Path, target: Path) -> list[tuple[int, datetime]]:
    """SQLite's online backup of ``source`` into ``target``, left in rollback-journal
    mode; the sent log's records as they stood at the copy's snapshot."""
    try:
        src = sqlite3.connect(source, timeout=30, isolation_level=None)
    except sqlite3.Error as exc:
        raise DatabaseError(f"cannot read database {source}: {exc}") from exc

    def snapshot() -> None:
        # A read transaction pins the copy's snapshot: the backup reads through it.
        src.execute("BEGIN")
        src.execute("SELECT count(*) FROM sqlite_master").fetchone()

    sent_log = SentLog.beside(source)
    try:
        # Taken while the log's writers are held out (a moment): a fold committing
        # its marks after the snapshot still has its records in the log then. Read
        # after the copy, a fold in between had deleted them, and the copy kept
        # those notices queued, to be sent again from a restore.
        records = sent_log.pending_at(snapshot)
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)  # one step (pages=-1), in the snapshot; writers go on
            # The copy is one file: WAL is a property of the database file, and a
            # WAL-mode copy would need its -wal beside it until closed cleanly.
            dst.execute("PRAGMA journal_mode=DELETE")
        except sqlite3.Error as exc:
            raise _failure(exc, source, target) from exc
        finally:
            dst.close()
    except sqlite3.Error as exc:
        raise DatabaseError(f"cannot read database {source}: {exc}") from exc
    finally:
        sent_log.close()
        src.close()
    return records


def _failure(exc: sqlite3.Error, source: Path, target: Path) -> Exception:
    """The error for a failed copy: the target's (disk full, read-only) or the source's."""
    text = str(exc)
    if isinstance(exc, sqlite3.OperationalError) and (
        "disk" in text or "readonly" in text or "write" in text
    ):
        return StorageError(f"cannot write backup file {target}: {text}")
    return DatabaseError(f"cannot read database {source}: {text}")


def _fold_sent_log(records: list[tuple[int, datetime]], target: Path) -> int:
    """Mark sent in the copy the notices the sent log recorded (``records``); how many.

    The marks are the outbox's own (a notice no longer queued keeps its status).
    """
    from mailcase.outbox import fold_into

    if not records:
        return 0
    engine = sa.create_engine(f"sqlite:///{target}", poolclass=NullPool)
    try:
        with engine.begin() as conn:
            fold_into(conn, records)
    except SQLAlchemyError as exc:
        raise StorageError(f"cannot write backup file {target}: {error_text(exc)}") from exc
    finally:
        engine.dispose()
    return len(records)


def _check(target: Path) -> None:
    """``PRAGMA quick_check`` of the copy: a damaged source must not pass for a backup."""
    conn = sqlite3.connect(target)
    try:
        rows = conn.execute("PRAGMA quick_check").fetchall()
    except sqlite3.DatabaseError as exc:  # "database disk image is malformed"
        rows = [(str(exc),)]
    finally:
        conn.close()
    if rows != [("ok",)]:
        problem = rows[0][0] if rows else "no answer"
        raise DatabaseError(f"the copy in {target} fails SQLite's quick_check: {problem}")
