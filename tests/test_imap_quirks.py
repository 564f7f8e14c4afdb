"""IMAP servers that answer otherwise than Dovecot: each quirk played by a small proxy in
front of the real Dovecot, which answers chosen commands itself and forwards the rest.

The quirks are real servers' (named at each test): a FETCH answered with no data for an
existing message, a temporary NO, an empty literal for a message that is not empty,
untagged data before IDLE's continuation, a SEARCH refused in an empty folder. None may
lose a customer's mail, flag it as handled without its having been, or keep a good
message in quarantine.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog
from helpers import NOTIFY, Cli, mail, write_config
from servers import Dovecot, SmtpSink

from mailcase.config import load_settings
from mailcase.idle import IdleWatcher

pytestmark = pytest.mark.integration

DONE = b"$MailcaseDone"
SEEN = b"\\Seen"


# --- the proxy ---------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """What the proxy does with one command: ``instead`` is sent to the client in place of
    the server's answer (the command is not forwarded); ``before`` is sent to the client
    first, and the command then forwarded."""

    instead: bytes | None = None
    before: bytes | None = None


# A command line (with its connection's number, from 1) -> what to do, or None: forward it.
Rule = Callable[[int, bytes], Answer | None]


class ImapProxy:
    """Forwards IMAP between a client and Dovecot, except what ``rule`` answers itself.
    ``commands`` records every command line as (connection number, line)."""

    def __init__(self, upstream_port: int, rule: Rule) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.rule = rule
        self.commands: list[tuple[int, bytes]] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = [self._listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def connections(self) -> int:
        return len({number for number, _ in self.commands})

    def _accept(self) -> None:
        number = 0
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            number += 1
            server = socket.create_connection(self.upstream)
            self._sockets += [client, server]
            lock = threading.Lock()
            threading.Thread(
                target=self._to_server, args=(number, client, server, lock), daemon=True
            ).start()
            threading.Thread(
                target=self._to_client, args=(server, client, lock), daemon=True
            ).start()

    def _to_server(
        self, number: int, client: socket.socket, server: socket.socket, lock: threading.Lock
    ) -> None:
        lines = client.makefile("rb")
        try:
            while line := lines.readline():
                self.commands.append((number, line))
                answer = self.rule(number, line)
                if answer is not None and answer.before is not None:
                    with lock:
                        client.sendall(answer.before)
                if answer is not None and answer.instead is not None:
                    with lock:
                        client.sendall(answer.instead)
                    continue
                server.sendall(line)
                literal = re.search(rb"\{(\d+)\+?\}\r\n$", line)
                if literal:
                    server.sendall(lines.read(int(literal.group(1))))
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                server.shutdown(socket.SHUT_WR)

    def _to_client(
        self, server: socket.socket, client: socket.socket, lock: threading.Lock
    ) -> None:
        try:
            while data := server.recv(65536):
                with lock:
                    client.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_WR)


def _body_fetch(line: bytes, uid: int) -> bytes | None:
    """The tag of ``line`` if it is a FETCH of message ``uid``'s body (alone or in a batch)."""
    match = re.match(rb"(\S+) UID FETCH (\S+) \(BODY\.PEEK\[\]", line)
    if match and str(uid).encode() in match.group(2).split(b","):
        return match.group(1)
    return None


@pytest.fixture
def proxied(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink
) -> Iterator[Callable[..., tuple[Path, ImapProxy]]]:
    """Make a config whose contacto mailbox is read through an :class:`ImapProxy`."""
    proxies: list[ImapProxy] = []

    def make(
        rule: Rule, *, notify: bool = True, extra: str = "", mailbox: str = "", poll: str = ""
    ) -> tuple[Path, ImapProxy]:
        """``mailbox``, ``poll``: lines added to [mailboxes.contacto], [poll]."""
        proxy = ImapProxy(mailboxes.port, rule)
        proxies.append(proxy)
        config = write_config(tmp_path, mailboxes, sink, notify=notify, extra=extra)
        text = config.read_text().replace("[poll]\n", f"[poll]\n{poll}", 1)
        # contacto's port line is the first with Dovecot's port.
        text = text.replace(f"port = {mailboxes.port}\n", f"port = {proxy.port}\n{mailbox}", 1)
        config.write_text(text)
        return config, proxy

    yield make
    for proxy in proxies:
        proxy.close()


