"""The store on SQLite and on a real PostgreSQL: concurrency, upgrades, timestamps."""

from __future__ import annotations

import threading
import time
import types
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from helpers import Cli, mail, write_config
from servers import Dovecot, Postgres, SmtpSink
from sqlmodel import col, select

from mailcase import notices, service
from mailcase import store as store_module
from mailcase.config import AgentsSettings, load_settings
from mailcase.errors import DatabaseError
from mailcase.imap import FetchedMessage
from mailcase.models import Case, FolioCounter
from mailcase.store import SCHEMA_HEAD, Store, alembic_config, next_folio_number

pytestmark = pytest.mark.integration

YEAR = 2031


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    with Store.open(db_url, auto_upgrade=True) as opened:
        yield opened


@pytest.fixture
def empty_pg(postgres: Postgres) -> Iterator[str]:
    """The URL of a new PostgreSQL database without any schema."""
    name = "mailcase_empty"
    postgres.drop_database(name)
    postgres.create_database(name)
    yield postgres.url(name)
    postgres.drop_database(name)


def run_threads(count: int, work: Callable[[int], Any]) -> list[Any]:
    """Run ``work(i)`` in ``count`` threads at once; their results, or the first error."""
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def target(i: int) -> None:
        try:
            results[i] = work(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads), "a thread is still blocked"
    if errors:
        raise errors[0]
    return results


class Background(threading.Thread):
    """``work()`` in a thread of its own; ``outcome()`` is its result, or raises its error."""

    def __init__(self, work: Callable[[], Any]) -> None:
        super().__init__()
        self.work = work
        self.result: Any = None
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.result = self.work()
        except BaseException as exc:
            self.error = exc

    def outcome(self, timeout: float = 30.0) -> Any:
        self.join(timeout)
        assert not self.is_alive(), "the background writer is still blocked"
        if self.error is not None:
            raise self.error
        return self.result


def make_case(folio: str, when: datetime) -> Case:
    return Case(
        folio=folio,
        customer="juan.perez@example.com",
        mailbox="contacto",
        created_at=when,
        updated_at=when,
    )


def test_timestamps_round_trip_aware_in_utc(store: Store) -> None:
    mexico = timezone(timedelta(hours=-6))
    created = datetime(2026, 11, 20, 10, 30, 15, 123456, tzinfo=mexico)
    with store.transaction() as session:
        session.add(make_case("PLR-2026-000001", created))
    with store.transaction() as session:
        case = session.exec(select(Case)).one()
        assert case.created_at == created
        assert case.created_at.tzinfo is not None
        assert case.created_at.utcoffset() == timedelta(0)
        assert case.created_at.hour == 16
        # Comparisons in SQL see the same instant.
        later = session.exec(
            select(Case).where(col(Case.created_at) > created - timedelta(microseconds=1))
        ).all()
        assert len(later) == 1


def test_concurrent_writers_get_distinct_consecutive_folios(store: Store) -> None:
    def reserve(_: int) -> list[int]:
        numbers = []
        for _ in range(15):
            with store.transaction() as session:
                numbers.append(next_folio_number(session, YEAR))
        return numbers

    numbers = [n for batch in run_threads(6, reserve) for n in batch]
    assert sorted(numbers) == list(range(1, 91))


def test_rolled_back_folio_is_given_back(store: Store) -> None:
    with store.transaction() as session:
        assert next_folio_number(session, YEAR) == 1
    with pytest.raises(RuntimeError), store.transaction() as session:
        assert next_folio_number(session, YEAR) == 2
        raise RuntimeError("the message failed")
    with store.transaction() as session:
        assert next_folio_number(session, YEAR) == 2


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_first_folio_of_a_year_race_on_postgresql(postgres: Postgres, db_url: str) -> None:
    """Two writers open the year's first folio at once: no row to lock yet on PostgreSQL.

    The second INSERT waits for the first transaction, fails on the primary key when it
    commits, and the second writer takes number 2 and goes on in the same transaction.
    (On SQLite, BEGIN IMMEDIATE already serialises whole transactions.)
    """
    with Store.open(db_url, auto_upgrade=False) as store:
        first = store.transaction()
        session = first.__enter__()
        assert next_folio_number(session, YEAR) == 1  # INSERTed, not committed

        def second_writer() -> int:
            with store.transaction() as other:
                number = next_folio_number(other, YEAR)
                other.add(make_case(f"PLR-{YEAR}-{number:06d}", datetime.now(UTC)))
                return number

        second = Background(second_writer)
        wait_until_blocked(postgres, db_url)
        session.add(make_case(f"PLR-{YEAR}-000001", datetime.now(UTC)))
        first.__exit__(None, None, None)  # commit
        assert second.outcome() == 2
        with store.transaction() as check:
            counter = check.get(FolioCounter, YEAR)
            assert counter is not None and counter.last == 2
            folios = check.exec(select(Case.folio).order_by(col(Case.folio))).all()
        assert folios == [f"PLR-{YEAR}-000001", f"PLR-{YEAR}-000002"]


