"""Project test helpers: a config for the fixture servers, mail builders, CLI runs."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import types
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any

from servers import Dovecot, SmtpSink, free_port

from mailcase.classify import LOOP_HEADER
from mailcase.cli import main

CONTACTO = "contacto@internet-plarey.com.mx"
INFO = "info@internet-plarey.com.mx"
AGENT = "ana.tecnica@internet-plarey.com.mx"
NOTIFY = "soporte@internet-plarey.com.mx"
WEB = "web@internet-plarey.com.mx"
REPO = Path(__file__).resolve().parents[1]

# For rendering tests: a folio, the company block of the templates' context,
# and the headers every notice to a customer carries.
FOLIO = "PLR-2026-000123"
COMPANY = {
    "name": "Internet Plarey",
    "phone": "800 123 4567",
    "email": "contacto@internet-plarey.com.mx",
    "website": "https://internet-plarey.com.mx",
    "address": "Av. Juárez 1, Centro",
    "hours": "Lunes a sábado de 9:00 a 19:00",
}
NOTICE_HEADERS = sorted(
    [
        "auto-submitted",
        "content-language",
        "content-type",
        "date",
        "from",
        "in-reply-to",
        "message-id",
        "mime-version",
        "references",
        "subject",
        "to",
        "x-auto-response-suppress",
        LOOP_HEADER.lower(),
    ]
)


def write_config(
    directory: Path,
    dovecot: Dovecot,
    sink: SmtpSink,
    *,
    extra: str = "",
    contacto_folder: str = "INBOX",
    language: str = "es",
    notify: bool = False,
    db_url: str | None = None,
    contacto_security: str = "none",
    contacto_ca_file: Path | None = None,
    smtp_security: str = "none",
    smtp_ca_file: Path | None = None,
    smtp_extra: str = "",
) -> Path:
    """A mailcase.toml for the fixture servers, with its database and store under ``directory``.

    ``notify``: set ``agents.notify``, so new cases also mail the agents (off by
    default, so tests about acknowledgements count only those).
    ``db_url``: the database (the ``db_url`` fixture's); default a SQLite file in ``directory``.
    ``contacto_security``: "tls" reads the contacto mailbox over Dovecot's IMAPS port
    (``dovecot.ssl_port``); ``contacto_ca_file`` is that mailbox's ``ca_file``.
    ``smtp_security``/``smtp_ca_file``: the same keys of ``[smtp]``; ``smtp_extra`` is
    more lines for ``[smtp]`` (e.g. ``retry_for_hours = 2``).
    """
    db_url = db_url or f"sqlite:///{directory}/mailcase.db"
    notify_line = f'notify = "{NOTIFY}"' if notify else ""
    contacto_port = dovecot.ssl_port if contacto_security == "tls" else dovecot.port
    # Lines added only when asked for: with the defaults the file is as it always was, so
    # tests that edit it by replacing known lines keep working.
    contacto_ca = f'\nca_file = "{contacto_ca_file}"' if contacto_ca_file else ""
    smtp_lines = f'\nca_file = "{smtp_ca_file}"' if smtp_ca_file else ""
    smtp_lines += f"\n{smtp_extra.strip()}" if smtp_extra.strip() else ""
    path = directory / "mailcase.toml"
    path.write_text(
        f"""
[database]
url = "{db_url}"
[storage]
directory = "{directory}/store"
[mailboxes.contacto]
address = "{CONTACTO}"
host = "127.0.0.1"
port = {contacto_port}
security = "{contacto_security}"{contacto_ca}
username = "contacto"
password = "{dovecot.users["contacto"]}"
folder = "{contacto_folder}"
[mailboxes.info]
address = "{INFO}"
host = "127.0.0.1"
port = {dovecot.port}
security = "none"
username = "info"
password = "{dovecot.users["info"]}"
[smtp]
host = "127.0.0.1"
port = {sink.port}
security = "{smtp_security}"{smtp_lines}
[agents]
addresses = ["{AGENT}"]
{notify_line}
[web_form]
senders = ["{WEB}"]
[folio]
prefix = "PLR"
[poll]
interval_seconds = 5
[notices]
language = "{language}"
[company]
name = "Internet Plarey"
phone = "800 123 4567"
website = "https://internet-plarey.com.mx"
[log]
format = "json"
{extra}
""",
        encoding="utf-8",
    )
    return path


def debug_log(config: Path) -> None:
    """Set ``log.level = "debug"`` in ``config`` (as :func:`write_config` writes it)."""
    text = config.read_text(encoding="utf-8")
    assert '[log]\nformat = "json"' in text
    config.write_text(text.replace("[log]\n", '[log]\nlevel = "debug"\n', 1), encoding="utf-8")


def offline_runtime(directory: Path, db_url: str | None = None, *, notify: bool = False) -> Any:
    """A ``service.Runtime`` on a config in ``directory`` whose servers are never contacted.

    For tests of ingest and casework on the database alone (ports 1 to 3: nothing
    listens there); ``db_url`` and ``notify`` as for :func:`write_config`.
    """
    from mailcase import service
    from mailcase.config import load_settings

    servers: Any = types.SimpleNamespace(port=1, ssl_port=2, users={"contacto": "x", "info": "y"})
    sink: Any = types.SimpleNamespace(port=3)
    config = write_config(directory, servers, sink, db_url=db_url, notify=notify)
    return service.Runtime.open(load_settings(config))


def point_smtp_at_a_closed_port(config: Path, sink: SmtpSink) -> None:
    """Make ``config``'s SMTP server one that refuses every connection."""
    text = config.read_text()
    assert f"port = {sink.port}" in text
    config.write_text(text.replace(f"port = {sink.port}", f"port = {free_port()}"))


def cli_with_smtp_down(directory: Path, dovecot: Dovecot, sink: SmtpSink, capsys: Any) -> Cli:
    """A :class:`Cli` on a fresh config whose SMTP server refuses every connection."""
    config = write_config(directory, dovecot, sink)
    point_smtp_at_a_closed_port(config, sink)
    return Cli(config, capsys)


def mail(
    *,
    sender: str = "Juan Pérez <juan.perez@example.com>",
    to: str = CONTACTO,
    subject: str = "Sin servicio de internet",
    body: str = "Hola, desde ayer no tengo internet en mi domicilio.\nGracias.",
    message_id: str | None = "auto",
    headers: dict[str, str] | None = None,
    charset: str = "utf-8",
    cte: str | None = None,
    html: str | None = None,
    attachments: list[tuple[str, str, bytes]] = (),  # type: ignore[assignment]
) -> bytes:
    """A raw message built with the standard library; ``message_id=None`` leaves it out."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = format_datetime(datetime(2026, 11, 20, 10, 30, tzinfo=UTC))
    if message_id == "auto":
        msg["Message-ID"] = make_msgid(domain="example.com")
    elif message_id:
        msg["Message-ID"] = message_id
    for name, value in (headers or {}).items():
        msg[name] = value
    if html is not None and body == "":
        msg.set_content(html, subtype="html", charset=charset)
    else:
        msg.set_content(body, charset=charset, cte=cte)
        if html is not None:
            msg.add_alternative(html, subtype="html")
    for filename, ctype, data in attachments:
        maintype, subtype = ctype.split("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return msg.as_bytes()


class Cli:
    """Runs ``mailcase --config PATH ...`` in-process and captures what it prints."""

    def __init__(self, config: Path, capsys: Any) -> None:
        self.config = config
        self.capsys = capsys

    def __call__(self, *args: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = main(["--config", str(self.config), *args])
        out, err = self.capsys.readouterr()
        return code, out, err

    def json(self, *args: str) -> Any:
        if len(args) > 1 and args[1] == "list" and not {"--limit", "--all"} & set(args):
            # Every row: the tests count them (a listing shows 100 unless told otherwise).
            args = (*args, "--all")
        code, out, err = self(*args, "--json")
        assert code == 0, err
        return json.loads(out)

    def poll(self) -> None:
        code, _, err = self("poll")
        assert code == 0, err


def run_process(config: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m mailcase --config PATH ...`` as a real process."""
    return subprocess.run(
        [sys.executable, "-m", "mailcase", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def json_events(text: str) -> list[dict[str, Any]]:
    """The JSON log lines in ``text`` (a process's stderr), in order.

    Every other line must be the command's own one-line error (``mailcase: ...``): anything
    else (a library's plain-text warning, a stray traceback) fails the test that reads it.
    A last line without its newline is left out: the process may be writing it (or may have
    been killed while writing it).
    """
    complete = text[: text.rfind("\n") + 1]
    lines = [line for line in complete.splitlines() if line.strip()]
    stray = [line for line in lines if not line.startswith(("{", "mailcase: "))]
    assert not stray, f"not a JSON log line: {stray[0]!r}"
    return [json.loads(line) for line in lines if line.startswith("{")]


class DaemonProcess:
    """``python -m mailcase --config PATH run`` as a real process; stdout+stderr go to a file.

    The file is read while the daemon runs (``events()``, ``wait_for_event()``), so a test can
    react to what it logged. As a context manager it never leaks the process: on exit a
    daemon still running is killed and reaped.
    """

    def __init__(self, config: Path, log_path: Path) -> None:
        self.config = config
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> DaemonProcess:
        with open(self.log_path, "ab") as log:  # the child has its own copy of the descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mailcase", "--config", str(self.config), "run"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.text().splitlines()[-lines:])

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        return [e for e in json_events(self.text()) if name is None or e.get("event") == name]

    def wait_for_event(
        self, name: str, timeout: float = 20.0, where: Any = None, count: int = 1
    ) -> list[dict[str, Any]]:
        """Wait until ``count`` events ``name`` (matching ``where(event)``) were logged."""
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.events(name) if where is None or where(e)]
            if len(found) >= count:
                return found
            if not self.running:
                raise AssertionError(f"daemon exited before logging {name}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no {count} x {name} within {timeout} s (got {len(found)}):\n{self.tail()}"
                )
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind runs in the daemon."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; return the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            message = f"daemon ignored SIGTERM for {timeout} s:\n{self.tail()}"
            raise AssertionError(message) from None

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()


@dataclass
class Env:
    """A mailcase config on the fixture servers, driven through the CLI in-process."""

    cli: Cli
    imap: Dovecot
    sink: SmtpSink
    config: Path
    dir: Path

    @property
    def store(self) -> Path:
        """The storage directory ``write_config`` sets (raw messages and attachments)."""
        return self.dir / "store"

    def deliver(self, raw: bytes, user: str = "contacto", **kw: Any) -> int:
        return self.imap.append(user, raw, **kw)

    def poll(self) -> None:
        self.cli.poll()

    def cases(self) -> list[dict[str, Any]]:
        return self.cli.json("cases", "list")  # type: ignore[no-any-return]

    def case(self, folio: str) -> dict[str, Any]:
        return self.cli.json("cases", "show", folio)  # type: ignore[no-any-return]

    def ledger(self, *args: str) -> list[dict[str, Any]]:
        return self.cli.json("messages", "list", *args)  # type: ignore[no-any-return]

    def acks(self) -> list[EmailMessage]:
        return [m.message for m in self.sink.messages]


def pause_after_triage(monkeypatch: Any) -> tuple[threading.Event, threading.Event]:
    """Make ``mailcase.service.triage`` stop after deciding, until told to go on: the
    moment another session's change can commit between triage's read and the case's
    lock (PostgreSQL). Returns ``(in_triage, go_on)``: wait for the first, set the second.
    """
    from mailcase import service

    in_triage, go_on = threading.Event(), threading.Event()
    real = service.triage

    def paused(*args: Any, **kwargs: Any) -> Any:
        decision = real(*args, **kwargs)
        in_triage.set()
        assert go_on.wait(20)
        return decision

    monkeypatch.setattr(service, "triage", paused)
    return in_triage, go_on


def installation_at(db_url: str, revision: str) -> None:
    """Make ``db_url`` an installation of schema ``revision`` holding one case with one
    message (which refers to it), for a migration's test: migrated to the head, then down
    to ``revision`` (a PostgreSQL test database is a copy of a template already at head).
    """
    import sqlalchemy as sa
    from alembic import command

    from mailcase.store import alembic_config

    command.upgrade(alembic_config(db_url), "head")
    command.downgrade(alembic_config(db_url), revision)
    engine = sa.create_engine(db_url)
    try:
        with engine.begin() as conn:
            version = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
            assert version == revision
            conn.execute(
                sa.text(
                    "INSERT INTO cases (folio, mailbox, status, customer, customer_name,"
                    " subject, channel, language, created_at, updated_at) VALUES"
                    " ('PLR-2026-000001', 'contacto', 'open', 'juan@example.com', '', 's',"
                    " 'mail', 'es', '2026-11-20 10:00:00', '2026-11-20 10:00:00')"
                )
            )
            conn.execute(
                sa.text(
                    "INSERT INTO case_messages (case_id, direction, kind, from_addr, to_addrs,"
                    " subject, date, text) SELECT id, 'in', 'customer', 'juan@example.com', '',"
                    " 's', '2026-11-20 10:00:00', 'hola' FROM cases"
                )
            )
    finally:
        engine.dispose()
