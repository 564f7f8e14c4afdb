"""Server fixtures: one Dovecot, one SMTP sink and one PostgreSQL per session, reset before
each test; ``db_url`` runs a test on SQLite and on PostgreSQL.

The suite runs on every core (pytest-xdist): a session is one worker's, so each worker has
servers of its own, on free ports and in directories of its own, and no test shares a server
with a test of another worker.

Project-specific fixtures (config builders etc.) belong in tests/helpers.py, not here.
"""

from __future__ import annotations

import itertools
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import Dovecot, Postgres, SmtpSink

from mailcase.store import Store


def pytest_configure(config: pytest.Config) -> None:
    """Let SIGTERM (``timeout``, a cancelled CI job) end the run as Ctrl-C does: through the
    fixtures' teardown, which stops the session's Dovecot and PostgreSQL and removes
    their /dev/shm directories. Python's default for SIGTERM ends the process at once,
    and the servers, started in sessions of their own, lived on."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)


# The users every test starts from; mailboxes resets passwords and mail to this.
MAIL_USERS = ("contacto", "info")


@pytest.fixture(scope="session")
def dovecot() -> Iterator[Dovecot]:
    """A real Dovecot (IMAP on .port, IMAPS on .ssl_port with .ca_file) for the whole session.

    Never skipped: a missing or broken Dovecot fails the run, so CI cannot go green
    without the IMAP tests.
    """
    server = Dovecot(tls=True)
    try:
        server.start()
    except Exception as exc:
        server.close()
        pytest.fail(f"cannot start the test Dovecot: {exc}", pytrace=False)
    yield server
    server.close()


@pytest.fixture
def mailboxes(dovecot: Dovecot) -> Dovecot:
    """The session Dovecot, running, with default passwords and empty mailboxes for each user."""
    if not dovecot.running:  # an earlier test stopped it (outage simulation)
        dovecot.start()
    dovecot.reset_users()
    for user in MAIL_USERS:
        dovecot.clear(user)
    return dovecot


@pytest.fixture(scope="session")
def smtp_sink() -> Iterator[SmtpSink]:
    """SMTP sink for the whole session; advertises AUTH (any credentials) without TLS."""
    sink = SmtpSink(auth=True)
    sink.start()
    yield sink
    sink.stop()


@pytest.fixture
def sink(smtp_sink: SmtpSink) -> SmtpSink:
    """The session SMTP sink, running, with no messages and no pending faults."""
    if not smtp_sink.running:
        smtp_sink.start()
    smtp_sink.clear()
    return smtp_sink


# Every test database is a copy of this one, which is migrated once per session: a copy
# (CREATE DATABASE ... TEMPLATE) takes ~50 ms where running the migrations takes ~10x that.
PG_TEMPLATE = "mailcase_template"
_pg_names = itertools.count(1)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A real PostgreSQL for the whole session, with a migrated template database.

    Never skipped: a missing or broken PostgreSQL fails the run (CI installs Debian's
    postgresql package), so CI cannot go green without the PostgreSQL tests.
    """
    server = Postgres()
    try:
        server.start()
        server.create_database(PG_TEMPLATE)
        Store.open(server.url(PG_TEMPLATE), auto_upgrade=True).dispose()
    except Exception as exc:
        server.close()
        pytest.fail(f"cannot start the test PostgreSQL: {exc}", pytrace=False)
    yield server
    server.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated, empty database for this test: a test using it runs once per backend.

    sqlite: a file under tmp_path (what write_config uses by default); postgresql: a new
    database on the session server, dropped after the test.
    """
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/mailcase.db"
        return
    yield from _fresh_pg_database(request.getfixturevalue("postgres"))


@pytest.fixture
def pg_url(postgres: Postgres) -> Iterator[str]:
    """Like ``db_url``, on PostgreSQL only (a test about PostgreSQL itself)."""
    yield from _fresh_pg_database(postgres)


def _fresh_pg_database(server: Postgres) -> Iterator[str]:
    if not server.running:  # an earlier test stopped it (outage simulation)
        server.start()
    name = f"mailcase_test_{next(_pg_names)}"
    server.create_database(name, template=PG_TEMPLATE)
    yield server.url(name)
    server.drop_database(name)
