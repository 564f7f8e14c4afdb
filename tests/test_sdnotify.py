"""sd_notify spoken over a real Unix datagram socket, and ``mailcase run`` under it.

The unit tests bind the socket systemd would (a path, or an abstract name) and read
exactly what :func:`mailcase.sdnotify.notify` sent. The integration tests start the
daemon as a process with ``$NOTIFY_SOCKET`` and ``$WATCHDOG_USEC`` pointing at such a
socket, against the real Dovecot and SMTP fixtures, and check READY=1, STATUS=,
WATCHDOG=1 and STOPPING=1 as systemd would receive them.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import structlog
from helpers import INFO, DaemonProcess, debug_log, mail, write_config
from servers import Dovecot, SmtpSink

from mailcase.sdnotify import notify, watchdog_interval


class NotifySocket:
    """What systemd listens on: a bound AF_UNIX datagram socket; keeps every datagram read."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.received: list[str] = []

    def recv(self, timeout: float = 5.0) -> str:
        self.sock.settimeout(timeout)
        data = self.sock.recv(4096).decode("utf-8")
        self.received.append(data)
        return data

    def drain(self) -> list[str]:
        """Every datagram waiting now, without blocking."""
        new: list[str] = []
        self.sock.settimeout(0)
        while True:
            try:
                data = self.sock.recv(4096).decode("utf-8")
            except BlockingIOError:
                break
            self.received.append(data)
            new.append(data)
        return new

    def wait_until(
        self, match: Callable[[str], bool], timeout: float = 20.0, after: int = 0
    ) -> int:
        """Index (in ``received``) of the first datagram from ``after`` on that matches."""
        deadline = time.monotonic() + timeout
        while True:
            for i in range(after, len(self.received)):
                if match(self.received[i]):
                    return i
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"nothing matched within {timeout} s; got {self.received}")
            with contextlib.suppress(TimeoutError):
                self.recv(timeout=min(left, 0.5))

    def wait_for(self, field: str, timeout: float = 20.0, after: int = 0) -> int:
        """Index of the first datagram from ``after`` on that carries ``field`` (``READY=1``)."""
        return self.wait_until(lambda d: field in d.split("\n"), timeout, after)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySocket]:
    """A path socket in tmp_path, named in $NOTIFY_SOCKET (inherited by child processes)."""
    path = tmp_path / "notify"
    listener = NotifySocket(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield listener
    listener.close()


def fields(datagram: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in datagram.split("\n"))


# --- notify() -------------------------------------------------------------------------


def test_notify_sends_the_fields_as_one_datagram(notify_socket: NotifySocket) -> None:
    assert notify("READY=1", "STATUS=last poll 12:00:03 CST: contacto ok (3 new)") is True
    assert notify_socket.recv() == "READY=1\nSTATUS=last poll 12:00:03 CST: contacto ok (3 new)"
    assert notify("WATCHDOG=1") is True
    assert notify_socket.recv() == "WATCHDOG=1"


def test_notify_to_an_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"mailcase-test-{uuid.uuid4().hex}"
    listener = NotifySocket(b"\0" + name.encode())
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify("STOPPING=1") is True
        assert listener.recv() == "STOPPING=1"
    finally:
        listener.close()


def test_a_newline_in_a_value_cannot_start_another_field(notify_socket: NotifySocket) -> None:
    assert notify("STATUS=info failed\nREADY=1") is True
    assert notify_socket.recv() == "STATUS=info failed READY=1"


def test_notify_outside_systemd_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False
    for unusable in ("", "@", "relative/path", "vsock:2:1234"):
        monkeypatch.setenv("NOTIFY_SOCKET", unusable)
        assert notify("READY=1") is False


def test_a_missing_or_dead_socket_returns_false_without_raising(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "no-such-socket"
    monkeypatch.setenv("NOTIFY_SOCKET", str(missing))
    with structlog.testing.capture_logs() as logs:
        assert notify("READY=1") is False
    assert [e["event"] for e in logs] == ["sd_notify_failed"]
    assert str(missing) not in repr(logs) and "READY" not in repr(logs)

    dead = tmp_path / "dead"  # the file is there, nobody reads it (ECONNREFUSED)
    NotifySocket(str(dead)).close()
    monkeypatch.setenv("NOTIFY_SOCKET", str(dead))
    assert notify("WATCHDOG=1") is False


# --- watchdog_interval() --------------------------------------------------------------


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        (None, None, None),  # no WatchdogSec=
        ("2000000", None, 1.0),  # half the timeout: the recommended ping period
        ("300000000", "self", 150.0),
        ("2000000", "other", None),  # the watchdog belongs to another process
        ("2000000", "garbage", None),
        ("0", None, None),
        ("-5", None, None),
        ("soon", None, None),
    ],
)
def test_watchdog_interval(
    monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None, expected: float | None
) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    if usec is not None:
        monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid == "self":
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    elif pid == "other":
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    elif pid is not None:
        monkeypatch.setenv("WATCHDOG_PID", pid)
    assert watchdog_interval() == expected


