"""The systemd notification protocol (``sd_notify(3)``), spoken directly.

Under ``Type=notify`` systemd passes ``$NOTIFY_SOCKET``: a Unix datagram socket,
either a file path (``/run/systemd/notify``) or an abstract name written with a
leading ``@``. A notification is one datagram of newline-separated
``NAME=value`` fields (``READY=1``, ``STATUS=...``, ``WATCHDOG=1``,
``STOPPING=1``). That is the whole protocol; libsystemd is not needed for it.

Outside systemd (no ``$NOTIFY_SOCKET``) every call is a cheap no-op, so the
daemon calls :func:`notify` unconditionally.
"""

from __future__ import annotations

import os
import socket

from mailcase.logs import get_logger

# A stuck receiver must not stall the caller (a poll thread, the watchdog job).
SEND_TIMEOUT_SECONDS = 2.0


def _address() -> str | bytes | None:
    """The socket address from $NOTIFY_SOCKET, or None when it is absent or unusable."""
    value = os.environ.get("NOTIFY_SOCKET", "")
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        # Abstract namespace (Linux): the '@' stands for a leading NUL byte.
        return b"\0" + os.fsencode(value[1:])
    # Unset, empty, or a kind we do not speak (systemd 254+ also knows "vsock:").
    return None


def notify(*fields: str) -> bool:
    """Send ``fields`` (e.g. ``"READY=1"``, ``"STATUS=..."``) to systemd as one datagram.

    Returns True when the datagram was sent, False when not running under
    systemd's notification socket or when sending failed. Never raises; a
    failure is logged with the OS error only (the socket path and the fields
    are not logged).
    """
    address = _address()
    if address is None or not fields:
        return False
    # A newline inside a value would start a new field: flatten it.
    payload = "\n".join(" ".join(f.splitlines()) for f in fields).encode("utf-8")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(SEND_TIMEOUT_SECONDS)
            sock.sendto(payload, address)
    except OSError as exc:
        get_logger().warning("sd_notify_failed", error=exc.strerror or type(exc).__name__)
        return False
    return True


def watchdog_interval() -> float | None:
    """How often to send ``WATCHDOG=1``, in seconds; None when no watchdog is asked for.

    systemd sets ``$WATCHDOG_USEC`` (the ``WatchdogSec=`` timeout) and
    ``$WATCHDOG_PID``; when the PID is set and is not this process the watchdog
    is someone else's. The period returned is half the timeout, as
    ``sd_watchdog_enabled(3)`` recommends, so one late ping is not fatal.
    """
    pid = os.environ.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 1_000_000 / 2
