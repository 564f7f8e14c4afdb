"""IMAP IDLE (RFC 2177): learn about new mail within a second instead of at the next poll.

One :class:`IdleWatcher` thread per mailbox keeps its own connection in IDLE
and calls ``on_new_mail(mailbox)`` when the server reports new messages
(``EXISTS``); the caller then polls that mailbox as usual. The watcher never
fetches or changes anything, so it cannot lose or duplicate mail: polling on
``poll.interval_seconds`` stays the safety net if a notification is missed.

IDLE is re-issued every 25 minutes, under the 29 minutes after which RFC 2177
lets servers drop an idle client. A dropped connection reconnects with
back-off (1 s doubling to 5 min; back to 1 s only after IDLE worked for a
minute, not at a mere login), and never before the mailbox's own retry
time while its polls are failing (``hold``), so an outage costs no extra
logins. One outage logs one ``idle_failed`` (its first failure) and one
``idle_resumed``; the mailbox's ``mailbox_failed`` events carry the rest. An
outage of the database alone is not the mailbox's: the daemon's ``hold``
stays 0 then, and the IDLE connection is kept. A server without IDLE ends
the watcher.

Each IDLE is preceded by a NOOP, whose answer carries what the server had
pending (flag changes the poll's own connection made; an ``EXISTS`` there is
new mail). Untagged data that still comes before IDLE's ``+`` is read, not
taken for a refusal. A connection whose IDLE failed is dropped, not logged
out of (a server still in IDLE would not answer the LOGOUT).
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from imapclient.exceptions import IMAPClientError

from mailcase.config import MailboxSettings
from mailcase.errors import ConfigError, MailboxError
from mailcase.imap import ImapMailbox
from mailcase.logs import get_logger

RENEW_SECONDS = 25 * 60
# What a server outage, a refused login or an unreadable password file raise:
# logged as a failure; anything else is a bug and logged with its traceback.
_EXPECTED = (MailboxError, ConfigError, IMAPClientError, OSError)
CHECK_SECONDS = 1.0  # how often the thread looks at the stop flag while idling
MAX_BACKOFF = 300.0
HEALTHY_SECONDS = 60.0  # of working IDLE before a new outage's back-off starts at 1 s again


class IdleWatcher(threading.Thread):
    """Watches one mailbox with IDLE until ``stop`` is set."""

    def __init__(
        self,
        name: str,
        settings: MailboxSettings,
        on_new_mail: Callable[[str], None],
        stop: threading.Event,
        *,
        renew_seconds: float = RENEW_SECONDS,
        hold: Callable[[], float] = lambda: 0.0,
    ) -> None:
        super().__init__(name=f"idle:{name}", daemon=True)
        self.mailbox = name
        self.settings = settings
        self.on_new_mail = on_new_mail
        self.stop = stop
        self.renew_seconds = renew_seconds
        self.hold = hold  # seconds until the mailbox's next retry while its polls fail
        self.supported: bool | None = None  # known after the first login
        self.ready = threading.Event()  # set once IDLE is running (for tests and logs)
        self.log = get_logger(mailbox=name)
        self._backoff = 1.0  # seconds before the next reconnect after a failure
        self._failing = False  # an outage is being reported (idle_failed logged)

    def run(self) -> None:
        first = True
        while not self.stop.is_set():
            held = self.hold()
            if held > 0:
                # The mailbox's polls still fail for the mailbox's sake (their retry
                # moves later with each): connecting now logged idle_resumed and then,
                # at the first look at the hold, idle_failed again, and kept IDLE off
                # for the back-off after the mailbox had recovered.
                if self.stop.wait(min(held, MAX_BACKOFF)):
                    break
                continue
            wait = self._backoff
            try:
                with ImapMailbox(self.mailbox, self.settings) as box:
                    # Asked of the connection itself: ImapMailbox.has_capability says
                    # "no" for a connection that failed, which would end IDLE for good.
                    self.supported = bool(box.client.has_capability("IDLE"))
                    if not self.supported:
                        self.log.info("idle_unsupported")
                        self.ready.set()
                        return
                    if first:
                        # Mail that arrived between the daemon's first poll and
                        # this SELECT is never announced to it: poll once now
                        # so it does not wait for the next interval. (After a
                        # reconnect the back-off schedule decides instead.)
                        first = False
                        self.on_new_mail(self.mailbox)
                    try:
                        self._watch(box)
                    except BaseException:
                        # The session may still be in IDLE: a LOGOUT would go
                        # unanswered until timeout_seconds (a minute, by default).
                        box.drop()
                        raise
            except Exception as exc:  # never let the thread die silently
                self.ready.clear()
                wait = max(self._backoff, self.hold())
                if not self._failing:  # one event per outage
                    if isinstance(exc, _EXPECTED):
                        self.log.warning("idle_failed", error=str(exc), retry_in=round(wait, 1))
                    else:
                        self.log.exception("idle_crashed", retry_in=round(wait, 1))
                self._failing = True
            if self.stop.wait(wait):
                break
            self._backoff = min(self._backoff * 2, MAX_BACKOFF)

    def _idling(self, since: float) -> None:
        """IDLE answered as it should (a wait, or news) since ``since``.

        A login alone proves nothing: a server that refuses IDLE (``NO [LIMIT]``)
        or drops it at once accepted the login too, and resetting the back-off
        there had the watcher log in again every second, for ever. The back-off
        starts again from 1 s only after :data:`HEALTHY_SECONDS` of working IDLE.
        """
        if time.monotonic() - since >= HEALTHY_SECONDS:
            self._backoff = 1.0

    def _watch(self, box: ImapMailbox) -> None:
        client = box.client
        # The folder's size as SELECT gave it, then as every EXISTS and EXPUNGE since
        # (NOOP's, IDLE's, DONE's) left it: counted from NOOPs alone it stayed above the
        # truth after agents moved mail away during IDLE, and a NOOP's "* 9 EXISTS" (new
        # mail) under a stale 10 was no news: that mail waited a whole poll interval.
        known = box.message_count
        while not self.stop.is_set():
            # What the server had pending comes with the NOOP's answer, not before
            # IDLE's "+" (where iCloud sends it). New mail in it is news already;
            # an EXISTS that repeats the count the watcher knows is not (a server may
            # send one with every NOOP, and each would have been a poll, for ever).
            _text, pending = client.noop()
            grown, known = _grown(pending, known)
            if grown:
                self.on_new_mail(self.mailbox)
                continue
            early = _start_idle(client)  # raises when the server refuses IDLE
            known = _grown(early, known)[1]
            new_mail = _reports_new_mail(early)
            self.ready.set()
            if self._failing:  # the server accepted IDLE: the outage is over
                self._failing = False
                self.log.info("idle_resumed")
            started = time.monotonic()
            quick_empties = 0
            try:
                while (
                    not new_mail
                    and not self.stop.is_set()
                    and time.monotonic() - started < self.renew_seconds
                ):
                    if self.hold() > 0:
                        # The mailbox's polls are failing: this connection may be
                        # half-open (a server that died without closing it reads
                        # as quiet forever), so drop it and reconnect with them.
                        raise ConnectionError("the mailbox cannot be polled: IDLE reconnects")
                    asked = time.monotonic()
                    responses = client.idle_check(timeout=CHECK_SECONDS)
                    known = _grown(responses, known)[1]
                    if _reports_new_mail(responses):
                        self._idling(started)
                        new_mail = True
                        break
                    # A connection the server closed reads as "nothing" at once,
                    # again and again, instead of raising: without this check the
                    # thread would spin on the dead socket.
                    if not responses and time.monotonic() - asked < CHECK_SECONDS / 10:
                        quick_empties += 1
                        if quick_empties >= 3:
                            raise ConnectionError("the server closed the IDLE connection")
                    else:
                        quick_empties = 0
                        self._idling(started)
            finally:
                with contextlib.suppress(IMAPClientError, OSError):
                    # News that arrived while IDLE was being ended comes with DONE's answer.
                    _text, late = client.idle_done()
                    known = _grown(late, known)[1]
                    new_mail = new_mail or _reports_new_mail(late)
            if new_mail:
                self.on_new_mail(self.mailbox)


_COUNT_LINE = re.compile(rb"\* (\d+) (EXISTS|EXPUNGE)\b", re.IGNORECASE)


def _start_idle(client: Any) -> list[tuple[object, ...]]:
    """Send IDLE and wait for its ``+`` continuation; return the ``EXISTS`` and
    ``EXPUNGE`` responses of the untagged data that came before it, parsed as
    ``idle_check`` parses them. Raises IMAPClientError when the server refuses IDLE
    (a tagged NO or BAD).

    imapclient's ``idle()`` takes any line before the ``+`` for a refusal, but RFC
    3501 5.3 lets a server send untagged data at any time, and iCloud sends
    pending FETCH FLAGS there: IDLE then failed after every new mail, and the
    EXISTS that came with it was lost. This does what ``idle()`` does through
    the same imaplib calls, reading such lines instead; ``idle_check`` and
    ``idle_done`` work on the IDLE it started.
    """
    imap = client._imap
    tag = imap._command("IDLE")
    client._idle_tag = tag  # the command idle_done() ends
    counts: list[tuple[object, ...]] = []
    while True:
        line = imap._get_response()  # None for the continuation
        if line is None:
            return counts
        if imap.tagged_commands.get(tag):
            raise IMAPClientError(f"IDLE refused: {line!r}")
        if match := _COUNT_LINE.match(line):
            counts.append((int(match[1]), match[2].upper()))


def _grown(responses: list[tuple[object, ...]], known: int) -> tuple[bool, int]:
    """Whether ``responses`` announce more messages than ``known`` (``* N EXISTS``
    beyond it, each ``* N EXPUNGE`` taking one off first), and the count they leave."""
    grown = False
    for response in responses:
        if len(response) < 2 or not isinstance(response[0], int):
            continue
        if response[1] == b"EXPUNGE":
            known = max(known - 1, 0)
        elif response[1] == b"EXISTS":
            grown = grown or response[0] > known
            known = response[0]
    return grown, known


def _reports_new_mail(responses: list[tuple[object, ...]]) -> bool:
    # RFC 3501 7.3.1: "* N EXISTS" announces the new message count.
    return any(len(r) > 1 and r[1] == b"EXISTS" for r in responses)
