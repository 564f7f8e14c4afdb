"""Log format on `format = "auto"`: readable on a terminal, JSON lines for anything else."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import mail, write_config
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
