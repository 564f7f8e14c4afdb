"""Parse a backlog in a second process, alongside the database work.

Ingest is CPU work in one interpreter: parsing (mail-parser, the ``email``
package) was a sixth of it, and Python runs one thread at a time. When a poll
has a backlog (:data:`MIN_BACKLOG` messages or more) and the machine has a
second core, :class:`ParserProcess` parses the next messages in a child
process (``python -m mailcase.parsing``) while this one writes the current
one: the work of two cores, in the order the messages were fetched.

The child imports the parser alone (about 20 MB, a tenth of a second) and
reads length-prefixed frames on stdin: first the parse options and the blob
directory, then one raw message per frame; it answers each, in order, with
the pickled :class:`~mailcase.inbound.InboundMail` or the exception. It also
writes the message and its attachments to the blob store, as the poll process
would: content-addressed and idempotent, so the poll process's own writes
then find them there (and redo any the child could not write). It ignores SIGINT and
SIGTERM (a stopping daemon finishes the message in hand, which may be waiting
for its parse) and ends when its stdin closes, that is, with its parent.

If the child dies (killed, out of memory, a crash in the parser), a new one
is started and the messages not yet answered are sent again. When a child
dies a second time with the same message at the head of the queue, a new one
is first given a tiny plain message: if it parses that, the message at the
head is the cause and is given back as a
:class:`~mailcase.errors.MessageError` (the caller quarantines it, the poll
goes on, its neighbours are parsed by the new child); if not, or if no child
can be started, the parser process is broken (logged as
``parser_process_unavailable``) and the caller parses everything left itself.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from queue import SimpleQueue
from types import MappingProxyType
from typing import IO, Any, TypeVar

from mailcase.blobs import BlobStore
from mailcase.errors import MessageError, StorageError
from mailcase.inbound import InboundMail, parse_inbound
from mailcase.reasons import Reason

MIN_BACKLOG = 50  # fewer messages are parsed in this process: not worth a child
WINDOW_MESSAGES = 32  # parsed ahead at most this many messages …
WINDOW_BYTES = 16 * 1024 * 1024  # … and this many bytes of raw mail
_FRAME = struct.Struct(">Q")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ParseOptions:
    """The keyword arguments of :func:`~mailcase.inbound.parse_inbound`."""

    web_form_senders: tuple[str, ...] = ()
    max_parts: int = 500
    max_depth: int = 20

    def parse(self, raw: bytes) -> InboundMail:
        return parse_inbound(
            raw,
            web_form_senders=self.web_form_senders,
            max_parts=self.max_parts,
            max_depth=self.max_depth,
        )


Parsed = InboundMail | BaseException  # a parse's outcome, as the caller raises or uses it


def worth_a_process(backlog: int) -> bool:
    """Whether a poll of ``backlog`` messages should parse in a child process."""
    affinity = getattr(os, "sched_getaffinity", None)  # Linux; elsewhere the core count
    cores = len(affinity(0)) if affinity is not None else (os.cpu_count() or 1)
    return backlog >= MIN_BACKLOG and cores > 1


def _write_frame(stream: IO[bytes], payload: bytes) -> None:
    stream.write(_FRAME.pack(len(payload)))
    stream.write(payload)
    stream.flush()


def _read_frame(stream: IO[bytes]) -> bytes | None:
    head = stream.read(_FRAME.size)
    if len(head) < _FRAME.size:
        return None  # the other end is gone
    (size,) = _FRAME.unpack(head)
    payload = stream.read(size)
    return payload if len(payload) == size else None


class _Child:
    """One child process, fed by a thread of its own (so neither side blocks on a full pipe)."""

    def __init__(self, command: Sequence[str], options: ParseOptions, blobs: Path | None) -> None:
        self.process = subprocess.Popen(
            list(command), stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        self._outgoing: SimpleQueue[bytes | None] = SimpleQueue()
        self._outgoing.put(pickle.dumps((options, blobs)))
        self._feeder = threading.Thread(target=self._feed, name="parser-feed", daemon=True)
        self._feeder.start()

    def _feed(self) -> None:
        stdin = self.process.stdin
        assert stdin is not None
        try:
            while (payload := self._outgoing.get()) is not None:
                _write_frame(stdin, payload)
        except OSError:
            pass  # the child died: the reader sees it and starts another
        finally:
            with contextlib.suppress(OSError):
                stdin.close()

    def send(self, raw: bytes, keep: bool) -> None:
        self._outgoing.put(pickle.dumps((raw, keep)))

    def receive(self) -> Parsed | None:
        """The next answer, or None when the child is gone."""
        assert self.process.stdout is not None
        frame = _read_frame(self.process.stdout)
        if frame is None:
            return None
        kind, value = pickle.loads(frame)  # noqa: S301 - from our own child process
        if kind == "error":
            return value  # type: ignore[no-any-return]
        return replace(value, headers=MappingProxyType(value.headers))  # type: ignore[no-any-return]

    def close(self) -> int | None:
        """Stop the child (if it still runs); its exit code."""
        self._outgoing.put(None)  # closes stdin: the child ends …
        if self.process.stdout is not None:
            self.process.stdout.close()  # … at once, if it was answering what is no longer read
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._feeder.join(timeout=5)
        return self.process.returncode


_COMMAND = (sys.executable, "-m", "mailcase.parsing")
# What a working child must parse: told apart from a message that kills it.
_CANARY = b"From: canary@localhost\r\nSubject: canary\r\n\r\ncanary\r\n"


def _log_broken(error: str) -> None:
    from mailcase.logs import get_logger  # the parent only: the child stays light

    get_logger().warning("parser_process_unavailable", error=error)


class ParserProcess:
    """Parses messages in a child process, answering in the order they were sent.

    With ``blobs`` (the storage directory) the child also stores each message
    sent with ``keep`` and its attachments (:class:`~mailcase.blobs.BlobStore`).
    """

    def __init__(
        self,
        options: ParseOptions,
        *,
        blobs: Path | None = None,
        command: Sequence[str] | None = None,
    ) -> None:
        self.options = options
        self.blobs = blobs
        self._command = tuple(command or _COMMAND)
        self._child = _Child(self._command, options, blobs)
        self._waiting: deque[tuple[bytes, bool]] = deque()  # sent, not answered, oldest first
        self._deaths = 0  # of children while the oldest waiting message was at the head
        self.broken = False  # no child works: everything is parsed by the caller

    @property
    def pid(self) -> int:
        return self._child.process.pid

    def send(self, raw: bytes, keep: bool = True) -> None:
        self._waiting.append((raw, keep))
        if not self.broken:
            self._child.send(raw, keep)

    def receive(self) -> Parsed | None:
        """The outcome for the oldest message sent and not yet received.

        None: parse it in this process (the parser process cannot be used).
        """
        if not self._waiting:
            raise RuntimeError("nothing was sent")
        while not self.broken:
            answer = self._child.receive()
            if answer is not None:
                self._waiting.popleft()
                self._deaths = 0
                return answer
            code = self._child.close()
            self._deaths += 1
            if self._deaths >= 2 and self._start(canary=True):
                # It died on this message twice, and a new child reads other mail:
                # the message is the cause.
                self._deaths = 0
                self._waiting.popleft()
                self._resend()
                return MessageError(Reason.PARSER_DIED, exit=str(code))
            if self._deaths < 2 and self._start():
                self._resend()
        self._waiting.popleft()
        return None

    def _start(self, *, canary: bool = False) -> bool:
        """A new child (that parses a tiny message, with ``canary``); False: none works."""
        try:
            self._child = _Child(self._command, self.options, self.blobs)
            if canary:
                self._child.send(_CANARY, False)
                if not isinstance(self._child.receive(), InboundMail):
                    raise OSError(f"it cannot parse a plain message (exit {self._child.close()})")
        except OSError as exc:
            self.broken = True
            _log_broken(str(exc))
            return False
        return True

    def _resend(self) -> None:
        for raw, keep in self._waiting:
            self._child.send(raw, keep)

    def close(self) -> None:
        self._child.close()

    def __enter__(self) -> ParserProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def parse_ahead(
    items: Iterable[T],
    raw_of: Callable[[T], tuple[bytes, bool]],
    parser: ParserProcess | None,
) -> Generator[tuple[T, Parsed | None], None, None]:
    """Each of ``items`` with its parse outcome, in order; None when ``parser`` is None.

    ``raw_of`` gives an item's raw bytes, and whether the child is to store
    them (see :class:`ParserProcess`).

    Keeps up to :data:`WINDOW_MESSAGES` messages (and :data:`WINDOW_BYTES`)
    with the child, so it parses while the caller works on the previous one.
    A caller that stops early leaves the rest unparsed (and unconsumed).
    """
    if parser is None:
        for item in items:
            yield item, None
        return
    window: deque[tuple[T, int]] = deque()
    window_bytes = 0
    source = iter(items)
    exhausted = False
    while True:
        while not exhausted and (
            not window or (len(window) < WINDOW_MESSAGES and window_bytes < WINDOW_BYTES)
        ):
            try:
                item = next(source)
            except StopIteration:
                exhausted = True
                break
            raw, keep = raw_of(item)
            parser.send(raw, keep)
            window.append((item, len(raw)))
            window_bytes += len(raw)
        if not window:
            return
        item, size = window.popleft()
        window_bytes -= size
        yield item, parser.receive()  # None once the parser process is broken


def _store(blobs: BlobStore | None, data: bytes) -> None:
    if blobs is not None:
        # The poll process writes it again, and says why not.
        with contextlib.suppress(OSError, StorageError):
            blobs.put(data)


def _serve(stdin: IO[bytes], stdout: IO[bytes]) -> None:
    first = _read_frame(stdin)
    if first is None:
        return
    parse_options, directory = pickle.loads(first)  # noqa: S301 - from our parent
    blobs = BlobStore(directory) if directory is not None else None
    while (frame := _read_frame(stdin)) is not None:
        raw, keep = pickle.loads(frame)  # noqa: S301 - from our parent
        if keep:
            _store(blobs, raw)  # first, as the poll process does: kept even if unreadable
        try:
            mail = parse_options.parse(raw)
            if keep:
                for attachment in mail.attachments:
                    _store(blobs, attachment.payload)
            answer: tuple[str, Any] = ("ok", replace(mail, headers=dict(mail.headers)))
        except Exception as exc:  # the parent decides what an error means
            answer = ("error", exc)
        try:
            payload = pickle.dumps(answer)
        except Exception:  # an exception that does not pickle: its words only
            bad = answer[1]
            error = MessageError(Reason.UNEXPECTED, error=f"{type(bad).__name__}: {bad}")
            payload = pickle.dumps(("error", error))
        try:
            _write_frame(stdout, payload)
        except OSError:
            return  # the parent stopped listening (it is closing us)


def main() -> None:
    """The child: serve parse requests until stdin closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _serve(sys.stdin.buffer, sys.stdout.buffer)


if __name__ == "__main__":
    main()
