"""The database adapter: the only module that opens sessions and commits.

:meth:`Store.transaction` is the one place where work is committed or rolled
back (Mailman's ``database/transaction.py`` habit). The schema is created and
upgraded by alembic (``mailcase/migrations``); :meth:`Store.open` refuses a
database older than the code unless it may upgrade it itself, and always one
newer than the code (a release rolled back, another host upgraded first).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import re
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlmodel import Session, SQLModel, col, select

from mailcase import runlock
from mailcase.checkpoint import BACKSTOP_PAGES, Checkpointer
from mailcase.errors import ConfigError, DatabaseError, SchemaTooNewError
from mailcase.models import Case, CaseMessage, FolioCounter, LedgerEntry
from mailcase.prepared import Prepared
from mailcase.sentlog import SentLog

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

MIGRATIONS = Path(__file__).parent / "migrations"
# The newest migration's revision. Store.open compares the database with it
# without importing alembic (a tenth of a second of every command's start);
# a test checks that it is alembic's head.
SCHEMA_HEAD = "0016"

# The PostgreSQL advisory lock that serialises schema upgrades: any bigint no
# other application on the same database uses; this one spells "mailcase".
UPGRADE_LOCK_KEY = int.from_bytes(b"mailcase", "big")
# The PostgreSQL advisory lock between removing files from the message store and
# ingest: taken shared by each ingest transaction, exclusive by a removal (see
# mailcase.erasure._remove_files). SQLite's one write lock does the same there.
BLOB_REMOVAL_LOCK_KEY = int.from_bytes(b"mc:blobs", "big")


def sqlite_path(url: str) -> Path | None:
    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    if parsed.database == ":memory:":
        return None
    return Path(parsed.database)


READ_ONLY = "mailcase_read_only"  # execution option: see Store.reading


# SQLite's errors that are about the database file, not about what is written.
_SQLITE_UNAVAILABLE = (
    "database is locked",
    "disk i/o error",
    "database or disk is full",
    "unable to open database file",
    "readonly database",
)


# PostgreSQL errors that a DBA's settings or another session cause, whatever the
# message: a statement_timeout or lock_timeout met behind maintenance (CREATE INDEX,
# VACUUM FULL, an admin's LOCK TABLE), a deadlock or serialization failure with
# another instance, a database turned read-only (a hot standby after a failover).
# Quarantining the message for them lost good mail for good; the poll backs off and
# reads it again instead.
_PG_NOT_THE_MESSAGE = frozenset(
    {
        "57014",  # query_canceled: statement_timeout
        "55P03",  # lock_not_available: lock_timeout
        "40P01",  # deadlock_detected
        "40001",  # serialization_failure
        "25006",  # read_only_sql_transaction
    }
)


def is_deadlock(exc: SQLAlchemyError) -> bool:
    """Whether ``exc`` is PostgreSQL's deadlock (SQLSTATE 40P01): this transaction was
    chosen to end a lock cycle with another session's, and was rolled back whole."""
    return getattr(getattr(exc, "orig", None), "sqlstate", None) == "40P01"


def is_unavailable(exc: SQLAlchemyError) -> bool:
    """Whether ``exc`` says the database cannot be used now (down, restarting, a
    dropped connection, a full disk), as opposed to a problem with what was written.

    Conservative on purpose: a message whose content makes the database fail
    must still be quarantined, or it would stop its mailbox at every poll. So
    PostgreSQL's errors count only in the SQLSTATE classes of connections (08),
    operator intervention (57P: shutdown, restart) and resources (53: disk
    full, out of memory, too many connections), and the few of
    :data:`_PG_NOT_THE_MESSAGE` that the server's settings or other sessions
    cause; not, say, 54 (a value over an index's limit).
    """
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return True
    orig = getattr(exc, "orig", None)
    sqlstate = getattr(orig, "sqlstate", None)
    # psycopg raises a read-only transaction (25006) as InternalError: asked of any class.
    if isinstance(exc, sa.exc.DBAPIError) and sqlstate in _PG_NOT_THE_MESSAGE:
        return True
    if not isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError)):
        return False
    if isinstance(orig, sqlite3.Error):
        words = str(orig).lower()
        return isinstance(orig, sqlite3.OperationalError) and any(
            w in words for w in _SQLITE_UNAVAILABLE
        )
    if isinstance(sqlstate, str):
        return sqlstate.startswith(("08", "57P", "53"))
    return True  # no SQLSTATE: the driver could not reach the server at all


