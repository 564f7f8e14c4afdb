"""Throw-away mail and database servers on 127.0.0.1 for the tests and the demo script.

- `Dovecot`: a real, rootless Dovecot 2.3 IMAP server in its own directory, started with
  `dovecot -F` as a child process that we own (and reap).
- `SmtpSink`: an in-process aiosmtpd server that records every message and can inject
  faults (temporary/permanent errors, slow DATA).
- `Postgres`: a real PostgreSQL (Debian's package) initialised in its own directory and
  started as a child process that we own (and reap); databases are made per test.

No pytest in here: tests/conftest.py wraps these in fixtures.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import grp
import logging
import math
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from pathlib import Path
from string import Template
from types import TracebackType
from typing import Any, Self, cast

import psycopg
import psycopg.sql
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from imapclient import IMAPClient

HOST = "127.0.0.1"
DEFAULT_USERS: Mapping[str, str] = {"contacto": "contacto-secret", "info": "info-secret"}
# INBOX plus the special-use folders the config auto-creates; clear() empties these and
# deletes every other folder.
DEFAULT_FOLDERS = ("INBOX", "Drafts", "Sent", "Trash", "Junk")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the usual bind-to-0 race applies)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return cast(int, s.getsockname()[1])


def make_self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """Write cert.pem/key.pem for CN=localhost, SAN localhost + 127.0.0.1, valid 7 days.

    The certificate is its own CA: pass the cert path as cafile to ssl.create_default_context().
    An EC key keeps generation at a few milliseconds (RSA-2048 can take a second).
    """
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-nodes", "-days", "7",
         "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


# --------------------------------------------------------------------------------------------
# Dovecot
# --------------------------------------------------------------------------------------------

# Self-contained: it does not include /etc/dovecot/conf.d, so Debian's system settings
# (listen = *, ports 143/993, snakeoil TLS, /run/dovecot) never apply.
_DOVECOT_CONF = Template("""\
protocols = imap
listen = $host
instance_name = mailcase-test-$port

base_dir = $dir/run
state_dir = $dir/state
log_path = $dir/log/dovecot.log
info_log_path = $dir/log/dovecot.log
debug_log_path = $dir/log/dovecot.log
log_timestamp = "%Y-%m-%d %H:%M:%S "
# Failed logins are logged with the reason: handy when a test's login is refused.
auth_verbose = yes
# A failed login is answered after 2 s by default, and anvil's per-IP penalty then delays
# every later login from 127.0.0.1 (2, 4, 8... up to 15 s): a test about a wrong password
# would slow down all the tests after it. No delay, and no penalty (socket mode 0, below).
auth_failure_delay = 0

# Rootless: every process runs as the one unprivileged account that owns $dir. Without
# these, Dovecot wants the "dovecot"/"dovenull" accounts and chroots the login processes
# ("Fatal: fchown() failed for .../run/login: Operation not permitted", exit 89).
default_internal_user = $user
default_internal_group = $group
default_login_user = $user
first_valid_uid = 1
first_valid_gid = 1

# LOGIN without TLS is fine on loopback.
disable_plaintext_auth = no
auth_mechanisms = plain login
ssl = $ssl
$ssl_settings

# Passwords may not contain ":" (field separator). Dovecot stats this file at most once a
# second and reloads it when its mtime (whole seconds) or size changes: see set_password().
passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%n $dir/users
}
userdb {
  driver = passwd-file
  args = username_format=%n $dir/users
  # A userdb uid of 0 is refused even with first_valid_uid = 0: hence the nobody account.
  default_fields = uid=$uid gid=$gid home=$dir/mail/%n
}

mail_location = maildir:~/Maildir
# Test data is throw-away (and on tmpfs): skip fsync for speed.
mail_fsync = never
namespace inbox {
  inbox = yes
  separator = /
  mailbox Drafts {
    auto = subscribe
    special_use = \\Drafts
  }
  mailbox Sent {
    auto = subscribe
    special_use = \\Sent
  }
  mailbox Trash {
    auto = subscribe
    special_use = \\Trash
  }
  mailbox Junk {
    auto = subscribe
    special_use = \\Junk
  }
}

protocol imap {
  # Default is 10 per user+IP: too few for a daemon plus test helpers on one loopback IP.
  mail_max_userip_connections = 50
}