def wait_until_blocked(postgres: Postgres, db_url: str, timeout: float = 10.0) -> None:
    """Until some session of the test database waits for a lock."""
    dbname = sa.make_url(db_url).database
    deadline = time.monotonic() + timeout
    with postgres.connect() as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND wait_event_type = "
                "'Lock'",
                (dbname,),
            ).fetchone()
            if row is not None and row[0]:
                return
            time.sleep(0.01)
    raise AssertionError("the second writer never waited for the first one's row")


def test_processes_starting_at_once_upgrade_once_on_postgresql(empty_pg: str) -> None:
    barrier = threading.Barrier(4)

    def start(_: int) -> tuple[str | None, str | None]:
        barrier.wait()
        with Store.open(empty_pg, auto_upgrade=True) as store:
            return store.revisions()

    revisions = run_threads(4, start)
    current, head = revisions[0]
    assert current == head is not None
    assert set(revisions) == {(head, head)}


def test_out_of_date_postgresql_database_is_refused_without_auto_upgrade(empty_pg: str) -> None:
    with pytest.raises(DatabaseError, match="mailcase db upgrade") as refused:
        Store.open(empty_pg, auto_upgrade=False)
    assert str(refused.value) == (
        "database has no mailcase tables yet (a new database): run `mailcase db upgrade`"
    )


def test_unreachable_postgresql_is_a_database_error(postgres: Postgres) -> None:
    with pytest.raises(DatabaseError, match="cannot open database") as failed:
        Store.open(postgres.url("no_such_database"), auto_upgrade=False)
    # The server's words on one line, naming the database; no SQLAlchemy link.
    assert 'database "no_such_database" does not exist' in str(failed.value)
    assert "\n" not in str(failed.value) and "sqlalche.me" not in str(failed.value)


def test_postgres_server_restarts_keeping_its_databases(postgres: Postgres) -> None:
    postgres.create_database("mailcase_keep")
    try:
        postgres.restart(fast=True)  # immediate shutdown: crash recovery on start
        assert "mailcase_keep" in postgres.databases()
        engine = sa.create_engine(postgres.url("mailcase_keep"))
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT current_setting('fsync')")).scalar() == "off"
        engine.dispose()
    finally:
        postgres.drop_database("mailcase_keep")


def _count_cases(store: Store) -> int:
    with store.transaction() as session:
        return len(session.exec(select(Case.id)).all())


def test_a_connection_idle_across_a_server_restart_is_replaced(
    postgres: Postgres, empty_pg: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "PING_AFTER_IDLE_SECONDS", 0.2)
    with Store.open(empty_pg, auto_upgrade=True) as opened:
        assert _count_cases(opened) == 0  # a pooled connection now
        postgres.restart()  # a clean shutdown: an immediate one may lose the schema (no fsync)
        time.sleep(0.3)
        # Pinged before use: the dead connection is replaced, the transaction works.
        assert _count_cases(opened) == 0


