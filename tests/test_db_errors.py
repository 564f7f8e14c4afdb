"""Which database errors mean "the database is unavailable" (the poll fails and retries)
rather than "this message cannot be stored" (it is quarantined), and how they read."""

from __future__ import annotations

import sqlite3

import psycopg
import pytest
import sqlalchemy as sa
import structlog

from mailcase.outbox import log_run_failure
from mailcase.store import error_text, is_unavailable


def wrapped(orig: Exception, *, invalidated: bool = False) -> sa.exc.DBAPIError:
    """``orig`` as SQLAlchemy raises it from a statement (OperationalError, IntegrityError…)."""
    return sa.exc.DBAPIError.instance(
        "INSERT INTO ledger (mailbox) VALUES (%(mailbox)s)",
        {"mailbox": "contacto"},
        orig,
        sqlite3.Error if isinstance(orig, sqlite3.Error) else psycopg.Error,
        hide_parameters=True,
        connection_invalidated=invalidated,
    )


@pytest.mark.parametrize(
    ("orig", "unavailable"),
    [
        (psycopg.errors.lookup("57P01")("terminating connection due to administrator command"),
         True),  # a restart
        (psycopg.errors.lookup("57P03")("the database system is starting up"), True),
        (psycopg.errors.lookup("53100")("could not extend file: No space left on device"), True),
        (psycopg.errors.lookup("08006")("connection failure"), True),
        (psycopg.OperationalError("connection failed: Connection refused"), True),  # no SQLSTATE
        (psycopg.InterfaceError("the connection is closed"), True),
        # The message's own content: quarantined, or it would stop its mailbox for good.
        (psycopg.errors.lookup("54000")("index row size 3016 exceeds maximum 2704"), False),
        (psycopg.errors.lookup("23505")("duplicate key value violates unique constraint"),
         False),
        (psycopg.errors.lookup("22021")("invalid byte sequence for encoding UTF8"), False),
        (sqlite3.OperationalError("database is locked"), True),
        (sqlite3.OperationalError("database or disk is full"), True),
        (sqlite3.OperationalError("disk I/O error"), True),
        (sqlite3.OperationalError('near "x": syntax error'), False),
        (sqlite3.IntegrityError("UNIQUE constraint failed: cases.folio"), False),
        (sqlite3.InterfaceError("Error binding parameter 1"), False),
    ],
)  # fmt: skip
def test_unavailable_means_the_database_not_the_message(orig: Exception, unavailable: bool) -> None:
    assert is_unavailable(wrapped(orig)) is unavailable


def test_a_connection_sqlalchemy_found_dropped_is_unavailable() -> None:
    orig = psycopg.errors.lookup("54000")("whatever the server said last")
    assert is_unavailable(wrapped(orig, invalidated=True))


def test_error_text_is_the_database_words_on_one_line() -> None:
    orig = psycopg.OperationalError(
        'connection failed: connection to server at "127.0.0.1", port 5432 failed:\n'
        "FATAL:  the database system is shutting down"
    )
    text = error_text(wrapped(orig))
    assert text == (
        'connection failed: connection to server at "127.0.0.1", port 5432 failed: '
        "FATAL: the database system is shutting down"
    )
    assert len(error_text(wrapped(sqlite3.OperationalError("x" * 1000)))) == 300


def test_a_delivery_run_failing_on_the_database_is_one_line_and_a_bug_keeps_its_traceback() -> None:
    unavailable = wrapped(psycopg.errors.lookup("57P01")("terminating connection"))
    with structlog.testing.capture_logs() as logs:
        for exc in (unavailable, RuntimeError("a bug")):
            try:
                raise exc
            except Exception as caught:
                log_run_failure(caught)
    failed, crashed = logs
    assert failed == {
        "event": "outbox_run_failed", "error": "terminating connection", "log_level": "warning",
    }  # fmt: skip
    assert crashed["event"] == "outbox_run_crashed" and crashed["exc_info"] is True
