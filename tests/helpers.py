"""Project test helpers: a config for the fixture servers, mail builders, CLI runs."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any

from servers import Dovecot, SmtpSink

from mailcase.cli import main

CONTACTO = "contacto@internet-plarey.com.mx"
INFO = "info@internet-plarey.com.mx"
AGENT = "ana.tecnica@internet-plarey.com.mx"
NOTIFY = "soporte@internet-plarey.com.mx"
WEB = "web@internet-plarey.com.mx"
REPO = Path(__file__).resolve().parents[1]


def write_config(
    directory: Path,
    dovecot: Dovecot,
    sink: SmtpSink,
    *,
    extra: str = "",
    contacto_folder: str = "INBOX",
    language: str = "es",
) -> Path:
    """A mailcase.toml for the fixture servers, with its database and store under ``directory``."""
    path = directory / "mailcase.toml"
    path.write_text(
        f"""
[database]
url = "sqlite:///{directory}/mailcase.db"
[storage]
directory = "{directory}/store"
[mailboxes.contacto]
address = "{CONTACTO}"
host = "127.0.0.1"
port = {dovecot.port}
security = "none"
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
security = "none"
[agents]
addresses = ["{AGENT}"]
notify = "{NOTIFY}"
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
