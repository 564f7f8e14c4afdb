"""SQLite checkpoints in the store's own thread (mailcase.checkpoint): committed
writes reach the database file without a writer checkpointing, the thread
stops with the store, and a checkpointer that cannot work only says so."""

from __future__ import annotations

import gc
import shutil
import sqlite3
import time
from pathlib import Path

import sqlalchemy as sa
import structlog

from mailcase.checkpoint import BACKSTOP_PAGES, Checkpointer
from mailcase.models import KeyValue
from mailcase.store import Store, table

_KEY_VALUES = table(KeyValue)


def _write(store: Store, key: str) -> None:
    with store.writing() as conn:
        conn.execute(sa.insert(_KEY_VALUES).values(key=key, value="x"))


def _in_database_file(database: Path, key: str, scratch: Path) -> bool:
    """Whether ``key`` is in the database file itself, its write-ahead log left out."""
    copy = scratch / "copy.db"
    shutil.copyfile(database, copy)  # no -wal beside it: only what was checkpointed
    connection = sqlite3.connect(copy)
    try:
        rows = connection.execute("SELECT value FROM key_values WHERE key = ?", (key,)).fetchall()
    except sqlite3.OperationalError:  # not even the schema has been checkpointed
        rows = []
    finally:
        connection.close()
        copy.unlink()
    return bool(rows)


def test_a_committed_write_reaches_the_database_file_without_a_writer_checkpoint(
    tmp_path: Path,
) -> None:
    database = tmp_path / "mailcase.db"
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    store = Store.open(f"sqlite:///{database}", auto_upgrade=True)
    try:
        # One small write is far below any automatic checkpoint: only the
        # store's own thread copies it into the file.
        _write(store, "first")
        deadline = time.monotonic() + 10
        while not _in_database_file(database, "first", scratch):
            assert time.monotonic() < deadline, "the write never reached the database file"
            time.sleep(0.05)
        assert store.checkpointer is not None and store.checkpointer.passes >= 1
        with store.engine.connect() as conn:
            # The writers' own checkpoint waits for a 40 MB log.
            assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == BACKSTOP_PAGES
    finally:
        store.dispose()


def test_dispose_stops_the_thread_and_a_later_write_starts_another(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'mailcase.db'}", auto_upgrade=True)
    checkpointer = store.checkpointer
    assert checkpointer is not None
    try:
        assert not checkpointer.running  # reads alone start no thread
        _write(store, "one")
        assert checkpointer.running
        store.dispose()
        assert not checkpointer.running
        passes = checkpointer.passes
        _write(store, "two")  # a disposed store reconnects, and so does its checkpointer
        assert checkpointer.running
        deadline = time.monotonic() + 10
        while checkpointer.passes == passes:
            assert time.monotonic() < deadline, "no checkpoint after the store was used again"
            time.sleep(0.05)
    finally:
        store.dispose()
    assert not checkpointer.running


def test_a_store_dropped_without_dispose_stops_its_thread(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'mailcase.db'}", auto_upgrade=True)
    checkpointer = store.checkpointer
    assert checkpointer is not None
    _write(store, "one")
    assert checkpointer.running
    del store
    gc.collect()
    assert not checkpointer.running


def test_a_store_without_a_database_file_has_no_checkpointer() -> None:
    store = Store.open("sqlite://", auto_upgrade=True)
    try:
        assert store.checkpointer is None
    finally:
        store.dispose()


def test_a_checkpointer_that_cannot_open_the_database_logs_it_and_stops(
    tmp_path: Path,
) -> None:
    checkpointer = Checkpointer(tmp_path)  # a directory: sqlite cannot open it
    with structlog.testing.capture_logs() as logs:
        checkpointer.poke()
        deadline = time.monotonic() + 10
        while not logs:
            assert time.monotonic() < deadline, "the failure was never logged"
            time.sleep(0.05)
        checkpointer.close()
    assert [(e["event"], e["database"]) for e in logs] == [
        ("sqlite_checkpoint_failed", str(tmp_path))
    ]
    assert "unable to open" in logs[0]["error"]
