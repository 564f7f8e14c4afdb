"""structlog set-up: readable lines on a terminal, JSON lines otherwise.

Logs go to stderr, so that stdout carries only a command's output (``--json``
stays parseable). ``format = "auto"`` writes readable lines only when both
stdout and stderr are terminals: JSON when stdout is not one (a service, a
pipe, a redirect, as the issue asks) and also when stderr alone is redirected
to a file, where lines are meant for tools.

Events name what they are about (mailbox, uid, message_id, folio, disposition)
and never carry passwords or message bodies: callers pass identifiers only,
and :func:`_drop_secrets` removes any key that looks like a secret as a last
line of defence.

Other libraries log through the standard ``logging`` module (APScheduler,
SQLAlchemy, psycopg, imapclient, and Python's warnings). Their records at
WARNING and above (at ``log.level``, when that is higher) come out as events
of the same form, with the library's logger name in ``logger``, instead of
plain text between the JSON lines (a log shipper reading the journal as JSON
would stop at those). Below WARNING they are dropped, whatever ``log.level``
says: imapclient's and SQLAlchemy's debug records carry protocol lines,
message bodies and SQL parameters. A library's exception is one line
(``error``) unless ``--debug`` asks for tracebacks. APScheduler's warning that a
tick was skipped because the mailbox's poll still runs is dropped: one poll per
mailbox at a time is intended (:class:`_SkippedTick`). mail-parser is silenced in
:mod:`mailcase.inbound`: its records describe the message's parts and quote
its headers and file names.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_SECRET_KEYS = ("password", "secret", "token", "authorization")


def _drop_secrets(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> Any:
    for key in list(event):
        if any(s in key.lower() for s in _SECRET_KEYS):
            event[key] = "***"
    return event


class _Stderr:
    """Writes each event to whatever ``sys.stderr`` is at that moment.

    structlog's PrintLogger keeps the stream it was made with; a stream that is
    replaced later (a test harness capturing output) would then be written
    after it was closed.
    """

    def msg(self, message: str) -> None:
        stream = sys.stderr
        stream.write(message + "\n")
        stream.flush()

    log = debug = info = warn = warning = err = error = critical = exception = fatal = msg


def _stderr_logger(*_args: Any) -> _Stderr:
    return _Stderr()


def _terminal() -> bool:
    """Whether a person is watching: both stdout and stderr are terminals."""
    return all(stream is not None and stream.isatty() for stream in (sys.stdout, sys.stderr))


def _strip_event(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> Any:
    """A library's message without the newline some end with (``warnings`` does)."""
    if isinstance(event.get("event"), str):
        event["event"] = event["event"].strip()
    return event


def _exception_in_one_line(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> Any:
    """A library's exception as ``error``: its type and words on one line, no traceback.

    SQLAlchemy's pool logs "Exception during reset or similar" with a traceback
    when the database drops a connection: expected trouble, which mailcase
    reports in one line of its own. Under ``--debug`` the traceback is kept.
    """
    exc_info = event.pop("exc_info", None)
    exc = exc_info[1] if isinstance(exc_info, tuple) else exc_info
    if isinstance(exc, BaseException):
        event["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    return event


class _StderrHandler(logging.Handler):
    """A ``logging`` handler writing to whatever ``sys.stderr`` is at that moment (see _Stderr)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            _Stderr().msg(self.format(record))
        except Exception:  # logging's own contract: a failed record never stops the program
            self.handleError(record)


# Other libraries' records at or above this level are shown; below, never (module docstring).
THIRD_PARTY_LEVEL = logging.WARNING


class _SkippedTick(logging.Filter):
    """Drops APScheduler's "Execution of job ... skipped: maximum number of running
    instances reached": at most one poll per mailbox runs at a time on purpose
    (``max_instances = 1`` in :mod:`mailcase.daemon`), so a poll longer than
    ``poll.interval_seconds`` made one WARNING per tick of something intended.
    APScheduler's other records pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            isinstance(record.msg, str)
            and record.msg.startswith("Execution of job")
            and "maximum number of running instances reached" in record.msg
        )


def _drop_skipped_ticks() -> None:
    """Install :class:`_SkippedTick` on APScheduler's scheduler logger, once."""
    scheduler = logging.getLogger("apscheduler.scheduler")
    if not any(isinstance(f, _SkippedTick) for f in scheduler.filters):
        scheduler.addFilter(_SkippedTick())


def _bridge_stdlib(renderer: Any, pre_chain: list[Any], level: int, *, tracebacks: bool) -> None:
    """Send the ``logging`` module's records at ``level`` or above through ``renderer``.

    Replaces the bridge of an earlier call.
    """
    handler = _StderrHandler(level)  # the handler's level too: a library may lower its own
    ours = [structlog.stdlib.add_logger_name, _strip_event]
    if not tracebacks:
        ours.append(_exception_in_one_line)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*ours, *pre_chain],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)  # warnings.warn(...) as a "py.warnings" event
    _drop_skipped_ticks()


def configure(level: str = "info", fmt: str = "auto") -> None:
    """Configure structlog once for the process; logs go to stderr.

    Records of the ``logging`` module at WARNING and above (at ``level``, when
    that is higher) are rendered the same way (module docstring).
    """
    threshold = logging.getLevelNamesMapping()[level.upper()]
    use_json = fmt == "json" or (fmt == "auto" and not _terminal())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        # plain_traceback: structlog's default with rich installed prints every frame's
        # local variables, and those hold passwords, tokens and customers' mail.
        else structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
    )
    chain: list[Any] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _drop_secrets,
        structlog.processors.format_exc_info if use_json else structlog.dev.set_exc_info,
    ]
    _bridge_stdlib(
        renderer, chain, max(threshold, THIRD_PARTY_LEVEL), tracebacks=threshold <= logging.DEBUG
    )
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, *chain, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )


def get_logger(**context: Any) -> Any:
    return structlog.get_logger("mailcase").bind(**context)