def error_text(exc: SQLAlchemyError) -> str:
    """One line for people: the driver's own words, without SQLAlchemy's SQL and link."""
    text = " ".join(str(getattr(exc, "orig", None) or exc).split())
    return text if len(text) <= 300 else text[:299] + "…"


def failure_text(url: str, exc: SQLAlchemyError) -> str:
    """The driver's words (:func:`error_text`) and, for an SQLite database, its file; when
    this user may not read or write it (or the directory SQLite writes its ``-wal`` and
    ``-shm`` files in), who owns it and what to do.

    SQLite itself says only "unable to open database file" or "attempt to write a
    readonly database": seen after ``sudo mailcase db upgrade`` left a file that
    root owns, which the service user then cannot open or write.
    """
    text = error_text(exc)
    try:
        path = sqlite_path(url)
    except (SQLAlchemyError, ValueError):
        path = None
    if path is None:
        return text
    problem = _access_problem(path)
    return f"{text} ({path})" + (f"; {problem}" if problem else "")


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:  # a uid without a passwd entry (a container's)
        return f"uid {uid}"


def _access_problem(path: Path) -> str | None:
    """Why this process's user cannot use the SQLite file ``path`` (and its directory and
    ``-wal``/``-shm`` files), with the remedy; None when the permissions allow it."""
    directory = path.parent
    me = user_name(os.geteuid())
    remedy = (
        "run mailcase as the service user (sudo -u mailcase mailcase ...), "
        "or give the files to it (chown mailcase: {})"
    )
    if not os.access(directory, os.X_OK):
        owner = _owner(directory)
        return (
            f"its directory {directory} (owned by {owner}) cannot be entered by this user "
            f"({me}): " + remedy.format(directory)
        )
    for candidate in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        if not candidate.exists():
            continue
        lacks = [
            word
            for word, mode in (("readable", os.R_OK), ("writable", os.W_OK))
            if not os.access(candidate, mode)
        ]
        if lacks:
            return (
                f"{candidate} (owned by {_owner(candidate)}) is not {' or '.join(lacks)} "
                f"by this user ({me}): " + remedy.format(candidate)
            )
    if not os.access(directory, os.W_OK):
        # SQLite creates the -wal and -shm files beside the database (WAL mode).
        return (
            f"its directory {directory} (owned by {_owner(directory)}) is not writable by "
            f"this user ({me}), and SQLite writes {path.name}-wal and -shm there: "
            + remedy.format(directory)
        )
    return None


def _owner(path: Path) -> str:
    try:
        return user_name(path.stat().st_uid)
    except OSError:
        return "another user"


def _owner_only(database: Path) -> None:
    """Take group and others' rights off the SQLite database and its companions that this
    user owns: a copy restored under an admin's umask (``cp backup mailcase.db``) was
    left readable by every local user, with every customer's mail and the key that
    proves agents. Files of another owner are left alone (a read-only command may
    run as another user); a failure is not an error."""
    for companion in ("", "-wal", "-shm", "-sent", "-sent-wal", "-sent-shm"):
        file = Path(f"{database}{companion}")
        with contextlib.suppress(OSError):
            info = file.stat()
            if info.st_uid == os.geteuid() and info.st_mode & 0o077:
                file.chmod(info.st_mode & 0o700)