def _ledger(cli: Cli) -> dict[int, dict[str, Any]]:
    return {r["uid"]: r for r in cli.json("messages", "list") if r["mailbox"] == "contacto"}


def _quarantine_notices(sink: SmtpSink, uid: int) -> list[str]:
    """Bodies of the quarantine notices agents.notify got about message ``uid``."""
    bodies = []
    for received in sink.messages:
        if received.rcpt_tos != [NOTIFY]:
            continue
        body = received.message.get_body(("plain",))
        text = body.get_content() if body is not None else ""
        if "cuarentena" in text and f"UID {uid})" in text:
            bodies.append(text)
    return bodies


def _customers(count: int, body: str = "Hola, desde ayer no tengo internet.") -> list[bytes]:
    return [
        mail(sender=f"cliente{i}@example.com", subject=f"Sin internet {i}", body=body)
        for i in range(count)
    ]


def _fetch_answered(uid: int, answer: Callable[[bytes], bytes]) -> tuple[Rule, dict[str, bool]]:
    """A proxy rule answering the FETCH of ``uid``'s body with ``answer(tag)`` instead of
    the server while ``glitch["on"]``; the rule and its switch ``glitch``."""
    glitch = {"on": True}

    def rule(number: int, line: bytes) -> Answer | None:
        tag = _body_fetch(line, uid)
        if tag and glitch["on"]:
            return Answer(instead=answer(tag))
        return None

    return rule, glitch


# --- a FETCH answered with no data for an existing message (1&1) ----------------------


