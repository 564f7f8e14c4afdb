"""The IMAP adapter: fetch messages above a UID checkpoint, flag what was handled.

Ingestion never looks at ``\\Seen``: a person may have read a customer's mail
in webmail before mailcase polled. What was handled is marked afterwards with
the keyword ``$MailcaseDone`` (when the folder accepts keywords) and ``\\Seen``.
Every failure to reach or read the mailbox becomes :class:`MailboxError`.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import imapclient
from imapclient.exceptions import (
    IllegalStateError,
    IMAPClientAbortError,
    IMAPClientError,
    IMAPClientReadOnlyError,
    LoginError,
    ProtocolError,
)

from mailcase.config import MailboxSettings, tls_context
from mailcase.errors import MailboxError, RefusedForNow
from mailcase.logs import get_logger
from mailcase.oauth import TokenError, TokenProvider, mailbox_tokens

DONE_KEYWORD = b"$MailcaseDone"
SEEN = b"\\Seen"


@dataclass(frozen=True, slots=True)
class FetchedMessage:
    """One message as fetched. For mail over the size limit, ``raw`` holds only
    its beginning and ``spooled`` the whole message, streamed to a file."""

    uid: int
    raw: bytes
    internal_date: datetime | None
    spooled: Path | None = None
    size: int | None = None
    # The server refused to return it (its answer): not mail, a message to quarantine.
    unreadable: str | None = None

    @property
    def full_size(self) -> int:
        return self.size if self.size is not None else len(self.raw)


_MESSAGE_ITEMS = [b"BODY.PEEK[]", b"INTERNALDATE"]  # PEEK: fetching does not set \Seen
STREAM_CHUNK = 4 * 1024 * 1024
HEAD_BYTES = 1024 * 1024  # what is parsed of an oversized message


class ImapMailbox:
    """One logged-in, selected folder. Use as a context manager."""

    def __init__(self, name: str, settings: MailboxSettings) -> None:
        self.name = name
        self.settings = settings
        self.client: Any = None
        self.uidvalidity = 0
        self.message_count = 0
        self.can_keyword = False
        self.read_only = False  # selected with EXAMINE: nothing is flagged
        # UIDs whose temporary refusals have lasted too long (mailcase.refusals):
        # one more refusal makes them unreadable (quarantined) instead of failing the poll.
        self.give_up: frozenset[int] = frozenset()

    def __enter__(self) -> ImapMailbox:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _fail(self, what: str, exc: BaseException) -> MailboxError:
        detail = str(exc) or type(exc).__name__
        return MailboxError(self.name, f"{what} ({detail})")

    def connect(self) -> None:
        """Connect, log in and select the folder; raise MailboxError naming the step."""
        s = self.settings
        where = f"{s.host}:{s.effective_port}"
        # Before connecting: a missing or bad ca_file raises ConfigError naming the key
        # and the file (the daemon backs off on it, `check` shows it, `poll` exits 2),
        # not "cannot connect" as if the server were down.
        context = None
        if s.security != "none":
            context = tls_context(s.ca_file, f"mailboxes.{self.name}.ca_file")
        tokens: TokenProvider | None = None
        token = ""
        if s.auth == "oauth2":
            # The token first: a 30 s token_command should not hold a connection open.
            tokens = mailbox_tokens(self.name, s)
            try:
                token = tokens.token()
            except TokenError as exc:
                raise MailboxError(self.name, f"no OAuth2 token for {s.login} ({exc})") from exc
        # Read before connecting, too: an unreadable password file or credential
        # (ConfigError) then leaves no connection open behind it.
        password = "" if tokens is not None else s.resolved_password() or ""
        try:
            self.client = imapclient.IMAPClient(
                s.host,
                port=s.effective_port,
                ssl=s.security == "tls",
                ssl_context=context if s.security == "tls" else None,
                timeout=s.timeout_seconds,
            )
            # INTERNALDATE with the server's zone: imapclient would otherwise turn
            # it into this host's local time without a zone, which the store reads
            # as UTC (six hours off on a host in America/Mexico_City).
            self.client.normalise_times = False
            if s.security == "starttls":
                self.client.starttls(context)
        except (OSError, IMAPClientError, ssl.SSLError) as exc:
            self.client = None
            raise self._fail(f"cannot connect to {where}", exc) from exc
        if tokens is not None and not self.has_capability("AUTH=XOAUTH2"):
            self.close()
            raise MailboxError(self.name, f"the server at {where} does not offer AUTH=XOAUTH2")
        try:
            if tokens is not None:
                self.client.oauth2_login(s.login, token)
            else:
                self._password_login(s.login, password, where)
        except LoginError as exc:
            self.close()
            if _unavailable(exc):
                # RFC 5530 [UNAVAILABLE]: the server could not check the login
                # now (e.g. it is shutting down); the credentials are not at fault.
                raise MailboxError(
                    self.name, f"cannot connect to {where}: server unavailable, login not checked"
                ) from exc
            if tokens is not None:
                tokens.invalidate()  # revoked or expired early: fetch a new one next time
                raise MailboxError(
                    self.name, f"OAuth2 login refused for {s.login} at {where}"
                ) from exc
            raise MailboxError(self.name, f"login refused for {s.login} at {where}") from exc
        except (OSError, IMAPClientError) as exc:
            self.close()
            raise self._fail(f"login failed at {where}", exc) from exc
        self.read_only = False
        try:
            try:
                info = self.client.select_folder(s.folder)
            except IMAPClientReadOnlyError:
                # The server answered [READ-ONLY] (a shared folder with read rights only,
                # RFC 4314 ACLs; a read-only store): ingestion needs no write, only
                # the UID checkpoint, so it is opened with EXAMINE and never flagged.
                info = self.client.select_folder(s.folder, readonly=True)
                self.read_only = True
        except (OSError, IMAPClientError) as exc:
            self.close()
            raise self._fail(f"cannot open folder {s.folder!r}", exc) from exc
        self.uidvalidity = int(info.get(b"UIDVALIDITY", 0))
        self.message_count = int(info.get(b"EXISTS", 0))
        permanent = info.get(b"PERMANENTFLAGS", ())
        # RFC 3501 7.1: "\*" in PERMANENTFLAGS means new keywords may be created.
        self.can_keyword = not self.read_only and (b"\\*" in permanent or DONE_KEYWORD in permanent)

    def _password_login(self, login: str, password: str, where: str) -> None:
        """LOGIN, or AUTHENTICATE PLAIN for a user name or password that is not ASCII.

        imaplib sends LOGIN's arguments as ASCII (a UnicodeEncodeError otherwise), and
        RFC 3501 leaves their charset undefined; SASL PLAIN (RFC 4616) is defined as
        UTF-8 and imaplib encodes it so. A server without AUTH=PLAIN cannot be given
        such a password: that is a login failure of this mailbox, which backs off.
        """
        if (login + password).isascii():
            self.client.login(login, password)
        elif self.has_capability("AUTH=PLAIN"):
            self.client.plain_login(login, password)
        else:
            self.close()
            raise MailboxError(
                self.name,
                f"cannot log in as {login} at {where}: the password is not ASCII and the "
                "server does not offer AUTH=PLAIN, which would carry it as UTF-8",
            )

    def has_capability(self, name: str) -> bool:
        try:
            return bool(self.client.has_capability(name))
        except (OSError, IMAPClientError):
            return False

    def close(self) -> None:
        if self.client is None:
            return
        try:
            self.client.logout()
        except Exception:  # a dead connection cannot log out; nothing is lost
            with contextlib.suppress(Exception):
                self.client.shutdown()
        self.client = None

    def drop(self) -> None:
        """Close the connection without LOGOUT: for a session in a state where the server
        would not answer one (IDLE not ended), which would wait out ``timeout_seconds``."""
        if self.client is None:
            return
        with contextlib.suppress(Exception):
            self.client.shutdown()
        self.client = None

    def uids_after(self, last_uid: int) -> list[int]:
        """UIDs above ``last_uid``, ascending."""
        if self.message_count == 0:
            # SELECT said the folder is empty: nothing to search. Proton Mail Bridge
            # answers a UID SEARCH in an empty folder with NO ("no such message"),
            # which failed every poll of a folder that agents keep empty.
            return []
        try:
            # RFC 3501 6.4.8: "n:*" always includes the highest UID, even when
            # it is below n, so filter the answer.
            uids = self.client.search(["UID", f"{last_uid + 1}:*"])
        except (OSError, IMAPClientError) as exc:
            raise self._fail("search failed", exc) from exc
        return sorted(int(u) for u in uids if int(u) > last_uid)

    def fetch(
        self, uids: Sequence[int], batch_size: int, sizes: Mapping[int, int] | None = None
    ) -> Iterator[FetchedMessage]:
        """The raw bytes of ``uids`` (BODY.PEEK[]: does not set \\Seen), in batches.

        Each UID comes back once, in order, unless it no longer exists (expunged
        meanwhile: logged ``message_vanished``, not yielded). One the server does
        not return although it still exists comes back ``unreadable``; so does one
        returned empty although ``sizes`` (its RFC822.SIZE) says it is not. A
        temporary refusal (:data:`TEMPORARY_CODES`) raises MailboxError.
        """
        known = sizes or {}
        for start in range(0, len(uids), batch_size):
            batch = list(uids[start : start + batch_size])
            try:
                data = self.client.fetch(batch, _MESSAGE_ITEMS)
            except (OSError, IMAPClientError) as exc:
                self._after_refusal(exc)
                # One message the server cannot read fails the whole batch, poll after
                # poll: Gmail answers NO ("Some messages could not be FETCHed"), Dovecot
                # BYE ("FETCH failed: Internal error occurred") for a damaged mail file.
                # The batch is fetched again one message at a time: the mail before
                # the one refused is ingested, and a temporary refusal names it.
                yield from self._fetch_each(batch, known)
                continue
            yield from self._messages_in(batch, data, known)

    def _fetch_each(
        self, uids: Sequence[int], sizes: Mapping[int, int]
    ) -> Iterator[FetchedMessage]:
        """Fetch ``uids`` one by one; one the server refuses comes back ``unreadable``."""
        for uid in uids:
            try:
                data = self.client.fetch([uid], _MESSAGE_ITEMS)
            except (OSError, IMAPClientError) as exc:
                self._after_refusal(exc)
                refused = self._refused_message(uid, exc)
                if refused is not None:
                    yield refused
                continue
            yield from self._messages_in([uid], data, sizes)

    def _messages_in(
        self, uids: Sequence[int], data: dict[int, Any], sizes: Mapping[int, int]
    ) -> Iterator[FetchedMessage]:
        """The messages of ``uids`` in a FETCH answer, in order (see :meth:`fetch`)."""
        missing = {u for u in uids if data.get(u) is None or data[u].get(b"BODY[]") is None}
        # RFC 3501 6.4.8 allows no data only for a UID that does not exist, but
        # servers leave out mail they cannot read (1&1 answered "OK" alone for an
        # existing message): one SEARCH tells the two apart before any is skipped.
        there = self._still_there(sorted(missing))
        for uid in uids:
            if uid in missing:
                if uid in there:
                    yield self._unreadable(uid, "the server answered the FETCH without it")
                else:
                    self._vanished(uid)
                continue
            item = data[uid]
            raw = bytes(item[b"BODY[]"])
            if not raw and sizes.get(uid, 0) > 0:
                # An empty literal ("BODY[] {0}") for a message the server sized
                # above 0 bytes: a store that lost or cannot read the file
                # (imapsync #280), not an empty message. Empty against non-empty
                # only: Exchange's RFC822.SIZE is an estimate.
                yield self._unreadable(
                    uid, f"the server returned it empty, its size being {sizes[uid]} bytes"
                )
                continue
            yield FetchedMessage(uid=uid, raw=raw, internal_date=item.get(b"INTERNALDATE"))

    def _still_there(self, uids: Sequence[int]) -> set[int]:
        """Which of ``uids`` the folder still holds (one UID SEARCH); MailboxError if it fails."""
        if not uids:
            return set()
        try:
            found = self.client.search(["UID", ",".join(uid_ranges(uids))])
        except (OSError, IMAPClientError) as exc:
            raise self._fail("search failed", exc) from exc
        return {int(u) for u in found} & set(uids)

    def _refused_message(self, uid: int, exc: BaseException) -> FetchedMessage | None:
        """What the server's refusal ``exc`` to FETCH ``uid`` means: None when the message
        is gone (expunged meanwhile), else the message ``unreadable``.

        A temporary refusal (RFC 5530 [UNAVAILABLE], Yahoo's [TEMPFAIL], ...) raises
        RefusedForNow: the poll fails and backs off, nothing is checkpointed past
        the message, and the next poll reads it again. Quarantined, a good
        message would have waited for a person, and its sender for an answer;
        one in :attr:`give_up` (refused for a day already) is quarantined all
        the same, so that the mail after it is read.
        """
        answer = str(exc) or type(exc).__name__
        if _temporary(answer):
            if uid in self.give_up:
                # Refused for now poll after poll: the folder's later mail must not
                # wait on it for good. Quarantined, `messages retry` reads it again.
                return self._unreadable(uid, f"refused for now, poll after poll ({answer})")
            raise RefusedForNow(
                self.name,
                f"fetch of message {uid} refused for now ({answer}); the next poll reads it again",
                uid=uid,
                uidvalidity=self.uidvalidity,
            ) from exc
        # RFC 5530 [EXPUNGEISSUED] (RFC 2180 4.1.2): another session expunged it.
        if "[EXPUNGEISSUED]" in answer.upper() or uid not in self._still_there([uid]):
            self._vanished(uid)
            return None
        return self._unreadable(uid, answer)

    def _after_refusal(self, exc: BaseException) -> None:
        """Go on after a failed FETCH if the server refused it, else raise MailboxError.

        Reconnects when the server ended the session over it (Dovecot's BYE); a
        server that is down, or a folder rebuilt meanwhile, fails the poll as before.
        """
        if not self._refused(exc):
            raise self._fail("fetch failed", exc) from exc
        if isinstance(exc, IMAPClientAbortError):
            validity = self.uidvalidity
            self.close()
            self.connect()
            if self.uidvalidity != validity:
                raise MailboxError(
                    self.name, f"folder {self.settings.folder!r} was rebuilt during the poll"
                ) from exc

    def _refused(self, exc: BaseException) -> bool:
        """Whether ``exc`` is the server's answer to a command: a NO or BAD (imaplib's
        ``error``), or a BYE that ended the session over it (its ``abort``).

        Not a connection that dropped, a socket error or a time-out (the network or
        the server is down), nor a response imapclient could not parse.
        """
        if not isinstance(exc, IMAPClientError) or isinstance(
            exc, ProtocolError | IllegalStateError
        ):
            return False
        if isinstance(exc, IMAPClientAbortError):
            # imaplib raises abort for a BYE and keeps the BYE among the untagged
            # responses; for a dropped connection ("socket error: EOF") there is none.
            imap = getattr(self.client, "_imap", None)
            return imap is not None and bool(imap.untagged_responses.get("BYE"))
        return True

    def _unreadable(self, uid: int, answer: str) -> FetchedMessage:
        get_logger(mailbox=self.name, uid=uid).warning("message_unreadable", error=answer)
        return FetchedMessage(uid=uid, raw=b"", internal_date=None, unreadable=answer)

    def _vanished(self, uid: int) -> None:
        # Expunged by another session (an agent's mail client) since our SEARCH,
        # as a UID SEARCH confirmed. RFC 2180 4.1.3 lets the server leave it out
        # of the FETCH answer or answer it with NIL: Dovecot sends "BODY[] NIL"
        # (and a 1970 INTERNALDATE) with "OK [EXPUNGEISSUED]". Not a message, so
        # not ingested: nothing to keep and nothing to flag.
        get_logger(mailbox=self.name, uid=uid).info("message_vanished")

    def sizes(self, uids: Sequence[int]) -> dict[int, int]:
        """RFC822.SIZE of each of ``uids`` (cheap: no bodies are transferred)."""
        result: dict[int, int] = {}
        for start in range(0, len(uids), 1000):
            batch = list(uids[start : start + 1000])
            try:
                data = self.client.fetch(batch, [b"RFC822.SIZE"])
            except (OSError, IMAPClientError) as exc:
                self._after_refusal(exc)
                # A message whose size the server cannot tell (it must read a damaged
                # file for it) is left out; fetching it then says what is wrong.
                data = {}
                for uid in batch:
                    try:
                        data.update(self.client.fetch([uid], [b"RFC822.SIZE"]))
                    except (OSError, IMAPClientError) as single:
                        self._after_refusal(single)
            for uid, item in data.items():
                result[int(uid)] = int(item.get(b"RFC822.SIZE", 0))
        return result

    def fetch_spooled(self, uid: int, size: int, spool: Path) -> FetchedMessage | None:
        """Stream one large message to ``spool`` in partial fetches; memory stays bounded.

        Returns None, and removes ``spool``, when the message vanished (expunged) meanwhile.
        """
        try:
            return self._stream(uid, size, spool)
        except IMAPClientError as exc:
            spool.unlink(missing_ok=True)
            self._after_refusal(exc)
        try:  # once more: a session the server ended midway is not yet a bad message
            return self._stream(uid, size, spool)
        except IMAPClientError as exc:
            spool.unlink(missing_ok=True)
            self._after_refusal(exc)
            return self._refused_message(uid, exc)

    def _stream(self, uid: int, size: int, spool: Path) -> FetchedMessage | None:
        head = b""
        internal_date: datetime | None = None
        offset = 0
        with spool.open("wb") as out:
            while True:
                section = f"BODY.PEEK[]<{offset}.{STREAM_CHUNK}>".encode()
                try:
                    data = self.client.fetch([uid], [section, b"INTERNALDATE"])
                except OSError as exc:  # the network; an OSError writing the spool is the disk's
                    raise self._fail("fetch failed", exc) from exc
                item = data.get(uid)
                chunk = None
                if item is not None:
                    internal_date = item.get(b"INTERNALDATE", internal_date)
                    chunk = next((v for k, v in item.items() if k.startswith(b"BODY[]")), None)
                if chunk is None or (offset == 0 and not chunk):
                    out.close()
                    spool.unlink(missing_ok=True)
                    return self._not_streamed(uid, size, empty=chunk is not None)
                out.write(chunk)
                if len(head) < HEAD_BYTES:
                    head += chunk[: HEAD_BYTES - len(head)]
                offset += len(chunk)
                if len(chunk) < STREAM_CHUNK:
                    break
        return FetchedMessage(
            uid=uid, raw=head, internal_date=internal_date, spooled=spool, size=offset or size
        )

    def _not_streamed(self, uid: int, size: int, *, empty: bool) -> FetchedMessage | None:
        """A large message the server answered with no data (None when it is gone) or an
        empty first chunk (unreadable: it is over the size limit, so not empty)."""
        if empty:
            return self._unreadable(
                uid, f"the server returned it empty, its size being {size} bytes"
            )
        if uid in self._still_there([uid]):
            return self._unreadable(uid, "the server answered the FETCH without it")
        self._vanished(uid)
        return None

    def mark_done(self, uids: Sequence[int]) -> None:
        """Flag ``uids`` as handled; a failure here loses nothing (cosmetic).

        The UIDs go as ranges (``1:5000,5002``), at most :data:`STORE_RANGES` to a
        STORE: one list of every UID of a large folder made into a line of
        64 KB, which Dovecot refuses at about 13,000 UIDs (RFC 7162 3.2.1.1 asks
        clients to keep lines within 8 KB). A STORE the server refuses (NO, BAD:
        an ACL that allows reading only, say) is logged as ``flags_not_set`` and
        the poll goes on; a connection lost raises MailboxError.
        """
        if not uids or self.read_only:
            return
        flags = [SEEN, DONE_KEYWORD] if self.can_keyword else [SEEN]
        ranges = uid_ranges(uids)
        for start in range(0, len(ranges), STORE_RANGES):
            chunk = ",".join(ranges[start : start + STORE_RANGES])
            try:
                self.client.add_flags(chunk, flags, silent=True)
            except IMAPClientAbortError as exc:
                raise self._fail("cannot set flags", exc) from exc
            except IMAPClientError as exc:
                get_logger(mailbox=self.name).warning("flags_not_set", error=str(exc)[:500])
                return
            except OSError as exc:
                raise self._fail("cannot set flags", exc) from exc

    def unflagged_below(self, last_uid: int) -> list[int]:
        """Handled UIDs (≤ last_uid) still missing our keyword, e.g. after a crash."""
        if not self.can_keyword or last_uid < 1 or self.message_count == 0:
            return []  # an empty folder is not searched: see uids_after
        try:
            uids = self.client.search(["UID", f"1:{last_uid}", "UNKEYWORD", DONE_KEYWORD])
        except (TimeoutError, OSError, IMAPClientError) as exc:
            raise self._fail("search failed", exc) from exc
        return sorted(int(u) for u in uids)


# UID ranges per STORE: a few KB of command line at most, for any folder.
STORE_RANGES = 500


def uid_ranges(uids: Sequence[int]) -> list[str]:
    """``uids`` as IMAP sequence-set ranges, sorted, each ``N`` or ``N:M`` (RFC 3501 9)."""
    ranges: list[str] = []
    ordered = sorted(set(uids))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        ranges.append(str(ordered[i]) if i == j else f"{ordered[i]}:{ordered[j]}")
        i = j + 1
    return ranges


# RFC 5530 response codes (and Yahoo's [TEMPFAIL]) saying a refusal is for now, not for
# good. Not [SERVERBUG]: the server failed on this message (Dovecot's code for its
# internal errors, which a damaged mail file causes); taken for "for now", one such
# message would block every later one of the folder, poll after poll. It is
# quarantined instead (service.fetch_planned fails the poll when nothing after it
# comes back either: the server failing as a whole). Nor [LIMIT]: "ran up against an
# implementation limit" (RFC 5530) gives the same answer for that message every
# time, and the folder would never get past it.
TEMPORARY_CODES = ("[UNAVAILABLE]", "[TEMPFAIL]", "[INUSE]")


def _temporary(answer: str) -> bool:
    """Whether the server's ``answer`` refuses for now: the same command may work later."""
    upper = answer.upper()
    return any(code in upper for code in TEMPORARY_CODES)


def _unavailable(exc: BaseException) -> bool:
    text = str(exc).upper()
    return "[UNAVAILABLE]" in text or "TEMPORARY AUTHENTICATION FAILURE" in text