# --- the daemon under a notify socket -------------------------------------------------


def _wait_for_pings(listener: NotifySocket, count: int, after: int, timeout: float) -> None:
    found = after
    for _ in range(count):
        found = listener.wait_for("WATCHDOG=1", timeout=timeout, after=found) + 1


@pytest.mark.integration
def test_daemon_speaks_sd_notify(
    tmp_path: Path,
    mailboxes: Dovecot,
    sink: SmtpSink,
    notify_socket: NotifySocket,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")  # WatchdogSec=2s: a ping every second
    config = write_config(tmp_path, mailboxes, sink)
    debug_log(config)  # info's empty poll is logged at debug
    mailboxes.append("contacto", mail(subject="Sin servicio"))
    with DaemonProcess(config, tmp_path / "daemon.log") as daemon:
        ready_at = notify_socket.wait_for("READY=1")
        ready = fields(notify_socket.received[ready_at])
        # READY=1 only after the first poll of both mailboxes, with their results.
        assert {e["mailbox"] for e in daemon.events("mailbox_polled")} == {"contacto", "info"}
        assert ready["STATUS"].startswith("last poll ")
        # Both mailboxes polled; the IDLE watcher's first-connect poll may
        # already have replaced contacto's "(1 new)" with "(0 new)".
        assert re.search(
            r" [0-9:]{8} CST: contacto ok \([01] new\), info ok \(0 new\)$", ready["STATUS"]
        )
        assert not any("READY=1" in d for d in notify_socket.received[:ready_at])

        _wait_for_pings(notify_socket, 3, after=ready_at, timeout=5)

        # New mail: the next poll (IDLE's, or the schedule's) reports it in STATUS=.
        mailboxes.append("info", mail(subject="Otro reporte", to=INFO))
        notify_socket.wait_until(
            lambda d: fields(d).get("STATUS", "").endswith("info ok (1 new)"),
            after=ready_at + 1,
        )

        sent_before_stop = len(notify_socket.received)
        assert daemon.stop() == 0, daemon.tail()
    notify_socket.drain()
    after_stop = notify_socket.received[sent_before_stop:]
    stopping = [fields(d) for d in after_stop if "STOPPING=1" in d.split("\n")]
    assert stopping and stopping[0]["STATUS"] == "stopping on SIGTERM", after_stop
    assert sum("READY=1" in d for d in notify_socket.received) == 1


@pytest.mark.integration
def test_a_hung_poll_withholds_the_watchdog_pings(
    tmp_path: Path,
    mailboxes: Dovecot,
    sink: SmtpSink,
    notify_socket: NotifySocket,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    # "info" points at a server that accepts the connection and never greets: its
    # poll hangs (for the IMAP timeout, 60 s) until the listener is closed.
    silent = socket.create_server(("127.0.0.1", 0))
    config = write_config(tmp_path, mailboxes, sink)
    head, info = config.read_text().split("[mailboxes.info]")
    info = info.replace(f"port = {mailboxes.port}", f"port = {silent.getsockname()[1]}", 1)
    config.write_text(f"{head}[mailboxes.info]{info}")
    try:
        with DaemonProcess(config, tmp_path / "daemon.log") as daemon:
            daemon.wait_for_event("watchdog_withheld", timeout=10)
            notify_socket.drain()
            pings = notify_socket.received.count("WATCHDOG=1")
            withheld = daemon.wait_for_event("watchdog_withheld", count=3, timeout=10)
            notify_socket.drain()
            assert notify_socket.received.count("WATCHDOG=1") == pings  # no ping while hung
            assert withheld[0]["mailboxes"] == ["info"]
            # The first round is not over, so the daemon is not ready yet.
            assert not any("READY=1" in d for d in notify_socket.received)

            silent.close()  # the hung connection is reset: the poll fails and ends
            ready = fields(notify_socket.received[notify_socket.wait_for("READY=1")])
            assert ready["STATUS"].endswith(" CST: contacto ok (0 new), info failed")
            _wait_for_pings(notify_socket, 2, after=len(notify_socket.received), timeout=5)
            assert daemon.stop() == 0, daemon.tail()
    finally:
        silent.close()
