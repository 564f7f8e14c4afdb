"""Other libraries' log records: shown as events of mailcase's own form, never as plain text.

The integration side (every line a poll writes, parser process included, is
JSON) is in tests/test_logs.py.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

from mailcase import logs
from mailcase.inbound import parse_inbound

CALENDAR = b"""From: Ana <ana@example.com>
To: contacto@example.com
Subject: Cita
Message-ID: <cal@example.com>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="b1"

--b1
Content-Type: text/plain; charset=utf-8

Hola, necesito una cita.
--b1
Content-Type: text/calendar; charset=utf-8

BEGIN:VCALENDAR
SUMMARY:Revision del modem de la calle Juarez 12
END:VCALENDAR
--b1--
"""


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """The root logger and warnings are put back after the test (logs.configure changes them)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)


@pytest.fixture
def bridged(restore_logging: None) -> None:
    """logs.configure as the CLI calls it with --debug."""
    logs.configure("debug", "json")


def _events(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_a_library_warning_is_a_json_event_naming_its_logger(bridged: None, capsys: Any) -> None:
    logging.getLogger("apscheduler.scheduler").warning(
        "Run time of job %r was missed by %s", "poll contacto", "0:00:05"
    )
    (event,) = _events(capsys.readouterr().err)
    assert event["event"] == "Run time of job 'poll contacto' was missed by 0:00:05"
    assert event["logger"] == "apscheduler.scheduler"
    assert event["level"] == "warning"
    assert "timestamp" in event


def test_library_records_below_warning_are_dropped_even_at_debug(
    bridged: None, capsys: Any
) -> None:
    # imapclient's debug records are protocol lines: message bodies, never for logs.
    imap = logging.getLogger("imapclient.protocol")
    imap.setLevel(logging.DEBUG)  # a library lowering its own level changes nothing
    try:
        imap.debug("< * 1 FETCH (BODY[] {42} ...")
        logging.getLogger("apscheduler.scheduler").info("Scheduler started")
    finally:
        imap.setLevel(logging.NOTSET)
    assert capsys.readouterr().err == ""


def test_a_python_warning_is_an_event_too(bridged: None, capsys: Any) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # the suite's own filter makes warnings errors
        warnings.warn("a deprecated setting", UserWarning, stacklevel=1)
    (event,) = _events(capsys.readouterr().err)
    assert event["logger"] == "py.warnings"
    assert "UserWarning: a deprecated setting" in event["event"]


def test_mail_parser_says_nothing_about_a_message(
    bridged: None, capsys: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # mail-parser warns "Email content 'calendar' not handled" for this one.
    mail = parse_inbound(CALENDAR)
    assert "necesito una cita" in mail.text
    assert not [r for r in caplog.records if r.name.startswith("mailparser")]
    assert capsys.readouterr().err == ""


def test_a_quieter_log_level_quiets_libraries_too(restore_logging: None, capsys: Any) -> None:
    logs.configure("error", "json")
    logging.getLogger("apscheduler.scheduler").warning("Run time of job was missed")
    logging.getLogger("apscheduler.executors").error("Error running job")
    (event,) = _events(capsys.readouterr().err)
    assert event["event"] == "Error running job"


def _log_a_failed_reset() -> None:
    try:
        raise ConnectionError("server closed the connection\nunexpectedly")
    except ConnectionError:
        logging.getLogger("sqlalchemy.pool.impl.QueuePool").error(
            "Exception during reset or similar", exc_info=True
        )


def test_a_library_exception_is_one_line_without_debug(restore_logging: None, capsys: Any) -> None:
    logs.configure("info", "json")
    _log_a_failed_reset()
    err = capsys.readouterr().err
    (event,) = _events(err)
    assert event["error"] == "ConnectionError: server closed the connection unexpectedly"
    assert "exception" not in event and "Traceback" not in err


def test_debug_keeps_a_library_exception_traceback(bridged: None, capsys: Any) -> None:
    _log_a_failed_reset()
    (event,) = _events(capsys.readouterr().err)
    assert event["exception"].startswith("Traceback (most recent call last)")
