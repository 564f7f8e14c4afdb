"""`mailcase db backup FILE`: a consistent, self-contained copy of an SQLite database.

On the database alone (no mail server is contacted): cases registered by
phone, a notice left queued by an SMTP server that refuses connections.
"""

from __future__ import annotations

import sqlite3
import stat
import types
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from helpers import Cli, write_config

from mailcase.sentlog import SentLog
from mailcase.store import Store


@pytest.fixture
def cli(tmp_path: Path, capsys: Any) -> Cli:
    # Ports 1 to 3: nothing listens there, so the acknowledgement stays queued.
    servers: Any = types.SimpleNamespace(port=1, ssl_port=2, users={"contacto": "x", "info": "y"})
    sink: Any = types.SimpleNamespace(port=3)
    return Cli(write_config(tmp_path, servers, sink), capsys)


def open_case(cli: Cli, customer: str | None = None) -> str:
    extra = ["--customer", customer] if customer else []
    code, _, err = cli(
        "cases", "open", "--channel", "phone", "--subject", "Sin red", "--text", "No hay.", *extra
    )
    assert code == 0, err
    return str(cli.json("cases", "list")[0]["folio"])


def rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_the_copy_is_one_owner_only_file_that_mailcase_opens(cli: Cli, tmp_path: Path) -> None:
    folio = open_case(cli)
    target = tmp_path / "backups" / "copy.db"
    target.parent.mkdir()
    code, out, err = cli("db", "backup", str(target))
    assert code == 0, err
    assert f"copied to {target}" in out
    assert f"back up storage.directory ({tmp_path}/store) after it" in out
    assert stat.S_IMODE(target.stat().st_mode) == 0o600  # every customer's mail is in it
    assert sorted(p.name for p in target.parent.iterdir()) == ["copy.db"]  # no -wal to carry
    assert rows(target, "PRAGMA journal_mode") == [("delete",)]
    store = Store.open(f"sqlite:///{target}", auto_upgrade=False, create=False)
    try:
        with store.engine.connect() as conn:
            folios = [r[0] for r in conn.exec_driver_sql("SELECT folio FROM cases")]
    finally:
        store.dispose()
    assert folios == [folio]


def test_an_existing_file_is_never_written_over(cli: Cli, tmp_path: Path) -> None:
    open_case(cli)
    target = tmp_path / "copy.db"
    target.write_bytes(b"last week's backup")
    code, out, err = cli("db", "backup", str(target))
    assert code == 2
    assert out == ""
    assert err.strip() == f"mailcase: {target} exists: db backup never writes over a file"
    assert target.read_bytes() == b"last week's backup"


def test_notices_the_sent_log_recorded_are_marked_sent_in_the_copy(
    cli: Cli, tmp_path: Path
) -> None:
    # Restored without them, the copy would send these notices again.
    open_case(cli, "juan@example.com")
    [notice] = cli.json("outbox", "list")
    assert notice["status"] == "queued"
    database = tmp_path / "mailcase.db"
    sent_log = SentLog.beside(database)
    sent_log.append(int(notice["id"]), datetime(2026, 11, 28, 9, 0, tzinfo=UTC))
    sent_log.close()
    target = tmp_path / "copy.db"
    code, out, err = cli("db", "backup", str(target))
    assert code == 0, err
    assert "1 notices sent meanwhile marked sent in it" in out
    assert rows(target, "SELECT status, sent_at FROM notices") == [
        ("sent", "2026-11-28 09:00:00.000000")
    ]
    # The live database and its log are left to delivery, as they were.
    assert rows(database, "SELECT status FROM notices") == [("queued",)]
    assert len(SentLog.beside(database).pending()) == 1


