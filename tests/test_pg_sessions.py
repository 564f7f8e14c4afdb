"""A PostgreSQL session left idle in a transaction (an instance whose host died) is
ended by the server, so that its locks do not hold up the instance that took over."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from helpers import Cli, mail, write_config
from servers import Dovecot, Postgres, SmtpSink

from mailcase import erasure, leases, outbox, store
from mailcase.store import Store

KEY = 424242  # an advisory lock, as ingest takes per message


def _other_session_locks(postgres: Postgres, url: str) -> bool:
    """Whether another session gets the advisory lock KEY within 10 s."""
    with postgres.connect(sa.make_url(url).database or "") as conn:
        conn.execute("SET lock_timeout = '10s'")
        try:
            conn.execute("SELECT pg_advisory_lock(%s)", (KEY,))
        except psycopg.errors.LockNotAvailable:
            return False
        return True


def test_a_session_idle_in_a_transaction_is_ended_and_its_lock_freed(
    postgres: Postgres, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store, "IDLE_IN_TRANSACTION_SECONDS", 1)
    s = Store.open(pg_url, auto_upgrade=False)
    try:
        idle_timeout = pytest.raises(sa.exc.DBAPIError, match="idle-in-transaction")
        with idle_timeout as ended, s.transaction() as session:
            session.execute(sa.select(sa.func.pg_advisory_xact_lock(KEY)))
            time.sleep(3)  # the host "died" here: nothing more comes from this session
            assert _other_session_locks(postgres, pg_url)
            session.execute(sa.select(1))  # the server ended it
        # Had the instance been alive after all: the database's failure, not the message's.
        assert store.is_unavailable(ended.value)
        with s.connection() as conn:  # the pool replaces the connection
            assert conn.exec_driver_sql("SELECT 1").scalar() == 1
    finally:
        s.dispose()


def test_the_timeout_is_the_lease_or_shorter() -> None:
    assert 0 < store.IDLE_IN_TRANSACTION_SECONDS <= leases.LEASE_SECONDS


def _idle_timeout(conn: sa.Connection) -> str:
    return str(conn.exec_driver_sql("SHOW idle_in_transaction_session_timeout").scalar())


def _keepalives(conn: sa.Connection) -> list[str]:
    return [
        str(conn.exec_driver_sql(f"SHOW tcp_keepalives_{name}").scalar())
        for name in ("idle", "interval", "count")
    ]


def test_a_dead_hosts_session_is_probed_within_a_minute(pg_url: str) -> None:
    # The kernel's defaults (7200, 75, 9) kept a dead instance's session, and a delivery
    # run's locked notice (no idle timeout there), for over two hours.
    s = Store.open(pg_url, auto_upgrade=False)
    try:
        with s.connection() as conn:
            assert _keepalives(conn) == ["30", "10", "3"]
    finally:
        s.dispose()


def test_an_admins_idle_timeout_is_left_alone(postgres: Postgres, pg_url: str) -> None:
    with postgres.connect() as admin:
        admin.execute(
            f"ALTER DATABASE {sa.make_url(pg_url).database} "
            "SET idle_in_transaction_session_timeout = '5min'"
        )
        admin.execute(
            f"ALTER DATABASE {sa.make_url(pg_url).database} SET tcp_keepalives_interval = 5"
        )
    s = Store.open(pg_url, auto_upgrade=False)
    try:
        with s.connection() as conn:
            assert _idle_timeout(conn) == "5min"
            assert _keepalives(conn) == ["30", "5", "3"]  # a shorter one is kept too
    finally:
        s.dispose()


def test_a_delivery_run_gives_the_connection_its_timeout_back(pg_url: str) -> None:
    # RESET alone left the pooled connection with none: the server's default, 0.
    s = Store.open(pg_url, auto_upgrade=False)
    try:
        with s.connection() as conn:
            assert _idle_timeout(conn) == "1min"
            conn.rollback()
            with outbox._without_idle_timeout(conn):
                assert _idle_timeout(conn) == "0"
                conn.rollback()
            assert _idle_timeout(conn) == "1min"
    finally:
        s.dispose()


def test_a_long_scan_turns_the_timeout_off_for_its_transaction_only(pg_url: str) -> None:
    s = Store.open(pg_url, auto_upgrade=False)
    try:
        with s.read_session() as session:
            store.no_idle_timeout_here(session)
            assert _idle_timeout(session.connection()) == "0"
        with s.connection() as conn:
            assert _idle_timeout(conn) == "1min"
    finally:
        s.dispose()


def test_forgetting_a_customer_reads_stored_files_past_the_timeout(
    tmp_path: Path,
    mailboxes: Dovecot,
    sink: SmtpSink,
    pg_url: str,
    capsys: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The erasure's scan reads every stored header of mail outside any case between two
    # statements of one read: minutes on a big store, longer than the idle timeout.
    monkeypatch.setattr(store, "IDLE_IN_TRANSACTION_SECONDS", 1)
    cli = Cli(write_config(tmp_path, mailboxes, sink, db_url=pg_url), capsys)
    juan = "juan@example.com"
    mailboxes.append("contacto", mail(sender=juan, headers={"Precedence": "bulk"}))
    cli.poll()
    read_header = erasure.read_header

    def slow(path: Path) -> Any:
        time.sleep(2)
        return read_header(path)

    monkeypatch.setattr(erasure, "read_header", slow)
    code, out, err = cli("customers", "forget", juan, "--yes", "--json")
    assert code == 0, err
    assert json.loads(out)["messages"] == 1