def test_a_connection_used_just_before_a_restart_fails_once_then_reconnects(
    postgres: Postgres, empty_pg: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No ping within the idle window (consecutive messages of a poll): the statement
    # meets the dead connection, and its disconnect error empties the pool.
    monkeypatch.setattr(store_module, "PING_AFTER_IDLE_SECONDS", 3600.0)
    with Store.open(empty_pg, auto_upgrade=True) as opened:
        assert _count_cases(opened) == 0
        postgres.restart()
        with pytest.raises(sa.exc.OperationalError):
            _count_cases(opened)
        assert _count_cases(opened) == 0


@pytest.mark.parametrize(
    ("raw", "disposition"),
    [
        # PostgreSQL enforces the column lengths SQLite ignores: inbound.py caps them.
        pytest.param(mail(sender="X" * 300 + " <juan@example.com>"), "new_case", id="display-name"),
        pytest.param(
            mail(message_id="<" + "m" * 1200 + "@example.com>"), "new_case", id="message-id"
        ),
        pytest.param(
            mail(attachments=[("a.bin", "application/" + "x" * 300, b"xx")]),
            "new_case",
            id="content-type",
        ),
        # No one can answer a 342-character address (RFC 5321 allows 254).
        pytest.param(mail(sender="a" * 330 + "@example.com"), "quarantined", id="address"),
    ],
)
def test_overlong_header_values_still_open_a_case(
    tmp_path: Path,
    mailboxes: Dovecot,
    sink: SmtpSink,
    capsys: Any,
    db_url: str,
    raw: bytes,
    disposition: str,
) -> None:
    cli = Cli(write_config(tmp_path, mailboxes, sink, db_url=db_url), capsys)
    mailboxes.append("contacto", raw)
    cli.poll()
    [entry] = cli.json("messages", "list")
    assert entry["disposition"] == disposition, entry["reason"]


# No agents.signing_secret: the key is the database's (all that signing_key reads).
SETTINGS: Any = types.SimpleNamespace(agents=AgentsSettings())


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_two_instances_create_the_signing_key_at_once(postgres: Postgres, db_url: str) -> None:
    with Store.open(db_url, auto_upgrade=False) as store:
        first = store.transaction()
        key = notices.signing_key(first.__enter__(), SETTINGS)  # INSERTed, not committed

        def second_instance() -> bytes:
            with store.transaction() as session:
                return notices.signing_key(session, SETTINGS)

        second = Background(second_instance)
        wait_until_blocked(postgres, db_url)
        first.__exit__(None, None, None)  # commit
        assert second.outcome() == key


def test_schema_head_is_alembics_head() -> None:
    # Store.open compares databases with SCHEMA_HEAD so that commands need not
    # import alembic; a new migration must move it.
    from alembic.script import ScriptDirectory

    from mailcase.store import SCHEMA_HEAD, alembic_config

    assert (
        ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head() == SCHEMA_HEAD
    )


def test_copies_of_one_message_ingested_at_once_on_postgresql_open_one_case(
    tmp_path: Path,
    empty_pg: str,
    mailboxes: Dovecot,
    sink: SmtpSink,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Two instances, each polling one of the two mailboxes a Cc reached: the second
    # copy waits on the first's advisory lock, then sees its ledger row.
    Store.open(empty_pg, auto_upgrade=True).dispose()
    config = write_config(tmp_path, mailboxes, sink, db_url=empty_pg)
    rt = service.Runtime.open(load_settings(config))
    raw = mail(subject="Copia a las dos")
    first_inside, release = threading.Event(), threading.Event()
    write_ledger = service._write_ledger

    def held_open(session: Any, mailbox: str, *args: Any, **kwargs: Any) -> Any:
        if mailbox == "contacto":  # the first copy stops before its commit
            first_inside.set()
            assert release.wait(10)
        return write_ledger(session, mailbox, *args, **kwargs)

    monkeypatch.setattr(service, "_write_ledger", held_open)
    results: dict[str, str] = {}

    def ingest(mailbox: str) -> None:
        results[mailbox] = service.ingest_message(rt, mailbox, 1, FetchedMessage(1, raw, None))

    try:
        first = threading.Thread(target=ingest, args=("contacto",))
        first.start()
        assert first_inside.wait(10)
        second = threading.Thread(target=ingest, args=("info",))
        second.start()
        second.join(0.5)
        assert second.is_alive()  # waiting on the lock, not ingesting beside the first
        release.set()
        first.join(10)
        second.join(10)
        assert results == {"contacto": "new_case", "info": "duplicate"}
        with rt.store.transaction() as session:
            assert len(session.exec(select(Case.id)).all()) == 1
    finally:
        release.set()
        rt.store.dispose()


def test_a_connection_dropped_mid_ingest_fails_the_poll_and_quarantines_nothing(
    tmp_path: Path, empty_pg: str, postgres: Postgres
) -> None:
    # PostgreSQL ends a session under ingest (a restart, a failover, an admin's
    # pg_terminate_backend). The message is good: it must be read again by the next
    # poll, not quarantined as if its content were at fault.
    Store.open(empty_pg, auto_upgrade=True).dispose()
    servers = types.SimpleNamespace(port=1, ssl_port=2, users={"contacto": "x", "info": "y"})
    sink = types.SimpleNamespace(host="127.0.0.1", port=3)
    rt = service.Runtime.open(load_settings(write_config(tmp_path, servers, sink, db_url=empty_pg)))

    def fetched(uid: int) -> FetchedMessage:
        raw = mail(sender=f"cliente{uid}@example.com")
        return FetchedMessage(uid=uid, raw=raw, internal_date=datetime.now(UTC))

    try:
        assert service.ingest_message(rt, "contacto", 1, fetched(1)) == "new_case"
        with postgres.connect() as admin:  # every session of that database, ours included
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (empty_pg.rsplit("/", 1)[1],),
            )
        with pytest.raises(DatabaseError) as failed:
            service.ingest_message(rt, "contacto", 1, fetched(2))
        message = str(failed.value)
        assert message.startswith("database unavailable while ingesting message 2 of mailbox")
        assert "\n" not in message and "sqlalche.me" not in message
        with rt.store.reading() as conn:
            ledger = conn.execute(sa.text("SELECT uid, disposition FROM ledger")).all()
        assert [tuple(r) for r in ledger] == [(1, "new_case")]
        assert service.ingest_message(rt, "contacto", 1, fetched(2)) == "new_case"  # read again
    finally:
        rt.store.dispose()


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://mailcase:s3cr3t@db.example.net:54x2/mailcase",  # a typo in the port
        "postgresql+psycopg3://mailcase:s3cr3t@db.example.net/mailcase",  # no such driver
    ],
)
def test_a_database_url_that_cannot_be_used_is_a_config_error_without_its_password(
    tmp_path: Path, capsys: Any, url: str
) -> None:
    servers = types.SimpleNamespace(port=1, ssl_port=2, users={"contacto": "x", "info": "y"})
    sink = types.SimpleNamespace(host="127.0.0.1", port=3)
    code, out, err = Cli(write_config(tmp_path, servers, sink, db_url=url), capsys)("db", "current")
    assert code == 2  # EXIT_CONFIG: systemd does not restart it (RestartPreventExitStatus)
    assert err.startswith("mailcase: database.url cannot be used: ") and err.count("\n") == 1
    assert "s3cr3t" not in out + err
    code, out, err = Cli(tmp_path / "mailcase.toml", capsys)("check")
    assert code == 1 and "mailcase: database failed: database.url cannot be used: " in err
    assert "s3cr3t" not in out + err