def test_a_write_in_progress_does_not_hold_the_copy_up_nor_enter_it(
    cli: Cli, tmp_path: Path
) -> None:
    folio = open_case(cli)
    writer = sqlite3.connect(tmp_path / "mailcase.db", isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")  # the daemon in the middle of a message
        writer.execute("UPDATE cases SET subject = 'uncommitted' WHERE folio = ?", (folio,))
        target = tmp_path / "copy.db"
        code, _, err = cli("db", "backup", str(target))
        assert code == 0, err
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert rows(target, "SELECT subject FROM cases") == [("Sin red",)]


def test_a_missing_database_is_named_and_leaves_no_file(cli: Cli, tmp_path: Path) -> None:
    target = tmp_path / "copy.db"
    code, _, err = cli("db", "backup", str(target))
    assert code == 3
    assert str(tmp_path / "mailcase.db") in err
    assert not target.exists()
    assert not (tmp_path / "mailcase.db").exists()  # a backup never creates the database


def test_a_target_that_cannot_be_created_is_named(cli: Cli, tmp_path: Path) -> None:
    open_case(cli)
    target = tmp_path / "no-such-directory" / "copy.db"
    code, _, err = cli("db", "backup", str(target))
    assert code == 1
    assert err.strip() == (
        f"mailcase: cannot create backup file {target}: No such file or directory"
    )


def test_a_damaged_database_is_no_backup(cli: Cli, tmp_path: Path) -> None:
    open_case(cli)
    database = tmp_path / "mailcase.db"
    conn = sqlite3.connect(database)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    [(root,)] = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'cases'")
    [(page,)] = conn.execute("PRAGMA page_size")
    conn.close()
    data = bytearray(database.read_bytes())
    data[(root - 1) * page] = 0x00  # the cases table's b-tree page: no valid page type
    database.write_bytes(bytes(data))
    target = tmp_path / "copy.db"
    code, _, err = cli("db", "backup", str(target))
    assert code == 3, err
    assert "quick_check" in err or "malformed" in err
    assert not target.exists()


def test_postgresql_is_left_to_pg_dump(tmp_path: Path, capsys: Any) -> None:
    servers: Any = types.SimpleNamespace(port=1, ssl_port=2, users={"contacto": "x", "info": "y"})
    sink: Any = types.SimpleNamespace(port=3)
    config = write_config(
        tmp_path, servers, sink, db_url="postgresql+psycopg://mailcase@127.0.0.1:1/mailcase"
    )
    code, _, err = Cli(config, capsys)("db", "backup", str(tmp_path / "copy.db"))
    assert code == 2
    assert "back up PostgreSQL with pg_dump" in err
    assert not (tmp_path / "copy.db").exists()


def test_a_fold_during_the_copy_leaves_no_sent_notice_queued_in_it(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The daemon folds its sent log at every delivery run: marks committed to the
    # database after the copy's snapshot, then the records deleted. Read after the
    # copy, the log had lost them, and the copy kept those notices queued.
    from mailcase import backup
    from mailcase.outbox import fold_sent_log

    open_case(cli, "juan@example.com")
    [notice] = cli.json("outbox", "list")
    database = tmp_path / "mailcase.db"
    sent_log = SentLog.beside(database)
    sent_log.append(int(notice["id"]), datetime(2026, 11, 28, 9, 0, tzinfo=UTC))
    sent_log.close()

    def fold_now() -> None:
        store = Store.open(f"sqlite:///{database}", auto_upgrade=False, create=False)
        try:
            assert fold_sent_log(store) == 1
        finally:
            store.dispose()

    class FoldFirst:
        """The source connection, with the daemon's fold run as the copy ends (after
        its snapshot, before the command reads anything more)."""

        def __init__(self, conn: sqlite3.Connection) -> None:
            self.conn = conn

        def __getattr__(self, name: str) -> Any:
            return getattr(self.conn, name)

        def backup(self, target: sqlite3.Connection) -> None:
            self.conn.backup(target)
            fold_now()

    real_connect = sqlite3.connect

    def connect(path: Any, **options: Any) -> Any:
        conn = real_connect(path, **options)
        return FoldFirst(conn) if Path(path) == database else conn

    monkeypatch.setattr(backup.sqlite3, "connect", connect)
    target = tmp_path / "copy.db"
    code, _, err = cli("db", "backup", str(target))
    assert code == 0, err
    assert rows(database, "SELECT status FROM notices") == [("sent",)]  # the fold ran
    assert rows(target, "SELECT status FROM notices") == [("sent",)]