service imap-login {
  chroot =
  inet_listener imap {
    address = $host
    port = $port
  }
  inet_listener imaps {
    address = $host
    port = $ssl_port
    ssl = yes
  }
}
service auth-worker {
  user = $user
}
service anvil {
  chroot =
  unix_listener anvil-auth-penalty {
    mode = 0
  }
}
service imap-urlauth-login {
  inet_listener imap-urlauth {
    port = 0
  }
}
""")


@dataclass(frozen=True)
class _Account:
    name: str
    uid: int
    gid: int
    group: str


def _run_as_account() -> _Account:
    # Dovecot refuses to run its login processes as root, and a passwd-file userdb may not
    # hand out uid 0: as root (CI), run the whole server as nobody instead.
    pw = pwd.getpwnam("nobody") if os.geteuid() == 0 else pwd.getpwuid(os.geteuid())
    return _Account(pw.pw_name, pw.pw_uid, pw.pw_gid, grp.getgrgid(pw.pw_gid).gr_name)


def _dovecot_binary() -> str:
    found = shutil.which("dovecot") or shutil.which("dovecot", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise RuntimeError(
            "dovecot not found (not in PATH, /usr/sbin or /usr/local/sbin): "
            "install Debian's dovecot-imapd (apt-get install -y dovecot-imapd)"
        )
    return found


def _check_passwd_entry(user: str, password: str) -> None:
    # ":" separates passwd-file fields; whitespace would not survive the round trip either.
    if re.search(r"[:\s]", user + password) or not user:
        raise ValueError(f"user names and passwords may not contain ':' or spaces: {user!r}")


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class Managed:
    """A test server that a ``with`` block starts and closes (``close`` is ``stop`` here)."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.stop()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class ServerProcess(Managed):
    """A server run as our child, in its own session, with its files under ``base_dir``.

    Subclasses set ``base_dir``, ``_owns_dir`` and ``_account``, implement ``start``
    (calling :meth:`_spawn`), ``stop`` (calling :meth:`_end`) and ``log_text``.
    """

    base_dir: Path
    _owns_dir: bool
    _account: _Account
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout: float = 30.0) -> None:
        raise NotImplementedError

    def stop(self, fast: bool = False) -> None:
        raise NotImplementedError

    def restart(self, fast: bool = False) -> None:
        """Stop and start again on the same ports, keeping what the server stored."""
        self.stop(fast=fast)
        self.start()

    def close(self) -> None:
        """Stop, and remove base_dir if this object created it."""
        self.stop()
        if self._owns_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def log_text(self) -> str:
        raise NotImplementedError

    def _log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def _spawn(self, args: list[str], log_path: Path) -> None:
        """Start ``args`` with output to ``log_path``, as ``_account`` when we are root."""
        as_root = os.geteuid() == 0
        with open(log_path, "ab") as log:
            self._proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.base_dir,
                # Own session: a Ctrl-C in the terminal does not reach the server, and
                # SIGKILL to the process group takes all of its children.
                start_new_session=True,
                user=self._account.uid if as_root else None,
                group=self._account.gid if as_root else None,
                extra_groups=[] if as_root else None,  # drop root's supplementary groups
            )  # fmt: skip

    def _end(self, sig: signal.Signals) -> None:
        """Send ``sig`` (SIGKILL: to the whole group) and reap; SIGKILL after 15 s."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            if sig == signal.SIGKILL:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.send_signal(sig)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


class Dovecot(ServerProcess):
    """A throw-away Dovecot IMAP server on 127.0.0.1.

    Mail, config and logs live in base_dir (default: a fresh directory under /dev/shm,
    removed by close()). stop()/start() and restart() keep the mail and the ports.
    """

    def __init__(
        self,
        base_dir: Path | None = None,
        users: Mapping[str, str] | None = None,
        tls: bool = False,
        port: int | None = None,
        capabilities: str | None = None,
    ) -> None:
        self.host = HOST
        self.port = port or free_port()
        # What the server advertises after login instead of its own list (imap_capability):
        # to play a server without IDLE, say.
        self.capabilities = capabilities
        self.ssl_port: int | None = free_port() if tls else None
        self.users: dict[str, str] = dict(DEFAULT_USERS if users is None else users)
        for user, password in self.users.items():
            _check_passwd_entry(user, password)
        self._initial_users = dict(self.users)
        self._account = _run_as_account()
        self._owns_dir = base_dir is None
        if base_dir is None:
            # /dev/shm: tmpfs is fast (APPEND is 2-5x faster than on the VM disk) and its
            # parent is world-searchable, unlike pytest's 0700 /tmp/pytest-of-root.
            shm = "/dev/shm" if os.access("/dev/shm", os.W_OK | os.X_OK) else None
            base_dir = Path(tempfile.mkdtemp(prefix="mailcase-dovecot-", dir=shm))
        # Keep it short: Dovecot's unix sockets under run/ must fit in sun_path (108 bytes).
        self.base_dir = Path(base_dir).resolve()
        # Self-signed, written by start(): pass as cafile to ssl.create_default_context().
        self.ca_file = self.base_dir / "tls" / "cert.pem" if tls else None

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, timeout: float = 15.0) -> None:
        """Write the config and start `dovecot -F`; return once port greets with `* OK`."""
        if self.running:
            raise RuntimeError(f"dovecot already running (pid {self.pid})")
        binary = _dovecot_binary()
        for port in (self.port, self.ssl_port):
            # Without this check the readiness probe below could reach another server while
            # ours dies on "Address already in use".
            if port is not None and _answers(self.host, port):
                raise RuntimeError(f"{self.host}:{port} is already in use")
        self._render()
        if os.geteuid() == 0:
            self._check_reachable()
        self._spawn(
            [binary, "-F", "-c", str(self.base_dir / "dovecot.conf")],
            self.base_dir / "log" / "stdout.log",
        )
        self._wait_ready(timeout)

    def stop(self, fast: bool = False) -> None:
        """SIGTERM the master and wait (about 1 s), or with fast=True SIGKILL the process group."""
        self._end(signal.SIGKILL if fast else signal.SIGTERM)

    def log_text(self) -> str:
        """Dovecot's log, plus anything the master printed before its log was open."""
        parts = []
        for name in ("stdout.log", "dovecot.log"):
            with suppress(FileNotFoundError):
                parts.append((self.base_dir / "log" / name).read_text(errors="replace"))
        return "".join(parts)

    def _render(self) -> None:
        for sub in ("run", "state", "log", "mail"):
            (self.base_dir / sub).mkdir(parents=True, exist_ok=True)
        ssl_settings = ""
        if self.ssl_port is not None:
            cert, key = self.base_dir / "tls" / "cert.pem", self.base_dir / "tls" / "key.pem"
            if not cert.exists():
                make_self_signed_cert(cert.parent)
            ssl_settings = f"ssl_cert = <{cert}\nssl_key = <{key}\nssl_min_protocol = TLSv1.2"
        conf = _DOVECOT_CONF.substitute(
            host=self.host, port=self.port, ssl_port=self.ssl_port or 0,
            ssl="yes" if self.ssl_port is not None else "no", ssl_settings=ssl_settings,
            dir=self.base_dir, user=self._account.name, group=self._account.group,
            uid=self._account.uid, gid=self._account.gid,
        )  # fmt: skip
        if self.capabilities is not None:
            conf += f"imap_capability = {self.capabilities}\n"
        (self.base_dir / "dovecot.conf").write_text(conf)
        for user in self.users:
            (self.base_dir / "mail" / user).mkdir(exist_ok=True)
        self._write_users(wait=False)
        self._chown(self.base_dir, recursive=True)

    def _chown(self, path: Path, recursive: bool = False) -> None:
        if os.geteuid() != 0:
            return
        uid, gid = self._account.uid, self._account.gid
        os.chown(path, uid, gid)
        if recursive:
            for root, dirs, files in os.walk(path):
                for name in dirs + files:
                    os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)

    def _check_reachable(self) -> None:
        probe = subprocess.run(
            ["test", "-w", str(self.base_dir)],
            user=self._account.uid,
            group=self._account.gid,
            extra_groups=[],
            check=False,
        )
        if probe.returncode != 0:
            raise RuntimeError(
                f"{self._account.name} cannot write {self.base_dir}: a parent directory is not "
                "searchable by it (pytest's tmp dirs are 0700 root); use base_dir=None "
                "(a fresh dir under /dev/shm)"
            )

    def _wait_ready(self, timeout: float) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while True:
            status = self._proc.poll()
            if status is not None:
                self._proc = None
                raise RuntimeError(
                    f"dovecot exited with status {status} during start-up "
                    f"(log in {self.base_dir / 'log'}):\n{self._log_tail()}"
                )
            with suppress(OSError), socket.create_connection((self.host, self.port), 1) as s:
                if s.recv(256).startswith(b"* OK"):
                    return
            if time.monotonic() > deadline:
                self.stop(fast=True)
                raise RuntimeError(
                    f"dovecot did not greet on {self.host}:{self.port} within {timeout} s:\n"
                    f"{self._log_tail()}"
                )
            time.sleep(0.02)

    # -- accounts ------------------------------------------------------------------------

    def set_password(self, user: str, password: str) -> None:
        """Change a user's password; the running server honours it when this returns (<= 1 s)."""
        if user not in self.users:
            raise KeyError(user)
        _check_passwd_entry(user, password)
        self.users[user] = password
        self._write_users(wait=True)

    def add_user(self, user: str, password: str) -> None:
        _check_passwd_entry(user, password)
        home = self.base_dir / "mail" / user
        home.mkdir(parents=True, exist_ok=True)
        self._chown(home)
        self.users[user] = password
        self._write_users(wait=True)

    def reset_users(self) -> None:
        """Back to the users and passwords given to the constructor (no-op if unchanged)."""
        if self.users != self._initial_users:
            self.users = dict(self._initial_users)
            self._write_users(wait=True)

    def _write_users(self, wait: bool) -> None:
        path = self.base_dir / "users"
        old_mtime = int(path.stat().st_mtime) if path.exists() else 0
        tmp = path.with_name("users.tmp")
        tmp.write_text("".join(f"{u}:{{PLAIN}}{p}::::::\n" for u, p in self.users.items()))
        tmp.chmod(0o600)
        self._chown(tmp)
        os.replace(tmp, path)
        # Dovecot reloads the passwd-file only if its mtime (whole seconds) or size changed:
        # a same-length password written within the same second would go unnoticed.
        written = time.time()
        stamp = max(int(written), old_mtime + 1)
        os.utime(path, (stamp, stamp))
        if wait and self.running:
            # ...and it stats the file at most once per second of its own clock, so a login
            # in the same second as an earlier one still sees the old file. From the next
            # whole second on, it re-stats.
            time.sleep(math.floor(written) + 1 - time.time() + 0.01)

    # -- mailbox helpers (each opens its own short IMAP connection) ----------------------

    @contextmanager
    def client(self, user: str) -> Iterator[IMAPClient]:
        """A logged-in IMAPClient for user on the plain port; logs out on exit."""
        # ssl=False: IMAPClient defaults to implicit TLS (SSL WRONG_VERSION_NUMBER on this port).
        with IMAPClient(self.host, port=self.port, ssl=False, timeout=10) as imap:
            imap.login(user, self.users[user])
            yield imap

    def append(
        self,
        user: str,
        raw: bytes,
        folder: str = "INBOX",
        flags: Iterable[str | bytes] = (),
        internal_date: datetime | None = None,
    ) -> int:
        """APPEND raw to folder (created if missing) and return its UID."""
        with self.client(user) as imap:
            _ensure_folder(imap, folder)
            return _append(imap, folder, raw, flags, internal_date)

    def append_many(self, user: str, raws: Iterable[bytes], folder: str = "INBOX") -> list[int]:
        with self.client(user) as imap:
            _ensure_folder(imap, folder)
            return [_append(imap, folder, raw, (), None) for raw in raws]

    def create_folder(self, user: str, folder: str) -> None:
        with self.client(user) as imap:
            imap.create_folder(folder)

    def delete_folder(self, user: str, folder: str) -> None:
        with self.client(user) as imap:
            imap.delete_folder(folder)

    def list_folders(self, user: str) -> list[str]:
        with self.client(user) as imap:
            return [name for _flags, _sep, name in imap.list_folders()]

    def fetch_flags(self, user: str, folder: str = "INBOX") -> dict[int, tuple[bytes, ...]]:
        """{uid: flags} for every message in folder, without \\Recent.

        \\Recent depends on which session saw the message first (RFC 3501 2.3.2; IMAP4rev2
        dropped it), so it would make assertions flaky.
        """
        with self.client(user) as imap:
            data = _fetch_all(imap, folder, "FLAGS")
        return {uid: tuple(f for f in d[b"FLAGS"] if f != b"\\Recent") for uid, d in data.items()}

    def fetch_raw(self, user: str, folder: str = "INBOX") -> dict[int, bytes]:
        """{uid: message bytes}. Dovecot returns CRLF line ends even for mail appended with LF."""
        with self.client(user) as imap:
            data = _fetch_all(imap, folder, "BODY.PEEK[]")
        return {uid: d[b"BODY[]"] for uid, d in data.items()}

    def clear(self, user: str) -> None:
        """Empty the default folders and delete all others (UIDs keep counting up)."""
        with self.client(user) as imap:
            names = [
                name
                for flags, _sep, name in imap.list_folders()
                # A parent that only exists through its children ("A" of "A/B") is listed
                # as \NonExistent or \Noselect and disappears with them.
                if not {b"\\Noselect", b"\\NonExistent"} & set(flags)
            ]
            # Children first: Dovecot refuses to delete a mailbox that still has children.
            for name in sorted(names, key=lambda n: n.count("/"), reverse=True):
                if name not in DEFAULT_FOLDERS:
                    imap.delete_folder(name)
                elif imap.select_folder(name)[b"EXISTS"]:
                    imap.delete_messages(imap.search("ALL"))
                    imap.close_folder()  # CLOSE expunges \Deleted, without untagged EXPUNGEs


