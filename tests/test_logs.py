"""Log format on `format = "auto"`: readable on a terminal, JSON lines for anything else."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import CONTACTO, mail, run_process, write_config
from servers import Dovecot, SmtpSink

pytestmark = pytest.mark.integration


def _poll(config: Path, *, stdout_tty: bool, stderr_tty: bool) -> str:
    """Run `mailcase poll`; return what it wrote to stderr."""
    master, slave = pty.openpty()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mailcase", "--config", str(config), "poll"],
            stdout=slave if stdout_tty else out_w,
            stderr=slave if stderr_tty else err_w,
        )
    finally:
        for fd in (slave, out_w, err_w):
            os.close(fd)
    chunks = []
    source = master if stderr_tty else err_r
    while True:
        try:
            chunk = os.read(source, 65536)
        except OSError:  # EIO: the pty's other end is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert proc.wait(timeout=60) == 0
    for fd in (master, out_r, err_r):
        os.close(fd)
    return b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.parametrize(
    ("stdout_tty", "stderr_tty", "json_lines"),
    [(True, True, False), (False, True, True), (True, False, True), (False, False, True)],
)
def test_auto_format_follows_the_terminals(
    tmp_path: Path,
    mailboxes: Dovecot,
    sink: SmtpSink,
    stdout_tty: bool,
    stderr_tty: bool,
    json_lines: bool,
) -> None:
    config = write_config(tmp_path, mailboxes, sink)
    text = config.read_text()
    assert 'format = "json"' in text
    config.write_text(text.replace('format = "json"', 'format = "auto"'))
    mailboxes.append("contacto", mail())
    err = _poll(config, stdout_tty=stdout_tty, stderr_tty=stderr_tty)
    lines = [line for line in err.splitlines() if "message_ingested" in line]
    assert len(lines) == 1, err
    assert lines[0].lstrip().startswith("{") is json_lines, lines[0]


def calendar_mail(i: int) -> bytes:
    """A customer's mail with an invitation in it (mail-parser warns it does not handle it)."""
    return f"""From: c{i}@example.com
To: {CONTACTO}
Subject: Cita {i}
Message-ID: <cita-{i}@example.com>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="b"

--b
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 8bit

¿Me confirman la visita?
--b
Content-Type: text/calendar; charset=utf-8

BEGIN:VCALENDAR
SUMMARY:Visita tecnica
END:VCALENDAR
--b--
""".encode()


@pytest.mark.parametrize("backlog", [1, 60], ids=["in-process", "parser-process"])
def test_every_line_a_poll_writes_is_json(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, backlog: int
) -> None:
    """mail-parser's own warnings (from either process) never come out as plain text."""
    config = write_config(tmp_path, mailboxes, sink)
    mailboxes.append_many("contacto", [calendar_mail(i) for i in range(backlog)])
    result = run_process(config, "poll")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert sum('"message_ingested"' in line for line in lines) == backlog
    for line in lines:
        assert isinstance(json.loads(line), dict), line
    assert "not handled" not in result.stderr
    assert "Visita tecnica" not in result.stderr


def _crash_with_secrets_in_scope() -> None:
    password = "S3cret-SMTP-2026"  # a frame's locals, as smtp.py's hold the password
    raise RuntimeError(f"bad AUTH answer ({len(password)} characters sent)")


def test_a_crash_logged_for_people_shows_no_frame_variables(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # structlog's console renderer, with rich installed, printed every frame's locals.
    from mailcase.logs import configure, get_logger

    configure("info", "console")
    try:
        try:
            _crash_with_secrets_in_scope()
        except RuntimeError:
            get_logger().exception("outbox_run_crashed")
        err = capsys.readouterr().err
    finally:
        configure("info", "json")
    assert "outbox_run_crashed" in err and "Traceback" in err and "bad AUTH answer" in err
    assert "S3cret-SMTP-2026" not in err
