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


def configure(level: str = "info", fmt: str = "auto") -> None:
    """Configure structlog once for the process; logs go to stderr."""
    use_json = fmt == "json" or (fmt == "auto" and not _terminal())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _drop_secrets,
            structlog.processors.format_exc_info if use_json else structlog.dev.set_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )


def get_logger(**context: Any) -> Any:
    return structlog.get_logger("mailcase").bind(**context)