def _fetch_all(imap: IMAPClient, folder: str, item: str) -> dict[int, dict[bytes, Any]]:
    imap.select_folder(folder, readonly=True)  # EXAMINE: reading changes no flags
    uids = imap.search("ALL")
    return imap.fetch(uids, [item]) if uids else {}


def _ensure_folder(imap: IMAPClient, folder: str) -> None:
    if folder != "INBOX" and not imap.folder_exists(folder):
        imap.create_folder(folder)


def _append(
    imap: IMAPClient,
    folder: str,
    raw: bytes,
    flags: Iterable[str | bytes],
    internal_date: datetime | None,
) -> int:
    response = imap.append(folder, raw, flags=tuple(flags), msg_time=internal_date)
    # Dovecot has UIDPLUS (RFC 4315): "OK [APPENDUID <uidvalidity> <uid>] Append completed."
    match = re.search(rb"\[APPENDUID \d+ (\d+)\]", response)
    if match is None:
        raise RuntimeError(f"no APPENDUID in APPEND response: {response!r}")
    return int(match.group(1))


# --------------------------------------------------------------------------------------------
# SMTP sink
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReceivedMail:
    """One accepted SMTP transaction."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes  # exactly as received (after dot-unstuffing)
    mail_options: list[str] = field(default_factory=list)  # e.g. ["SMTPUTF8", "BODY=8BITMIME"]
    auth_login: str | None = None
    auth_password: str | None = None
    tls: bool = False  # TLS was used (STARTTLS or implicit)

    @property
    def message(self) -> EmailMessage:
        # SMTP carries CRLF line ends (RFC 5321 2.3.8); the email package works with "\n" and
        # would otherwise leave a "\r" at the end of every get_content() line.
        data = self.data.replace(b"\r\n", b"\n")
        return email.message_from_bytes(data, policy=email.policy.default)


def _accept_any(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
) -> AuthResult:
    return AuthResult(success=True, auth_data=auth_data)


# aiosmtpd 1.4 sets its own deprecated Session.login_data on every AUTH and then logs a
# warning about it; drop that noise from the captured logs of failing tests.
logging.getLogger("mail.log").addFilter(
    lambda record: "login_data is deprecated" not in record.getMessage()
)


class _Controller(Controller):
    """Controller that remembers its connections, so stop() can close them first."""

    def __init__(self, handler: object, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.sessions: weakref.WeakSet[SMTP] = weakref.WeakSet()

    def factory(self) -> SMTP:
        smtp = _SinkSMTP(self.handler, **self.SMTP_kwargs)  # what Controller.factory() does
        self.sessions.add(smtp)
        return smtp

    async def abort_sessions(self) -> None:
        # Controller.stop() just cancels tasks and closes the loop: a client still connected
        # (a daemon's pooled connection, a timed-out DATA) would leave a transport that
        # warns "unclosed transport" when collected, an error under -W error.
        for smtp in list(self.sessions):
            if isinstance(smtp.transport, asyncio.Transport):
                smtp.transport.abort()  # abort: close() on TLS waits for the peer's close_notify
        deadline = time.monotonic() + 2
        while any(s.transport is not None for s in self.sessions) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)


class _SinkSMTP(SMTP):
    """aiosmtpd's session, answering EHLO or the DATA command itself as the sink was asked.

    aiosmtpd's handler hooks see DATA only once the message has been read; a server
    refusing the DATA command (a policy service's 451 at Postfix's DATA restriction)
    answers before its 354, and then keeps the sender and recipient, as Postfix does.
    """

    async def smtp_EHLO(self, hostname: str) -> None:
        reply = cast(SmtpSink, self.event_handler)._take_refusal("EHLO")
        if reply is not None:
            await self.push(reply)
            return
        await super().smtp_EHLO(hostname)

    async def smtp_DATA(self, arg: str) -> None:
        reply = cast(SmtpSink, self.event_handler)._take_refusal("DATA")
        if reply is not None:
            await self.push(reply)
            return
        await super().smtp_DATA(arg)


class SmtpSink(Managed):
    """aiosmtpd on 127.0.0.1 in a background thread, recording every accepted message."""

    def __init__(
        self,
        port: int | None = None,
        *,
        auth: bool = False,
        tls_cert: Path | str | None = None,
        tls_key: Path | str | None = None,
        implicit_tls: bool = False,
    ) -> None:
        self.host = HOST
        self.port = port or free_port()
        self.auth = auth
        # implicit_tls: TLS from the first byte (port 465 style, RFC 8314) instead of STARTTLS.
        self.implicit_tls = implicit_tls
        if implicit_tls and tls_cert is None:
            raise ValueError("implicit_tls needs tls_cert and tls_key")
        self._tls_context: ssl.SSLContext | None = None
        if tls_cert is not None:
            self._tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._tls_context.load_cert_chain(tls_cert, tls_key)
        self._cond = threading.Condition()
        self._messages: list[ReceivedMail] = []
        self._faults: list[str] = []
        self._hangs: list[float] = []
        self._hangs_begun = 0  # hang() delays a DATA command has begun to sleep
        self._drops: list[str] = []  # "MAIL" or "DATA": answer 421 there and hang up
        self._refusals: list[tuple[str, str]] = []  # (command, reply) for refuse_next()
        self._controller: _Controller | None = None

    @property
    def running(self) -> bool:
        return self._controller is not None

    def start(self) -> None:
        if self._controller is not None:
            raise RuntimeError("SMTP sink already running")
        kwargs: dict[str, Any] = {
            "hostname": self.host,
            "port": self.port,
            "enable_SMTPUTF8": True,
            # Without it aiosmtpd calls socket.getfqdn(), which can stall on a DNS lookup.
            "server_hostname": "smtp-sink.test",
            "ident": "mailcase test sink",
        }
        if self.auth:
            kwargs.update(authenticator=_accept_any, auth_require_tls=False)
        if self._tls_context is not None and self.implicit_tls:
            kwargs.update(ssl_context=self._tls_context)
        elif self._tls_context is not None:
            kwargs.update(tls_context=self._tls_context, require_starttls=False)
        # A new Controller each time: stop() closes its event loop for good.
        controller = _Controller(self, **kwargs)
        try:
            controller.start()
        except BaseException:
            # e.g. port in use: the thread ended without closing the loop ("unclosed event loop").
            with suppress(Exception):
                controller.stop(no_assert=True)
            if not controller.loop.is_closed():
                controller.loop.close()
            raise
        self._controller = controller

    def stop(self) -> None:
        """Stop listening and drop open connections; messages and pending faults are kept."""
        controller, self._controller = self._controller, None
        if controller is None:
            return
        asyncio.run_coroutine_threadsafe(controller.abort_sessions(), controller.loop).result(10)
        controller.stop()

    @property
    def messages(self) -> list[ReceivedMail]:
        with self._cond:
            return list(self._messages)

    def clear(self) -> None:
        """Forget received messages and pending fail_next()/hang()/drop_next() requests."""
        with self._cond:
            self._messages.clear()
            self._faults.clear()
            self._hangs.clear()
            self._hangs_begun = 0
            self._drops.clear()
            self._refusals.clear()

    def fail_next(self, code: int, text: str, count: int = 1) -> None:
        """Answer the next `count` transactions' DATA with `code text` (e.g. 451, 550).

        smtplib raises SMTPDataError (an SMTPResponseException) with that code.
        """
        if not 400 <= code <= 599:
            raise ValueError(f"not an SMTP error code: {code}")
        with self._cond:
            self._faults.extend([f"{code} {text}"] * count)

    def drop_next(self, at: str = "DATA", count: int = 1) -> None:
        """Answer the next `count` MAIL (or DATA) commands with 421 and close the connection.

        What a server shutting down does (RFC 5321 3.8). smtplib closes its socket on a 421
        and raises SMTPSenderRefused (at MAIL) or SMTPDataError (at DATA) with code 421.
        """
        if at not in ("MAIL", "DATA"):
            raise ValueError(f"drop_next at MAIL or DATA, not {at!r}")
        with self._cond:
            self._drops.extend([at] * count)

    def refuse_next(self, at: str, reply: str) -> None:
        """Answer the next ``at`` command (EHLO, MAIL, or DATA before its 354) with ``reply``.

        The connection stays open: e.g. ``refuse_next("DATA", "451 4.7.1 try later")``, or
        ``refuse_next("EHLO", "502 5.5.2 command not recognized")`` for a server that only
        knows HELO.
        """
        if at not in ("EHLO", "MAIL", "DATA"):
            raise ValueError(f"refuse_next at EHLO, MAIL or DATA, not {at!r}")
        with self._cond:
            self._refusals.append((at, reply))

    def _take_refusal(self, at: str) -> str | None:
        with self._cond:
            for index, (command, reply) in enumerate(self._refusals):
                if command == at:
                    del self._refusals[index]
                    return reply
            return None

    def _take_drop(self, at: str) -> bool:
        with self._cond:
            if at in self._drops:
                self._drops.remove(at)
                return True
            return False

    @staticmethod
    def _hang_up(server: SMTP) -> str:
        # Closed after the reply is written: aiosmtpd pushes the returned status first, and
        # a transport's close() flushes what is buffered before closing the socket.
        transport = server.transport
        if transport is not None:
            asyncio.get_running_loop().call_soon(transport.close)
        return "421 4.3.2 Service shutting down, closing transmission channel"

    def hang(self, seconds: float, count: int = 1) -> None:
        """Sleep `seconds` before answering the next `count` DATA commands.

        Then the transaction goes on as usual (recorded, or failed by fail_next()). A client
        that times out and disconnects meanwhile cancels it: nothing is recorded.
        """
        with self._cond:
            self._hangs.extend([seconds] * count)

    def wait_for_hang(self, count: int = 1, timeout: float = 10.0) -> None:
        """Block until ``count`` DATA commands have begun the sleep hang() asked for."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._hangs_begun >= count, timeout):
                raise TimeoutError(f"no DATA command began to hang within {timeout} s")

    def wait_for(self, count: int, timeout: float = 10.0) -> list[ReceivedMail]:
        """Block until at least `count` messages arrived; return all of them."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._messages) >= count, timeout):
                raise TimeoutError(
                    f"expected {count} message(s) within {timeout} s, got {len(self._messages)}"
                )
            return list(self._messages)

    # aiosmtpd handler hooks (this object is the handler); they run on the sink's event loop.
    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        if self._take_drop("MAIL"):
            return self._hang_up(server)
        refusal = self._take_refusal("MAIL")
        if refusal is not None:
            return refusal
        # What aiosmtpd does when there is no hook.
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self._take_drop("DATA"):
            return self._hang_up(server)
        with self._cond:
            delay = self._hangs.pop(0) if self._hangs else 0.0
            fault = self._faults.pop(0) if self._faults else None
            if delay:
                self._hangs_begun += 1
                self._cond.notify_all()
        if delay:
            await asyncio.sleep(delay)
        if fault is not None:
            return fault
        auth = session.auth_data if isinstance(session.auth_data, LoginPassword) else None
        mail = ReceivedMail(
            mail_from=envelope.mail_from or "",
            rcpt_tos=list(envelope.rcpt_tos),
            data=envelope.original_content or b"",
            mail_options=list(envelope.mail_options),
            auth_login=auth.login.decode("utf-8", "replace") if auth else None,
            auth_password=auth.password.decode("utf-8", "replace") if auth else None,
            # session.ssl is set by STARTTLS only; implicit TLS shows on the transport.
            tls=session.ssl is not None
            or (
                server.transport is not None
                and server.transport.get_extra_info("ssl_object") is not None
            ),
        )
        with self._cond:
            self._messages.append(mail)
            self._cond.notify_all()
        return "250 2.0.0 OK: queued"


# --------------------------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------------------------

# Debian's postgresql package (CI: apt-get install -y postgresql) puts the server binaries
# here, outside PATH; pg_ctlcluster and friends are not used, so no system cluster is needed.
POSTGRES_BIN_ROOT = Path("/usr/lib/postgresql")

# A throw-away server: nothing needs to survive a crash, so skip every disk flush. The
# rest keeps it small and quiet (the test suite opens many short-lived databases).
_POSTGRES_SETTINGS: Mapping[str, str] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",  # each in-process CLI run has its own engine pool
    "shared_buffers": "32MB",
    "max_wal_size": "256MB",
    "min_wal_size": "32MB",
    "wal_level": "minimal",
    "max_wal_senders": "0",
    "autovacuum": "off",
    "logging_collector": "off",
    "log_min_messages": "warning",
    "log_min_error_statement": "panic",  # the tests provoke errors (unique violations) on purpose
    "timezone": "UTC",
}


def _postgres_bindir() -> Path:
    """The newest /usr/lib/postgresql/<major>/bin that has a server in it."""
    found = sorted(
        (p for p in POSTGRES_BIN_ROOT.glob("*/bin") if (p / "postgres").is_file()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else -1,
    )
    if not found:
        raise RuntimeError(
            f"PostgreSQL not found (no {POSTGRES_BIN_ROOT}/<version>/bin/postgres): "
            "install Debian's postgresql (apt-get install -y postgresql)"
        )
    return found[-1]


def _postgres_account() -> _Account:
    # initdb and postgres refuse to run as root: as root (CI), use the account Debian's
    # package creates, else nobody.
    if os.geteuid() != 0:
        pw = pwd.getpwuid(os.geteuid())
    else:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pw = pwd.getpwnam("nobody")
    return _Account(pw.pw_name, pw.pw_uid, pw.pw_gid, grp.getgrgid(pw.pw_gid).gr_name)


class Postgres(ServerProcess):
    """A throw-away PostgreSQL server on 127.0.0.1, trusting every local connection.

    The cluster (initdb on first start()), its unix socket and its log live in base_dir
    (default: a fresh directory under /dev/shm, removed by close()). The server runs as a
    child process that we own and reap; stop()/start() and restart() keep the databases
    and the port. Connect as ``user`` (the cluster's superuser) without a password.
    ``settings`` override the throw-away server settings (``-c name=value``).
    """

    def __init__(
        self,
        base_dir: Path | None = None,
        port: int | None = None,
        user: str = "mailcase",
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self.host = HOST
        # Server settings over the throw-away ones (bench/ingest.py: the server's own
        # defaults, to measure PostgreSQL as installed).
        self.settings = {**_POSTGRES_SETTINGS, **(settings or {})}
        self.port = port or free_port()
        self.user = user
        self._account = _postgres_account()
        self._owns_dir = base_dir is None
        if base_dir is None:
            shm = "/dev/shm" if os.access("/dev/shm", os.W_OK | os.X_OK) else None
            base_dir = Path(tempfile.mkdtemp(prefix="mailcase-pg-", dir=shm))
        # Short: the unix socket base_dir/.s.PGSQL.<port> must fit in sun_path (108 bytes).
        self.base_dir = Path(base_dir).resolve()
        self.data_dir = self.base_dir / "data"
        self.log_path = self.base_dir / "postgres.log"

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        """initdb if needed, start the server; return once it accepts connections."""
        if self.running:
            raise RuntimeError(f"postgres already running (pid {self.pid})")
        if _answers(self.host, self.port):
            raise RuntimeError(f"{self.host}:{self.port} is already in use")
        bindir = _postgres_bindir()
        self._chown(self.base_dir)
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb(bindir)
        settings = {
            **self.settings,
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": str(self.base_dir),
        }
        args = [str(bindir / "postgres"), "-D", str(self.data_dir)]
        for name, value in settings.items():
            args += ["-c", f"{name}={value}"]
        self._spawn(args, self.log_path)
        self._wait_ready(timeout)

    def stop(self, fast: bool = False) -> None:
        """Shut down: "fast" (SIGINT: sessions ended, clean), or with fast=True "immediate"
        (SIGQUIT: like a crash, recovered on the next start)."""
        self._end(signal.SIGQUIT if fast else signal.SIGINT)

    def log_text(self) -> str:
        """What initdb and the server wrote."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _initdb(self, bindir: Path) -> None:
        as_root = os.geteuid() == 0
        with open(self.log_path, "ab") as log:
            result = subprocess.run(
                [str(bindir / "initdb"), "-D", str(self.data_dir), "-U", self.user,
                 "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8",
                 "--no-sync", "--no-instructions"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.base_dir,
                user=self._account.uid if as_root else None,
                group=self._account.gid if as_root else None,
                extra_groups=[] if as_root else None,
                check=False,
            )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(
                f"initdb failed with status {result.returncode} (as {self._account.name}, "
                f"in {self.base_dir}):\n{self._log_tail()}"
            )

    def _chown(self, path: Path) -> None:
        if os.geteuid() == 0:
            os.chown(path, self._account.uid, self._account.gid)

    def _wait_ready(self, timeout: float) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while True:
            status = self._proc.poll()
            if status is not None:
                self._proc = None
                raise RuntimeError(
                    f"postgres exited with status {status} during start-up "
                    f"(log {self.log_path}):\n{self._log_tail()}"
                )
            # Connecting is the readiness test: "the database system is starting up" until
            # recovery is done, then the session works.
            try:
                with self.connect():
                    return
            except psycopg.OperationalError:
                pass
            if time.monotonic() > deadline:
                self.stop(fast=True)
                raise RuntimeError(
                    f"postgres did not accept connections on {self.host}:{self.port} "
                    f"within {timeout} s:\n{self._log_tail()}"
                )
            time.sleep(0.02)

    # -- databases -----------------------------------------------------------------------

    def url(self, dbname: str = "postgres") -> str:
        """The SQLAlchemy URL of ``dbname`` (psycopg 3 driver, TCP, no password)."""
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{dbname}"

    def connect(self, dbname: str = "postgres") -> psycopg.Connection[Any]:
        """A psycopg connection in autocommit mode (as CREATE/DROP DATABASE need)."""
        return psycopg.connect(
            host=self.host, port=self.port, user=self.user, dbname=dbname,
            autocommit=True, connect_timeout=5,
        )  # fmt: skip

    def create_database(self, name: str, template: str | None = None) -> None:
        """CREATE DATABASE ``name`` (a copy of ``template`` if given: it must be idle)."""
        query = psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name))
        if template is not None:
            query += psycopg.sql.SQL(" TEMPLATE {}").format(psycopg.sql.Identifier(template))
        with self.connect() as conn:
            conn.execute(query)

    def drop_database(self, name: str) -> None:
        """DROP DATABASE ``name`` if it exists, ending any session still connected to it."""
        query = psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            psycopg.sql.Identifier(name)
        )
        with self.connect() as conn:
            conn.execute(query)

    def databases(self) -> list[str]:
        """The names of the databases, without the templates."""
        with self.connect() as conn:
            rows = conn.execute("SELECT datname FROM pg_database WHERE NOT datistemplate")
            return sorted(str(name) for (name,) in rows)
