"""`mailcase poll --progress`: a bar per mailbox on a terminal, nothing on a pipe."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import mail, run_process, write_config
from servers import Dovecot, SmtpSink

pytestmark = pytest.mark.integration


def test_progress_bars_on_a_terminal(tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink) -> None:
    config = write_config(tmp_path, mailboxes, sink)
    config.write_text(config.read_text().replace('format = "json"', 'level = "warning"'))
    mailboxes.append_many("contacto", [mail(subject=f"R{i}") for i in range(3)])
    main_fd, terminal = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailcase", "--config", str(config), "poll", "--progress"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=terminal,
        env={**os.environ, "COLUMNS": "100", "TERM": "xterm"},
    )
    os.close(terminal)
    chunks = []
    while True:
        try:
            chunk = os.read(main_fd, 4096)
        except OSError:  # the terminal closed: the process is done with it
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(main_fd)
    assert proc.wait(timeout=60) == 0
    screen = b"".join(chunks).decode("utf-8", "replace")
    assert "contacto" in screen and "3/3" in screen
    assert "info" in screen and "0/0" in screen


def test_no_progress_output_when_not_a_terminal(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink
) -> None:
    config = write_config(tmp_path, mailboxes, sink)
    config.write_text(config.read_text().replace('format = "json"', 'level = "warning"'))
    mailboxes.append("contacto", mail())
    result = run_process(config, "poll", "--progress")
    assert result.returncode == 0
    assert result.stderr == ""