def make_engine(url: str, *, create: bool = True) -> Engine:
    """An engine for ``url``; SQLite gets WAL, foreign keys and a busy timeout.

    With ``create``, a missing SQLite file (and its directories) is created,
    owner-only; without it, a missing file is a DatabaseError naming its path
    and nothing is created (read-only commands: a typo in the path, or a
    command run by root before the service, must not leave an empty database
    behind).

    Raises ConfigError for a URL that cannot be used (a typo: a port that is
    not a number, an unknown driver), since restarting will not help; its
    message names no part of the URL, so no password.
    """
    # "user:Hunter@2024@host": SQLAlchemy splits at the first "@", so the rest of the
    # password becomes the host and the driver's "cannot resolve" error quotes it.
    # Two "@" before the path (the host part) mean one of them belongs to the password.
    authority = url.partition("://")[2]
    for end in "/?#":
        authority = authority.partition(end)[0]
    if authority.count("@") > 1:
        raise ConfigError(
            "database.url has an '@' in its user name or password: percent-encode it as %40"
        )
    try:
        path = sqlite_path(url)
    except (SQLAlchemyError, ValueError) as exc:
        raise ConfigError(f"database.url cannot be used: {exc}") from exc
    if path is not None and not create and not path.exists():
        raise DatabaseError(
            f"no database at {path}: run `mailcase db upgrade` or start the service first"
        )
    if path is not None and create:
        # The database holds customers' mail: owner-only from the start.
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not path.exists():
                path.touch(mode=0o600)
        except OSError as exc:
            raise DatabaseError(
                f"cannot create the database file {path} (database.url): {exc.strerror or exc}"
            ) from exc
    if path is not None:
        _owner_only(path)
    try:
        # hide_parameters: a failed statement's values (customers' mail, the
        # signing key) stay out of error messages and so out of the logs.
        engine = sa.create_engine(url, future=True, hide_parameters=True)
    except (SQLAlchemyError, ImportError, ValueError) as exc:
        raise ConfigError(f"database.url cannot be used: {exc}") from exc
    if path is None:
        _ping_idle_connections(engine)
    if engine.dialect.name == "postgresql":
        _session_settings(engine)
    if engine.dialect.name == "sqlite":

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # pysqlite's implicit BEGIN is disabled so that "BEGIN IMMEDIATE"
            # below takes the write lock at the start of every transaction:
            # two writers then queue instead of failing on lock upgrade.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            # Checkpoints run in the store's own thread (mailcase.checkpoint);
            # a writer runs one only past this backstop.
            cursor.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_PAGES}")
            cursor.close()

        @sa.event.listens_for(engine, "begin")
        def _sqlite_begin(conn: sa.Connection) -> None:
            # A reader (Store.reading) needs no write lock: in WAL mode its
            # deferred transaction reads a snapshot while a writer goes on.
            read_only = conn.get_execution_options().get(READ_ONLY, False)
            conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


# A transaction of an instance whose host died (power, network) keeps its locks (a
# message's advisory lock, the mailbox's checkpoint row) while PostgreSQL keeps its
# session, idle in transaction, until TCP keepalive notices: two hours with the
# kernel's defaults. The instance that took the mailbox's lease over (a minute later)
# waited behind them until the watchdog killed it, and again after every restart. The
# server ends such a session after this long idle in a transaction, which frees its
# locks: at most the lease's length (mailcase.leases.LEASE_SECONDS; leases imports this
# module). No transaction of ours sits idle that long between statements: parsing and
# IMAP happen outside them, rendering and writing a message's files take moments, a
# delivery run (SMTP inside its claim) turns it off (mailcase.outbox), and so does the
# erasure's scan of the stored files (mailcase.erasure). An admin's own setting (not 0)
# is left alone.
IDLE_IN_TRANSACTION_SECONDS = 60
_IDLE_TIMEOUT = "idle_in_transaction_session_timeout"
# A dead host's session is also found by TCP keepalive sooner than the kernel's two
# hours: probes after 30 s of silence, every 10 s, 3 unanswered (about a minute). For a
# delivery run's connection, without the idle timeout (a claimed notice stays locked
# meanwhile), and for any session idle in a transaction under an admin's longer
# timeout. An admin's shorter setting is kept; a Unix socket ignores them.
_KEEPALIVES = {"tcp_keepalives_idle": 30, "tcp_keepalives_interval": 10, "tcp_keepalives_count": 3}


def _our_idle_timeout() -> str:
    """SQL (a SELECT's column): the session's idle-in-transaction timeout set to
    :data:`IDLE_IN_TRANSACTION_SECONDS` unless the server's, database's or role's
    setting gives one (is not 0)."""
    return (
        f"CASE WHEN current_setting('{_IDLE_TIMEOUT}') = '0' THEN "
        f"set_config('{_IDLE_TIMEOUT}', '{int(IDLE_IN_TRANSACTION_SECONDS)}s', false) END"
    )


def _our_keepalives() -> str:
    """SQL (a SELECT's columns): the session's TCP keepalives no longer than
    :data:`_KEEPALIVES` (0, the kernel's default, counts as longer)."""
    return ", ".join(
        f"set_config('{name}', least(nullif(current_setting('{name}')::int, 0), {seconds})"
        "::text, false)"
        for name, seconds in _KEEPALIVES.items()
    )


def idle_timeout_back(conn: sa.Connection) -> None:
    """``conn``'s PostgreSQL session back to the idle-in-transaction timeout a new
    connection gets (the admin's, else :data:`IDLE_IN_TRANSACTION_SECONDS`), in the
    transaction in progress."""
    conn.exec_driver_sql(f"RESET {_IDLE_TIMEOUT}")
    conn.exec_driver_sql(f"SELECT {_our_idle_timeout()}")