def test_an_older_schema_is_refused_naming_both_revisions(tmp_path: Path) -> None:
    from alembic import command

    url = f"sqlite:///{tmp_path / 'old.db'}"
    command.upgrade(alembic_config(url), "0004")
    with pytest.raises(DatabaseError) as refused:
        Store.open(url, auto_upgrade=False)
    assert str(refused.value) == (
        f"database schema is at revision 0004 but this mailcase needs {SCHEMA_HEAD}: "
        "run `mailcase db upgrade`"
    )


def test_cases_resolved_or_closed_before_0002_get_their_times(tmp_path: Path) -> None:
    # Without them such a case never closed by itself and any late reply reopened it.
    from alembic import command

    url = f"sqlite:///{tmp_path / 'old.db'}"
    command.upgrade(alembic_config(url), "0001")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for n, (status, outcome) in enumerate(
            [("resolved", "valid"), ("closed", "invalid"), ("closed", None), ("open", None)], 1
        ):
            conn.execute(
                sa.text(
                    "INSERT INTO cases (id, folio, status, customer, customer_name, subject,"
                    " mailbox, language, outcome, created_at, updated_at) VALUES (:n,"
                    " :folio, :status, 'juan@example.com', '', 'x', 'contacto', 'es', :outcome,"
                    " '2025-06-01 10:00:00.000000', :updated)"
                ),
                {
                    "n": n,
                    "folio": f"PLR-2025-{n:06d}",
                    "status": status,
                    "outcome": outcome,
                    "updated": f"2025-06-0{n + 1} 10:00:00.000000",
                },
            )
    engine.dispose()
    Store.open(url, auto_upgrade=True).dispose()
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT status, resolved_at, closed_at FROM cases ORDER BY id")
        ).all()
    engine.dispose()
    assert [(s, r is not None, c is not None) for s, r, c in rows] == [
        ("resolved", True, False),
        ("closed", True, True),
        ("closed", False, True),  # closed without a resolution: a reply opens a new case
        ("open", False, False),
    ]
    assert rows[0][1] == "2025-06-02 10:00:00.000000"  # its last change


def test_0006_leaves_a_case_reopened_and_closed_unresolved_since_0002(tmp_path: Path) -> None:
    # Reopening clears resolved_at and keeps the outcome; closing sets closed_at.
    from alembic import command

    url = f"sqlite:///{tmp_path / 'old.db'}"
    command.upgrade(alembic_config(url), "0005")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO cases (id, folio, status, customer, customer_name, subject, mailbox,"
                " language, outcome, channel, created_at, updated_at, closed_at) VALUES (1,"
                " 'PLR-2026-000001', 'closed', 'juan@example.com', '', 'x', 'contacto', 'es',"
                " 'valid', 'mail', '2026-06-01 10:00:00.000000', '2026-06-09 10:00:00.000000',"
                " '2026-06-09 10:00:00.000000')"
            )
        )
    engine.dispose()
    Store.open(url, auto_upgrade=True).dispose()
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        resolved_at = conn.execute(sa.text("SELECT resolved_at FROM cases")).scalar()
    engine.dispose()
    assert resolved_at is None  # a reply opens a new, linked case, as for any unresolved one