def test_an_existing_message_left_out_of_a_fetch_is_quarantined_not_skipped(
    proxied: Any, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    # 1&1 answered the FETCH of an existing message with "OK" and no data (OfflineIMAP
    # #429). Taken for "expunged elsewhere", it was skipped for good, and the crash
    # repair then flagged it \Seen $MailcaseDone: no ledger row, no acknowledgement,
    # nobody told, and in webmail it looked handled.
    uids = mailboxes.append_many("contacto", _customers(3))
    rule, glitch = _fetch_answered(uids[1], lambda tag: tag + b" OK Fetch completed.\r\n")

    config, _ = proxied(rule, poll="batch_size = 1\n")
    cli = Cli(config, capsys)
    cli.poll()
    cli.poll()
    rows = _ledger(cli)
    assert rows[uids[1]]["disposition"] == "quarantined"
    assert "could not return it" in rows[uids[1]]["reason"]
    assert [rows[u]["disposition"] for u in (uids[0], uids[2])] == ["new_case", "new_case"]
    flags = mailboxes.fetch_flags("contacto")
    assert DONE not in flags[uids[1]] and SEEN not in flags[uids[1]]
    assert len(_quarantine_notices(sink, uids[1])) == 1
    glitch["on"] = False  # the server returns it again: `messages retry` fetches it
    code, out, err = cli("messages", "retry", str(uids[1]), "--mailbox", "contacto")
    assert code == 0 and "new_case" in out, err
    assert "cliente1@example.com" in {m.rcpt_tos[0] for m in sink.messages}


def test_the_crash_repair_flags_only_messages_the_ledger_holds(
    proxied: Any, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    # A server that hides a message from FETCH and from SEARCH alike: it is taken for
    # expunged and the checkpoint moves past it. The repair of flags lost to a crash
    # flagged every unflagged UID below the checkpoint, this one too: it looked
    # handled in webmail although mailcase never read it.
    uids = mailboxes.append_many("contacto", _customers(3))

    def rule(number: int, line: bytes) -> Answer | None:
        tag = _body_fetch(line, uids[1])
        if tag:
            return Answer(instead=tag + b" OK Fetch completed.\r\n")
        search = re.match(rb"(\S+) UID SEARCH UID (\d+)\r\n$", line)
        if search and int(search.group(2)) == uids[1]:
            return Answer(instead=b"* SEARCH\r\n" + search.group(1) + b" OK Search completed.\r\n")
        return None

    config, _ = proxied(rule, poll="batch_size = 1\n")
    cli = Cli(config, capsys)
    cli.poll()
    cli.poll()  # the repair runs on the UIDs below the checkpoint
    assert uids[1] not in _ledger(cli)
    flags = mailboxes.fetch_flags("contacto")
    assert DONE not in flags[uids[1]] and SEEN not in flags[uids[1]]
    assert all(DONE in flags[u] for u in (uids[0], uids[2]))


# --- a temporary NO, and NO for a message expunged meanwhile (RFC 5530) ---------------


@pytest.mark.parametrize("code", ["[UNAVAILABLE]", "[TEMPFAIL]"])
def test_a_temporary_refusal_fails_the_poll_and_the_next_poll_reads_the_message(
    proxied: Any, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, code: str
) -> None:
    # A server's refusal for now (RFC 5530 [UNAVAILABLE], Yahoo's [TEMPFAIL]) was taken
    # for a damaged message: quarantined for a person to retry, no acknowledgement.
    uids = mailboxes.append_many("contacto", _customers(3))
    busy = f" NO {code} Server busy, try again later\r\n".encode()
    rule, glitch = _fetch_answered(uids[1], lambda tag: tag + busy)

    config, _ = proxied(rule)
    cli = Cli(config, capsys)
    status, _, err = cli("poll")
    assert status == 1
    assert f"fetch of message {uids[1]} refused for now" in err and code in err
    rows = _ledger(cli)
    assert {u: r["disposition"] for u, r in rows.items()} == {uids[0]: "new_case"}
    glitch["on"] = False
    cli.poll()
    assert [r["disposition"] for r in _ledger(cli).values()] == ["new_case"] * 3
    acked = {m.rcpt_tos[0] for m in sink.messages if m.rcpt_tos != [NOTIFY]}
    assert acked == {f"cliente{i}@example.com" for i in range(3)}
    assert _quarantine_notices(sink, uids[1]) == []


@pytest.mark.parametrize("stuck", [1, 2], ids=["mail-after-it", "last-in-the-folder"])
def test_a_message_refused_for_now_for_a_day_is_quarantined_so_later_mail_is_read(
    proxied: Any, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, stuck: int
) -> None:
    # A message the server refused "for now" poll after poll held back every later
    # message of the folder for good: no case, no acknowledgement, and no way for an
    # admin to get past it but deleting the customer's mail on the server.
    from datetime import datetime, timedelta

    from sqlmodel import select

    from mailcase import refusals
    from mailcase.models import KeyValue
    from mailcase.store import Store, utcnow

    uids = mailboxes.append_many("contacto", _customers(3))

    def rule(number: int, line: bytes) -> Answer | None:
        tag = _body_fetch(line, uids[stuck])
        return Answer(instead=tag + b" NO [UNAVAILABLE] Server busy\r\n") if tag else None

    config, _ = proxied(rule)
    cli = Cli(config, capsys)
    for _ in range(2):  # within the day: the poll fails and reads it again
        status, _, err = cli("poll")
        assert status == 1 and "refused for now" in err
        assert set(_ledger(cli)) == set(uids[:stuck])
    store = Store.open(load_settings(config).database.url, auto_upgrade=False)

    def age_refusal(times: int | None = None) -> None:
        """Move the first refusal a day back (and set how many there were)."""
        with store.transaction() as session:
            (refusal,) = [
                kv for kv in session.exec(select(KeyValue)) if kv.key.startswith("refused:")
            ]
            validity, uid, _since, counted = refusal.value.split(" ")
            assert int(uid) == uids[stuck]
            day_ago = (utcnow() - timedelta(hours=25)).isoformat()
            refusal.value = f"{validity} {uid} {day_ago} {times or counted}"
            session.add(refusal)

    try:
        with store.read_session() as session:
            (refusal,) = [
                kv for kv in session.exec(select(KeyValue)) if kv.key.startswith("refused:")
            ]
        _validity, _uid, since, counted = refusal.value.split(" ")
        # The first refusal's time is kept, and each is counted: the second poll did
        # not start the day over.
        assert utcnow() - datetime.fromisoformat(since) < timedelta(minutes=5)
        assert counted == "2"
        # A day since the first, but only a few polls (a daemon stopped for the weekend
        # after one refusal): the message is read again, not given up.
        age_refusal()
        assert cli("poll")[0] == 1
        age_refusal(times=refusals.TIMES)
    finally:
        store.dispose()
    cli.poll()
    rows = _ledger(cli)
    assert {u: r["disposition"] for u, r in rows.items()} == {
        u: "quarantined" if u == uids[stuck] else "new_case" for u in uids
    }
    assert "refused for now, poll after poll" in rows[uids[stuck]]["reason"]
    assert len(_quarantine_notices(sink, uids[stuck])) == 1
    acked = {m.rcpt_tos[0] for m in sink.messages if m.rcpt_tos != [NOTIFY]}
    assert acked == {f"cliente{i}@example.com" for i in range(3) if i != stuck}


def test_a_refusal_for_now_is_forgotten_once_a_poll_gets_past_it(
    proxied: Any, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    # A message refused yesterday and read today must not count towards a later refusal.
    from sqlmodel import select

    from mailcase.models import KeyValue
    from mailcase.store import Store

    uids = mailboxes.append_many("contacto", _customers(2))
    rule, glitch = _fetch_answered(uids[1], lambda tag: tag + b" NO [UNAVAILABLE] Server busy\r\n")

    config, _ = proxied(rule)
    cli = Cli(config, capsys)
    assert cli("poll")[0] == 1
    glitch["on"] = False
    cli.poll()
    store = Store.open(load_settings(config).database.url, auto_upgrade=False)
    try:
        with store.read_session() as session:
            keys = [kv.key for kv in session.exec(select(KeyValue))]
    finally:
        store.dispose()
    assert not [k for k in keys if k.startswith("refused:")]


@pytest.mark.parametrize(
    "answer",
    [
        # RFC 5530's own example for a FETCH of an expunged message.
        b"NO [EXPUNGEISSUED] Some of the requested messages no longer exist",
        # Gmail's answer, without a code: a UID SEARCH tells that it is gone.
        b"NO Some messages could not be FETCHed (Failure)",
    ],
)
def test_a_message_expunged_while_it_is_fetched_is_gone_not_quarantined(
    proxied: Any, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, answer: bytes
) -> None:
    uids = mailboxes.append_many("contacto", _customers(3))

    def rule(number: int, line: bytes) -> Answer | None:
        tag = _body_fetch(line, uids[1])
        if not tag:
            return None
        # An agent deletes it (spam) as the poll fetches it.
        with mailboxes.client("contacto") as other:
            other.select_folder("INBOX")
            if other.search(["UID", str(uids[1])]):
                other.delete_messages([uids[1]])
                other.expunge()
        return Answer(instead=tag + b" " + answer + b"\r\n")

    config, _ = proxied(rule)
    cli = Cli(config, capsys)
    cli.poll()
    rows = _ledger(cli)
    assert {u: r["disposition"] for u, r in rows.items()} == {
        uids[0]: "new_case",
        uids[2]: "new_case",
    }
    assert _quarantine_notices(sink, uids[1]) == []


def test_a_message_the_server_cannot_return_is_told_to_agents(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    # Every other quarantine tells agents.notify; one the server could not return
    # waited, silently, for someone to look at `status`.
    from test_imap_faults import _damage

    cli = Cli(write_config(tmp_path, mailboxes, sink, notify=True), capsys)
    uids = mailboxes.append_many("contacto", _customers(3))
    _damage(mailboxes, "contacto", b"Sin internet 1")
    cli.poll()
    assert _ledger(cli)[uids[1]]["disposition"] == "quarantined"
    [notice] = _quarantine_notices(sink, uids[1])
    assert "no lo pudo entregar" in notice and "(sin remitente)" in notice
    # Nothing of it is kept: the notice does not say the whole message is.
    assert "no hay copia guardada" in notice and "completo está guardado" not in notice


@pytest.mark.parametrize(
    ("answer", "temporary"),
    [
        ("fetch failed: [UNAVAILABLE] Server busy", True),
        ("fetch failed: [TEMPFAIL] try later", True),
        # RFC 5530: an implementation limit answers the same every time; waiting for
        # it stopped the folder at that message for good (own-diff review).
        ("fetch failed: [LIMIT] message too large to return", False),
        ("fetch failed: [inuse] mailbox locked", True),
        # Dovecot's answer for a damaged mail file: not for now, or it blocks the folder.
        ("fetch failed: [SERVERBUG] Internal error occurred", False),
        ("fetch failed: Some messages could not be FETCHed", False),
    ],
)
def test_which_refusals_are_temporary(answer: str, temporary: bool) -> None:
    from mailcase.imap import TEMPORARY_CODES, _temporary

    assert _temporary(answer) is temporary
    assert "[SERVERBUG]" not in TEMPORARY_CODES


# --- an empty literal for a message that is not empty (imapsync #280) -----------------


def _answered_empty(uid: int, answer: bytes) -> tuple[Any, dict[str, bool]]:
    """A proxy rule answering the FETCH of ``uid``'s body with ``answer`` (formatted with
    the UID and the tag) while ``glitch["on"]``; the rule and its switch."""
    return _fetch_answered(uid, lambda tag: answer % (uid, tag))


def test_an_empty_answer_for_a_message_that_is_not_empty_is_fetched_again_by_retry(
    proxied: Any, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    # "BODY[] {0}" for a 5 KB message was taken for the whole message: quarantined as
    # "no sender address", its empty copy stored, and `messages retry` read that copy.
    uids = mailboxes.append_many("contacto", _customers(3, body="x" * 5000))
    rule, glitch = _answered_empty(
        uids[1],
        b'* 2 FETCH (UID %d INTERNALDATE "28-Nov-2026 00:00:00 +0000" '
        b"BODY[] {0}\r\n)\r\n%s OK Fetch completed.\r\n",
    )
    config, _ = proxied(rule, poll="batch_size = 1\n")
    cli = Cli(config, capsys)
    cli.poll()
    row = _ledger(cli)[uids[1]]
    assert row["disposition"] == "quarantined"
    assert "returned it empty" in row["reason"] and "no sender" not in row["reason"]
    assert len(_quarantine_notices(sink, uids[1])) == 1
    glitch["on"] = False
    code, out, err = cli("messages", "retry", str(uids[1]), "--mailbox", "contacto")
    assert code == 0 and "new_case" in out, err


def test_an_empty_answer_for_a_large_message_is_not_the_message(
    proxied: Any, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    # The same over limits.max_message_bytes, where the message is streamed in parts.
    uids = mailboxes.append_many("contacto", _customers(3, body="y" * 20000))
    rule, glitch = _answered_empty(
        uids[1], b"* 2 FETCH (UID %d BODY[]<0> {0}\r\n)\r\n%s OK done\r\n"
    )
    config, _ = proxied(rule, extra="[limits]\nmax_message_bytes = 10000\n")
    cli = Cli(config, capsys)
    cli.poll()
    row = _ledger(cli)[uids[1]]
    assert row["disposition"] == "quarantined" and "returned it empty" in row["reason"]
    glitch["on"] = False
    code, out, err = cli("messages", "retry", str(uids[1]), "--mailbox", "contacto")
    assert code == 0 and "new_case" in out, err


# --- untagged data before IDLE's "+" (iCloud) -----------------------------------------


def _watch(config: Path, **kw: Any) -> tuple[IdleWatcher, threading.Event, list[float]]:
    settings = load_settings(config).mailboxes["contacto"]
    seen: list[float] = []
    stop = threading.Event()
    watcher = IdleWatcher("contacto", settings, lambda _: seen.append(time.monotonic()), stop, **kw)
    watcher.start()
    return watcher, stop, seen


def _wait(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


def test_idle_takes_untagged_data_before_its_continuation_in_its_stride(
    proxied: Any, mailboxes: Dovecot
) -> None:
    # iCloud sends pending FETCH FLAGS before IDLE's "+" (acme_email #50); imapclient's
    # idle() raised on it: after every new mail the watcher failed, waited out a LOGOUT
    # the server in IDLE never answered, and lost the EXISTS.
    def rule(number: int, line: bytes) -> Answer | None:
        if re.match(rb"\S+ IDLE\r\n", line):
            return Answer(before=b"* 1 FETCH (FLAGS (\\Seen $MailcaseDone))\r\n")
        return None

    config, proxy = proxied(rule)
    with structlog.testing.capture_logs() as logs:
        watcher, stop, seen = _watch(config)
        try:
            assert watcher.ready.wait(10)
            assert _wait(lambda: len(seen) == 1, 5)  # the poll on connecting
            for i in range(3):
                sent = time.monotonic()
                mailboxes.append("contacto", mail(subject=f"IDLE {i}"))
                assert _wait(lambda n=i + 2: len(seen) >= n, 5), f"no news of message {i}"
                assert seen[i + 1] - sent < 2.0
                time.sleep(0.2)
        finally:
            stop.set()
            watcher.join(10)
    assert [e for e in logs if e["event"] in ("idle_failed", "idle_crashed")] == []
    assert proxy.connections() == 1


def test_new_mail_announced_by_noop_or_before_idle_continues_is_reported(
    proxied: Any, mailboxes: Dovecot
) -> None:
    # An EXISTS that comes before IDLE's "+", or in the answer to the NOOP sent before
    # it, is new mail like one during IDLE.
    counts = {"IDLE": 0, "NOOP": 0}

    def rule(number: int, line: bytes) -> Answer | None:
        match = re.match(rb"(\S+) (IDLE|NOOP)\r\n", line)
        if not match:
            return None
        command = match.group(2).decode()
        counts[command] += 1
        if command == "IDLE" and counts["IDLE"] == 2:  # the first renewal
            return Answer(before=b"* 7 EXISTS\r\n")
        if command == "NOOP" and counts["NOOP"] == 3:  # after the news above
            return Answer(instead=b"* 8 EXISTS\r\n" + match.group(1) + b" OK NOOP done\r\n")
        return None

    config, _ = proxied(rule)
    watcher, stop, seen = _watch(config, renew_seconds=1.0)
    try:
        assert _wait(lambda: len(seen) >= 3, 10), seen  # on connecting, then both
        assert counts["IDLE"] >= 2
    finally:
        stop.set()
        watcher.join(10)


def test_a_failed_idle_drops_its_connection_without_waiting_for_a_logout(
    proxied: Any, mailboxes: Dovecot
) -> None:
    # After IDLE failed the server was still in IDLE: the LOGOUT sent then went
    # unanswered for timeout_seconds before the watcher could reconnect.
    def rule(number: int, line: bytes) -> Answer | None:
        if number == 1 and re.match(rb"\S+ IDLE\r\n", line):
            return Answer(before=b"what imaplib cannot read\r\n")
        return None

    config, proxy = proxied(rule, mailbox="timeout_seconds = 8\n")
    started = time.monotonic()
    watcher, stop, _seen = _watch(config)
    try:
        # Reconnected after the 1 s back-off, not after 8 s spent on a LOGOUT.
        assert _wait(lambda: proxy.connections() >= 2, 5)
        assert time.monotonic() - started < 5
        assert watcher.ready.wait(5)
    finally:
        stop.set()
        watcher.join(10)
    first = [line for number, line in proxy.commands if number == 1]
    assert not any(b" LOGOUT" in line for line in first), first


# --- UID SEARCH refused in an empty folder (Proton Mail Bridge) -----------------------


def test_an_empty_folder_is_not_searched(
    proxied: Any, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    # Proton Mail Bridge answers a UID SEARCH in an empty folder with NO (gluon PR #478):
    # a support INBOX that agents keep empty failed every poll.
    def rule(number: int, line: bytes) -> Answer | None:
        match = re.match(rb"(\S+) UID SEARCH ", line)
        if match:
            with mailboxes.client("contacto") as other:
                empty = other.select_folder("INBOX", readonly=True)[b"EXISTS"] == 0
            if empty:
                return Answer(instead=match.group(1) + b" NO no such message\r\n")
        return None

    config, _ = proxied(rule, notify=False)
    cli = Cli(config, capsys)
    cli.poll()  # empty from the start
    [uid] = mailboxes.append_many("contacto", _customers(1))
    cli.poll()
    assert _ledger(cli)[uid]["disposition"] == "new_case"
    with mailboxes.client("contacto") as other:  # an agent moves it out: empty again,
        other.select_folder("INBOX")  # with a checkpoint above 0 (the flag repair's search)
        other.delete_messages([uid])
        other.expunge()
    cli.poll()