def no_idle_timeout_here(session: Session) -> None:
    """On PostgreSQL, no idle-in-transaction timeout until ``session``'s transaction
    ends (``SET LOCAL``): for a read that works on each row at length between its
    statements (reading stored files), and holds no lock that an ingest waits for."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(sa.text(f"SET LOCAL {_IDLE_TIMEOUT} = 0"))


def _session_settings(engine: Engine) -> None:
    """Every PostgreSQL connection of ``engine`` talks UTF-8, gets dates as ISO 8601, is
    ended by the server after :data:`IDLE_IN_TRANSACTION_SECONDS` idle in a
    transaction and probed by TCP keepalive within a minute of silence, whatever the
    database's or the role's defaults (but an admin's own idle timeout, and shorter
    keepalives, which are kept); the admin's own libpq ``options`` (in the URL,
    ``PGOPTIONS`` or a service file) are left alone.

    The encoding is asked for when connecting (libpq's ``client_encoding``); the
    DateStyle, the timeout and the keepalives are set once per new connection (one
    round trip; pooled connections keep them), not through ``options``, which would
    hide a service file's. A client encoding left to the database's default
    (SQL_ASCII, LATIN1) crashed every command or quarantined every mail with an emoji;
    psycopg cannot read a timestamp in any DateStyle but ISO (NotImplementedError at
    every poll after ``ALTER DATABASE ... SET DateStyle = 'SQL, DMY'``).
    """

    @sa.event.listens_for(engine, "do_connect")
    def _connect_settings(_dialect: Any, _record: Any, _cargs: Any, cparams: Any) -> None:
        cparams["client_encoding"] = "utf8"

    @sa.event.listens_for(engine, "connect")
    def _iso_dates(dbapi_connection: Any, _record: Any) -> None:
        # A SET is undone with its transaction: committed at once.
        dbapi_connection.execute(
            f"SELECT set_config('DateStyle', 'ISO', false), {_our_idle_timeout()}, "
            + _our_keepalives()
        )
        dbapi_connection.commit()


def _refuse_other_encodings(conn: sa.Connection, url: str) -> None:
    """Raise ConfigError when ``conn``'s PostgreSQL database does not store UTF-8.

    SQL_ASCII stores bytes without checking them, LATIN1 and the like cannot store
    an emoji: customers' mail would be lost or garbled. Only a new database fixes
    it, so the service must not restart for ever (exit 2, not 3).
    """
    if conn.dialect.name != "postgresql":
        return
    encoding = conn.exec_driver_sql("SHOW server_encoding").scalar()
    if encoding != "UTF8":
        name = sa.make_url(url).database
        raise ConfigError(
            f"the PostgreSQL database {name} stores text as {encoding}, which cannot hold"
            " every customer's mail: create it with ENCODING 'UTF8' TEMPLATE template0"
            " and point database.url at it"
        )


def known_revisions() -> frozenset[str]:
    """Every schema revision this mailcase's migrations define (reads them with alembic)."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(MIGRATIONS))
    return frozenset(revision.revision for revision in script.walk_revisions())


def refuse_unknown_revision(current: str | None) -> None:
    """Raise DatabaseError when ``current`` is not a revision of this code's migrations.

    Such a schema is newer than the code (a release rolled back, another host
    of a shared PostgreSQL upgraded first): reading or writing it could go
    wrong, and alembic cannot upgrade from a revision it does not know.
    Alembic is imported only for a database that is not at :data:`SCHEMA_HEAD`.
    """
    if current is None or current == SCHEMA_HEAD or current in known_revisions():
        return
    raise SchemaTooNewError(
        f"the database schema is at revision {current}, newer than this mailcase"
        f" ({SCHEMA_HEAD}): install the mailcase that upgraded it"
    )


def alembic_config(url: str) -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


# A pooled server connection idle for longer than this is pinged before use.
PING_AFTER_IDLE_SECONDS = 1.0


def _ping_idle_connections(engine: Engine) -> None:
    """Ping a pooled connection before use when it sat idle, not on every checkout.

    ``pool_pre_ping`` pings on every checkout: one round trip more per ingested
    message, for connections used a millisecond earlier. A server restarted
    in the last second is then met by a statement instead; its disconnect
    error invalidates the pool, and the next poll reconnects.
    """

    @sa.event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_connection: Any, record: Any) -> None:
        record.info["mailcase_idle_since"] = time.monotonic()

    @sa.event.listens_for(engine, "checkout")
    def _checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("mailcase_idle_since")
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE_SECONDS:
            return  # just connected, or just used
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as exc:
            # The pool discards this connection and checks out another (SQLAlchemy's
            # "pessimistic disconnect handling" recipe).
            raise sa.exc.DisconnectionError(str(exc)) from exc


