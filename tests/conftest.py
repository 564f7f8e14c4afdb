"""Server fixtures: one Dovecot and one SMTP sink per session, reset before each test.

Project-specific fixtures (config builders etc.) belong in tests/helpers.py, not here.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from servers import Dovecot, SmtpSink

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