class Store:
    """Owns the engine; hands out one transaction at a time per caller.

    Its pooled connections are closed by :meth:`dispose` (or leaving a ``with``
    block), and at the latest when the store is garbage-collected: a dropped
    store never leaves a PostgreSQL session open behind it.
    """

    def __init__(self, engine: Engine, url: str) -> None:
        self.engine = engine
        self.url = url
        # Delivery's record of accepted notices, beside the database file when
        # there is one (SQLite on disk; mailcase.sentlog).
        database_file = sqlite_path(url)
        self.sent_log = SentLog.beside(database_file) if database_file else None
        # One delivery run at a time across processes (mailcase.runlock).
        self.delivery_lock = runlock.beside(database_file) if database_file else None
        # SQLite's log is copied back into the database file beside the writers.
        self.checkpointer = Checkpointer(database_file) if database_file else None
        self._finalizer = weakref.finalize(self, _release, engine, self.checkpointer)
        # SQLite has one writer. Threads of this process queue here, and the
        # next one starts as soon as a transaction ends; behind SQLite's own
        # busy handler they sleep 1, 2, 5, 10 ms... and miss the short gaps
        # between ingest's transactions (delivery starved during a poll).
        self._writer_lock = threading.RLock() if engine.dialect.name == "sqlite" else None
        self._writer: AbstractContextManager[Any] = self._writer_lock or nullcontext()

    @classmethod
    def open(cls, url: str, *, auto_upgrade: bool, create: bool = True) -> Store:
        """Open ``url``; upgrade it when allowed, else refuse an out-of-date schema.

        A schema newer than the code is always refused (DatabaseError), never
        upgraded. Without ``create`` a missing SQLite file is refused instead of
        created (:func:`make_engine`).
        """
        store = cls(make_engine(url, create=create), url)
        try:
            current, head = store.revisions()
            if current != head:
                if not auto_upgrade:
                    state = (
                        "has no mailcase tables yet (a new database)"
                        if current is None
                        else f"schema is at revision {current} but this mailcase needs {head}"
                    )
                    raise DatabaseError(f"database {state}: run `mailcase db upgrade`")
                store.upgrade()
        except SQLAlchemyError as exc:
            store.dispose()
            raise DatabaseError(f"cannot open database: {failure_text(url, exc)}") from exc
        except BaseException:
            store.dispose()
            raise
        return store

    @classmethod
    def schema_state(cls, url: str) -> tuple[str | None, str | None]:
        """``url``'s revisions as :meth:`revisions` gives them, read without creating,
        upgrading or refusing an out-of-date schema (``db current``, ``check``).

        Raises DatabaseError, as :meth:`open` does, for a missing SQLite file
        and for a schema newer than the code.
        """
        store = cls(make_engine(url, create=False), url)
        try:
            return store.revisions()
        except SQLAlchemyError as exc:
            raise DatabaseError(f"cannot open database: {failure_text(url, exc)}") from exc
        finally:
            store.dispose()

    def revisions(self) -> tuple[str | None, str | None]:
        """(the database's alembic revision, the code's head revision :data:`SCHEMA_HEAD`).

        Raises DatabaseError when the database's revision is not one of the
        code's (:func:`refuse_unknown_revision`), and ConfigError when the driver
        refuses ``database.url``'s connection options (:func:`_connect`) or a
        PostgreSQL database does not store UTF-8 (:func:`_refuse_other_encodings`).
        """
        with _connect(self.engine, self.url) as conn:
            # Read-only (no BEGIN IMMEDIATE on SQLite): a read-only command, or a
            # daemon starting, must not wait for an admin's sqlite3 shell holding
            # the write lock. Store.upgrade reads the revision again under the lock.
            conn.execution_options(**{READ_ONLY: True})
            _refuse_other_encodings(conn, self.url)
            current = _revision(conn)
        refuse_unknown_revision(current)
        return current, SCHEMA_HEAD

    def upgrade(self) -> None:
        """Bring the schema to the code's head revision, in one transaction.

        Safe when several processes start at once (two daemons, a daemon and a
        ``mailcase db upgrade``): SQLite's ``BEGIN IMMEDIATE`` and PostgreSQL's
        advisory lock let one of them migrate while the others wait, then find
        nothing left to do. A schema newer than the code is refused
        (DatabaseError) and left as it is.
        """
        from alembic import command

        cfg = alembic_config(self.url)
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # Held until this transaction ends. Alembic reads the current
                # revision after the wait, in a statement of its own, so under
                # READ COMMITTED it sees what the process before us committed.
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(UPGRADE_LOCK_KEY)))
            # Read again under the lock: another host may have upgraded the schema
            # past this code since it was opened; alembic would fail on it.
            refuse_unknown_revision(_revision(conn))
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose work is committed on normal exit, rolled back on error."""
        with self._writer, Session(self.engine, expire_on_commit=False) as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise
        self._written()

    @contextmanager
    def writing(self) -> Iterator[sa.Connection]:
        """A Core connection in a write transaction, committed on normal exit."""
        with self._writer, self.engine.begin() as conn:
            yield conn
        self._written()

    @contextmanager
    def writing_if_free(self) -> Iterator[sa.Connection | None]:
        """Like :meth:`writing`, or None at once when another thread of this process writes."""
        lock = self._writer_lock
        if lock is not None and not lock.acquire(blocking=False):
            yield None
            return
        try:
            with self.engine.begin() as conn:
                yield conn
        finally:
            if lock is not None:
                lock.release()
        self._written()

    def _written(self) -> None:
        """A write transaction was committed: let the checkpointer know (SQLite)."""
        if self.checkpointer is not None:
            self.checkpointer.poke()

    @contextmanager
    def connection(self) -> Iterator[sa.Connection]:
        """A Core connection for several transactions (``with conn.begin()`` each).

        Not for SQLite writes: those go through :meth:`writing` (the writer lock).
        """
        with self.engine.connect() as conn:
            yield conn

    @contextmanager
    def reading(self) -> Iterator[sa.Connection]:
        """A Core connection in a read-only transaction: on SQLite it takes no write lock.

        For reads that must not queue behind a writer (delivery reading the
        next notice while ingest holds the lock); nothing written here is kept.
        """
        with self.engine.connect() as conn:
            conn.execution_options(**{READ_ONLY: True})
            with conn.begin():
                yield conn

    @contextmanager
    def read_session(self) -> Iterator[Session]:
        """A session for reads only, in a :meth:`reading` transaction: on SQLite it takes
        no write lock, so listing and showing go on while another process writes (or an
        admin's ``sqlite3`` shell holds the lock). For the read-only commands."""
        with self.reading() as conn, Session(bind=conn, expire_on_commit=False) as session:
            yield session

    def dispose(self) -> None:
        """Close the pooled connections (the store can still be used: it reconnects)."""
        _release(self.engine, self.checkpointer)
        if self.sent_log is not None:
            self.sent_log.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.dispose()


def _connect(engine: Engine, url: str) -> sa.Connection:
    """A connection of ``engine``; ConfigError naming ``database.url`` when the driver
    refuses the URL's options before it even tries to connect.

    psycopg checks a conninfo string itself (``?bogus=1``: "invalid connection option";
    ``?connect_timeout=x``: "bad value") and raises ProgrammingError; SQLAlchemy raises
    ArgumentError for arguments its dialect cannot take; libpq refuses a value it reads
    itself (``?sslmode=verify-ful``, ``?port=99999``) with OperationalError
    (:func:`_refused_option`). All are the admin's to fix:
    as DatabaseError (exit 3) systemd restarted the service for ever. The message names
    no password, neither the URL's nor one given as ``?password=``.
    """
    try:
        return engine.connect()
    except (sa.exc.ProgrammingError, sa.exc.ArgumentError, sa.exc.OperationalError) as exc:
        if isinstance(exc, sa.exc.OperationalError) and not _refused_option(exc):
            raise
        text = error_text(exc)
        try:
            parsed = sa.make_url(url)
        except (SQLAlchemyError, ValueError):  # make_engine read it: not expected
            secrets: list[str] = []
        else:
            given = parsed.query.get("password") or ()  # a str, or a tuple when repeated
            secrets = [str(parsed.password or ""), *([given] if isinstance(given, str) else given)]
        for secret in filter(None, secrets):
            text = text.replace(secret, "***")
        raise ConfigError(
            f"database.url has a connection option the driver refuses: {text}"
        ) from None


# libpq checks the values of some connection options (sslmode, port, gssencmode,
# target_session_attrs...) only when it starts connecting; psycopg then raises
# OperationalError "connection is bad: invalid sslmode value: ...". Other "connection
# is bad" errors (a Unix socket that is not there) are the server's, not the URL's.
_LIBPQ_REFUSED = re.compile(r"connection is bad: (invalid |could not match )")


def _refused_option(exc: sa.exc.OperationalError) -> bool:
    """Whether ``exc`` is libpq refusing a connection option's value (a typo in the URL)."""
    return bool(_LIBPQ_REFUSED.match(str(getattr(exc, "orig", "") or "")))


def _revision(conn: sa.Connection) -> str | None:
    """The alembic revision of ``conn``'s database; None when it has no mailcase tables."""
    if not sa.inspect(conn).has_table("alembic_version"):
        return None
    current = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    return None if current is None else str(current)


def _release(engine: Engine, checkpointer: Checkpointer | None) -> None:
    """Stop ``checkpointer`` and close ``engine``'s pooled connections (:meth:`Store.dispose`,
    or a store dropped without it)."""
    if checkpointer is not None:
        checkpointer.close()  # before the pool: its last connection checkpoints
    engine.dispose()


def table(model: type[SQLModel]) -> sa.Table:
    """``model``'s table, for Core statements on hot paths.

    A Core statement skips the ORM's per-statement work (entity loading,
    synchronisation) and, run with :func:`run`, the session's autoflush; the
    ingest and delivery paths use them where they need no objects back
    (py-spy: the ORM was half of poll CPU).
    """
    return cast(sa.Table, model.__table__)  # type: ignore[attr-defined]


def run(
    session: Session, statement: sa.Executable | Prepared, params: dict[str, Any] | None = None
) -> Any:
    """Execute a Core ``statement`` in ``session``'s transaction, without autoflush.

    The session would flush every pending object first (SQLAlchemy does so for
    Core statements too); callers use this only where the statement does not
    depend on objects added to the session but not yet flushed. A
    :class:`~mailcase.prepared.Prepared` statement runs on the driver's cursor
    and returns a :class:`~mailcase.prepared.DriverResult`.
    """
    if isinstance(statement, Prepared):
        return statement.execute(_connection(session), params or {})
    return _connection(session).execute(statement, params or {})


_CONNECTION = "mailcase_connection"


def _connection(session: Session) -> sa.Connection:
    """``session.connection()``, kept until the session's transaction ends.

    Asking the session costs more than a prepared INSERT (py-spy); the
    connection cannot change within one transaction.
    """
    conn = session.info.get(_CONNECTION)
    if conn is None:
        conn = session.info[_CONNECTION] = session.connection()
    return cast(sa.Connection, conn)


@sa.event.listens_for(Session, "after_transaction_end")
def _forget_connection(session: Session, transaction: Any) -> None:
    if transaction.parent is None:  # the outermost one: its connection goes back to the pool
        session.info.pop(_CONNECTION, None)


_INSERTS: dict[type[SQLModel], Prepared] = {}
_DEFAULTS: dict[type[SQLModel], dict[str, Any]] = {}
_COLUMNS: dict[type[SQLModel], frozenset[str]] = {}
_MANAGERS: dict[type[SQLModel], sa.orm.ClassManager[Any]] = {}


M = TypeVar("M", bound=SQLModel)


def _insert_statement(model: type[SQLModel]) -> Prepared:
    statement = _INSERTS.get(model)
    if statement is None:
        rows = table(model)
        statement = _INSERTS[model] = Prepared(sa.insert(rows).returning(rows.c.id))
    return statement


def insert_row(session: Session, model: type[M], **values: Any) -> M:
    """INSERT a ``model`` row from ``values`` (the model's defaults for the rest); the row.

    The object comes back detached, as if loaded from the database: its id
    set, no change pending, and ``session.add`` of it later saves changes with
    an UPDATE. It is built as SQLAlchemy builds the objects a query loads,
    without SQLModel's constructor, which sets every field through the ORM's
    change tracking: 125 µs for a Case, more than its INSERT. Values are not
    validated (SQLModel does not validate table models either).
    """
    row = _complete(model, values)
    row_id = int(run(session, _insert_statement(model), row).scalar_one())
    manager = _MANAGERS.get(model)
    if manager is None:
        sa.orm.configure_mappers()  # a query does it first; here there may have been none
        manager = _MANAGERS[model] = sa.orm.instrumentation.manager_of_class(model)
    obj: M = manager.new_instance()
    obj.__dict__.update(row, id=row_id)
    sa.orm.make_transient_to_detached(obj)
    return obj


def insert_values(session: Session, model: type[SQLModel], **values: Any) -> int:
    """INSERT a ``model`` row from ``values`` (the model's defaults for the rest); its id.

    For rows the caller needs no object of. Values are not validated: the
    caller passes the types the columns hold.
    """
    return int(run(session, _insert_statement(model), _complete(model, values)).scalar_one())


def _complete(model: type[SQLModel], values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with ``model``'s defaults for the columns they leave out (but the id)."""
    defaults = _DEFAULTS.get(model)
    if defaults is None:
        defaults = _DEFAULTS[model] = {
            name: field.get_default(call_default_factory=True)
            for name, field in model.model_fields.items()
            if name != "id" and not field.is_required()
        }
        _COLUMNS[model] = frozenset(model.model_fields) - {"id"}
    row = defaults | values
    missing = _COLUMNS[model].difference(row)
    if missing:
        raise TypeError(f"{model.__name__} needs {', '.join(sorted(missing))}")
    return row


_COUNTERS = table(FolioCounter)
_BUMP = Prepared(
    sa.update(_COUNTERS)
    .where(_COUNTERS.c.year == sa.bindparam("y"))
    .values(last=_COUNTERS.c.last + 1)
    .returning(_COUNTERS.c.last)
)


def next_folio_number(session: Session, year: int) -> int:
    """Reserve the next folio number for ``year`` inside the caller's transaction.

    The counter row is updated in place, so concurrent writers serialise on it
    (SQLite's write lock; a row lock elsewhere); a rolled-back transaction
    gives its number back, a committed one never repeats.
    """
    updated = run(session, _BUMP, {"y": year}).scalar_one_or_none()
    if updated is not None:
        return int(updated)
    # The year's first folio. Another writer may be inserting the same row right
    # now (PostgreSQL: nothing to lock yet): if it wins, our INSERT fails on the
    # primary key after its commit, and the UPDATE then finds its row. The
    # savepoint keeps the rest of the caller's transaction alive meanwhile.
    try:
        with session.begin_nested():
            session.execute(sa.insert(_COUNTERS).values(year=year, last=1))
    except IntegrityError:
        return int(run(session, _BUMP, {"y": year}).scalar_one())
    return 1


def insert_if_absent(session: Session, row: SQLModel) -> bool:
    """Insert ``row`` unless a row with its key is there already; whether it was inserted.

    In a savepoint: when another instance inserts the same key at the same time,
    losing the race costs only this row, not the caller's transaction.
    """
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:
        return False
    return True


def case_by_folio(session: Session, folio: str, *, for_update: bool = False) -> Case | None:
    """The case with ``folio``; with ``for_update``, its row locked until the transaction ends.

    Lock a case that is about to change (PostgreSQL ``FOR UPDATE``; SQLite's
    transactions already take the one write lock): another instance's change
    committed meanwhile is then read, not overwritten.
    """
    query = select(Case).where(Case.folio == folio)
    if for_update:
        query = query.with_for_update().execution_options(populate_existing=True)
    return session.exec(query).first()


# The messages of a case whose Message-IDs thread a reply into it: what its
# customer, participants and verified agents wrote, and our own notices. Not
# what is kept on a case without being admitted to it (an auto-reply or bounce
# naming its folio, a claim to an agent's address without proof): their ids
# are the sender's choice, and threading on them let a stranger plant an id on
# someone else's case and then reply "to" it.
THREADING_KINDS = ("customer", "agent", "note", "notice")


def case_by_message_ids(session: Session, message_ids: tuple[str, ...]) -> Case | None:
    """The case that received or sent one of ``message_ids`` (earliest id wins), counting
    only the messages it admitted (:data:`THREADING_KINDS`)."""
    if not message_ids:
        return None
    rows = session.exec(
        select(CaseMessage.message_id, CaseMessage.case_id).where(
            col(CaseMessage.message_id).in_(message_ids),
            col(CaseMessage.kind).in_(THREADING_KINDS),
        )
    ).all()
    by_id = {mid: case_id for mid, case_id in rows}
    for mid in message_ids:
        if mid in by_id:
            return session.get(Case, by_id[mid])
    return None


_LEDGER = table(LedgerEntry)
_LEDGER_BY_KEY = Prepared(sa.select(_LEDGER.c.id).where(_LEDGER.c.dedup_key == sa.bindparam("key")))


def ledger_by_key(session: Session, dedup_key: str) -> list[LedgerEntry]:
    """Earlier ledger rows of the same message, oldest first (usually none: one cheap query)."""
    ids = run(session, _LEDGER_BY_KEY, {"key": dedup_key}).scalars().all()
    if not ids:
        return []
    return list(
        session.exec(
            select(LedgerEntry).where(col(LedgerEntry.id).in_(ids)).order_by(col(LedgerEntry.id))
        ).all()
    )


def hashed_key(kind: str, value: str) -> str:
    """A key_values key for ``value`` (a proof, an address), within the column's 64."""
    return f"{kind}:" + hashlib.sha256(value.encode("utf-8")).hexdigest()[:48]


def utcnow() -> datetime:
    """Now, timezone-aware in UTC: what every datetime column stores and returns."""
    return datetime.now(UTC)


def as_utc(value: datetime | None) -> datetime | None:
    """``value`` in UTC (a naive value is taken to be UTC already)."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)
